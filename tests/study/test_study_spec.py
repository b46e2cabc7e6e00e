"""Study files: validation errors (key, value, fix) and grid expansion."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from losslab.errors import ConfigError
from losslab.study import load_study_spec, parse_study
from losslab.study.job import compression_key, compression_setting, train_key

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def base_study(**changes: object) -> dict:
    study = {
        "name": "unit",
        "train": {"dataset": "digits", "model": "mlp", "epochs": 1},
        "variants": [{"loss": "ce"}, {"loss": "focal", "focal_gamma": 2.0}],
        "grid": {"lr": [0.01, 0.1], "seed": [0, 1, 2]},
        "compress": {
            "methods": [
                {"method": "rtn", "bits": [8, 4]},
                {"method": "gpfq", "bits": [4, 2], "options": {"grid": "gpfq"}, "grid": {"scalar": [1.16, 2.0]}},
            ]
        },
    }
    study.update(changes)
    return study


def test_grid_is_the_product_of_variants_and_axes() -> None:
    spec = parse_study(base_study())
    points = spec.train_points()
    assert len(points) == 2 * 2 * 3
    combos = {(p["loss"], p["lr"], p["seed"]) for p in points}
    assert combos == set(itertools.product(["ce", "focal"], [0.01, 0.1], [0, 1, 2]))
    assert all(p["epochs"] == 1 and p["model"] == "mlp" for p in points)
    assert {p["focal_gamma"] for p in points if p["loss"] == "focal"} == {2.0}
    assert len({train_key(p) for p in points}) == len(points)
    assert set(spec.varied) == {"loss", "focal_gamma", "lr", "seed"}


def test_compression_points_group_bit_widths_per_option_set() -> None:
    spec = parse_study(base_study())
    groups = spec.compression_groups()
    assert [(g.label, [p.bits for p in g.points]) for g in groups] == [
        ("rtn", [8, 4]),
        ("gpfq(scalar=1.16)", [4, 2]),
        ("gpfq(scalar=2.0)", [4, 2]),
    ]
    assert groups[2].points[0].build().scalar == 2.0
    setting = compression_setting(spec.file.compress)
    keys = {compression_key("t", p, setting) for p in spec.compression_points()}
    assert len(keys) == 6


def test_keys_ignore_placement_but_not_training_options() -> None:
    point = parse_study(base_study()).train_points()[0]
    assert train_key({**point, "data_dir": "/elsewhere", "out_dir": "x"}) == train_key(point)
    assert train_key({**point, "lr": 0.5}) != train_key(point)


def test_identical_points_are_run_once() -> None:
    spec = parse_study(base_study(variants=[{"loss": "ce"}, {"loss": "ce", "k": 3.0}], grid={"seed": [0]}))
    assert len(spec.train_points()) == 1  # k=3.0 is the default: the same resolved config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grid": {"lrr": [0.1]}}, "unknown training option 'lrr'; did you mean lr"),
        ({"grid": {"lr": []}}, "grid.lr has no values"),
        ({"grid": {}}, "grid is empty"),
        ({"grid": {"lr": [0.1, 0.1]}}, "repeats a value"),
        ({"variants": []}, "variants is empty"),
        ({"variants": [{"los": "ce"}]}, "variants[0]: unknown training option 'los'; did you mean loss"),
        ({"train": {"out_dir": "x"}}, "'out_dir' is set by the study runner"),
        ({"grid": {"lr": [-1.0]}}, "lr=-1.0: must be > 0"),
        ({"grid": {"loss": ["ce"]}}, "sets ['loss'], which are also grid axes"),
        ({"compress": {"methods": []}}, "compress.methods=[]: is empty"),
        ({"compress": {"methods": [{"method": "rtn", "bits": []}]}}, "bits=[]: is empty"),
        ({"compress": {"methods": [{"method": "rnt", "bits": [4]}]}}, "'rnt' is not a quantization method"),
        ({"compress": {"methods": [{"method": "rtn", "bits": [9]}]}}, "bits=9 is out of range"),
        ({"compress": {"methods": [{"method": "gpfq", "bits": [4], "options": {"scalar": -1}}]}}, "scalar=-1"),
        ({"compress": {"methods": [{"method": "gpfq", "bits": [4], "options": {"scaler": 1}}]}}, "scaler"),
        ({"compress": {"methods": [{"method": "rtn", "bits": [4], "grid": {"grid": []}}]}}, "has no values"),
        ({"compress": {"methods": [{"method": "rtn", "bits": [4]}], "calibraton": {}}}, "did you mean calibration"),
        ({"epochs": 3}, "unknown key 'epochs'"),
        ({"name": "bad name"}, "name='bad name'"),
    ],
)
def test_bad_study_files_fail_with_the_key_and_the_fix(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_study(base_study(**changes))
    assert message in str(info.value)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_study_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study_spec(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_study_spec(bad)


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_validate(path: Path) -> None:
    spec = load_study_spec(path)
    raw = yaml.safe_load(path.read_text())
    assert spec.name == path.stem
    assert raw.get("seed_experiment"), "each shipped study names the seed experiment it reproduces"
    assert spec.train_points() and spec.compression_points()


def test_a_changed_method_default_never_reuses_results_of_the_old_default() -> None:
    """GPFQ's default grid changed from the seed's alphabet to per-channel asym: a point that omits the grid must
    not get the id under which stores hold seed-alphabet results, while points naming their grid keep their ids."""
    import hashlib
    import json

    from losslab.study.spec import CompressionPoint

    def old_key(point: CompressionPoint) -> str:  # the id scheme before the default changed
        record = {"train": "t", "method": point.method, "bits": 4, "options": point.options, "setting": {}}
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]

    omitted = CompressionPoint("gpfq", 4, (("scalar", 1.16),), "gpfq")
    seed = CompressionPoint("gpfq", 4, (("grid", "gpfq"), ("scalar", 1.16)), "gpfq")
    asym = CompressionPoint("gpfq", 4, (("grid", "asym"), ("scalar", 1.16)), "gpfq")
    assert compression_key("t", omitted, {}) != old_key(omitted)
    assert compression_key("t", omitted, {}) == compression_key("t", asym, {})
    assert compression_key("t", seed, {}) == old_key(seed)
    gptq = CompressionPoint("gptq", 4, (), "gptq")
    assert compression_key("t", gptq, {}) == old_key(gptq)
