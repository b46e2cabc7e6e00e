"""Commands take their flags from typed configs (issue 18, item 3): ``train``, ``evaluate``, ``logreg`` and ``logreg
sweep``, ``quantize`` (and ``--budget`` on ``lm quantize``), ``study run``, ``landscape``, ``lm eval/landscape``,
``gan sweep``'s grid and ``translate train/eval/demo``'s run-folder, data, eval and demo options.

Every field of each model in :data:`CASES` is one flag spelled after the field (``json_path`` is ``--json``), with the
field's bounds (those of a ``list[...]`` field's items, and of an ``Annotated`` type inside ``| None``) as the click
range, low and high; and what the flags parse to is the config the library function receives (checked against
direct calls of the fitting code here, and in tests/cli/test_generated_flags.py for the commands whose flags were
declared by hand before).
"""

from __future__ import annotations

import json
import math
import types
import typing
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from losslab.cli.app import cli
from losslab.cli.groups import FloatList, IntList, field_bounds
from losslab.compress.evaluate_run import EvaluateConfig
from losslab.compress.flags import BudgetFlags, LmQuantizeFlags, QuantizeFlags
from losslab.gan.config import GanSweepOptions
from losslab.landscape.options import LandscapeOptions
from losslab.lm.config import LmEvalOptions, LmLandscapeOptions
from losslab.logreg.config import LogregConfig, LogregSweepOptions
from losslab.seq2seq.config import TranslateDemoOptions, TranslateEvalOptions, TranslateInputs, TranslateRunOptions
from losslab.study.options import StudyRunOptions
from losslab.train.config import TrainCommandOptions

CASES = [
    ("evaluate", EvaluateConfig, {"checkpoint", "progress"}),
    ("logreg", LogregConfig, set()),
    ("logreg sweep", LogregSweepOptions, set()),
    ("gan sweep", GanSweepOptions, set()),
    ("translate train", TranslateRunOptions, set()),
    ("translate train", TranslateInputs, set()),
    ("translate demo", TranslateRunOptions, set()),
    ("translate demo", TranslateDemoOptions, set()),
    ("translate eval", TranslateEvalOptions, set()),
    ("train", TrainCommandOptions, set()),
    ("quantize", QuantizeFlags, set()),
    ("quantize", BudgetFlags, set()),
    ("lm quantize", BudgetFlags, set()),
    ("study run", StudyRunOptions, set()),
    ("lm quantize", LmQuantizeFlags, set()),
    ("landscape", LandscapeOptions, set()),
    ("lm eval", LmEvalOptions, set()),
    ("lm landscape", LmLandscapeOptions, set()),
]
SPELLED = {"json_path": "--json", "probe_loss": "--loss", "validate_checkpoint": "--validate"}


@pytest.mark.parametrize(("path", "model", "excluded"), CASES)
def test_every_config_field_is_a_flag_with_its_bounds(path: str, model: type[BaseModel], excluded: set[str]) -> None:
    command = cli
    for part in path.split():
        command = command.commands[part]
    options = {p.name: p for p in command.params if isinstance(p, click.Option)}
    for name, info in model.model_fields.items():
        if name in excluded:
            continue
        option = options.get(name)
        flag = SPELLED.get(name, "--" + name.replace("_", "-"))
        assert option is not None and option.opts[0] == flag, f"{path}: no flag for {name}"
        bounds = {**annotated_bounds(info.annotation), **field_bounds(info)}
        kind = option.type
        if isinstance(kind, FloatList | IntList):  # a comma list (list[X]): each value has the item's bounds
            kind = kind.item
            bounds = annotated_bounds(typing.get_args(info.annotation)[0])
        for low_key, high_key in (("ge", "le"), ("gt", "lt")):
            if low_key in bounds:
                assert kind.min == pytest.approx(bounds[low_key]) or kind.min == int(bounds[low_key]) + 1, (
                    f"{path} {flag}"
                )
            if high_key in bounds:
                assert kind.max == pytest.approx(bounds[high_key]) or kind.max == math.ceil(bounds[high_key]) - 1, (
                    f"{path} {flag}"
                )


def annotated_bounds(annotation: Any) -> dict[str, float]:
    """The bounds an ``Annotated[X, Field(...)]`` annotation declares (also inside ``| None``), else none."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    bounds: dict[str, float] = {}
    if typing.get_origin(annotation) is typing.Annotated:
        for extra in typing.get_args(annotation)[1:]:
            bounds.update(field_bounds(extra))
    return bounds


def test_logreg_flags_reach_the_fit(tmp_path: Path) -> None:
    """--no-intercept, --l2, --solver, --seed and --test-fraction give the fit the Python API makes with them."""
    from losslab.data.binary_tables import load_split
    from losslab.logreg import fit_logistic_regression

    out = tmp_path / "r.json"
    args = ["logreg", "--dataset", "iris_binary", "--no-intercept", "--l2", "1e-2", "--solver", "newton"]
    result = CliRunner().invoke(cli, [*args, "--seed", "2", "--test-fraction", "0.25", "--k", "5", "--json", str(out)])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(out.read_text())["runs"]
    split = load_split("iris_binary", seed=2, test_fraction=0.25)
    fit = fit_logistic_regression(
        split.X_train, split.y_train, loss="rooted", k=5.0, l2=1e-2, solver="newton", fit_intercept=False
    )
    assert record["intercept"] == 0.0 == fit.intercept
    assert record["weights"] == fit.weights.tolist() and record["iterations"] == fit.iterations


def test_logreg_config_refuses_what_the_flags_refuse() -> None:
    """The config checks the same bounds when built in Python (no CLI in between)."""
    from pydantic import ValidationError

    for bad in ({"k": (0.0,)}, {"l2": -1.0}, {"test_fraction": 1.0}, {"max_iter": 0}, {"loss": "hinge"}):
        with pytest.raises(ValidationError):
            LogregConfig(**bad)
