"""One vocabulary (issue 18): every command spells, types and defaults a shared concept the same way, and every
numeric option refuses NaN, infinities and out-of-range values at parse time.

The commands are found by walking ``losslab.cli.app.cli`` recursively, so a command added later (on another branch)
is checked as soon as it is registered. The shared concepts are :data:`losslab.cli.groups.CONCEPTS`; an option
spelled like one (``--k``, ``--seed``, ``--out-dir``, ...) must be made from it, with the same click type, the same
default and help that starts with the concept's wording. Genuine differences are listed below, each with a reason.
"""

from __future__ import annotations

import math
from typing import Any

import click
import pytest
from click.testing import CliRunner

from losslab.cli.app import cli
from losslab.cli.groups import CONCEPTS, FloatList, IntList, LossName, SharedOption, command_params, walk_commands

# (command, concept) pairs whose option is not (yet) made from the shared concept.
NOT_SHARED: dict[tuple[str, str], str] = {}

# (command, concept): an option spelled like a shared concept that means something else, with the reason.
OTHER_MEANING: dict[tuple[str, str], str] = {
    ("landscape", "loss"): "--loss run|ce picks the probed function (issue 19), not an objective to train with",
}

# Concepts whose default is the command's own, by design.
DEFAULT_VARIES: dict[str, str] = {
    "out_dir": "each experiment writes into its own folder (runs, gan_runs, study_runs/...) or has none",
    "run_name": "derived from the config where the command can (train, gan) or fixed (logreg sweep)",
    "loss": "the loss each experiment's paper trains with (root for classifiers/LMs, ce for fairseq translation)",
    "k": "the k each source recommends: 3 (RLO classifiers, logistic regression), 2 (RLO GAN), 5 (FNL/LM token loss)",
    "m": "as k: 3 for classifiers, 5 for the token losses",
    "calib_samples": "the calibration set each source uses: 256 images (classifier PTQ), 128 windows (GPTQ's LMs), "
    "8 windows for the LM Hessian probes",
}

# (command, concept): a default that differs from the concept's other commands, with the reason.
DEFAULT_DIFFERS: dict[tuple[str, str], str] = {
    ("lm finetune", "seed"): "Hugging Face run_clm's seed 42, kept so that earlier finetuning runs reproduce",
    ("lm quantize", "calib_batch_size"): "unset: sized to free GPU memory on CUDA (an LM window batch), 1 on the CPU",
}


COMMANDS = dict(walk_commands(cli))

FLAG_CONCEPT = {concept.flag: name for name, concept in CONCEPTS.items()}


def concept_options() -> dict[str, list[tuple[str, click.Option]]]:
    """concept -> [(command, option)] for every option spelled like a shared concept."""
    found: dict[str, list[tuple[str, click.Option]]] = {name: [] for name in CONCEPTS}
    for path, command in COMMANDS.items():
        for param in command_params(command):
            if isinstance(param, click.Option):
                for flag in param.opts:
                    if flag in FLAG_CONCEPT:
                        found[FLAG_CONCEPT[flag]].append((path, param))
    return found


FOUND = {
    concept: [(path, option) for path, option in found if (path, concept) not in OTHER_MEANING]
    for concept, found in concept_options().items()
}


def signature(kind: click.ParamType | None) -> tuple[Any, ...]:
    """What a click type accepts, structurally: kind, bounds and choices (IntRange(min=1) = BoundedInt(1, None))."""
    if kind is None:
        return ("flag",)
    if isinstance(kind, LossName):
        return ("loss",)  # the accepted names are compared separately (same names for the same losses)
    if isinstance(kind, click.Choice):
        return ("choice", tuple(kind.choices))
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        base = "int" if isinstance(kind, click.IntRange) else "float"
        return (base, kind.min, kind.max, kind.min_open, kind.max_open)
    if isinstance(kind, click.Path):
        return ("path", kind.file_okay, kind.dir_okay, kind.type)
    return (kind.name,)


def option_type(option: click.Option) -> click.ParamType | None:
    """The type of one value: a list option's item type (a sweep's ``--k 1,3,10`` is typed as ``--k``)."""
    kind = None if option.is_flag and option.is_bool_flag else option.type
    return kind.item if isinstance(kind, (FloatList, IntList)) else kind


def effective_default(option: click.Option) -> Any:
    if isinstance(option, SharedOption):
        return option.effective_default
    default = option.default
    return False if option.is_flag and default in (None, False) else default


def test_the_walk_finds_every_command() -> None:
    expected = {"train", "evaluate", "quantize", "lm finetune", "lm quantize", "lm eval", "logreg", "logreg sweep"}
    assert expected | {"gan train", "gan sweep", "translate train", "translate demo", "study run"} <= set(COMMANDS)
    assert FOUND["k"] and FOUND["seed"] and FOUND["overwrite"]


@pytest.mark.parametrize("concept", sorted(CONCEPTS))
def test_a_shared_concept_is_spelled_typed_and_defaulted_one_way(concept: str) -> None:
    spec = CONCEPTS[concept]
    shared = [(path, option) for path, option in FOUND[concept] if (path, concept) not in NOT_SHARED]
    for path, option in shared:
        assert isinstance(option, SharedOption) and option.concept == concept, (
            f"{path} {spec.flag} is declared by hand; make it with losslab.cli.groups.shared_option({concept!r})"
        )
        assert option.opts[0] == spec.flag, f"{path}: {concept} spelled {option.opts[0]}, not {spec.flag}"
        assert (option.help or "").startswith(spec.help), f"{path} {spec.flag} help does not start with the shared"
    for path, option in FOUND[concept]:  # the type is shared even where the option is still hand-written
        reference = signature(option_type(shared[0][1])) if shared else None
        if reference is not None:
            assert signature(option_type(option)) == reference, f"{path} {spec.flag}: {option.type!r}"
    defaults = {
        path: effective_default(option)
        for path, option in shared
        if concept not in DEFAULT_VARIES and (path, concept) not in DEFAULT_DIFFERS
    }
    assert len(set(map(repr, defaults.values()))) <= 1, f"{spec.flag} defaults differ: {defaults}"


def test_the_same_loss_has_the_same_name_everywhere() -> None:
    """Every --loss accepts the registry's aliases for the losses it trains (rooted = rlo = root)."""
    losses = [(path, option.type) for path, option in FOUND["loss"]]
    assert {path for path, _ in losses} >= {"train", "gan train", "translate train", "lm finetune", "logreg"}
    context = click.Context(cli)
    for path, kind in losses:
        assert isinstance(kind, LossName), f"{path} --loss is {kind!r}, not the shared LossName"
        for alias in ("root", "rooted", "rlo", "ROOTED"):
            assert kind.convert(alias, None, context) == "root", f"{path} --loss {alias}"
        allowed = kind.allowed or ("ce", "root_convex")
        if "root_convex" in allowed:
            assert kind.convert("rooted_convex", None, context) == "root_convex"
        if "ce" in allowed:
            assert kind.convert("cross_entropy", None, context) == "ce"
        with pytest.raises(click.BadParameter, match="not a loss here"):
            kind.convert("nonsense", None, context)
    token = {tuple(kind.allowed or ()) for path, kind in losses if path in ("lm finetune", "translate train")}
    assert len(token) == 1, f"lm finetune and translate train accept different token losses: {token}"


def numeric_options() -> list[tuple[str, str, click.ParamType]]:
    """(command, flag, type) for every option whose values are numbers."""
    out = []
    for path, command in COMMANDS.items():
        for param in command_params(command):
            if not isinstance(param, click.Option) or param.is_flag:
                continue
            kind = param.type
            item = kind.item if isinstance(kind, (FloatList, IntList)) else kind
            if isinstance(kind, (FloatList, IntList)) or isinstance(
                item, (click.types.IntParamType, click.types.FloatParamType)
            ):
                out.append((path, param.opts[0], kind))
    return out


NUMERIC = numeric_options()


def out_of_range(kind: click.ParamType) -> str | None:
    """A value just outside ``kind``'s bounds, or None when it has none."""
    item = kind.item if isinstance(kind, (FloatList, IntList)) else kind
    if not isinstance(item, (click.IntRange, click.FloatRange)):
        return None
    integer = isinstance(item, click.IntRange)
    if item.min is not None:
        return str(item.min if item.min_open else (item.min - 1 if integer else item.min - abs(item.min) * 1e-3 - 1e-9))
    if item.max is not None:
        return str(item.max if item.max_open else (item.max + 1 if integer else item.max * 1.001 + 1e-9))
    return None


# Numeric options without a bound (NaN and infinities are still refused), with the reason.
UNBOUNDED: dict[tuple[str, str], str] = {}


def test_numeric_options_were_found() -> None:
    assert len(NUMERIC) > 50 and {("logreg", "--k"), ("gan sweep", "--k"), ("translate train", "--lr")} <= {
        (p, f) for p, f, _ in NUMERIC
    }


@pytest.mark.parametrize(("path", "flag"), [(p, f) for p, f, _ in NUMERIC])
def test_every_numeric_option_refuses_nan_inf_and_out_of_range(path: str, flag: str) -> None:
    command = COMMANDS[path]
    kind = next(p.type for p in command_params(command) if isinstance(p, click.Option) and flag in p.opts)
    bad = ["nan", "inf", "-inf"]
    outside = out_of_range(kind)
    if outside is None:
        assert (path, flag) in UNBOUNDED, f"{path} {flag} has no range; give its config field or option bounds"
    else:
        bad.append(outside)
    for value in bad:
        # parsing alone must refuse it (so nothing can run), then the CLI says so: exit 2 naming the flag
        with pytest.raises(click.BadParameter) as refused:
            command.make_context(path.split()[-1], [flag, value], parent=click.Context(cli, info_name="losslab"))
        assert refused.value.param is not None and flag in refused.value.param.opts, (
            f"{path} {flag} {value} was accepted (the error is about {refused.value.param})"
        )
        result = CliRunner().invoke(cli, [*path.split(), flag, value])
        assert result.exit_code == 2, f"{path} {flag} {value}: exit {result.exit_code}\n{result.output}"
        assert flag in result.output, f"{path} {flag} {value}: the message does not name the flag\n{result.output}"
    if outside is not None:
        assert math.isfinite(float(outside.split(",")[0]))
