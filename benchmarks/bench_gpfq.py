"""GPFQ against GPTQ (losslab) and against Brevitas's GPFQ on one digits-trained network, one CPU thread.

The network is trained here on sklearn's bundled digits, upsampled to 32x32 RGB (a few epochs; the float accuracy is
printed). Every method quantizes every Conv2d/Linear layer with the same calibration images; each row prints the
CPU time (``time.process_time``), its ratio to losslab's GPTQ measured in the same run, the test accuracy and the
relative logit error ‖f_q(x) − f(x)‖_F / ‖f(x)‖_F on the held-out images (x: 500 test digits)::

    .venv/bin/python benchmarks/bench_gpfq.py                    # cifar_resnet20, 128 calibration images
    .venv/bin/python benchmarks/bench_gpfq.py --full             # the issue's setup: cifar_resnet18, 256 images
    .venv/bin/python benchmarks/bench_gpfq.py --brevitas         # also Brevitas 0.13.4 (pip install brevitas==0.13.4)
    .venv/bin/python benchmarks/bench_gpfq.py --repeat 3         # least CPU time of 3 runs per losslab row (shared VM)

Grids: losslab GPFQ on ``asym``/``sym``/``narrow`` per channel and on the seed alphabet ``gpfq`` (2^b + 1 levels,
b + 1 stored bits); GPTQ on ``asym`` and ``narrow``. Brevitas's default per-channel weight quantizer
(``Int8WeightPerChannelFloat`` with the bit width set) is symmetric narrow-range with scale max|w|/(2^(b−1) − 1),
i.e. losslab's ``narrow`` grid, so ``GPFQ narrow`` is the like-for-like row. Brevitas is never a dependency of
losslab; the script skips it (and says why) when it does not import.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from losslab.models import create_model
from losslab.quant import GPFQ, GPTQ, QuantMethod, quantize


def digits_32(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as 3x32x32 images in [0, 1]: (train x, train y, test x, test y), 1297/500 split."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return x[:1297], y[:1297], x[1297:], y[1297:]


def train(name: str, x: Tensor, y: Tensor, epochs: int) -> nn.Module:
    """A few epochs of Adam on the digits (cross-entropy)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, ref_logits: Tensor, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(top-1 %, relative logit error against the float model's logits)."""
    logits = model(x)
    acc = 100.0 * float((logits.argmax(1) == y).float().mean())
    return acc, float((logits - ref_logits).norm() / ref_logits.norm())


def run_losslab(
    model: nn.Module, method: QuantMethod, calib: list[Tensor], repeat: int = 1
) -> tuple[nn.Module, float, float]:
    """(quantized model, seconds: the least of ``repeat`` runs, stored bits per quantized weight)."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        result = quantize(model, method, calib, progress=False, metrics=False)
        times.append(time.process_time() - start)
    return result.model, min(times), result.summary()["avg_bits_per_weight"]


def run_brevitas(model: nn.Module, bits: int, calib: list[Tensor]) -> tuple[nn.Module, float]:
    """Brevitas 0.13.4 GPFQ: every Conv2d/Linear as a Quant layer with a per-channel ``bits`` weight quantizer and no
    activation/bias quantization, then ``gpfq_mode`` over the same calibration batches (its documented loop)."""
    import brevitas.nn as qnn
    from brevitas.graph.gpfq import gpfq_mode
    from brevitas.graph.quantize import layerwise_quantize
    from brevitas.quant import Int8WeightPerChannelFloat

    opts = {"weight_quant": Int8WeightPerChannelFloat, "weight_bit_width": bits, "input_quant": None}
    opts |= {"output_quant": None, "bias_quant": None, "return_quant_tensor": False}
    layer_map = {nn.Conv2d: (qnn.QuantConv2d, opts), nn.Linear: (qnn.QuantLinear, opts)}
    start = time.process_time()
    qmodel = layerwise_quantize(copy.deepcopy(model), compute_layer_map=layer_map).eval()
    with torch.no_grad(), gpfq_mode(qmodel, use_quant_activations=False) as gpfq:
        for _ in range(gpfq.num_layers):
            for batch in calib:
                gpfq.model(batch)
            gpfq.update()
    return qmodel, time.process_time() - start


def print_row(
    bits: int, label: str, seconds: float, base: float, bpw: float | None, quality: tuple[float, float]
) -> None:
    """One table row, printed as soon as it is measured."""
    bpw_text = "-" if bpw is None else f"{bpw:.2f}"
    acc, err = quality
    print(f"{bits:>4}  {label:<34}{seconds:>9.2f}{seconds / base:>7.2f}{bpw_text:>8}{acc:>8.2f}{err:>16.3e}")


def load_average() -> str:
    """The machine's 1/5/15-minute load averages (the VM is shared: CPU seconds move with the other jobs' load)."""
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's setup: cifar_resnet18, 256 images")
    parser.add_argument("--model", default=None, help="timm/losslab model name (default cifar_resnet20)")
    parser.add_argument("--images", type=int, default=None, help="calibration images (default 128; --full 256)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    parser.add_argument("--brevitas", action="store_true", help="also time Brevitas 0.13.4's GPFQ")
    parser.add_argument("--repeat", type=int, default=1, help="losslab runs per row; the least CPU time is printed")
    parser.add_argument("--grids", nargs="+", default=["narrow", "asym", "gpfq"], help="GPFQ grids to run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    name = args.model or ("cifar_resnet18" if args.full else "cifar_resnet20")
    images = args.images or (256 if args.full else 128)
    x_train, y_train, x_test, y_test = digits_32()
    model = train(name, x_train, y_train, args.epochs)
    with torch.no_grad():
        ref = model(x_test)
    calib = list(x_train[:images].split(32))
    float_acc, _ = evaluate(model, ref, x_test, y_test)
    print(f"model={name} images={images} threads={torch.get_num_threads()} torch={torch.__version__} {load_average()}")
    print(f"float top-1 {float_acc:.2f}")
    print(f"{'bits':>4}  {'method':<34}{'seconds':>9}{'/GPTQ':>7}{'bits/w':>8}{'top-1':>8}{'rel. logit err':>16}")
    for bits in args.bits:
        base = None
        for method in [GPTQ(bits=bits), GPTQ(bits=bits, grid="narrow")] + [GPFQ(bits=bits, grid=g) for g in args.grids]:
            qmodel, seconds, bpw = run_losslab(model, method, calib, args.repeat)
            base = seconds if base is None else base
            print_row(bits, method.describe(), seconds, base, bpw, evaluate(qmodel, ref, x_test, y_test))
        if args.brevitas:
            try:
                qmodel, seconds = run_brevitas(model, bits, calib)
            except Exception as err:  # an optional comparison: say why it did not run
                print(f"brevitas skipped: {type(err).__name__}: {err}")
            else:
                label = "brevitas GPFQ per-channel narrow"
                print_row(bits, label, seconds, base, None, evaluate(qmodel, ref, x_test, y_test))
    print(f"done: {load_average()}")


if __name__ == "__main__":
    main()
