"""Top Hessian eigenvalue and trace of CIFAR ResNet-20: losslab's Lanczos / Hutch++ against PyHessian's power
iteration / Hutchinson, at the same accuracy, measured in one run.

PyHessian (Yao et al. 2020) is re-implemented here with its published algorithms (its package-index release calls
the removed ``torch.eig``): power iteration v ← Hv/‖Hv‖, λ = vᵀHv, and Hutchinson with Rademacher vectors, each
Hessian-vector product by double backward summed over batches. losslab's side is ``HessianOperator(method="auto")``
(the faster of forward-over-reverse and double backward) with :func:`lanczos_eigenvalues` / :func:`hutch_plus_plus`.

"Same accuracy" is relative error ≤ ``--accuracy`` (1e-3):

- eigenvalue: the reference is a long converged Lanczos run (residual ≤ 1e-7·λ). Both methods are charged the
  products until their estimate is within 1e-3 (and 1e-5) of it and stays there (a stopping oracle neither has
  in practice), from the same start vector; Lanczos's own stopping rule (residual ≤ 1e-3·λ) is printed too;
- trace: the products each estimator needs for a standard error ≤ 1e-3·|trace|, from its per-sample variance
  measured on ``--pilot`` samples (Hutchinson: (σ/(1e-3·|tr|))²; Hutch++: 2·rank + (σ_deflated/(1e-3·|tr|))²),
  times the measured seconds per product.

Run with one thread (the machine is shared)::

    .venv/bin/python benchmarks/bench_landscape.py            # 2,048 random CIFAR-shaped images
    .venv/bin/python benchmarks/bench_landscape.py --quick    # 128 images, fewer pilot samples
    .venv/bin/python benchmarks/bench_landscape.py --device cuda
    .venv/bin/python benchmarks/bench_landscape.py --run runs/digits-small_cnn-root-s0   # a trained model
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from losslab.landscape import HessianOperator, hutch_plus_plus, hutchinson, lanczos_eigenvalues
from losslab.models import create_model

#: Eigenvalue accuracies reported (relative error to the converged reference); the first is the target's.
ACCURACIES = (1e-3, 1e-5)


def power_iteration(
    op: HessianOperator, steps: int, seed: int, ref: float, accuracy: float, confirm: int = 5
) -> list[float]:
    """PyHessian's eigenvalue loop: the Rayleigh quotient after each product; stops ``confirm`` products after the
    first estimate within ``accuracy`` of ``ref`` (those confirm whether it stays there)."""
    gen = torch.Generator(device=op.device).manual_seed(seed)
    v = torch.randn(op.dim, generator=gen, device=op.device, dtype=op.dtype)
    v /= v.norm()
    out: list[float] = []
    streak = 0
    for _ in range(steps):
        hv = op.hvp(v)
        out.append(float(v @ hv))
        v = hv / hv.norm()
        streak = streak + 1 if abs(out[-1] - ref) <= accuracy * abs(ref) else 0
        if streak > confirm:
            break
    return out


def first_within(estimates: list[float], ref: float, accuracy: float) -> int | None:
    """The 1-based index from which every estimate is within ``accuracy`` of ``ref`` (None if never)."""
    ok = [abs(e - ref) <= accuracy * abs(ref) for e in estimates]
    for i in range(len(ok)):
        if all(ok[i:]):
            return i + 1
    return None


def cpu_seconds(fn, *args, repeat: int = 2) -> float:
    """Mean CPU seconds of ``fn(*args)`` (CPU time, not wall: the machine is shared; one thread)."""
    start = time.process_time()
    for _ in range(repeat):
        fn(*args)
    return (time.process_time() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 images, 8 pilot samples")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--accuracy", type=float, default=1e-3)
    parser.add_argument("--pilot", type=int, default=None, help="samples to measure each trace estimator's variance")
    parser.add_argument("--rank", type=int, default=10, help="Hutch++ deflation rank")
    parser.add_argument("--run", default=None, help="probe this trained losslab run instead of ResNet-20 at init")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.images or (128 if args.quick else 2048)
    pilot = args.pilot or (8 if args.quick else 30)
    dev = torch.device(args.device)
    if args.run is not None:  # a trained losslab run on its default probe set (2,048 training images or fewer)
        from losslab.landscape.run import probe_batches
        from losslab.train import load_run

        loaded = load_run(args.run)
        model = loaded.model.to(dev).eval()
        batches, n = probe_batches(loaded.config, None, "train", 0, args.batch_size)
        what = f"trained run {args.run} ({loaded.config.model}, {loaded.config.dataset})"
    else:
        torch.manual_seed(0)
        model = create_model("cifar_resnet20", num_classes=10).to(dev).eval()
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(n, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        batches = list(zip(x.split(args.batch_size), y.split(args.batch_size)))
        what = "CIFAR ResNet-20 at initialization, random images and labels"
    ours = HessianOperator(model, F.cross_entropy, batches, device=dev)
    theirs = HessianOperator(model, F.cross_entropy, batches, method="double", device=dev)
    print(f"{what}: {n} images, {ours.dim:,} parameters, device {dev}, {torch.get_num_threads()} thread(s)")

    v = torch.randn(ours.dim, device=dev)
    ours.hvp(v)  # auto: times both ways, keeps the faster
    t_ours, t_theirs = cpu_seconds(ours.hvp, v), cpu_seconds(theirs.hvp, v)
    print(f"one product (CPU s): losslab ({ours.method}) {t_ours:.2f}, PyHessian double backward {t_theirs:.2f}")

    # ---------------------------------------------------------------- top eigenvalue
    ref = lanczos_eigenvalues(ours.hvp, ours.dim, k=1, tol=1e-7, max_steps=150, seed=123, dtype=ours.dtype, device=dev)
    lam = ref.values[0]
    print(f"reference top eigenvalue {lam:.6f} (residual {ref.residuals[0]:.1e}, {ref.steps} Lanczos steps)")
    power = power_iteration(theirs, 100, 0, lam, min(ACCURACIES))
    ritz: list[list[float]] = []
    lanczos_eigenvalues(
        ours.hvp, ours.dim, k=1, tol=0.0, max_steps=40, seed=0, dtype=ours.dtype, device=dev, history=ritz
    )
    own = lanczos_eigenvalues(
        ours.hvp, ours.dim, k=1, tol=args.accuracy, max_steps=100, seed=0, dtype=ours.dtype, device=dev
    )
    print(
        f"Lanczos with its own stopping rule (residual <= {args.accuracy:g}·λ): {own.steps} steps + 1 residual "
        f"product, error {abs(own.values[0] - lam) / abs(lam):.1e}"
    )
    eig_ratio = None
    for acc in ACCURACIES:
        n_power = first_within(power, lam, acc)
        n_lanczos = first_within([h[0] for h in ritz], lam, acc)
        line = f"eigenvalue within {acc:g}: power iteration {n_power} products, Lanczos {n_lanczos} products"
        if n_power is not None and n_lanczos is not None:
            ratio = (n_power * t_theirs) / (n_lanczos * t_ours)
            line += f" -> speed-up {ratio:.1f}x"
            if acc == args.accuracy:
                eig_ratio = ratio
        print(line)
    if eig_ratio is not None:
        print(f"top eigenvalue speed-up at {args.accuracy:g}: {eig_ratio:.1f}x (target >= 3x)")

    # ---------------------------------------------------------------- trace
    hpp = hutch_plus_plus(ours.hvp, ours.dim, rank=args.rank, samples=pilot, seed=0, dtype=ours.dtype, device=dev)
    hut = hutchinson(theirs.hvp, theirs.dim, samples=pilot, seed=0, dtype=theirs.dtype, device=dev)
    tr = hpp.trace
    need_hpp = 2 * args.rank + (hpp.stderr * pilot**0.5 / (args.accuracy * abs(tr))) ** 2
    need_hut = (hut.stderr * pilot**0.5 / (args.accuracy * abs(tr))) ** 2
    print(
        f"trace {tr:.4f} ± {hpp.stderr:.4f} (Hutch++), Hutchinson {hut.trace:.4f} ± {hut.stderr:.4f} "
        f"({pilot} samples each)"
    )
    print(f"products for stderr <= {args.accuracy:g}·|trace|: Hutch++ {need_hpp:,.0f}, Hutchinson {need_hut:,.0f}")
    print(f"trace speed-up: {(need_hut * t_theirs) / (need_hpp * t_ours):.1f}x (target >= 2x)")


if __name__ == "__main__":
    main()
