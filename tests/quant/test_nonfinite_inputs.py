"""Every per-layer quantizer refuses NaN/inf weights and calibration statistics, 1-D weights and integer or wrongly
shaped inputs with one LosslabError that names the argument and the fix, before any work."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import Tensor

from losslab.errors import LosslabError
from losslab.quant.gpfq import GPFQGram, GPFQStats, gpfq_weight, gpfq_weight_from_stats, gpfq_weight_sample_form
from losslab.quant.gptq import HessianStats, gptq_weight, hessian_from_inputs
from losslab.quant.incoherence import incoherence_quantize
from losslab.quant.ldlq import ldlq_weight
from losslab.quant.pwlq import pwlq_weight
from losslab.quant.rtn import rtn_weight

CALIB = "check the calibration data"
WEIGHTS = "check the model's weights"


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 16, generator=g), torch.randn(64, 16, generator=g)


def _poisoned(x: Tensor, value: float) -> Tensor:
    x = x.clone()
    x[3, 5] = value
    return x


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_calibration_inputs_raise_for_every_method(bad: float) -> None:
    w, x = _data()
    xb = _poisoned(x, bad)
    with pytest.raises(LosslabError, match=rf"x holds 1 NaN/inf.*{CALIB}"):
        hessian_from_inputs(xb)
    with pytest.raises(LosslabError, match=rf"HessianStats.update: x holds 1 NaN/inf.*{CALIB}"):
        HessianStats(16).update(xb)
    with pytest.raises(LosslabError, match=rf"GPFQStats.update: x holds.*{CALIB}"):
        gpfq_weight(w, xb)
    with pytest.raises(LosslabError, match=rf"x_tilde holds.*{CALIB}"):
        gpfq_weight(w, x, xb)
    with pytest.raises(LosslabError, match=rf"x holds.*{CALIB}"):
        gpfq_weight_sample_form(w, xb)
    # a Hessian that already holds NaN/inf (accumulated elsewhere) is refused by every Hessian-based method
    h_bad = _poisoned(hessian_from_inputs(x), bad)
    for fn in (gptq_weight, ldlq_weight, partial(incoherence_quantize, quantizer=gptq_weight)):
        with pytest.raises(LosslabError, match=rf"hessian holds 1 NaN/inf.*{CALIB}"):
            fn(w, h_bad)
    g_ok = hessian_from_inputs(x).double()
    gram = GPFQGram(g_ok, _poisoned(g_ok, bad), g_ok, 64)
    with pytest.raises(LosslabError, match=rf"H̃ = X̃ᵀX̃ holds.*{CALIB}"):
        gpfq_weight_from_stats(w, gram)


def test_gpfq_used_to_return_nan_now_raises_before_work() -> None:
    """The old behaviour: NaN calibration gave a NaN model. Now the statistics refuse the batch (stats untouched)."""
    w, x = _data()
    stats = GPFQStats(16)
    with pytest.raises(LosslabError, match="NaN/inf"):
        stats.update(_poisoned(x, float("nan")))
    assert stats.count == 0 and torch.equal(stats.g, torch.zeros(16, 16, dtype=torch.float64))
    stats.update(x)
    assert torch.isfinite(gpfq_weight_from_stats(w, stats).q).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    "quantize",
    [
        partial(rtn_weight, bits=4),
        partial(pwlq_weight, bits=4),
        lambda w: gptq_weight(w, torch.eye(16)),
        lambda w: ldlq_weight(w, torch.eye(16)),
        lambda w: gpfq_weight(w, torch.randn(32, 16)),
        lambda w: incoherence_quantize(w, torch.eye(16), gptq_weight),
    ],
    ids=["rtn", "pwlq", "gptq", "ldlq", "gpfq", "incoherence"],
)
def test_nonfinite_weights_raise(quantize, bad: float) -> None:  # type: ignore[no-untyped-def]
    w, _ = _data()
    with pytest.raises(LosslabError, match=rf"weight holds 1 NaN/inf.*{WEIGHTS}"):
        quantize(_poisoned(w, bad))


@pytest.mark.parametrize(
    "quantize",
    [
        partial(rtn_weight, bits=4),
        partial(pwlq_weight, bits=4),
        lambda w: gptq_weight(w, torch.eye(16)),
        lambda w: ldlq_weight(w, torch.eye(16)),
        lambda w: gpfq_weight(w, torch.randn(32, 16)),
    ],
    ids=["rtn", "pwlq", "gptq", "ldlq", "gpfq"],
)
def test_one_dimensional_and_integer_weights_raise(quantize) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LosslabError, match=r"2-D matrix.*flatten"):
        quantize(torch.randn(16))
    with pytest.raises(LosslabError, match="floating-point"):
        quantize(torch.ones(6, 16, dtype=torch.int64))


def test_integer_and_misshaped_inputs_raise() -> None:
    w, x = _data()
    with pytest.raises(LosslabError, match=r"floating-point layer inputs.*float"):
        hessian_from_inputs(x.to(torch.int32))
    with pytest.raises(LosslabError, match=r"shape \[rows, in\].*reshape"):
        hessian_from_inputs(x[None])
    with pytest.raises(LosslabError, match=r"shape \[rows, 16\]"):
        HessianStats(16).update(x[:, :8])
    with pytest.raises(LosslabError, match="floating-point"):
        GPFQStats(16).update(x.to(torch.int64))
    with pytest.raises(LosslabError, match=r"shape \[rows, 16\]"):
        gpfq_weight(w, x[:, :15])
    with pytest.raises(LosslabError, match="hessian must be a floating-point"):
        gptq_weight(w, torch.eye(16, dtype=torch.int64))


def test_accumulated_statistics_are_checked_where_per_batch_checks_are_skipped() -> None:
    """Accelerator batches skip the per-batch check (finite=False here stands in); the quantizers refuse the result."""
    from losslab.quant.blocked_solve import check_rows_input

    w, x = _data()
    xb = _poisoned(x, float("nan"))
    check_rows_input("x", xb, 16, finite=False)  # no sync, no error
    stats = HessianStats(16)
    stats.hessian.addmm_(xb.T, xb)  # what an unchecked update accumulates
    with pytest.raises(LosslabError, match=rf"hessian holds .*NaN/inf.*{CALIB}"):
        gptq_weight(w, stats.hessian)
