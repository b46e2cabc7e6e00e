"""Sparse GPFQ (quantization spec §5.1 options L1/L0): Gram form = sample form, λ = 0 is plain GPFQ, L1 steps are
penalized argmins, L0 levels and threshold, sparsity grows with λ, packed = fake, config and CLI errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from losslab.cli.quantize import build_methods
from losslab.errors import ConfigError
from losslab.quant import GPFQ, load_packed, quantize, save_packed
from losslab.quant.gpfq import (
    GPFQStats,
    SparseAlphabet,
    gpfq_alphabet,
    gpfq_gram_codes,
    gpfq_sample_codes,
    gpfq_weight,
    gpfq_weight_sample_form,
)

F64 = torch.float64
MODES = ("l1", "l0")


def _pair(m: int, n: int = 64, d: int = 50, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g, dtype=F64)
    xt = x + 0.1 * torch.randn(m, d, generator=g, dtype=F64)
    w = torch.randn(n, d, generator=g, dtype=F64)
    return w, x, xt


def _gram(x: Tensor, xt: Tensor):
    stats = GPFQStats(x.shape[1])
    stats.update(x, xt)
    return stats.finalize()


def _radius(w: Tensor, scalar: float = 1.16) -> float:
    return scalar * w.abs().amax(1).mean().item()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("m", [20, 500])
@pytest.mark.parametrize("blocksize", [128, 7])
def test_gram_form_equals_sample_form_float64(mode: str, m: int, blocksize: int) -> None:
    w, x, xt = _pair(m)
    alphabet = gpfq_alphabet(w, 3, sparsity=mode, lam=0.3)
    codes_s, args_s, _ = gpfq_sample_codes(w, x, xt, alphabet)
    codes_g, args_g = gpfq_gram_codes(w, _gram(x, xt), alphabet, blocksize=blocksize)
    assert torch.equal(codes_g, codes_s)
    assert ((args_g - args_s).abs() <= 1e-10 * args_s.abs().max()).all()
    gram = gpfq_weight(w, x, xt, bits=3, sparsity=mode, lam=0.3)
    sample = gpfq_weight_sample_form(w, x, xt, bits=3, sparsity=mode, lam=0.3)
    assert torch.equal(gram.q, sample.q) and torch.equal(gram.codes, sample.codes)
    assert gram.extras["relative_error"] == pytest.approx(sample.extras["relative_error"], rel=1e-9)


def test_lam_zero_reproduces_plain_gpfq_bit_exactly() -> None:
    w, x, xt = _pair(200)
    plain = gpfq_weight(w, x, xt, bits=3)
    l1 = gpfq_weight(w, x, xt, bits=3, sparsity="l1", lam=0.0)
    l0 = gpfq_weight(w, x, xt, bits=3, sparsity="l0", lam=0.0)
    assert torch.equal(l1.codes, plain.codes) and torch.equal(l1.q, plain.q)
    assert l1.scale is not None and plain.scale is not None and torch.equal(l1.scale, plain.scale)
    assert torch.equal(l0.q, plain.q)  # same values; L0 codes index its own level table
    sample = gpfq_weight_sample_form(w, x, xt, bits=3, sparsity="l1", lam=0.0)
    assert torch.equal(sample.q, gpfq_weight_sample_form(w, x, xt, bits=3).q)


def test_l1_step_is_the_penalized_brute_force_argmin() -> None:
    """q_t minimises ½‖u_{t−1} + w_tX_t − pX̃_t‖² + λ‖X̃_t‖²·|p| over the alphabet δ·{−K..K} (δ = C·rad/K)."""
    w, x, xt = _pair(60, n=8, d=20)
    lam = 0.4
    wq = gpfq_weight_sample_form(w, x, xt, bits=2, sparsity="l1", lam=lam)
    delta = wq.extras["delta"]
    assert delta == pytest.approx(_radius(w) / 2, rel=1e-12)
    alphabet = delta * torch.arange(-2, 3, dtype=F64)
    u = torch.zeros(8, 60, dtype=F64)
    for t in range(20):
        target = u + w[:, t : t + 1] * x[:, t]
        norm2 = xt[:, t] @ xt[:, t]
        resid = (target[:, None, :] - alphabet[None, :, None] * xt[:, t]).pow(2).sum(2)  # [rows, levels]
        cost = 0.5 * resid + lam * norm2 * alphabet.abs()[None, :]
        chosen = cost.gather(1, wq.codes[:, t : t + 1].long() + 2)[:, 0]
        assert (chosen <= cost.min(1).values + 1e-9 * norm2).all()
        u = target - wq.q[:, t : t + 1] * xt[:, t]


def _l0_reference(arg: float, lam: float, delta: float, k: int) -> float:
    """Scalar 𝒬_L0 written from its definition: 0 if |x| ≤ λ, else sign(x)·(λ + δ·min(|⌊s_λ(x)/δ + ½⌋|, K))."""
    if abs(arg) <= lam:
        return 0.0
    shrunk = math.copysign(abs(arg) - lam, arg)
    return math.copysign(lam + delta * min(abs(math.floor(shrunk / delta + 0.5)), k), arg)


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.2])
def test_l0_levels_threshold_and_scalar_reference(lam: float) -> None:
    w, x, xt = _pair(300, n=16, d=30)
    bits, k = 3, 4
    alphabet = gpfq_alphabet(w, bits, sparsity="l0", lam=lam)
    codes, args = gpfq_gram_codes(w, _gram(x, xt), alphabet)
    q = alphabet.decode(codes)
    delta = (_radius(w) - lam) / k
    assert alphabet.delta.item() == pytest.approx(delta, rel=1e-12)
    nonzero = q != 0
    assert nonzero.any() and (~nonzero).any()
    assert (q[nonzero].abs() >= lam).all()  # every nonzero level has |q| ≥ λ
    steps = (q[nonzero].abs() - lam) / delta  # levels lie on {0} ∪ ±(λ + jδ), j = 0..K
    assert ((steps - steps.round()).abs() <= 1e-9).all() and steps.round().min() >= 0 and steps.round().max() <= k
    assert torch.equal(nonzero, args.abs() > lam)  # zero exactly when |argument| ≤ λ
    assert alphabet.values.numel() == 2**bits + 3 and alphabet.values.max().item() == pytest.approx(_radius(w))
    expected = [[_l0_reference(a, lam, alphabet.delta.item(), k) for a in row] for row in args.tolist()]
    assert torch.allclose(q, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("mode", "lams"), [("l1", (0, 0.2, 0.5, 1.0, 2.0)), ("l0", (0.2, 0.5, 1.0, 2.0))])
def test_larger_lam_gives_more_zeros(mode: str, lams: tuple[float, ...]) -> None:
    w, x, xt = _pair(300, n=32, d=40, seed=3)
    zeros = [(gpfq_weight(w, x, xt, bits=3, sparsity=mode, lam=lam).q == 0).double().mean().item() for lam in lams]
    assert all(a < b for a, b in itertools.pairwise(zeros)), zeros


def test_l0_small_lam_zeroes_less_than_plain() -> None:
    """L0's zero region is |x| ≤ λ; plain GPFQ rounds |x| < δ/2 to 0, so 0 < λ < δ/2 gives *fewer* zeros (λ = 0 is
    plain GPFQ again because the level λ + 0·δ is then 0)."""
    w, x, xt = _pair(300, n=32, d=40, seed=3)
    plain = (gpfq_weight(w, x, xt, bits=3).q == 0).sum()
    lam = 0.25 * gpfq_alphabet(w, 3).scale[0, 0].item()
    assert (gpfq_weight(w, x, xt, bits=3, sparsity="l0", lam=lam).q == 0).sum() < plain


def test_levels_labels_and_packing_grids() -> None:
    w, x, _ = _pair(100)
    l1 = gpfq_weight(w, x, bits=4, sparsity="l1", lam=0.2)
    l0 = gpfq_weight(w, x, bits=4, sparsity="l0", lam=0.2)
    assert (l1.levels, l1.storage_bits, l1.grid, l1.lut) == (17, 5, "gpfq_l1", None)
    assert (l0.levels, l0.storage_bits, l0.grid) == (19, 5, "gpfq_l0")
    assert l0.lut is not None and l0.lut.shape == (64, 19) and (l0.lut[:, 9] == 0).all()
    assert l0.extras["label"] == "4-bit GPFQ-L0 λ=0.2 (19 levels)" and l0.extras["lam"] == 0.2
    for wq in (l1, l0):
        assert torch.equal(wq.dequantize(), wq.q)
    assert isinstance(gpfq_alphabet(w, 4, sparsity="l0", lam=0.2), SparseAlphabet)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("mode", MODES)
def test_packed_equals_fake_bit_exactly(mode: str, tmp_path: Path) -> None:
    model = _Net().eval()
    calib = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    result = quantize(model, GPFQ(bits=3, grid="gpfq", sparsity=mode, lam=0.02), calib, progress=False)
    assert all(layer.grid == f"gpfq_{mode}" for layer in result.layers)
    assert any(layer.sparsity > 0 for layer in result.layers)
    save_packed(result, tmp_path / "m.safetensors")
    loaded = load_packed(tmp_path / "m.safetensors", model=_Net())
    fake = result.model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, fake[key]), key


def test_bad_arguments_raise() -> None:
    w, x, _ = _pair(10)
    with pytest.raises(ConfigError, match="sparsity"):
        gpfq_weight(w, x, bits=3, sparsity="l2")
    with pytest.raises(ConfigError, match="lam"):
        gpfq_weight(w, x, bits=3, sparsity="l1", lam=-0.1)
    with pytest.raises(ConfigError, match=r"lam=0\.1 has no effect"):
        gpfq_weight(w, x, bits=3, lam=0.1)
    with pytest.raises(ConfigError, match="stochastic=False"):
        gpfq_weight(w, x, bits=3, sparsity="l1", lam=0.1, stochastic=True)
    with pytest.raises(ConfigError, match="legacy_alphabet=False"):
        gpfq_weight_sample_form(w, x, bits=3, sparsity="l0", lam=0.1, legacy_alphabet=True)
    with pytest.raises(ConfigError, match=r"lam=5\.0 is too large for sparsity='l0'.*C·rad"):
        gpfq_weight(w, x, bits=3, sparsity="l0", lam=5.0)
    with pytest.raises(ConfigError, match="sparsity"):
        GPFQ(bits=3, sparsity="L1")
    with pytest.raises(ConfigError, match="lam"):
        GPFQ(bits=3, lam=0.5)


def test_cli_options_reach_gpfq_only() -> None:
    (method,) = build_methods(("gpfq",), [3], {"sparsity": "l0", "lam": 0.05, "grid": "gpfq"})
    assert method == GPFQ(bits=3, sparsity="l0", lam=0.05, grid="gpfq")
    assert method.describe() == "GPFQ(bits=3, sparsity='l0', lam=0.05, grid='gpfq')"
    with pytest.raises(ConfigError, match="--lam applies to gpfq"):
        build_methods(("rtn",), [3], {"lam": 0.05})
