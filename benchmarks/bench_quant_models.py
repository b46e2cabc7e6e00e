"""Whole-model quantization time for CIFAR ResNet-20 and ResNet-18 with every method at 4 bits.

Random weights and 128 random 32x32 calibration images (batches of 32). Prints seconds per model and method and
the ratio to RTN measured in the same run, plus the mean SQNR so the runs can be told apart. By default the timing
excludes the optional proxy-loss statistics (``--metrics`` includes them)::

    .venv/bin/python benchmarks/bench_quant_models.py [--models cifar_resnet20] [--device cuda] [--bits 4]

``--walk both`` times each method with the prefix walk and the segment walk (:mod:`losslab.quant.walk`) in the
same run, prints the speed-up prefix/segments, the segment walk's peak activation cache, and checks that both
walks give bit-identical weights; ``--methods gptq gpfq`` restricts the methods (by registry name)::

    .venv/bin/python benchmarks/bench_quant_models.py --walk both --methods gptq gpfq
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

import losslab.models  # noqa: F401  (registers cifar_resnet* in timm)
from losslab.quant import GPFQ, GPTQ, LDLQ, PWLQ, RTN, QuantMethod, QuantResult, quantize


def _methods(bits: int) -> list[QuantMethod]:
    return [
        RTN(bits=bits),
        PWLQ(bits=bits),
        GPFQ(bits=bits),
        GPTQ(bits=bits),
        GPTQ(bits=bits, act_order=True, group_size=64),
        LDLQ(bits=bits),
        LDLQ(bits=bits, grid="quip", incoherence="hadamard"),
    ]


def _time(
    model: torch.nn.Module, method: QuantMethod, calib: list[torch.Tensor], args: argparse.Namespace, walk: str
) -> tuple[QuantResult, float]:
    start = time.perf_counter()
    result = quantize(model, method, calib, progress=False, metrics=args.metrics, walk=walk)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def _same_weights(a: QuantResult, b: QuantResult) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _compare_walks(name: str, model: torch.nn.Module, calib: list[torch.Tensor], args: argparse.Namespace) -> None:
    for method in _methods(args.bits):
        if args.methods and method.name not in args.methods:
            continue
        old, t_old = _time(model, method, calib, args, "prefix")
        new, t_new = _time(model, method, calib, args, "segments")
        cache = new.calibration["walk_cache_bytes"] / 2**20
        print(
            f"{name:<16}{method.describe():<46}{t_old:>9.2f}{t_new:>9.2f}{t_old / t_new:>8.2f}{cache:>10.1f}"
            f"{new.calibration['walk']:>10}{_same_weights(old, new)!s:>7}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cifar_resnet20", "cifar_resnet18"])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--metrics", action="store_true", help="also accumulate the float XᵀX for proxy losses")
    parser.add_argument("--walk", choices=["segments", "prefix", "both"], default="segments")
    parser.add_argument("--methods", nargs="+", default=None, help="registry names to keep (rtn pwlq gpfq gptq ldlq)")
    args = parser.parse_args()
    torch.manual_seed(0)
    calib = list(torch.randn(args.images, 3, 32, 32, device=args.device).split(32))
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} images={args.images}")
    if args.walk == "both":
        print(
            f"{'model':<16}{'method':<46}{'prefix s':>9}{'segm. s':>9}{'speedup':>8}{'cache MiB':>10}"
            f"{'walk':>10}{'equal':>7}"
        )
    else:
        print(f"{'model':<16}{'method':<52}{'seconds':>9}{'x RTN':>8}{'SQNR dB':>9}")
    for name in args.models:
        model = timm.create_model(name, num_classes=10).to(args.device).eval()
        if args.walk == "both":
            _compare_walks(name, model, calib, args)
            continue
        reference = None
        for method in _methods(args.bits):
            if args.methods and method.name not in args.methods:
                continue
            result, seconds = _time(model, method, calib, args, args.walk)
            reference = reference or seconds
            sqnr = result.summary()["mean_sqnr_db"]
            print(f"{name:<16}{method.describe():<52}{seconds:>9.2f}{seconds / reference:>8.2f}{sqnr:>9.2f}")


if __name__ == "__main__":
    main()
