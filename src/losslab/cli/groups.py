"""The CLI's shared vocabulary, defined once: run folder, device, seed, token loss and calibration options.

Every command that has one of these concepts gets it from here, either through :func:`shared_option` (hand-written
commands) or through :func:`losslab.cli.options.options_from_model`, which looks a config field's name up in
:data:`CONCEPTS` and takes its flag, click type and help wording from it. So ``--k`` is the same positive finite
float in ``train``, ``gan train``, ``translate train``, ``lm finetune`` and ``logreg``, and ``--loss rooted`` means
the rooted loss everywhere (the objective registry's names and aliases, :class:`LossName`).

Numbers are range-checked at parse time (:func:`number_type`): NaN and infinities are refused for every float
option, and the bounds a config field declares (pydantic ``ge``/``gt``/``le``/``lt``) become the click range, so a
bad value exits with status 2 and a message naming the flag before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

# Device kinds the --accelerator flag accepts (Lightning's names; single-device commands map them to one device).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")

# The token-level losses (losslab.objectives.token) of the sequence models: lm finetune and translate.
TOKEN_LOSSES = ("ce", "root", "root_convex")

# Loss names outside the classifier objective registry: the binary logistic loss of the GAN and logistic regression.
BINARY_LOSSES = ("logistic",)


class FiniteFloat(click.FloatRange):
    """A float within optional bounds that also refuses NaN and infinities (click's FloatRange lets NaN through)."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        return "finite" if self.min is None and self.max is None else super()._describe_range()


class BoundedInt(click.IntRange):
    """An integer within bounds (the bounds of its config field)."""

    name = "integer"


def number_type(
    kind: type, *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> click.ParamType:
    """The click type of a numeric option: ``kind`` (int or float) within the pydantic-style bounds given.

    Floats are always finite; an int without bounds is any integer (a non-integer is refused by click itself).
    """
    low, low_open = (gt, True) if gt is not None else (ge, False)
    high, high_open = (lt, True) if lt is not None else (le, False)
    if kind is int:
        low_i = None if low is None else math.floor(low) + 1 if low_open else math.ceil(low)
        high_i = None if high is None else math.ceil(high) - 1 if high_open else math.floor(high)
        return BoundedInt(low_i, high_i) if low_i is not None or high_i is not None else click.INT
    return FiniteFloat(low, high, min_open=low_open, max_open=high_open)


def field_bounds(info: Any) -> dict[str, float]:
    """The ``ge``/``gt``/``le``/``lt`` bounds of a pydantic field (its ``annotated_types`` metadata)."""
    bounds: dict[str, float] = {}
    for item in getattr(info, "metadata", []):
        for key in ("ge", "gt", "le", "lt"):
            value = getattr(item, key, None)
            if value is not None:
                bounds[key] = value
    return bounds


class _CommaList(click.ParamType):
    """Comma-separated values read by ``cast`` (a ``ValueError`` names the list as one of ``noun``), each then
    checked by ``item`` (a click type) when there is one; a list passes through (a default already parsed)."""

    cast: Callable[[str], Any]
    noun: str

    def __init__(self, item: click.ParamType | None = None) -> None:
        self.item = item

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[Any]:
        if isinstance(value, list):
            return value
        try:
            values = [self.cast(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.noun}", param, ctx)
        return [self.item.convert(v, param, ctx) for v in values] if self.item is not None else values


class IntList(_CommaList):
    """Comma-separated integers: ``25,50`` -> [25, 50]; each checked by ``item`` (a click type) when given."""

    name = "INT,INT,..."
    cast = int
    noun = "integers"


class StrList(_CommaList):
    """Comma-separated names, blanks trimmed: ``breast_cancer, wine_binary`` -> ["breast_cancer", "wine_binary"]."""

    name = "text"
    cast = staticmethod(str.strip)
    noun = "names"


class FloatList(_CommaList):
    """Comma-separated finite numbers: ``0,1e-3`` -> [0.0, 0.001]; each checked by ``item`` (default: finite)."""

    name = "X,Y,..."
    cast = float
    noun = "numbers"

    def __init__(self, item: click.ParamType | None = None) -> None:
        super().__init__(item if item is not None else number_type(float))


class LossName(click.ParamType):
    """A loss name: a name or alias of the objective registry (``root``, ``rooted``, ``rlo`` ...) or ``logistic``.

    ``allowed`` lists the canonical names a command can train with (``None``: any registered objective); the value
    is returned canonical, so ``--loss rooted`` and ``--loss root`` give the same config in every command.
    """

    name = "loss"

    def __init__(self, allowed: Sequence[str] | None = None) -> None:
        self.allowed = tuple(allowed) if allowed is not None else None

    def choices_text(self) -> str:
        """The names listed in ``--help`` (without importing torch)."""
        return ", ".join(self.allowed) if self.allowed else "any name `losslab objectives` lists"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from losslab.objectives.registry import OBJECTIVES

        name = str(value).strip().lower().replace("-", "_")
        canonical = name if name in BINARY_LOSSES else OBJECTIVES.resolve(name) if name in OBJECTIVES else None
        if canonical is None or (self.allowed is not None and canonical not in self.allowed):
            names = ", ".join(self.allowed or OBJECTIVES.names())
            self.fail(f"{value!r} is not a loss here; choose one of: {names} (aliases: rooted = root)", param, ctx)
        return canonical


@dataclass(frozen=True)
class Concept:
    """One shared option: its flag, click type, and the help wording every command starts with."""

    flag: str
    make_type: Callable[[], click.ParamType | None]
    help: str
    is_flag: bool = False


CONCEPTS: dict[str, Concept] = {
    "out_dir": Concept("--out-dir", lambda: click.Path(file_okay=False, path_type=Path), "Folder for the outputs"),
    "run_name": Concept("--run-name", lambda: click.STRING, "The run folder's name inside --out-dir"),
    "resume": Concept("--resume", lambda: click.Path(path_type=Path), "Continue a killed run (its run folder)"),
    "overwrite": Concept("--overwrite", lambda: None, "Replace an existing output losslab made", is_flag=True),
    "seed": Concept("--seed", lambda: number_type(int, ge=0, lt=2**63), "Random seed"),
    "accelerator": Concept("--accelerator", lambda: click.Choice(ACCELERATORS), "Device kind"),
    "device": Concept("--device", lambda: click.STRING, "One torch device (cpu, cuda, cuda:1)"),
    "loss": Concept("--loss", LossName, "Loss"),
    "k": Concept("--k", lambda: number_type(float, gt=0, le=1e6), "Rooted loss k (larger k tends to cross entropy)"),
    "m": Concept("--m", lambda: number_type(float, gt=0, le=1e6), "Rooted loss m (a loss scale)"),
    "calib_samples": Concept("--calib-samples", lambda: number_type(int, ge=1), "Calibration samples"),
    "calib_batch_size": Concept("--calib-batch-size", lambda: number_type(int, ge=1), "Calibration batch size"),
    "calib_seed": Concept("--calib-seed", lambda: number_type(int, ge=0, lt=2**63), "Seed of the calibration sample"),
}


class SharedOption(click.Option):
    """A click option made from a :class:`Concept`; ``effective_default`` is what an omitted flag means (the config
    field's default where the flag defaults to ``None`` so that a YAML file can set it)."""

    def __init__(self, *args: Any, concept: str, effective_default: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.concept = concept
        self.effective_default = effective_default


def concept_help(name: str, detail: str = "", default: Any = None, *, loss: LossName | None = None) -> str:
    """The concept's help wording, then ``detail`` (what it means for this command), then the default."""
    text = CONCEPTS[name].help
    if loss is not None:
        text = f"{text}: {loss.choices_text()} (aliases from `losslab objectives`, e.g. rooted = root)"
    if detail.lower().startswith(text.lower()):  # the detail already starts with the shared wording
        text = detail
    elif detail:
        text = f"{text}; {detail[:1].lower()}{detail[1:]}"
    text = text.rstrip(".") + "."
    if default is not None and default is not False and "default" not in detail.lower():
        text = f"{text} [default: {default}]"
    return text


def shared_option(
    name: str,
    detail: str = "",
    *,
    default: Any = None,
    dest: str | None = None,
    config_default: Any = None,
    losses: Sequence[str] | None = None,
    aliases: Sequence[str] = (),
    **extra: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding the shared option ``name`` (a key of :data:`CONCEPTS`) to a command.

    ``default`` is the click default; ``aliases`` further spellings; ``config_default`` the value an omitted flag
    stands for when ``default`` is ``None`` (a config field's default); ``losses`` the canonical loss names a
    ``--loss`` option accepts.
    """
    concept = CONCEPTS[name]
    loss = LossName(losses) if name == "loss" else None
    shown = default if default is not None else config_default
    kwargs: dict[str, Any] = {
        "cls": SharedOption,
        "concept": name,
        "effective_default": shown if not concept.is_flag else bool(shown),
        "help": concept_help(name, detail, shown, loss=loss),
        **({} if extra.get("required") else {"default": default}),  # a default, even None, satisfies `required`
        **extra,
    }
    flag = concept.flag
    if concept.is_flag:  # --overwrite/--no-overwrite: the negative form states the default explicitly
        flag, kwargs["is_flag"] = f"{flag}/--no-{flag[2:]}", True
    elif "type" not in kwargs:  # a command may narrow the type (an input folder that must exist)
        kwargs["type"] = loss if loss is not None else concept.make_type()
    return click.option(flag, *aliases, dest or name, **kwargs)


def run_options(
    out_dir: str, run_name: str, resume: str, overwrite: str, *, out_dir_default: Any = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--out-dir``, ``--run-name``, ``--resume``, ``--overwrite`` (losslab.runs' run folder), each with the
    command's ``detail`` after the shared wording."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = shared_option("overwrite", overwrite)(func)
        func = shared_option("resume", resume)(func)
        func = shared_option("run_name", run_name)(func)
        return shared_option("out_dir", out_dir, default=out_dir_default)(func)

    return decorate


def token_loss_options(
    losses: Sequence[str], loss: Any, k: float, m: float
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--loss`` (one of ``losses``, registry aliases accepted), ``--k`` and ``--m`` with the command's defaults."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = shared_option("m", default=m)(func)
        func = shared_option("k", default=k)(func)
        return shared_option("loss", default=loss, losses=losses)(func)

    return decorate


# The list forms of --k and --seed (the sweeps): each value checked as the single flag checks it.
K_LIST = FloatList(CONCEPTS["k"].make_type())
SEED_LIST = IntList(CONCEPTS["seed"].make_type())


def walk_commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """(path without the program name, command) for every command under ``group``, recursively; a group that also
    runs on its own (``logreg``) is a command too."""
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}".strip()
        if isinstance(command, click.Group):
            if command.invoke_without_command:
                yield path, command
            yield from walk_commands(command, path)
        else:
            yield path, command


def command_params(command: click.Command) -> list[click.Parameter]:
    """All of ``command``'s parameters, those it adds when asked (the quantizers' method flags) included."""
    return command.get_params(click.Context(command))
