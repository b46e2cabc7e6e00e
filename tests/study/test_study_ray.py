"""The Ray backend runs the same jobs as the local one (a local Ray instance with one CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_a_two_job_study_runs_on_ray(tmp_path: Path) -> None:
    import fake_jobs
    from ray import cloudpickle

    from losslab.study import StudyStore, parse_study, run_study

    cloudpickle.register_pickle_by_value(fake_jobs)  # Ray workers cannot import the tests folder
    spec = parse_study(
        {
            "name": "ray2",
            "train": {"dataset": "digits", "model": "mlp", "epochs": 3},
            "grid": {"loss": ["ce", "focal"]},
            "compress": {"methods": [{"method": "rtn", "bits": [8, 2]}]},
        }
    )
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        outcome = run_study(spec, tmp_path, backend="ray", job_fn=fake_jobs.fake_job, progress=False)
        assert ray.is_initialized(), "a Ray instance the caller started is left running"
    finally:
        ray.shutdown()
    assert (outcome.total, outcome.completed, outcome.failed) == (2, 2, [])
    with StudyStore.open(tmp_path) as store:
        runs = store.train_runs()
        rows = store.compressions()
    assert sorted(r["config"]["loss"] for r in runs) == ["ce", "focal"]
    by_key = {r["key"]: r["config"] for r in runs}
    assert sorted((by_key[r["train_key"]]["loss"], r["bits"]) for r in rows) == [
        ("ce", 2),
        ("ce", 8),
        ("focal", 2),
        ("focal", 8),
    ]
    assert all(r["top1"] == pytest.approx(fake_jobs.quant_top1(by_key[r["train_key"]], r["bits"])) for r in rows)
