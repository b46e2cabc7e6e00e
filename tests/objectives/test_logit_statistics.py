"""Logit statistics (objectives spec §5), including the unbiased variance and the cross-rank average."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from losslab.errors import LosslabError
from losslab.objectives import logit_statistics

ORACLE_Z = [[2.0, -1.0, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0]]


def test_spec_oracle_with_unbiased_variance() -> None:
    stats = logit_statistics(torch.tensor(ORACLE_Z))
    assert stats["norm"].item() == pytest.approx(2.1456439, rel=1e-6)
    assert stats["mean"].item() == pytest.approx(0.6875, rel=1e-7)
    assert stats["max"].item() == pytest.approx(1.5, rel=1e-7)
    assert stats["var"].item() == pytest.approx(0.78125, rel=1e-7)  # biased estimator would give 0.5859375
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in stats.values())


def test_matches_float64_loop_half_input_and_no_grad() -> None:
    z = (5 * torch.randn(3, 4, 10)).half().requires_grad_()
    stats = logit_statistics(z)
    rows = z.detach().double().reshape(-1, 10)
    want = {
        "norm": sum(r.norm() for r in rows) / 12,
        "mean": sum(r.mean().abs() for r in rows) / 12,
        "max": sum(r.max().abs() for r in rows) / 12,
        "var": sum(((r - r.mean()) ** 2).sum() / 9 for r in rows) / 12,
    }
    for key, value in want.items():
        assert stats[key].item() == pytest.approx(value.item(), rel=1e-5)
        assert not stats[key].requires_grad


def test_bad_input() -> None:
    with pytest.raises(LosslabError, match="C >= 2"):
        logit_statistics(torch.ones(5, 1))


@pytest.fixture
def single_rank_group(tmp_path):
    """A real one-process gloo group, so ``torch.distributed.is_initialized()`` is true."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_all_reduce_averages_across_ranks(single_rank_group, monkeypatch) -> None:
    """Under an initialised group the values are summed across ranks and divided by the world size.

    A second rank is simulated by an ``all_reduce`` that adds that rank's values, as a SUM all-reduce would.
    """
    other = torch.tensor([[0.0, 3.0], [-1.0, 1.0]])
    local = [logit_statistics(torch.tensor(ORACLE_Z), all_reduce=False), logit_statistics(other, all_reduce=False)]
    real_stats = logit_statistics(torch.tensor(ORACLE_Z))  # real gloo all_reduce, world size 1
    for key in local[0]:
        assert real_stats[key].item() == local[0][key].item()
    other_values = torch.stack([local[1][key] for key in ("norm", "mean", "max", "var")])
    monkeypatch.setattr(dist, "all_reduce", lambda tensor: tensor.add_(other_values))
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    stats = logit_statistics(torch.tensor(ORACLE_Z))
    for key in local[0]:
        assert stats[key].item() == pytest.approx((local[0][key] + local[1][key]).item() / 2, rel=1e-7)
    assert logit_statistics(torch.tensor(ORACLE_Z), all_reduce=False)["norm"] == local[0]["norm"]
