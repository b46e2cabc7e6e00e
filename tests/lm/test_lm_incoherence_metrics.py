"""Issue 13: `lm quantize --method ldlq --incoherence hadamard` reported SQNR −18.6 dB for a finetuned OPT's fc2.

The per-layer metrics are computed in the original basis (checked here against a recomputation from the model's
weights); the layer itself was wrong: fc2's dead ReLU inputs (H_jj = 0) got the clamped rescale factor
r_j ≈ 0.02 and the undo step amplified the rotated-basis error 1/r_j-fold into those columns. Dead inputs now keep
r_j = 1 (:mod:`losslab.quant.incoherence`, step 1).
"""

from __future__ import annotations

from functools import partial

import torch

from losslab.lm.offline import tiny_opt
from losslab.lm.quantize import quantize_decoder
from losslab.quant.gptq import hessian_from_inputs
from losslab.quant.incoherence import incoherence_quantize
from losslab.quant.layer_metrics import proxy_loss, sqnr_db, weight_mse
from losslab.quant.ldlq import ldlq_weight
from losslab.quant.methods import GPTQ, LDLQ, RTN

FC2 = "model.decoder.layers.1.fc2"


def _dead_model() -> torch.nn.Module:
    """The tiny OPT with half of layer 1's fc1 units pushed below zero for every input (dead ReLUs)."""
    model = tiny_opt(seed=0)
    with torch.no_grad():
        model.model.decoder.layers[1].fc1.bias[:128] -= 10.0
    return model


def test_metrics_are_in_the_original_basis_and_dead_columns_are_not_amplified() -> None:
    calib = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    reports = {}
    for method in (RTN(bits=3), GPTQ(bits=3), LDLQ(bits=3, grid="quip", incoherence="hadamard")):
        result = quantize_decoder(_dead_model(), method, calib, metrics=True, progress=False, inplace=True)
        reports[method.name] = next(r for r in result.layers if r.name == FC2)
    ldlq = reports["ldlq"]
    # the reported figures are those of the weight the model now holds, in the model's basis
    model = _dead_model()
    float_w = model.get_submodule(FC2).weight.detach().clone()
    quantize_decoder(model, LDLQ(bits=3, grid="quip", incoherence="hadamard"), calib, progress=False, inplace=True)
    q = model.get_submodule(FC2).weight.detach()
    assert ldlq.weight_mse == float(weight_mse(float_w, q))
    assert ldlq.sqnr_db == float(sqnr_db(float_w, q))
    # before the fix: SQNR −19.9 dB, weight MSE 1700x RTN's; now a 3-bit error of the usual size
    assert ldlq.sqnr_db > 5.0
    assert ldlq.weight_mse < 4 * reports["rtn"].weight_mse
    assert ldlq.proxy_loss < reports["gptq"].proxy_loss


def test_dead_inputs_keep_unit_rescale_and_the_proxy_is_basis_invariant() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(512, 32, generator=gen, dtype=torch.float64).relu()
    x[:, :12] = 0  # 12 dead inputs
    h = hessian_from_inputs(x)
    w = torch.randn(16, 32, generator=gen, dtype=torch.float64)
    wq = incoherence_quantize(w, h, partial(ldlq_weight, bits=3, grid="quip"), seed=3)
    r = wq.extras["incoherence"]["r"]
    assert torch.equal(r[:12], torch.ones(12, dtype=torch.float64))
    err = (w - wq.q).abs()
    assert err[:, :12].max() < 2 * w.abs().max()  # clamped r_j ≈ 1e-2 gave errors ~50x the weights here
    # tr((W−Q)H(W−Q)ᵀ) equals the same form from the inputs: (2/n)‖(W−Q)Xᵀ‖²
    direct = 2.0 / x.shape[0] * float(((w - wq.q) @ x.T).pow(2).sum())
    assert abs(float(proxy_loss(w, wq.q, h)) - direct) <= 1e-9 * max(direct, 1.0)
