"""DCGAN training step of ``losslab gan train`` vs a bare loop with the same networks (issue 14 target: ≤ 1.3×).

    python benchmarks/bench_gan.py                       # CPU, small width (the shared 2-vCPU VM)
    python benchmarks/bench_gan.py --device cuda --width 64 --batch-size 64 --steps 200

Both loops train DCGAN G/D (32×32, 1 channel) on one device-resident random batch tensor with Adam (2e-4, β 0.5,
0.999). The bare loop: softplus losses, D then G over slices of the tensor, nothing else. losslab: one epoch of the
plain loop (``PlainLoop.train_epoch``) running :class:`GanTask`'s two phases (rooted loss k = 2, D frozen during
the G update, generator EMA after G's step), with everything the loop adds per step (the epoch's device-side
permutation, throughput clock, batch-size-weighted loss sums, the NaN flag, the epoch's one host read); R1 off as
in the bare loop. The two are timed in alternating rounds in the same process; the ratio is of the best round of
each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from losslab.gan import GanConfig, GanTask
from losslab.gan.data import GanData, ShuffledBatches
from losslab.gan.models import DCGANDiscriminator, DCGANGenerator
from losslab.runs.loop import LoopSettings, PlainLoop


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    data = GanData("bench", torch.rand(args.batch_size * args.steps, 1, 32, 32) * 2 - 1, None)
    cfg = GanConfig.build(
        {"data": "digits", "img_size": 32, "width": args.width, "batch_size": args.batch_size, "loss": "rooted"}
    )
    task = GanTask(cfg, data, device)
    batches = ShuffledBatches(data.tensor, args.batch_size).to(device)
    real = batches.tensor
    run_dir = Path(tempfile.mkdtemp())
    settings = LoopSettings(run_dir=run_dir, epochs=10**5, device=device, progress=False)
    loop = PlainLoop(task, SimpleNamespace(train=batches, val=None, test=None), settings)
    epochs = iter(range(10**5))

    torch.manual_seed(0)
    G = DCGANGenerator(32, 1, cfg.z_dim, args.width).to(device)
    D = DCGANDiscriminator(32, 1, args.width).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), **fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), **fused)

    def bare_step(x: torch.Tensor) -> None:
        z = torch.randn(x.shape[0], cfg.z_dim, device=device)
        with torch.no_grad():
            fake = G(z)
        d_loss = F.softplus(D(fake)).mean() + F.softplus(-D(x)).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.softplus(-D(G(torch.randn(x.shape[0], cfg.z_dim, device=device)))).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    def bare_epoch() -> None:
        for i in range(args.steps):
            bare_step(real[i * args.batch_size : (i + 1) * args.batch_size])

    def loop_epoch() -> None:
        loop.train_epoch(next(epochs))

    def timed(epoch: object) -> float:
        sync(device)
        start = time.perf_counter()
        epoch()  # type: ignore[operator]
        sync(device)
        return (time.perf_counter() - start) / args.steps

    for epoch in (bare_epoch, loop_epoch):  # warm-up
        timed(epoch)
    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(timed(bare_epoch))
        ours.append(timed(loop_epoch))
    b, o = min(bare), min(ours)
    print(
        f"device {device}, DCGAN 32x32 width {args.width}, batch {args.batch_size}, {args.steps} steps x {args.rounds}"
    )
    print(f"bare loop      {1e3 * b:8.2f} ms/step")
    print(f"losslab loop   {1e3 * o:8.2f} ms/step   ratio {o / b:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
