"""Training speed: the device-resident input pipeline vs the DataLoader workers, losslab vs a bare loop, start-up,
and the CPU thread policy. Every figure is a ratio to a reference measured in the same run.

Parts (``--parts``, default all that fit the device):

- ``pipeline``: images/s of the input pipeline alone (no model) on random-pixel CIFAR-10 files written in the
  real python-pickle layout: ``DeviceLoader`` vs ``DataLoader`` with ``--workers`` workers (CPU target >= 4x).
- ``train``: ``losslab train`` (``fit``) with ``--loader device`` (plain and Lightning engines) and ``--loader
  workers``: training images/s
  with start-up and validation excluded (``result.json: train_images_per_s``), and a bare PyTorch loop with the
  same model, batch, precision and optimizer on device-resident tensors with crop + flip on the device
  (GPU target: CIFAR ResNet-18 bf16 batch 512, losslab device <= 1.15x the bare loop's time per image).
- ``engines``: the per-step overhead of the two training engines on a step too small to hide it (the digits
  ``mlp``, batch 64): ``losslab train`` images/s with ``--engine plain`` vs ``--engine lightning``, runs in
  ABBA order, each engine's best.
- ``startup``: seconds from launching ``losslab train`` (digits) to its first training step (target <= 3 s).
- ``threads``: a digits ``losslab train`` with a competing busy process, under the thread policy and with
  torch's default (one thread per core, OpenMP's default wait policy).
- ``compile``: CUDA only: a ResNet-20 batch-128 step eager vs ``torch.compile(mode="reduce-overhead")``
  (target >= 2x).
- ``graphs``: CUDA only: launch-bound batch-128 steps replayed as one CUDA graph vs eager: plain ResNet-20,
  LPGrad (p=2, weights + activations; double backward, which torch.compile cannot take) and the factorized
  ResNet-20 (rank scale 0.111); a step that cannot be captured prints why.
- ``tokenloss``: CUDA only: rooted token loss vs cross entropy (forward + backward) on 16,384 x 50,272 fp32
  logits, the chunked and the fused (compiled) formulation (target <= 1.2x).

Run::

    python benchmarks/bench_train.py                                   # CPU: small sizes
    python benchmarks/bench_train.py --device cuda --model cifar_resnet18 --batch-size 512 \\
        --precision bf16-mixed --images 50000 --epochs 3               # the GPU figures
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SRC = str(Path(__file__).resolve().parents[1] / "src")


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random-pixel CIFAR-10 in the python-pickle layout (5 training batches, a test batch, batches.meta)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = -(-n_train // 5)
    for b in range(5):
        n = min(per, n_train - b * per)
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch))
    test = {
        b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
        b"labels": rng.integers(0, 10, n_test).tolist(),
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline_alone(data_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """Images/s of one pass over the training split: device pipeline vs DataLoader workers (no model)."""
    from losslab.train import TrainConfig
    from losslab.train.build import make_loaders

    device = torch.device(args.device)
    cfg = TrainConfig(dataset="cifar10", data_dir=data_dir, batch_size=args.batch_size, num_workers=args.workers)
    rates = {}
    for kind in ("device", "workers"):
        loader = make_loaders(cfg, kind=kind).train
        if kind == "device":
            loader.to(device)
        best = 0.0
        for epoch in range(args.rounds):
            loader.sampler.set_epoch(epoch)
            sync(device)
            start, n = time.perf_counter(), 0
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                n += y.shape[0]
            sync(device)
            best = max(best, n / (time.perf_counter() - start))
        rates[kind] = best
    rates["ratio"] = rates["device"] / rates["workers"]
    print(
        f"pipeline alone, batch {args.batch_size}: device {rates['device']:,.0f} img/s, DataLoader with "
        f"{args.workers} workers {rates['workers']:,.0f} img/s -> {rates['ratio']:.1f}x (CPU target >= 4x)"
    )
    return rates


def losslab_train(
    data_dir: Path, out: Path, args: argparse.Namespace, loader: str, engine: str = "plain"
) -> dict[str, float]:
    from losslab.train import TrainConfig, fit

    cfg = TrainConfig(
        dataset="cifar10",
        data_dir=data_dir,
        model=args.model,
        loss="ce",
        batch_size=args.batch_size,
        epochs=args.epochs,
        precision=args.precision,
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices="1",
        num_workers=args.workers,
        loader=loader,
        engine=engine,
        out_dir=out,
        run_name=f"bench-{loader}-{engine}",
        overwrite=True,
        progress=False,
        val_every=args.epochs,
    )
    result = fit(cfg)
    return {"images_per_s": result.to_dict()["train_images_per_s"], "wall_s": result.wall_time_s}


def bare_loop(data_dir: Path, args: argparse.Namespace) -> float:
    """Images/s of a plain loop: same model/batch/precision/optimizer, uint8 data on the device, crop+flip there."""
    from losslab.data import load_split
    from losslab.data.device import random_crop, random_flip, raw_images
    from losslab.models import create_model

    device = torch.device(args.device)
    raw = raw_images(load_split("cifar10", "train", data_dir=data_dir))
    images, labels = raw.images.to(device), raw.labels.to(device)
    mean = torch.tensor([0.4914, 0.4822, 0.4465], device=device)[:, None, None]
    std = torch.tensor([0.2023, 0.1994, 0.2010], device=device)[:, None, None]
    model = create_model(args.model, num_classes=10, in_chans=3, img_size=32).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float16
    autocast = args.precision in ("bf16-mixed", "16-mixed")
    n_batches = len(labels) // args.batch_size
    rates = []
    for _ in range(args.epochs):
        order = torch.randperm(len(labels), device=device)
        sync(device)
        start = time.perf_counter()
        for i in range(n_batches):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x = (random_flip(random_crop(images[idx], 4, gen), gen).float() / 255 - mean) / std
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        rates.append(n_batches * args.batch_size / (time.perf_counter() - start))
    return max(rates[1:] or rates)  # the first epoch warms up (cuDNN autotuning, allocator)


def engine_overhead(out: Path, args: argparse.Namespace, epochs: int = 10) -> dict[str, float]:
    """Training images/s of the digits ``mlp`` (a step of a few microseconds of arithmetic) under each engine."""
    from losslab.train import TrainConfig, fit

    best: dict[str, float] = {}
    for engine in ("plain", "lightning", "lightning", "plain"):
        cfg = TrainConfig(
            dataset="digits",
            model="mlp",
            batch_size=64,
            epochs=epochs,
            accelerator="gpu" if args.device.startswith("cuda") else "cpu",
            devices="1",
            engine=engine,
            out_dir=out,
            run_name=f"engine-{engine}",
            overwrite=True,
            progress=False,
            val_every=epochs,
        )
        rate = fit(cfg).speed["train_images_per_s"]
        best[engine] = max(best.get(engine, 0.0), rate)
    return best


def startup(out: Path) -> tuple[float, float]:
    """(seconds from launching ``losslab train`` on digits to its first training step, of which after ``fit``
    was called)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "losslab.cli", "train", "--epochs", "1", "--out-dir", str(out), "--run-name"]
    cmd += ["startup", "--overwrite", "--no-progress"]
    start = time.time()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    result = json.loads((out / "startup" / "result.json").read_text())
    return result["first_step_unix"] - start, result["first_step_s"]


def thread_policy(out: Path, epochs: int) -> dict[str, float]:
    """A digits ``losslab train`` with one competing busy process: the policy vs torch's default settings."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    base["PYTHONPATH"] = SRC
    no_policy = "import losslab.threads as t; t.configure_threads = lambda n=None: 0; "
    variants = {  # name: (code run before the CLI, extra environment)
        "policy": ("", {}),
        "torch default": (no_policy, {}),
        "2 threads + PASSIVE": ("", {"LOSSLAB_THREADS": "2"}),
    }
    busy = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    found = {}
    try:
        time.sleep(1.0)
        for name, (pre, env) in [*variants.items(), *reversed(variants.items())]:  # ABC CBA: drift cancels
            run = name.replace(" ", "_").replace("+", "")
            args = ["train", "--epochs", str(epochs), "--out-dir", str(out), "--run-name", run, "--overwrite"]
            code = f"{pre}import sys; from losslab.cli.app import main; main({args!r})"
            proc = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"threads, {name}: failed\n{proc.stderr[-2000:]}")
                continue
            result = json.loads((out / run / "result.json").read_text())
            found[name] = found.get(name, 0.0) + result["train_images_per_s"] / 2  # mean of the two runs
            print(
                f"threads, {name}: {result['threads']['torch_threads']} torch threads, "
                f"{result['train_images_per_s']:,.0f} img/s, run {result['wall_time_s']:.1f} s"
            )
    finally:
        busy.kill()
        busy.wait()
    if "policy" in found and "torch default" in found:
        means = ", ".join(f"{k} {v:,.0f}" for k, v in found.items())
        print(
            f"mean img/s: {means}; policy vs torch's default with a busy core: "
            f"{found['policy'] / found['torch default']:.1f}x"
        )
    return found


def compile_speedup(args: argparse.Namespace) -> None:
    """CUDA: ResNet-20 batch 128 training step, eager vs torch.compile(mode='reduce-overhead')."""
    from losslab.models import create_model

    device = torch.device(args.device)
    x = torch.randn(128, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), device=device)
    times = {}
    for mode in ("eager", "reduce-overhead"):
        model = create_model("cifar_resnet20", num_classes=10, in_chans=3, img_size=32).to(device)
        model = model.to(memory_format=torch.channels_last)
        if mode != "eager":
            model.compile(mode=mode)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def step(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(20):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(200):
            step()
        sync(device)
        times[mode] = (time.perf_counter() - start) / 200
    print(
        f"ResNet-20 batch 128 step: eager {1e3 * times['eager']:.2f} ms, compiled (reduce-overhead) "
        f"{1e3 * times['reduce-overhead']:.2f} ms -> {times['eager'] / times['reduce-overhead']:.2f}x (target >= 2x)"
    )


def timed(step: object, device: torch.device, n: int = 50, warmup: int = 5) -> float:
    """Seconds per call of ``step()`` (median-free: total of ``n`` calls after ``warmup``)."""
    for _ in range(warmup):
        step()  # type: ignore[operator]
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()  # type: ignore[operator]
    sync(device)
    return (time.perf_counter() - start) / n


def cuda_graphed(step: object, warmup: int = 3) -> object:
    """``step`` (static tensors, no host sync) captured once into a CUDA graph; returns the replay function."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()  # type: ignore[operator]
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()  # type: ignore[operator]
    return graph.replay


def graph_steps(args: argparse.Namespace) -> None:
    """Batch-128 ResNet-20 steps (plain, LPGrad, factorized) eager vs replayed as a CUDA graph."""
    sys.path.insert(0, str(Path(__file__).parent))
    import timm

    from bench_regularizers import BLOCK_OUTPUTS, make_step
    from losslab.layers import factorize
    from losslab.regularizers import create

    device = torch.device(args.device)
    x = torch.randn(128, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    eager_plain = None
    for name in ("plain", "lp_grad", "factorized"):
        model = timm.create_model("cifar_resnet20").to(device)
        reg = None
        if name == "lp_grad":
            reg = create("lp_grad", p=2, lam=0.05, activation_names=BLOCK_OUTPUTS)
            reg.attach(model)
        if name == "factorized":
            factorize(model, rank_scale=0.111)
            model.to(device)
        step = make_step(model, reg, x, y)
        eager = timed(step, device)
        eager_plain = eager_plain or eager
        try:
            graphed = timed(cuda_graphed(step), device)
            note = (
                f"CUDA graph {1e3 * graphed:.2f} ms ({eager / graphed:.2f}x faster, {graphed / eager_plain:.2f}x plain)"
            )
        except Exception as error:
            note = f"CUDA graph capture failed: {type(error).__name__}: {str(error)[:200]}"
        print(f"ResNet-20 batch 128 {name} step: eager {1e3 * eager:.2f} ms ({eager / eager_plain:.2f}x plain); {note}")


def token_loss_speed(args: argparse.Namespace) -> None:
    """Rooted token loss vs cross entropy, forward + backward, on 16,384 x 50,272 fp32 logits."""
    from losslab.objectives.token import TokenLossSpec, token_loss

    device = torch.device(args.device)
    logits = torch.randn(16_384, 50_272, device=device, requires_grad=True)
    target = torch.randint(0, 50_272, (16_384,), device=device)
    spec = TokenLossSpec("root", k=5.0, m=5.0)

    def ce() -> None:
        F.cross_entropy(logits, target).backward()
        logits.grad = None

    def rooted(fused: bool) -> None:
        token_loss(logits, target, spec, fused=fused).backward()
        logits.grad = None

    t_ce = timed(ce, device, n=10, warmup=2)
    for fused in (False, True):
        t = timed(lambda fused=fused: rooted(fused), device, n=10, warmup=3)
        print(
            f"token loss {'fused (compiled)' if fused else 'chunked'}: {1e3 * t:.1f} ms vs cross entropy "
            f"{1e3 * t_ce:.1f} ms -> {t / t_ce:.2f}x (target <= 1.2x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parts", default="pipeline,train,engines,startup,threads,compile,graphs,tokenloss")
    parser.add_argument("--images", type=int, default=None, help="training images (default 50,000 CUDA, 6,000 CPU)")
    parser.add_argument("--model", default=None, help="default cifar_resnet18 on CUDA, small_cnn on CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default 512 on CUDA, 128 on CPU")
    parser.add_argument("--precision", default=None, help="default bf16-mixed on CUDA, 32 on CPU")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.images = args.images or (50_000 if cuda else 6_000)
    args.model = args.model or ("cifar_resnet18" if cuda else "small_cnn")
    args.batch_size = args.batch_size or (512 if cuda else 128)
    args.precision = args.precision or ("bf16-mixed" if cuda else "32")
    if not cuda:
        torch.set_num_threads(1)
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_dir = write_cifar10(root / "data", args.images, max(1000, args.images // 5))
        print(f"device {args.device}; random-pixel CIFAR-10, {args.images:,} training images (val 10 % of them)")
        if "pipeline" in parts:
            pipeline_alone(data_dir, args)
        if "train" in parts:
            runs = [("device", "plain"), ("device", "lightning"), ("workers", "plain")]
            rates: dict[tuple[str, str], dict[str, float]] = {}
            for run in runs + runs[::-1]:  # ABC-CBA: the first fit of a process runs cold; keep each one's best
                r = losslab_train(data_dir, root / "runs", args, *run)
                if run not in rates or r["images_per_s"] > rates[run]["images_per_s"]:
                    rates[run] = r
            bare = bare_loop(data_dir, args)
            for (kind, engine), r in rates.items():
                print(
                    f"losslab train --loader {kind} --engine {engine}: {r['images_per_s']:,.0f} img/s -> "
                    f"{bare / r['images_per_s']:.2f}x the bare loop's time per image"
                )
            print(f"bare loop ({args.model}, batch {args.batch_size}, {args.precision}): {bare:,.0f} img/s")
        if "engines" in parts:
            rates = engine_overhead(root / "runs", args)
            print(
                f"digits mlp, batch 64: plain engine {rates['plain']:,.0f} img/s, Lightning engine "
                f"{rates['lightning']:,.0f} img/s -> plain {rates['plain'] / rates['lightning']:.2f}x"
            )
        if "startup" in parts:
            total, in_fit = startup(root / "runs")
            print(
                f"digits losslab train: first training step {total:.2f} s after launch, {in_fit:.2f} s after fit() "
                "was called (the rest is interpreter start and imports; target <= 3 s)"
            )
        if "threads" in parts and not cuda:
            thread_policy(root / "runs", epochs=3)
        if "compile" in parts and cuda:
            compile_speedup(args)
        if "graphs" in parts and cuda:
            graph_steps(args)
        if "tokenloss" in parts and cuda:
            token_loss_speed(args)


if __name__ == "__main__":
    main()
