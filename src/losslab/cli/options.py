"""Generate click options from a pydantic config model, so every config key is a flag with the same help text.

``--label-smoothing 0.1`` sets ``label_smoothing``; booleans get ``--flag/--no-flag`` (a lone ``--flag``, off unless
given, with ``json_schema_extra={"switch": True}``); ``Literal`` fields become choices; ``list[int]`` (``list[float]``,
``list[str]``) fields take comma-separated values. Options default to ``None`` so that only the flags a user actually
typed override a YAML config file::

    @click.command()
    @options_from_model(TrainConfig, aliases={"label_smoothing": ["--smoothing"]})
    def train(**flags): overrides = given_options(flags)
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel

from losslab.cli.groups import CONCEPTS as SHARED_CONCEPTS
from losslab.cli.groups import FloatList, IntList, StrList, field_bounds, number_type, shared_option


def _unwrap_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _annotated(annotation: Any) -> tuple[Any, dict[str, float]]:
    """(type, bounds) of ``Annotated[X, Field(ge=..)]`` (``X`` and its bounds), else (``annotation``, {})."""
    if typing.get_origin(annotation) is not typing.Annotated:
        return annotation, {}
    base, *extras = typing.get_args(annotation)
    bounds: dict[str, float] = {}
    for extra in extras:
        bounds.update(field_bounds(extra))
    return base, bounds


def _click_type(annotation: Any, info: Any = None) -> tuple[Any, bool]:
    """(click type, is_flag) for a field annotation; numbers get the field's bounds (and floats must be finite)."""
    annotation, bounds = _annotated(_unwrap_optional(annotation))  # Annotated[int, Field(ge=1)] | None: its bounds
    if info is not None:
        bounds.update(field_bounds(info))
    if annotation is bool:
        return None, True
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)], False
    if typing.get_origin(annotation) is list:  # list[int] or list[Annotated[int, Field(ge=1)]]: items get bounds
        item, item_bounds = _annotated((typing.get_args(annotation) or (int,))[0])
        if item is str:
            return StrList(), False
        return (FloatList if item is float else IntList)(number_type(item, **item_bounds)), False
    if annotation is Path:
        return click.Path(path_type=Path), False
    if annotation in (int, float):
        return number_type(annotation, **bounds), False
    return str, False


def _extra(info: Any) -> dict[str, Any]:
    """A field's ``json_schema_extra`` mapping (empty when it has none)."""
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def _loss_choices(annotation: Any, info: Any) -> list[str] | None:
    """The canonical losses a ``loss`` field takes: its Literal's values, else ``json_schema_extra["losses"]``."""
    annotation = _unwrap_optional(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return _extra(info).get("losses")


def _shared_field_option(name: str, info: Any, names: list[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The option of a config field whose name is a shared concept (:data:`losslab.cli.groups.CONCEPTS`)."""
    default = info.get_default(call_default_factory=True)
    losses = _loss_choices(info.annotation, info) if name == "loss" else None
    aliases = [n for n in names if n != "--" + name.replace("_", "-")]
    detail = (info.description or "").rstrip(".")
    origin = typing.get_origin(_unwrap_optional(info.annotation))
    if origin is tuple:  # tuple[X, ...]: the flag is repeatable
        return shared_option(name, detail, config_default=default or None, aliases=aliases, multiple=True)
    if origin is list:  # list[X]: a comma list, each value typed as the single flag (a sweep's --k 1,3,10)
        item = SHARED_CONCEPTS[name].make_type()
        list_type = FloatList(item) if isinstance(item, click.FloatRange) else IntList(item)
        return shared_option(name, detail, config_default=shown_default(default), aliases=aliases, type=list_type)
    return shared_option(name, detail, config_default=default, losses=losses, aliases=aliases)


def options_from_model(
    model: type[BaseModel],
    aliases: dict[str, list[str]] | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
    flags: dict[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding one option per field of ``model`` (help text from the field's description and default).

    ``flags`` gives a field another spelling than ``--field-name`` (``{"json_path": "--json"}``); a ``tuple[X, ...]``
    field is a repeatable flag."""
    aliases, flags = aliases or {}, flags or {}

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for name, info in reversed(list(model.model_fields.items())):
            if name in exclude:
                continue
            flag = flags.get(name, "--" + name.replace("_", "-"))
            if name in SHARED_CONCEPTS:
                func = _shared_field_option(name, info, [flag, *aliases.get(name, [])])(func)
                continue
            click_type, is_flag = _click_type(info.annotation, info)
            if isinstance(click_type, list):  # a Literal: its values, plus any deprecated ones for this flag
                click_type = DeprecatedChoice(click_type, flag)
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            help_text = help_with_default(info.description or "", default)
            names = [flag, *aliases.get(name, [])]
            if info.is_required():  # no default: click says "Missing option" before the config is built
                func = click.option(*names, name, type=click_type, required=True, help=help_text)(func)
            elif is_flag and _extra(info).get("switch"):
                func = click.option(*names, name, is_flag=True, default=None, help=info.description)(func)
            elif is_flag:
                names = [f"{flag}/--no-{flag[2:]}", *aliases.get(name, [])]
                func = click.option(*names, name, default=None, help=help_text)(func)
            elif typing.get_origin(_unwrap_optional(info.annotation)) is tuple:  # tuple[X, ...]: repeatable
                item = (typing.get_args(_unwrap_optional(info.annotation)) or (str,))[0]
                item_type, _ = _click_type(item)
                func = click.option(*names, name, type=item_type, multiple=True, help=help_text)(func)
            else:
                func = click.option(*names, name, type=click_type, default=None, help=help_text)(func)
        return func

    return decorate


def help_with_default(description: str, default: Any) -> str:
    """``description`` plus ``[default: X]``; nothing is added for a ``None`` or empty default (the description
    says what an unset option means, e.g. "default $LOSSLAB_DATA_DIR") or where the description names a default."""
    if default is None or default in ([], ()) or "default" in description.lower():
        return description
    return f"{description} [default: {shown_default(default)}]"


def shown_default(default: Any) -> Any:
    """A default as ``--help`` shows it: a list comma-joined as typed (floats in ``g`` format: ``0,0.001``)."""
    if not isinstance(default, list | tuple):
        return default
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)


def given_options(values: dict[str, Any]) -> dict[str, Any]:
    """The options the user typed (those not ``None``; a repeatable flag not given is an empty tuple)."""
    return {key: value for key, value in values.items() if value is not None and value != ()}


ModelT = TypeVar("ModelT", bound=BaseModel)


def pop_options(model: type[ModelT], flags: dict[str, Any]) -> ModelT:
    """``model`` built from the flags typed for its fields, which are taken out of ``flags`` (for a command whose
    flags come from several models, :func:`options_from_model` each)."""
    return model(**given_options({name: flags.pop(name) for name in model.model_fields if name in flags}))


# Old flag spellings still accepted for one release. One table for every command: the CLI's vocabulary is
# documented in docs/cli.md, and each entry here maps an old spelling to the one name it now has.
DEPRECATED_FLAGS: dict[str, dict[str, str]] = {
    "train": {"--grad-clip": "--gradient-clip"},
    "lm finetune": {"--output-dir": "--out-dir", "--grad-clip": "--gradient-clip"},
    "study run": {"--out": "--out-dir"},
    "report": {"--out": "--out-dir"},
    "demo": {"--out": "--out-dir"},
    "quantize": {"--out": "--json"},
    "lm quantize": {
        "--sym": "--grid=sym",
        "--ldlq-order": "--order",
        "--calib-windows": "--calib-samples",
        "--seed": "--calib-seed",
        "--output": "--save-packed",
    },
}

# Old values still accepted for one release, per option (the option's current flag name -> old -> new).
DEPRECATED_VALUES: dict[str, dict[str, str]] = {
    "--precision": {"32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed", "16": "16-mixed"},
}


def command_key(ctx: click.Context) -> str:
    """``ctx``'s command path without the program: ``"lm finetune"`` whether run as ``losslab`` or a group."""
    names: list[str] = []
    node: click.Context | None = ctx
    while node is not None:
        if node.parent is not None or node.command.name not in ("cli", "losslab"):
            names.append(node.info_name if node.parent is not None else (node.command.name or ""))
        node = node.parent
    return " ".join(reversed(names))


def rename_deprecated(command: str, args: list[str]) -> list[str]:
    """``args`` with the deprecated spellings of ``command``'s flags replaced by their current names.

    ``command`` is the command path without the program name (``"lm finetune"``); ``--old=value`` is handled. A
    warning naming the new spelling goes to stderr once per flag used.
    """
    table = DEPRECATED_FLAGS.get(command, {})
    if not table:
        return args
    out: list[str] = []
    for arg in args:
        if arg == "--":
            out.extend(args[len(out) :])
            break
        flag, eq, value = arg.partition("=")
        new = table.get(flag)
        if new is None:
            out.append(arg)
            continue
        click.echo(f"warning: {flag} is deprecated; use {new} (see `losslab {command} --help`)", err=True)
        out.append(new + eq + value)
    return out


class DeprecatedChoice(click.Choice):
    """A choice that also accepts the old values in :data:`DEPRECATED_VALUES` for its option (with a warning).

    ``--help`` lists only the current values; ``bf16`` for ``--precision`` becomes ``bf16-mixed``.
    """

    def __init__(self, choices: list[str], flag: str) -> None:
        super().__init__(choices)
        self.flag = flag

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        new = DEPRECATED_VALUES.get(self.flag, {}).get(str(value))
        if new is not None and str(value) not in self.choices:
            click.echo(f"warning: {self.flag} {value} is deprecated; use {self.flag} {new}", err=True)
            value = new
        return super().convert(value, param, ctx)


class LosslabCommand(click.Command):
    """A click command that accepts the deprecated spellings listed in :data:`DEPRECATED_FLAGS` for it and keeps
    the flags as typed (:func:`typed_flags`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = rename_deprecated(command_key(ctx), args)
        ctx.meta[TYPED_FLAGS] = frozenset(arg.partition("=")[0] for arg in args if arg.startswith("--"))
        return super().parse_args(ctx, args)


TYPED_FLAGS = "losslab.typed_flags"


def typed_flags() -> frozenset[str]:
    """The ``--flags`` of the running :class:`LosslabCommand` as the user spelled them (aliases included)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(TYPED_FLAGS, frozenset()) if ctx is not None else frozenset()


def progress_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress/--no-progress`` (default ``None``: on when stderr is a terminal), for every long command."""
    return click.option(
        "--progress/--no-progress",
        default=None,
        help="Progress bar on stderr [default: on when stderr is a terminal, else one line per step or job].",
    )(func)


def resolve_progress(progress: bool | None) -> bool:
    """The effective ``--progress`` value: the user's choice, else whether stderr is a terminal (the one decision,
    :func:`losslab.runs.progress.show_progress`)."""
    from losslab.runs.progress import show_progress

    return show_progress(progress)


def progress_mode(progress: bool | None) -> bool | str:
    """``--progress`` for work that can report in plain lines: the user's choice, else a bar on a terminal and
    ``"lines"`` (one stderr line per group of steps, :data:`losslab.quant.engine.LINES`) in logs and pipes: the one
    decision, :func:`losslab.runs.progress.progress_mode`, in the quantize engine's terms."""
    from losslab.runs.progress import progress_mode as run_progress_mode

    return {"bar": True, "off": False, "lines": "lines"}[run_progress_mode(progress)]


def json_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--json FILE`` (``-`` or a bare ``--json``: stdout), passed to the command as ``json_path``."""
    return click.option(
        "--json",
        "json_path",
        type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
        is_flag=False,
        flag_value=Path("-"),
        default=None,
        help=f"{help_text} FILE, or - (a bare --json) for stdout.",
    )


def out_dir_option(help_text: str, default: Path | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--out-dir DIR``: the folder a command writes its outputs into, passed as ``out_dir``."""
    return shared_option("out_dir", help_text, default=default)


def overwrite_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--overwrite``: allow replacing an existing output (never done silently)."""
    return shared_option("overwrite", "an output file", default=False)(func)


def write_json_output(path: Path, obj: Any, *, overwrite: bool) -> str:
    """Write ``obj`` as JSON to ``path`` atomically, or to stdout for ``-``; returns where it went.

    An existing file is replaced only with ``overwrite`` (else :class:`losslab.errors.ConfigError`).
    """
    import json

    from losslab.io import write_json_atomic

    if str(path) == "-":
        click.echo(json.dumps(obj, indent=2, default=str))
        return "stdout"
    check_new_output(path, overwrite)
    write_json_atomic(path, obj)
    return str(path)


def report_with_json(
    json_path: Path | None, record: Any, *, overwrite: bool, show: Callable[[], None], label: str
) -> None:
    """``show()`` the summary, then write ``record`` to ``--json`` and print ``LABEL: PATH``; with ``--json -``
    stdout holds the JSON only (no summary)."""
    if json_path is not None and str(json_path) == "-":
        write_json_output(json_path, record, overwrite=overwrite)
        return
    show()
    if json_path is not None:
        click.echo(f"{label}: {write_json_output(json_path, record, overwrite=overwrite)}")


def check_new_output(path: Path | None, overwrite: bool, flag: str = "--json") -> None:
    """Claim the output file ``path`` before work (:func:`losslab.io.claim_output`): new, or ``--overwrite``."""
    from losslab.io import claim_output

    if path is not None:
        claim_output(path, overwrite=overwrite, what="output", flag=flag)
