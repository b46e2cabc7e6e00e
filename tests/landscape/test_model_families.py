"""`losslab landscape` on a trained run of every model family losslab trains, and `losslab lm landscape` on a tiny OPT.

Each family (one file of ``losslab.models`` each, a factorized network, timm's transformers and convnets) is trained
for one epoch on tiny data, then probed by the command. The oracles, in float64 on the same probe set:

- the command's top eigenvalues and trace of one parameter block (the classifier's bias) against the dense Hessian
  of that block, built column by column by plain double backward;
- the Hessian-vector product over *every* parameter, both ways losslab computes it (forward-over-reverse and double
  backward), against a plain double-backward reference.

For the language model (no ``--layer``: every parameter), the top eigenvalue against ARPACK's (scipy ``eigsh``)
on a plain double-backward product, and the trace against plain Hutchinson with 64 Rademacher probes.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from losslab.cli import main
from losslab.landscape import HessianOperator
from losslab.landscape.run import probe_batches
from losslab.train import TrainConfig, fit, load_run

SAMPLES = 8

#: (test id, training options): one run per model family (a file of ``losslab.models``, a factorized network, timm's
#: transformers and convnets); image sizes as small as each architecture allows. The ImageNet-depth ResNets and the
#: VGGs (9-11 M parameters even at their smallest) are checked without a run, in
#: test_hessian_vector_products_of_the_large_families.
FAMILIES: list[tuple[str, dict[str, Any]]] = [
    ("small_nets", {"model": "small_cnn", "img_size": 8}),
    ("cifar_resnet_factorized", {"model": "cifar_resnet20", "img_size": 8, "rank_scale": 0.25, "spectral": True}),
    ("regulquant_convnet", {"model": "regulquant_convnet", "img_size": 16}),
    ("wide_resnet", {"model": "wide_resnet16_4", "img_size": 8}),
    ("timm_vit", {"model": "test_vit", "img_size": 32, "drop": 0.2}),
    ("timm_convnext", {"model": "test_convnext", "img_size": 32, "drop_path": 0.1}),
]
LARGE_FAMILIES = [("cifar_resnet18_nobn", 8), ("cifar_resnet50", 8), ("cifar_vgg11_bn", 32)]


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cifar-10-batches-py with 5 training batches of 8 random images and a test batch of 8 (seeded)."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(name: str, n: int) -> None:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with (folder / name).open("wb") as f:
            pickle.dump({b"labels": rng.integers(0, 10, n).tolist(), b"data": data}, f)

    for b in range(1, 6):
        batch(f"data_batch_{b}", 8)
    batch("test_batch", 8)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


def train_tiny(options: dict[str, Any], data_dir: Path, out: Path) -> Path:
    """One epoch, no augmentation: a real run folder of the family."""
    cfg = {"dataset": "cifar10", "data_dir": data_dir, "epochs": 1, "batch_size": 16, "augment": False, "lr": 0.01}
    return fit(TrainConfig(**{**cfg, **options, "out_dir": out, "run_name": "r", "progress": False})).run_dir


def last_block(model: nn.Module) -> str:
    """The last 1-D parameter (the classifier's bias, usually) whose name no other parameter's name contains, so
    that ``--layer NAME`` selects it alone; its Hessian is of the order of the softmax variance, well above float32
    rounding."""
    names = [n for n, _ in model.named_parameters()]
    for name, p in reversed(list(model.named_parameters())):
        if p.dim() == 1 and sum(name in other for other in names) == 1:
            return name
    raise AssertionError("no 1-D parameter with a unique name")


def probe_set(run_dir: Path) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The run's model in float64 (eval) and the command's probe set (same sampler, seed 0) as one batch."""
    run = load_run(run_dir)
    (x, y), *rest = probe_batches(run.config, SAMPLES, "train", 0, SAMPLES)[0]
    assert not rest
    return run.model.double().eval(), x.double(), y


def reference_hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: list[torch.Tensor]) -> list[torch.Tensor]:
    """H·v of the mean CE over every parameter by plain double backward (zeros for unused parameters)."""
    params = list(model.parameters())
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
        loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    dot = sum((g * t).sum() for g, t in zip(grads, v) if g is not None)
    out = torch.autograd.grad(dot, params, allow_unused=True)
    return [torch.zeros_like(p) if o is None else o for p, o in zip(params, out)]


def dense_block_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
    """∂²L/∂b² of the mean CE for the parameter ``name``, one column per unit vector (plain double backward)."""
    block = dict(model.named_parameters())[name]
    with sdpa_kernel(SDPBackend.MATH):
        loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, [block], create_graph=True)
    grad = grad.reshape(-1)
    cols = [torch.autograd.grad(grad[i], [block], retain_graph=True)[0].reshape(-1) for i in range(grad.numel())]
    return torch.stack(cols, 1)


def landscape(*args: str) -> None:
    try:
        main([*args, "--no-progress"])
    except SystemExit as exc:
        assert not exc.code, f"losslab {' '.join(args)} exited with {exc.code}"


@pytest.mark.slow
@pytest.mark.parametrize("options", [o for _, o in FAMILIES], ids=[i for i, _ in FAMILIES])
def test_landscape_command_on_every_family(options: dict[str, Any], cifar_dir: Path, tmp_path: Path) -> None:
    run_dir = train_tiny(options, cifar_dir, tmp_path)
    model, x, y = probe_set(run_dir)
    assert not model.training
    name = last_block(model)

    args = ["landscape", str(run_dir), "--probes", "eig,trace,kurtosis", "--top-k", "2", "--loss", "ce"]
    landscape(*args, "--samples", str(SAMPLES), "--batch-size", "3", "--layer", name)
    result = json.loads((run_dir / "landscape.json").read_text())

    exact = torch.linalg.eigvalsh(dense_block_hessian(model, x, y, name)).flip(0)
    got = torch.tensor(result["eigenvalues"], dtype=torch.float64)
    scale = float(exact.abs().max())
    # a float32 model, Lanczos stopped at residual <= 1e-3·max|θ|: the eigenvalues within that (as tests/landscape/
    # test_cli.py); the trace within 4 stated standard errors
    torch.testing.assert_close(got, exact[:2], rtol=2e-3, atol=2e-3 * scale)
    assert abs(result["trace"] - float(exact.sum())) <= 4 * result["trace_stderr"] + 1e-3 * scale * len(exact)
    assert result["parameters"] == len(exact)
    assert math.isfinite(result["weights"]["weights/kurtosis_mean"])

    # every parameter: both of losslab's products against the plain double-backward reference
    full_hvp_matches_reference(model, x, y)


def full_hvp_matches_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Both of losslab's products over every parameter (two batches) equal the plain double-backward reference."""
    gen = torch.Generator().manual_seed(1)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]
    want = torch.cat([t.reshape(-1) for t in reference_hvp(model, x, y, v)])
    flat_v = torch.cat([t.reshape(-1) for t in v])
    half = len(y) // 2
    for method in ("func", "double"):
        op = HessianOperator(model, F.cross_entropy, [(x[:half], y[:half]), (x[half:], y[half:])], method=method)
        assert (op.hvp(flat_v) - want).norm() <= 1e-9 * want.norm(), method
    assert want.norm() > 0


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), LARGE_FAMILIES, ids=[n for n, _ in LARGE_FAMILIES])
def test_hessian_vector_products_of_the_large_families(name: str, size: int) -> None:
    from losslab.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=3, img_size=size).double().eval()
    with torch.no_grad():  # off the initial point (BN at unit running statistics, zero residual scales)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    full_hvp_matches_reference(model, torch.randn(4, 3, size, size, generator=g, dtype=torch.float64), torch.arange(4))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The offline tiny OPT (with its byte tokenizer) as a model folder, and a text file of its synthetic corpus."""
    from losslab.lm.offline import byte_tokenizer, synthetic_corpus, tiny_opt

    root = tmp_path_factory.mktemp("lm")
    tiny_opt(seed=0).save_pretrained(root / "opt")
    byte_tokenizer().save_pretrained(root / "opt")
    text = root / "train.txt"
    text.write_text(synthetic_corpus(seed=0)["train"][:4000])
    return root / "opt", text


def test_lm_landscape_command_against_arpack_and_hutchinson(tiny_lm: tuple[Path, Path], tmp_path: Path) -> None:
    from scipy.sparse.linalg import LinearOperator, eigsh

    from losslab.landscape.lm import LogitsOf, next_token_loss
    from losslab.lm.data import load_calibration
    from losslab.lm.models import load_causal_lm, load_tokenizer

    folder, text = tiny_lm
    out = tmp_path / "lm.json"
    opts = ["--text-file", str(text), "--calib-samples", "2", "--seqlen", "16", "--device", "cpu"]
    landscape("lm", "landscape", "--model", str(folder), "--probes", "eig,trace", *opts, "--json", str(out))
    result = json.loads(out.read_text())

    model = LogitsOf(load_causal_lm(str(folder)).double().eval())
    windows = load_calibration(load_tokenizer(str(folder)), str(text), 2, 16, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    with sdpa_kernel(SDPBackend.MATH):
        loss = next_token_loss(model(windows), windows)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat_grad = torch.cat([g.reshape(-1) for g in grads])

    def hvp(v: np.ndarray) -> np.ndarray:
        vec = torch.from_numpy(np.asarray(v, dtype=np.float64).reshape(-1))
        out = torch.autograd.grad(flat_grad @ vec, params, retain_graph=True)
        return torch.cat([o.reshape(-1) for o in out]).numpy()

    dim = sum(sizes)
    top = float(eigsh(LinearOperator((dim, dim), matvec=hvp, dtype=np.float64), k=1, which="LA", tol=1e-8)[0][0])
    lam, res = result["eigenvalues"][0], result["eigen_residuals"][0]
    # |θ − λ| ≤ ‖Hv − θv‖ for a symmetric H (the measured residual), plus float32 rounding of the product
    assert abs(lam - top) <= res + 1e-4 * abs(top)

    rng = np.random.default_rng(0)
    probes = [rng.choice([-1.0, 1.0], dim) for _ in range(64)]
    samples = np.array([z @ hvp(z) for z in probes])
    hutch, hutch_se = samples.mean(), samples.std(ddof=1) / math.sqrt(len(samples))
    assert abs(result["trace"] - hutch) <= 3 * math.hypot(result["trace_stderr"], hutch_se)
