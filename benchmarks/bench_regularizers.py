"""Training-step cost of the regularizers on CIFAR ResNet-20, as a ratio to a plain step measured in the same run.

One step = forward, task loss, regularizer term, backward, SGD step, on one fixed batch (default 128×3×32×32).
``lp2native`` is the same LPGrad step with PyTorch's own double backwards (``fast_double_backward=False``), the
reference for the closed-form BatchNorm/Conv2d ones of ``losslab.regularizers.double_backward``.
LPGrad with activations hooks the nine residual-block outputs (post-ReLU). Target for lp_grad (p=2, weights +
activations): <= 3× the plain step. Run::

    .venv/bin/python benchmarks/bench_regularizers.py              # CUDA if present, else CPU; 3 timed rounds
    .venv/bin/python benchmarks/bench_regularizers.py --device cuda --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from copy import deepcopy as copy_module

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


def _timed(step: Callable[[], None], device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu


def time_round_robin(
    steps: dict[str, Callable[[], None]], rounds: int, warmup: int, device: torch.device
) -> dict[str, tuple[list[float], list[float]]]:
    """(wall, process CPU) seconds of every step in each of ``rounds`` rounds, after ``warmup`` rounds.

    One round runs each variant once, in turn, so a burst of load from other processes on a shared machine
    hits all variants alike instead of whichever happened to be measured at that moment.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, tuple[list[float], list[float]]] = {key: ([], []) for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            wall, cpu = _timed(step, device)
            times[key][0].append(wall)
            times[key][1].append(cpu)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed round-robin rounds (one step per variant each)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--variants",
        default="lp2,lp2native,variance,lp2w,lp1",
        help="comma list of: lp2, lp2native (PyTorch's BatchNorm/Conv2d double backward), variance, lp2w, lp1",
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
            "lp_grad p=2 w+a, PyTorch 2nd bwd",
            create("lp_grad", p=2, lam=0.05, activation_names=BLOCK_OUTPUTS, fast_double_backward=False),
        ),
        "lp1": ("lp_grad p=1 weights+activations", create("lp_grad", p=1, lam=0.05, activation_names=BLOCK_OUTPUTS)),
    }
    chosen = ["plain", *(key for key in args.variants.split(",") if key != "plain")]
    unknown = [key for key in chosen if key not in variants]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(variants)}")
    print(
        f"cifar_resnet20, batch {args.batch}x3x32x32, device {device}, {torch.get_num_threads()} threads, "
        f"{args.steps} round-robin rounds after {args.warmup} warm-up rounds; columns: median wall, median CPU, "
        "min wall, each with its ratio to plain"
    )
    steps = {}
    for key in chosen:  # one model copy per variant (same weights), so hooks and BatchNorm swaps do not interact
        reg = variants[key][1]
        copy = copy_module(model)
        if reg is not None:
            reg.attach(copy)
        steps[key] = make_step(copy, reg, x, y)
    times = time_round_robin(steps, args.steps, args.warmup, device)
    plain_wall, plain_cpu = (statistics.median(t) for t in times["plain"])
    plain_min = min(times["plain"][0])
    for key in chosen:
        wall, cpu = (statistics.median(t) for t in times[key])
        best = min(times[key][0])
        print(
            f"{variants[key][0]:34s} {wall * 1000:8.1f} ms wall {wall / plain_wall:5.2f}x  "
            f"{cpu * 1000:8.1f} ms CPU {cpu / plain_cpu:5.2f}x  {best * 1000:8.1f} ms min {best / plain_min:5.2f}x",
            flush=True,
        )
    if "lp2" in times:
        ratio = statistics.median(times["lp2"][0]) / plain_wall
        verdict = "OK" if ratio <= 3 else "OVER"
        print(f"-> lp_grad (p=2, weights+activations) / plain = {ratio:.2f}x (median wall), target <= 3x: {verdict}")


if __name__ == "__main__":
    main()
