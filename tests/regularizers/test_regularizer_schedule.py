"""Phase schedules against regularizers.md §3: the combined protocol, the start-epoch shorthand, bad schedules."""

from __future__ import annotations

from pathlib import Path

import pytest

from losslab.errors import ConfigError
from losslab.regularizers import LPGrad, Phase, Schedule, VarianceNorm, create

COMBINED = Path(__file__).resolve().parents[2] / "configs" / "combined_protocol.yaml"


def names(regs: list) -> list[str]:
    return [r.name for r in regs]


def test_combined_protocol_oracle() -> None:
    schedule = Schedule.from_yaml(COMBINED)
    assert schedule.epochs == 110
    assert names(schedule.active(0)) == [] and names(schedule.active(69)) == []
    assert names(schedule.active(70)) == ["variance"] and names(schedule.active(89)) == ["variance"]
    assert names(schedule.active(90)) == ["l2grad", "variance"] and names(schedule.active(109)) == [
        "l2grad",
        "variance",
    ]
    l2grad, variance = schedule.active(90)
    assert isinstance(l2grad, LPGrad) and (l2grad.p, l2grad.lam_w, l2grad.activations) == (2.0, 0.05, False)
    assert isinstance(variance, VarianceNorm) and variance.lam == 1.25
    assert schedule.first_regularized_epoch == 70
    assert schedule.active(110) == []  # cool-down epochs after the schedule run unregularized
    assert Schedule.from_yaml(COMBINED, epochs=110).epochs == 110
    with pytest.raises(ConfigError, match="written for epochs=110 but the run has epochs=200"):
        Schedule.from_yaml(COMBINED, epochs=200)
    with pytest.raises(ConfigError, match=r"phase 1 \[90, 110\) lies outside epochs=\[0, 100\)"):
        Schedule.from_dict({"phases": [{"start": 90, "end": 110}]}, epochs=100)


def test_set_epoch_switches_every_regularizer() -> None:
    schedule = Schedule.from_yaml(COMBINED)
    everything = schedule.regularizers()
    assert len(everything) == 3
    assert schedule.set_epoch(69) == [] and not any(r.active for r in everything)
    on = schedule.set_epoch(70)
    assert [r.active for r in everything] == [True, False, False] and on == [everything[0]]
    schedule.set_epoch(95)
    assert [r.active for r in everything] == [False, True, True]


def test_start_epoch_shorthand() -> None:
    reg = create("l2grad", lam=0.01)
    schedule = Schedule.from_start_epoch([reg], 20)
    assert schedule.active(19) == [] and schedule.active(20) == [reg] and schedule.active(1000) == [reg]
    assert schedule.first_regularized_epoch == 20
    assert Schedule([]).first_regularized_epoch is None and Schedule([]).active(5) == []


def test_from_dict_with_open_end_and_gaps() -> None:
    schedule = Schedule.from_dict(
        {"phases": [{"start": 5, "end": 10, "regularizers": [{"name": "std", "lam": 1}]}, {"start": 12}]}
    )
    assert names(schedule.active(4)) == [] and names(schedule.active(9)) == ["std"]
    assert names(schedule.active(10)) == [] and names(schedule.active(50)) == []


def vn() -> VarianceNorm:
    return VarianceNorm(lam=1.0)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: Schedule([Phase(0, 10, [vn()]), Phase(5, 20, [vn()])]),
            r"phase 1 \[0, 10\) overlaps phase 2 \[5, 20\)",
        ),
        (lambda: Schedule([Phase(0, None, [vn()]), Phase(5, 20, [vn()])]), r"phase 1 \[0, end\) overlaps phase 2"),
        (lambda: Schedule([Phase(20, 30, [vn()]), Phase(0, 10, [vn()])]), r"not in order: phase 1 \[20, 30\)"),
        (lambda: Phase(-1, 10, [vn()]), "start=-1"),
        (lambda: Phase(10, 10, [vn()]), r"phase \[10, 10\) is empty"),
        (lambda: Phase(0, 10, [vn(), vn()]), "more than once"),
        (lambda: Schedule([Phase(100, 120, [vn()])], epochs=110), r"phase 1 \[100, 120\) lies outside"),
        (lambda: Schedule([]).active(-3), "epoch=-3"),
    ],
)
def test_bad_schedules_raise_config_error(build, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"phases": [{"start": 0, "stop": 5}]}, r"phase 1: .*unknown keys \['stop'\]"),
        ({"phases": [{"end": 5}]}, r"missing keys \['start'\]"),
        ({"epoch": 3, "phases": []}, r"unknown keys \['epoch'\]"),
        ({"phases": [{"start": 0, "regularizers": [{"lam": 1}]}]}, "needs a 'name'"),
        ({"phases": [{"start": 0, "regularizers": [{"name": "varience", "lam": 1}]}]}, "choose one of: .*variance"),
        ({"phases": [{"start": 0, "regularizers": [{"name": "lp_grad", "p": 0, "lam": 1}]}]}, "p=0"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_schedule_dicts(config: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Schedule.from_dict(config)


def test_missing_schedule_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Schedule.from_yaml(tmp_path / "nope.yaml")
