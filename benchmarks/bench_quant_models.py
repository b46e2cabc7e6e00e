"""Whole-model quantization time for CIFAR ResNet-20 and ResNet-18 with every method at 4 bits.

Random weights and 128 random 32x32 calibration images (batches of 32). Prints seconds per model and method and
the ratio to RTN measured in the same run, plus the mean SQNR so the runs can be told apart. By default the timing
excludes the optional proxy-loss statistics (``--metrics`` includes them)::

    .venv/bin/python benchmarks/bench_quant_models.py [--models cifar_resnet20] [--device cuda] [--bits 4]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

import losslab.models  # noqa: F401  (registers cifar_resnet* in timm)
from losslab.quant import GPFQ, GPTQ, LDLQ, PWLQ, RTN, QuantMethod, quantize


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cifar_resnet20", "cifar_resnet18"])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--metrics", action="store_true", help="also accumulate the float XᵀX for proxy losses")
    args = parser.parse_args()
    torch.manual_seed(0)
    calib = list(torch.randn(args.images, 3, 32, 32, device=args.device).split(32))
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} images={args.images}")
    print(f"{'model':<16}{'method':<52}{'seconds':>9}{'x RTN':>8}{'SQNR dB':>9}")
    for name in args.models:
        model = timm.create_model(name, num_classes=10).to(args.device).eval()
        reference = None
        for method in _methods(args.bits):
            start = time.perf_counter()
            result = quantize(model, method, calib, progress=False, metrics=args.metrics)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            reference = reference or seconds
            sqnr = result.summary()["mean_sqnr_db"]
            print(f"{name:<16}{method.describe():<52}{seconds:>9.2f}{seconds / reference:>8.2f}{sqnr:>9.2f}")


if __name__ == "__main__":
    main()
