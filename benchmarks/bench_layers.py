"""Training-step time of a factorized CIFAR ResNet-20 (rank scale 0.111, two-conv path) vs the dense one.

Run: ``python benchmarks/bench_layers.py [--steps 10] [--batch 128] [--device cpu]``. Prints both median step
times (forward + backward + SGD step, batch×3×32×32) and their ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from torch import nn

import losslab.models  # noqa: F401  (registers cifar_resnet20)
from losslab.layers import factorize


def step_times(model: nn.Module, batch: int, steps: int, device: str) -> list[float]:
    """Wall-clock seconds of ``steps`` SGD training steps after 2 warm-up steps."""
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rank-scale", type=float, default=0.111)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = timm.create_model("cifar_resnet20")
    factorized = timm.create_model("cifar_resnet20")
    report = factorize(factorized, rank_scale=args.rank_scale)
    t_dense = statistics.median(step_times(dense, args.batch, args.steps, args.device))
    t_fact = statistics.median(step_times(factorized, args.batch, args.steps, args.device))
    print(f"device={args.device} batch={args.batch} steps={args.steps} threads={torch.get_num_threads()}")
    print(f"dense      ResNet-20: {report.params_before:>7} params, median step {t_dense * 1e3:8.1f} ms")
    print(f"factorized ResNet-20: {report.params_after:>7} params, median step {t_fact * 1e3:8.1f} ms")
    print(f"step-time ratio factorized (s={args.rank_scale})/dense: {t_fact / t_dense:.3f}")
    print(f"parameter ratio: {report.ratio:.4f}")


if __name__ == "__main__":
    main()
