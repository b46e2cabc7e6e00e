"""Training-step cost of the regularizers on CIFAR ResNet-20, as a ratio to a plain step measured in the same run.

One step = forward, task loss, regularizer term, backward, SGD step, on one fixed batch (default 128×3×32×32).
``lp2native`` is the same LPGrad step with PyTorch's own BatchNorm double backward (``fast_batchnorm=False``), the
reference for the closed-form one in ``losslab.regularizers.batchnorm_grad``.
LPGrad with activations hooks the nine residual-block outputs (post-ReLU). Target for lp_grad (p=2, weights +
activations): <= 3× the plain step. Run::

    .venv/bin/python benchmarks/bench_regularizers.py              # CUDA if present, else CPU; 3 timed steps
    .venv/bin/python benchmarks/bench_regularizers.py --device cuda --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn

import losslab.models  # noqa: F401 - registers cifar_resnet20 with timm
from losslab.regularizers import Regularizer, create

BLOCK_OUTPUTS = [f"layer{stage}.{block}" for stage in (1, 2, 3) for block in range(3)]


def make_step(model: nn.Module, reg: Regularizer | None, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """A closure running one full training step with ``reg`` (or none)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        # the trainer's path: a fused term already carries the task gradient (see Regularizer.fused_loss_term)
        fused = reg.fused_loss_term(model, loss, x.shape[0]) if reg is not None else None
        term = fused if fused is not None else (reg.loss_term(model, loss, x.shape[0]) if reg else None)
        (loss if term is None else (loss.detach() if fused is not None else loss) + term).backward()
        if reg is not None:
            reg.grad_term(model)
        optimizer.step()

    return step


def time_step(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median (wall, process CPU) time of ``step`` in seconds over ``steps`` runs after ``warmup`` runs.

    CPU time is printed too because wall time on a shared machine includes waiting for other processes.
    """
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--variants",
        default="lp2,lp2native,variance,lp2w,lp1",
        help="comma list of: lp2, lp2native (without the closed-form BatchNorm double backward), variance, lp2w, lp1",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = timm.create_model("cifar_resnet20").to(device).train()
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    variants: dict[str, tuple[str, Regularizer | None]] = {
        "plain": ("plain", None),
        "lp2": ("lp_grad p=2 weights+activations", create("lp_grad", p=2, lam=0.05, activation_names=BLOCK_OUTPUTS)),
        "variance": ("variance", create("variance", lam=1.25)),
        "lp2w": ("lp_grad p=2 weights only", create("lp_grad", p=2, lam=0.05, activations=False)),
        "lp2native": (
            "lp_grad p=2 w+a, PyTorch BN 2nd bwd",
            create("lp_grad", p=2, lam=0.05, activation_names=BLOCK_OUTPUTS, fast_batchnorm=False),
        ),
        "lp1": ("lp_grad p=1 weights+activations", create("lp_grad", p=1, lam=0.05, activation_names=BLOCK_OUTPUTS)),
    }
    chosen = ["plain", *(key for key in args.variants.split(",") if key != "plain")]
    unknown = [key for key in chosen if key not in variants]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(variants)}")
    print(
        f"cifar_resnet20, batch {args.batch}x3x32x32, device {device}, {torch.get_num_threads()} threads, "
        f"median of {args.steps} steps after {args.warmup} warm-up steps"
    )
    plain: tuple[float, float] | None = None
    for key in chosen:
        label, reg = variants[key]
        if reg is not None:
            reg.attach(model)
        wall, cpu = time_step(make_step(model, reg, x, y), args.steps, args.warmup, device)
        if reg is not None:
            reg.detach()
        plain = plain or (wall, cpu)
        print(
            f"{label:34s} {wall * 1000:9.1f} ms/step wall {wall / plain[0]:5.2f}x plain   "
            f"{cpu * 1000:9.1f} ms/step CPU {cpu / plain[1]:5.2f}x plain",
            flush=True,
        )
        if key == "lp2":
            verdict = "OK" if wall / plain[0] <= 3 else "OVER"
            print(
                f"-> lp_grad (p=2, weights+activations) / plain = {wall / plain[0]:.2f}x wall, target <= 3x: {verdict}"
            )


if __name__ == "__main__":
    main()
