"""Generate click options from a pydantic config model, so every config key is a flag with the same help text.

``--label-smoothing 0.1`` sets ``label_smoothing``; booleans get ``--flag/--no-flag``; ``Literal`` fields become
choices; ``list[int]`` fields take comma-separated values. Options default to ``None`` so that only the flags a
user actually typed override a YAML config file::

    @click.command()
    @options_from_model(TrainConfig, aliases={"label_smoothing": ["--smoothing"]})
    def train(**flags): overrides = given_options(flags)
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel


def _unwrap_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


class IntList(click.ParamType):
    """Comma-separated integers: ``25,50`` -> [25, 50]."""

    name = "INT,INT,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            return [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is_flag) for a field annotation."""
    annotation = _unwrap_optional(annotation)
    if annotation is bool:
        return None, True
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if typing.get_origin(annotation) is list:
        return IntList(), False
    if annotation is Path:
        return click.Path(path_type=Path), False
    if annotation in (int, float, str):
        return annotation, False
    return str, False


def options_from_model(
    model: type[BaseModel],
    aliases: dict[str, list[str]] | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding one option per field of ``model`` (help text from the field's description and default)."""
    aliases = aliases or {}

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for name, info in reversed(list(model.model_fields.items())):
            if name in exclude:
                continue
            flag = "--" + name.replace("_", "-")
            click_type, is_flag = _click_type(info.annotation)
            default = info.get_default(call_default_factory=True)
            help_text = f"{info.description or ''} [default: {default}]"
            names = [flag, *aliases.get(name, [])]
            if is_flag:
                names = [f"{flag}/--no-{flag[2:]}", *aliases.get(name, [])]
                func = click.option(*names, name, default=None, help=help_text)(func)
            else:
                func = click.option(*names, name, type=click_type, default=None, help=help_text)(func)
        return func

    return decorate


def given_options(values: dict[str, Any]) -> dict[str, Any]:
    """The options the user typed (those not ``None``)."""
    return {key: value for key, value in values.items() if value is not None}


# Old flag spellings still accepted for one release. One table for every command: the CLI's vocabulary is
# documented in docs/cli.md, and each entry here maps an old spelling to the one name it now has.
DEPRECATED_FLAGS: dict[str, dict[str, str]] = {}
DEPRECATED_FLAGS["quantize"] = {"--out": "--json"}
DEPRECATED_FLAGS["lm quantize"] = {
    "--sym": "--grid=sym",
    "--ldlq-order": "--order",
    "--calib-windows": "--calib-samples",
    "--seed": "--calib-seed",
    "--output": "--save-packed",
}


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


class LosslabCommand(click.Command):
    """A click command that accepts the deprecated spellings listed in :data:`DEPRECATED_FLAGS` for it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        path = ctx.command_path.split(" ", 1)[1] if " " in ctx.command_path else ctx.command_path
        return super().parse_args(ctx, rename_deprecated(path, args))
