"""Benchmark the per-layer quantizers of losslab.quant (prints figures and ratios measured in the same run).

(a) GPFQ Gram form (streamed statistics, blocked column loop) vs the original sample-space loop on every Conv2d and
    Linear layer of a CIFAR ResNet-18 (random weights), with real unfolded patch inputs (conv stride, padding and
    dilation) from random 3×32×32 images. Both methods get the same X (X̃ = X, patches sub-sampled to
    --max-patches per layer so the reference fits in memory), float32, b = 4, C = 1.16.
(b) GPTQ on a 3072×768 weight with a 768×768 Hessian from 4096 random tokens: time and proxy loss vs RTN.

Run: .venv/bin/python benchmarks/bench_quant_layers.py [--images 128] [--max-patches 4096] [--threads N]
     [--dtype float32|float64] [--skip-gptq] [--skip-gpfq]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import losslab.models  # noqa: F401  (registers cifar_resnet18 with timm)
from losslab.quant.gpfq import GPFQStats, gpfq_weight_from_stats, gpfq_weight_sample_form
from losslab.quant.gptq import gptq_weight, hessian_from_inputs
from losslab.quant.layer_metrics import proxy_loss
from losslab.quant.rtn import rtn_weight


def layer_inputs(model: nn.Module, images: Tensor) -> dict[str, tuple[nn.Module, Tensor]]:
    """Capture the input of every Conv2d/Linear layer on ``images`` (one forward pass)."""
    captured: dict[str, tuple[nn.Module, Tensor]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):

            def hook(m: nn.Module, args: tuple[Tensor, ...], name: str = name) -> None:
                captured[name] = (m, args[0].detach())

            hooks.append(mod.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return captured


def unfold_rows(mod: nn.Module, inp: Tensor) -> Tensor:
    """Rows of X ``[m, in]``: unfolded patches for convs (real stride/padding/dilation), tokens for linears."""
    if isinstance(mod, nn.Linear):
        return inp.reshape(-1, inp.shape[-1])
    assert isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding_mode == "zeros"
    cols = F.unfold(inp, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_gpfq(images: int, max_patches: int, seed: int, dtype: torch.dtype) -> None:
    torch.manual_seed(seed)
    model = timm.create_model("cifar_resnet18").eval()
    x_img = torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    inputs = layer_inputs(model, x_img)
    gen = torch.Generator().manual_seed(seed + 1)
    print(f"\n(a) GPFQ on cifar_resnet18, {images} random images, b=4, C=1.16, {dtype}, X~ = X", flush=True)
    print(f"{'layer':<22}{'N x d':>12}{'m used/all':>16}{'gram s':>9}{'sample s':>10}{'ratio':>8}{'same Q':>9}")
    tot_g = tot_s = 0.0
    same = total = 0
    for name, (mod, inp) in inputs.items():
        w = mod.weight.detach().flatten(1)
        x = unfold_rows(mod, inp)
        m_all = x.shape[0]
        if m_all > max_patches:
            x = x[torch.randperm(m_all, generator=gen)[:max_patches]]
        x = x.to(dtype).contiguous()
        w = w.to(dtype)

        def gram(w: Tensor = w, x: Tensor = x) -> object:
            stats = GPFQStats(x.shape[1], dtype=x.dtype)
            stats.update(x)
            return gpfq_weight_from_stats(w, stats, bits=4, scalar=1.16)

        t_g, qg = timed(gram)
        t_s, qs = timed(lambda w=w, x=x: gpfq_weight_sample_form(w, x, bits=4, scalar=1.16))
        eq = int((qg.codes == qs.codes).sum())  # type: ignore[attr-defined]
        same += eq
        total += w.numel()
        tot_g += t_g
        tot_s += t_s
        print(
            f"{name:<22}{f'{w.shape[0]}x{w.shape[1]}':>12}{f'{x.shape[0]}/{m_all}':>16}"
            f"{t_g:>9.3f}{t_s:>10.3f}{t_s / t_g:>8.1f}{eq / w.numel():>9.5f}",
            flush=True,
        )
    print(f"{'total':<22}{'':>12}{'':>16}{tot_g:>9.3f}{tot_s:>10.3f}{tot_s / tot_g:>8.1f}{same / total:>9.5f}")


def bench_gptq(seed: int, repeats: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3072, 768, generator=g) * 0.02
    mix = torch.eye(768) + 0.1 * torch.randn(768, 768, generator=g) / 768**0.5
    x = torch.randn(4096, 768, generator=g) @ mix
    h = hessian_from_inputs(x)
    t_gptq = min(timed(lambda: gptq_weight(w, h, 4))[0] for _ in range(repeats))
    t_rtn = min(timed(lambda: rtn_weight(w, 4))[0] for _ in range(repeats))
    q_gptq, q_rtn = gptq_weight(w, h, 4).q, rtn_weight(w, 4).q
    p_gptq, p_rtn = proxy_loss(w, q_gptq, h), proxy_loss(w, q_rtn, h)
    print("\n(b) GPTQ 4-bit asym per-row, W 3072x768, H 768x768 from 4096 random tokens (best of 3)")
    print(f"gptq_weight: {t_gptq:.3f} s   rtn_weight: {t_rtn:.3f} s   (target < 1 s)")
    print(f"proxy loss tr((W-Q)H(W-Q)^T): GPTQ {p_gptq:.4g}  RTN {p_rtn:.4g}  ratio GPTQ/RTN {p_gptq / p_rtn:.3f}")
    t_act = min(timed(lambda: gptq_weight(w, h, 4, act_order=True, group_size=128))[0] for _ in range(repeats))
    print(f"gptq_weight act_order + group_size=128: {t_act:.3f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--max-patches", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="GPFQ arithmetic")
    parser.add_argument("--skip-gpfq", action="store_true")
    parser.add_argument("--skip-gptq", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    print(
        f"machine: {platform.processor() or platform.machine()}, cpu_count={os.cpu_count()}, "
        f"torch threads={torch.get_num_threads()}, torch {torch.__version__}, load average {load}",
        flush=True,
    )
    if not args.skip_gptq:
        bench_gptq(args.seed)
    if not args.skip_gpfq:
        bench_gpfq(args.images, args.max_patches, args.seed, getattr(torch, args.dtype))


if __name__ == "__main__":
    main()
