"""Speed and memory of the LM tools on an OPT-125m-shaped model (random weights, built from its config offline).

1. Rooted token loss vs ``F.cross_entropy`` on ``(tokens, 50,272)`` logits, forward + backward: time (median)
   and peak memory (GPU: ``torch.cuda.max_memory_allocated``; CPU: peak RSS growth of a fresh subprocess).
   Targets: rooted time ≤ 1.2× CE, rooted peak ≤ CE peak.
2. ``quantize_decoder`` at 4 bits per method with ``calib-windows × seqlen`` calibration tokens (GPTQ's setting
   is 128 × 2048; on a small CPU pass e.g. ``--calib-windows 4 --seqlen 512``; the values used are printed),
   the model kept on the CPU and one decoder layer at a time on ``--device``: end-to-end seconds, the windows
   per forward (micro-batch) and the peak device memory the driver reports. Issue 11 targets on an H100/H200,
   OPT-125m shape, 128 × 2048: GPTQ and LDLQ <= 5 s, GPFQ <= 6 s, RTN <= 1.5 s; OPT-1.3b shape GPTQ <= 45 s.

    python benchmarks/bench_lm.py --device cuda --skip-loss                         # OPT-125m, every method
    python benchmarks/bench_lm.py --device cuda --skip-loss --shape opt-1.3b --methods gptq
    python benchmarks/bench_lm.py --device cpu --calib-windows 4 --seqlen 512 --loss-tokens 2048
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

VOCAB = 50_272


SHAPES = {  # hidden, layers, ffn, heads of the OPT checkpoints
    "opt-125m": (768, 12, 3072, 12),
    "opt-1.3b": (2048, 24, 8192, 32),
}
TARGETS_S = {  # issue 11, H100/H200, 4 bits, 128 x 2048 calibration tokens
    "opt-125m": {"gptq": 5.0, "ldlq": 5.0, "gpfq": 6.0, "rtn": 1.5},
    "opt-1.3b": {"gptq": 45.0},
}


def opt_config(shape: str = "opt-125m"):  # -> OPTConfig with that checkpoint's shape
    from transformers import OPTConfig

    hidden, layers, ffn, heads = SHAPES[shape]
    return OPTConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        ffn_dim=ffn,
        num_attention_heads=heads,
        max_position_embeddings=2048,
        word_embed_proj_dim=hidden,
        dropout=0.0,
        attention_dropout=0.0,
    )


def opt125m_config():  # -> OPTConfig with facebook/opt-125m's shape
    return opt_config("opt-125m")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _loss_step(kind: str, logits: torch.Tensor, target: torch.Tensor) -> None:
    from losslab.objectives.token import TokenLossSpec, token_loss

    if kind == "ce":
        loss = torch.nn.functional.cross_entropy(logits, target)
    else:
        loss = token_loss(logits, target, TokenLossSpec("root", k=5.0, m=5.0))
    loss.backward()


def _inputs(tokens: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    logits = torch.randn(tokens, VOCAB, generator=gen).mul(3).to(device=device, dtype=dtype).requires_grad_()
    return logits, torch.randint(0, VOCAB, (tokens,), generator=gen).to(device)


def loss_time(kind: str, tokens: int, device: str, dtype: torch.dtype, repeats: int = 3) -> float:
    logits, target = _inputs(tokens, device, dtype)
    times = []
    for _ in range(repeats + 1):
        logits.grad = None
        _sync(device)
        start = time.perf_counter()
        _loss_step(kind, logits, target)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field))


def loss_peak_bytes(kind: str, tokens: int, device: str, dtype: torch.dtype) -> int:
    """Peak extra memory of forward + backward beyond the logits and targets."""
    logits, target = _inputs(tokens, device, dtype)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _loss_step(kind, logits, target)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = _rss_kib("VmRSS:")
    _loss_step(kind, logits, target)
    return (_rss_kib("VmHWM:") - base) * 1024


def quantize_time(
    method: str, windows: int, seqlen: int, device: str, shape: str = "opt-125m"
) -> tuple[float, float, dict]:
    """Seconds of quantize_decoder (4 bits; the model build excluded; the model stays on the CPU), the mean SQNR
    and the result's calibration record (micro_batch, peak_device_bytes on CUDA)."""
    from transformers import OPTForCausalLM

    from losslab.lm.quantize import quantize_decoder
    from losslab.quant.methods import method_from_name

    torch.manual_seed(0)
    model = OPTForCausalLM(opt_config(shape)).eval()
    calib = torch.randint(0, VOCAB, (windows, seqlen))
    _sync(device)
    start = time.perf_counter()
    result = quantize_decoder(
        model, method_from_name(method, bits=4), calib, device=device, progress=False, inplace=True
    )
    _sync(device)
    return time.perf_counter() - start, result.summary()["mean_sqnr_db"], result.calibration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--calib-windows", type=int, default=128, help="calibration windows (GPTQ: 128)")
    parser.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window (GPTQ: 2048)")
    parser.add_argument("--methods", default="rtn,gptq,ldlq,gpfq")
    parser.add_argument("--loss-tokens", type=int, default=8 * 2048, help="logit rows for the loss benchmark")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="logits dtype")
    parser.add_argument("--skip-quantize", action="store_true")
    parser.add_argument("--skip-loss", action="store_true", help="only the quantization benchmark")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="opt-125m", help="OPT shape (random weights)")
    parser.add_argument("--peak-only", nargs=2, metavar=("KIND", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.peak_only:  # child process for a clean CPU peak-RSS measurement
        print(json.dumps(loss_peak_bytes(args.peak_only[0], int(args.peak_only[1]), args.device, dtype)))
        return
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_loss:
        loss_benchmark(args, dtype)
    if args.skip_quantize:
        return
    print(
        f"\n[quantize] {args.shape} shape, 4 bits, calibration {args.calib_windows} x {args.seqlen} tokens "
        f"(GPTQ setting: 128 x 2048), device {args.device}, model kept on the CPU"
    )
    gpu_setting = args.device.startswith("cuda") and (args.calib_windows, args.seqlen) == (128, 2048)
    for method in args.methods.split(","):
        seconds, sqnr, calibration = quantize_time(method, args.calib_windows, args.seqlen, args.device, args.shape)
        target = TARGETS_S.get(args.shape, {}).get(method)
        verdict = (
            ""
            if target is None or not gpu_setting
            else f"  target <= {target:.1f} s: " + ("met" if seconds <= target else "MISSED")
        )
        peak = calibration.get("peak_device_bytes")
        peak_text = f"   peak device memory {peak / 2**30:.2f} GiB" if peak is not None else ""
        print(
            f"  {method:<5} {seconds:8.1f} s   mean SQNR {sqnr:.2f} dB   windows/forward "
            f"{calibration.get('micro_batch')}{peak_text}{verdict}"
        )


def loss_benchmark(args: argparse.Namespace, dtype: torch.dtype) -> None:
    """Rooted token loss vs cross entropy: time and peak memory."""
    print(f"\n[loss] forward+backward on ({args.loss_tokens}, {VOCAB}) {args.dtype} logits (target 8x2048 = 16384)")
    rows = {}
    for kind in ("ce", "root"):
        seconds = loss_time(kind, args.loss_tokens, args.device, dtype)
        if args.device.startswith("cuda"):
            peak = loss_peak_bytes(kind, args.loss_tokens, args.device, dtype)
        else:
            cmd = [
                sys.executable,
                __file__,
                "--device",
                "cpu",
                "--dtype",
                args.dtype,
                "--peak-only",
                kind,
                str(args.loss_tokens),
            ]
            peak = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        rows[kind] = (seconds, peak)
        print(f"  {kind:<5} time {seconds * 1e3:9.1f} ms   peak extra memory {peak / 2**20:9.1f} MiB")
    ratio_t, ratio_m = rows["root"][0] / rows["ce"][0], rows["root"][1] / max(rows["ce"][1], 1)
    print(f"  rooted / CE: time x{ratio_t:.2f} (target <= 1.2), peak memory x{ratio_m:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
