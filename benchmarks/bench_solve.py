"""Benchmark the per-layer column solves of GPTQ, LDLQ and GPFQ: the blocked solve vs per-column loops, same run.

Problem: the fc2-like weight W [768 out, 3072 in] of an OPT-125m-shaped model, 4 bits, per-row asym grid, the
Hessian H = (2/n)·XᵀX from n random tokens (X = relu(N(0, 1)) [n, 3072]). Figures (best of --repeats):

- GPTQ: ``gptq_weight`` (solver=auto, the blocked solve) vs the original GPTQ driver's algorithm written out below
  (Cholesky → cholesky_inverse → Cholesky, blocks of 128 with a Python loop over columns of W [out, in], lazy
  GEMM after each block) and vs ``solver="loop"`` (losslab's previous per-column loop on Wᵀ);
- LDLQ: ``ldlq_weight`` blocked vs ``solver="loop"`` (a GEMV with all previous columns per column);
- on CUDA also ``solver="compiled"`` (each inner block one torch.compile kernel; first call and warm calls);
- GPFQ: the Gram-form loop ``gpfq_gram_codes`` (statistics precomputed) blocked vs ``solver="loop"``.

Each line prints the time (CPU time of this process on the CPU, synchronised wall time on CUDA), the speed-up and the
share of equal codes against the reference (float64: 1.0; float32: ≥ 0.999 for a full-rank H, see
docs/quant_algorithms.md; with fewer tokens than inputs H is singular and float32 rounding alone moves ~1-2 %).

Run: python benchmarks/bench_solve.py [--device cpu|cuda] [--dtype float32|float64] [--threads 1] [--repeats 3]
     [--tokens 8192] [--methods gptq,ldlq,gpfq]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
from torch import Tensor

from losslab.quant.gpfq import GPFQStats, gpfq_alphabet, gpfq_gram_codes, gpfq_weight_from_stats
from losslab.quant.gptq import gptq_weight, hessian_from_inputs
from losslab.quant.ldlq import ldlq_weight


def original_gptq(w: Tensor, h: Tensor, bits: int = 4, blocksize: int = 128, percdamp: float = 0.01) -> Tensor:
    """The original GPTQ driver's ``fasterquant`` (per-row asym grid, no groups/act-order): returns Q [out, in]."""
    w, h = w.clone(), h.clone()
    maxq = 2**bits - 1
    xmin = torch.minimum(w.min(1).values, torch.zeros(1, dtype=w.dtype, device=w.device))
    xmax = torch.maximum(w.max(1).values, torch.zeros(1, dtype=w.dtype, device=w.device))
    both = (xmin == 0) & (xmax == 0)
    xmin[both], xmax[both] = -1, 1
    scale = ((xmax - xmin) / maxq)[:, None]
    zero = torch.round(-xmin / scale[:, 0])[:, None]

    def quantize(x: Tensor) -> Tensor:
        q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
        return scale * (q - zero)

    columns = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    q_all = torch.zeros_like(w)
    damp = percdamp * torch.mean(torch.diag(h))
    diag = torch.arange(columns, device=w.device)
    h[diag, diag] += damp
    hinv = torch.linalg.cholesky(h)
    hinv = torch.cholesky_inverse(hinv)
    hinv = torch.linalg.cholesky(hinv, upper=True)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(count):
            col = w1[:, i]
            d = hinv1[i, i]
            q = quantize(col[:, None]).flatten()
            q1[:, i] = q
            e = (col - q) / d
            w1[:, i:] -= e[:, None].matmul(hinv1[i, i:][None, :])
            err1[:, i] = e
        q_all[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return q_all


def best_of(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    """Best of ``repeats``: CPU time of this process on the CPU (robust to other jobs on shared cores; one thread),
    synchronised wall time on CUDA."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return best, out


def report(name: str, t_new: float, t_ref: float, same: float, ref_name: str) -> None:
    speedup = t_ref / t_new
    print(f"{name:<8}{t_new:>9.3f} s  vs {ref_name:<22}{t_ref:>9.3f} s   {speedup:>6.2f}x   same codes {same:.5f}")


def compiled_lines(
    name: str, fn: Callable[[], object], ref_codes: Tensor, t_ref: float, repeats: int, device: torch.device
) -> None:
    """solver="compiled" on CUDA: the first call (compiles the block kernel) and the best warm call."""
    t_first, _ = best_of(fn, 1, device)
    t_warm, out = best_of(fn, repeats, device)
    same = (out.codes == ref_codes).float().mean().item()  # type: ignore[attr-defined]
    report(name, t_warm, t_ref, same, 'compiled vs "loop"')
    print(f"        (first call, compiling the block kernel: {t_first:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=8192, help="calibration tokens (< --inputs: H is singular)")
    parser.add_argument("--out", type=int, default=768)
    parser.add_argument("--inputs", type=int, default=3072)
    parser.add_argument("--methods", default="gptq,ldlq,gpfq")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, load {load}")
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(args.out, args.inputs, generator=g) * 0.02).to(device, dtype)
    x = torch.randn(args.tokens, args.inputs, generator=g).relu_().to(device, dtype)
    h = hessian_from_inputs(x)
    print(
        f"W {tuple(w.shape)}, H from {args.tokens} random tokens, 4-bit asym per row, {args.dtype}, "
        f" best of {args.repeats}"
    )
    methods = args.methods.split(",")
    r = args.repeats
    if "gptq" in methods:
        t_new, new = best_of(lambda: gptq_weight(w, h, 4), r, device)
        t_orig, q_orig = best_of(lambda: original_gptq(w, h, 4), r, device)
        t_loop, loop = best_of(lambda: gptq_weight(w, h, 4, solver="loop"), r, device)
        same_orig = (new.q == q_orig).float().mean().item()  # type: ignore[union-attr]
        same_loop = (new.codes == loop.codes).float().mean().item()  # type: ignore[union-attr]
        report("GPTQ", t_new, t_orig, same_orig, "original GPTQ loop")
        report("GPTQ", t_new, t_loop, same_loop, 'solver="loop"')
        if device.type == "cuda":
            compiled_lines("GPTQ", lambda: gptq_weight(w, h, 4, solver="compiled"), loop.codes, t_loop, r, device)  # type: ignore[union-attr]
    if "ldlq" in methods:
        t_new, new = best_of(lambda: ldlq_weight(w, h, 4), r, device)
        t_loop, loop = best_of(lambda: ldlq_weight(w, h, 4, solver="loop"), 1, device)
        report("LDLQ", t_new, t_loop, (new.codes == loop.codes).float().mean().item(), 'solver="loop"')  # type: ignore[union-attr]
        if device.type == "cuda":
            compiled_lines("LDLQ", lambda: ldlq_weight(w, h, 4, solver="compiled"), loop.codes, t_loop, r, device)  # type: ignore[union-attr]
    if "gpfq" in methods:
        stats = GPFQStats(args.inputs, dtype=dtype, device=device)
        stats.update(x)
        gram = stats.finalize()
        alphabet = gpfq_alphabet(w, 4)
        t_new, new = best_of(lambda: gpfq_gram_codes(w, gram, alphabet)[0], r, device)
        t_loop, loop = best_of(lambda: gpfq_gram_codes(w, gram, alphabet, solver="loop")[0], r, device)
        report("GPFQ", t_new, t_loop, (new == loop).float().mean().item(), 'solver="loop"')  # type: ignore[operator]
        t_all, _ = best_of(lambda: gpfq_weight_from_stats(w, gram, 4), 1, device)
        print(f"        (gpfq_weight_from_stats with its residual statistics: {t_all:.3f} s)")


if __name__ == "__main__":
    main()
