"""Top Hessian eigenvalue and trace of CIFAR ResNet-20: losslab's Lanczos / Hutch++ against PyHessian's power
iteration / Hutchinson, at the same accuracy, measured in one run.

PyHessian (Yao et al. 2020) is re-implemented here with its published algorithms (its package-index release calls
the removed ``torch.eig``): power iteration v ← Hv/‖Hv‖ with λ = vᵀHv, stopping when two consecutive estimates
differ by less than ``tol``·|λ| (tol 1e-3, at most 100 products), and Hutchinson with Rademacher vectors, stopping
when the running mean changes by less than ``tol``·|mean| (tol 1e-3, at most 100 products). Its product over a
data loader recomputes forward + backward(create_graph) + backward for every batch and every product
(``HessianOperator(method="double", graph_budget=0)`` here, the same autograd calls); its single-batch mode keeps
the one batch's graph (shown as "PyHessian single batch", for when the whole probe set fits in memory as one
batch). losslab's side is what ``losslab landscape`` runs: ``HessianOperator(method="auto")`` over batches of
``--batch-size`` with each batch's first-order graph kept across products (within its memory budget), strata of
``--stratum`` images; :func:`losslab.landscape.probes.probe_eig` (Lanczos from the warm start of the first
``--warm`` images, stopping on the estimated eigenvalue error) and :func:`hutch_plus_plus` with one probe vector per
stratum (``HessianOperator.stratified_quadratic``).

Two comparisons, each printed:

- **as shipped**: each method with its own stopping rule at tolerance ``--accuracy`` (PyHessian's above; losslab's:
  estimated eigenvalue error min(r, r²/δ) ≤ 1e-3·θ; Hutch++: standard error ≤ 1e-3·|trace|, capped at ``--pilot``
  samples), CPU seconds measured from a fresh operator (graph building and the warm stage included), and the error
  each reached against the reference;
- **oracle stop** (a stopping rule neither has in practice): eigenvalue: the products until the estimate is within
  1e-3 (and 1e-5) of a long converged Lanczos run and stays there, times each side's CPU seconds per product (for
  losslab plus the warm stage's measured CPU seconds and the graph building of the first product), Lanczos from the
  warm start and from a random one; trace: the products each estimator needs for a standard error ≤ 1e-3·|trace|,
  from its per-sample variance measured on ``--pilot`` samples (Hutchinson: (σ/(1e-3·|tr|))²; Hutch++ per stratum:
  2·rank + (σ_deflated/(1e-3·|tr|))²; Hutchinson per stratum likewise), times the seconds per product.

Run with one thread (the machine is shared)::

    .venv/bin/python benchmarks/bench_landscape.py                 # 2,048 random CIFAR-shaped images, at init
    .venv/bin/python benchmarks/bench_landscape.py --lean --skip-shipped-trace --pilot 4   # the same, CPU-sized
    .venv/bin/python benchmarks/bench_landscape.py --quick         # 128 images in batches of 16, 8 pilot samples
    .venv/bin/python benchmarks/bench_landscape.py --trained 4     # ResNet-20 after 4 epochs on digits at 32 px
    .venv/bin/python benchmarks/bench_landscape.py --device cuda
    .venv/bin/python benchmarks/bench_landscape.py --run runs/digits-small_cnn-root-s0   # a trained losslab run
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab.landscape import HessianOperator, ProbeSettings, hutch_plus_plus, hutchinson, lanczos_eigenvalues
from losslab.landscape.probes import probe_eig, warm_start
from losslab.models import create_model

#: Eigenvalue accuracies reported (relative error to the converged reference); the first is the target's.
ACCURACIES = (1e-3, 1e-5)
#: Vectors per block in the block-product measurement (vmap over the kept graph).
BLOCK = 4


def power_iteration(
    op: HessianOperator, steps: int, seed: int, tol: float | None = None, ref: float | None = None, confirm: int = 5
) -> list[float]:
    """PyHessian's eigenvalue loop: the Rayleigh quotient after each product. With ``tol``: its own stopping rule
    (two consecutive estimates within ``tol``·|λ|). With ``ref``: stops ``confirm`` products after the first
    estimate within ``ACCURACIES[-1]`` of ``ref`` (those confirm whether it stays there)."""
    gen = torch.Generator(device=op.device).manual_seed(seed)
    v = torch.randn(op.dim, generator=gen, device=op.device, dtype=op.dtype)
    v /= v.norm()
    out: list[float] = []
    streak = 0
    for _ in range(steps):
        hv = op.hvp(v)
        out.append(float(v @ hv))
        v = hv / hv.norm()
        if tol is not None and len(out) > 1 and abs(out[-2] - out[-1]) / (abs(out[-2]) + 1e-6) < tol:
            out.pop()  # PyHessian returns the estimate before the one that met its rule
            break
        if ref is not None:
            streak = streak + 1 if abs(out[-1] - ref) <= ACCURACIES[-1] * abs(ref) else 0
            if streak > confirm:
                break
    return out


def pyhessian_trace(op: HessianOperator, max_iter: int, tol: float, seed: int) -> list[float]:
    """PyHessian's Hutchinson loop: vᵀHv for Rademacher v until the running mean changes by < ``tol``·|mean|."""
    gen = torch.Generator(device=op.device).manual_seed(seed)
    values: list[float] = []
    mean = 0.0
    for _ in range(max_iter):
        v = torch.randint(0, 2, (op.dim,), generator=gen, device=op.device).to(op.dtype).mul_(2).sub_(1)
        values.append(float(v @ op.hvp(v)))
        new = sum(values) / len(values)
        if abs(new - mean) / (abs(mean) + 1e-6) < tol:
            break
        mean = new
    return values


def block_hvp(op: HessianOperator, vectors: Tensor) -> Tensor:
    """H·V for a block of vectors (rows) in one backward pass per batch through the kept first-order graphs
    (``is_grads_batched``: vmap over the tangents); the operator's graph must be kept (one product done)."""
    params = list(op.params.values())
    total = torch.zeros_like(vectors)
    for w, grads in zip(op.weights, op.graph.grads):
        flat = op.flatten([grads[n] for n in op.names])
        eye = torch.eye(len(vectors), dtype=op.dtype, device=op.device)
        rows = torch.autograd.grad(vectors @ flat, params, grad_outputs=eye, retain_graph=True, is_grads_batched=True)
        total.add_(torch.cat([r.reshape(len(vectors), -1) for r in rows], 1), alpha=w)
    return total


def first_within(estimates: list[float], ref: float, accuracy: float) -> int | None:
    """The 1-based index from which every estimate is within ``accuracy`` of ``ref`` (None if never)."""
    ok = [abs(e - ref) <= accuracy * abs(ref) for e in estimates]
    for i in range(len(ok)):
        if all(ok[i:]):
            return i + 1
    return None


def cpu_seconds(fn: Callable[..., Any], *args: Any, repeat: int = 2) -> float:
    """Mean CPU seconds of ``fn(*args)`` (CPU time, not wall: the machine is shared; one thread)."""
    start = time.process_time()
    for _ in range(repeat):
        fn(*args)
    return (time.process_time() - start) / repeat


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the CPU seconds it took."""
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def problem(args: argparse.Namespace, dev: torch.device) -> tuple[torch.nn.Module, list, int, str]:
    """(model in eval mode, probe batches, images, description) for the chosen setting."""
    n = args.images or (128 if args.quick else 2048)
    if args.run is not None:  # a trained losslab run on its default probe set (2,048 training images or fewer)
        from losslab.landscape.run import probe_batches
        from losslab.train import load_run

        loaded = load_run(args.run)
        batches, n = probe_batches(loaded.config, None, "train", 0, args.batch_size)
        return loaded.model.to(dev).eval(), batches, n, f"trained run {args.run} ({loaded.config.model})"
    if args.trained:
        from bench_gpfq import digits_32, train

        x, y, _, _ = digits_32()
        start = time.process_time()
        model = train("cifar_resnet20", x, y, args.trained)
        with torch.no_grad():
            acc = float((model(x).argmax(1) == y).float().mean())
        what = (
            f"CIFAR ResNet-20 trained {args.trained} epochs on digits at 32 px (train accuracy {acc:.3f}, "
            f"{time.process_time() - start:.0f} CPU s)"
        )
        x, y = x[:n], y[:n]
    else:
        torch.manual_seed(0)
        model = create_model("cifar_resnet20", num_classes=10).eval()
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(n, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        what = "CIFAR ResNet-20 at initialization, random images and labels"
    return model.to(dev).eval(), list(zip(x.split(args.batch_size), y.split(args.batch_size))), len(y), what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 images, 8 pilot samples")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 (--quick: 16)")
    parser.add_argument("--stratum", type=int, default=None, help="images per trace stratum (default: the batch size)")
    parser.add_argument("--warm", type=int, default=None, help="images of the warm start (default 256; --quick 16)")
    parser.add_argument("--skip-shipped-trace", action="store_true", help="skip PyHessian's own trace loop")
    parser.add_argument("--eig-only", action="store_true", help="the eigenvalue as shipped only (no oracle, no trace)")
    parser.add_argument(
        "--lean", action="store_true", help="skip forward-over-reverse, block and single-batch timings (big sets)"
    )
    parser.add_argument("--accuracy", type=float, default=1e-3)
    parser.add_argument("--pilot", type=int, default=None, help="samples to measure each trace estimator's variance")
    parser.add_argument("--rank", type=int, default=10, help="Hutch++ deflation rank")
    parser.add_argument("--trained", type=int, default=0, help="train ResNet-20 this many epochs on digits at 32 px")
    parser.add_argument("--run", default=None, help="probe this trained losslab run instead of ResNet-20")
    parser.add_argument("--budget-gib", type=float, default=8.0, help="memory for losslab's kept graphs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pilot = args.pilot or (8 if args.quick else 30)
    args.batch_size = args.batch_size or (16 if args.quick else 256)
    args.stratum = args.stratum or args.batch_size
    args.warm = args.warm if args.warm is not None else (16 if args.quick else 256)
    dev = torch.device(args.device)
    model, batches, n, what = problem(args, dev)
    budget = int(args.budget_gib * 2**30)
    ours = operator(model, batches, dev, budget, args.stratum)
    theirs = HessianOperator(model, F.cross_entropy, batches, method="double", device=dev, graph_budget=0)
    func = HessianOperator(model, F.cross_entropy, batches, method="func", device=dev)
    print(f"{what}: {n} images, {ours.dim:,} parameters, device {dev}, {torch.get_num_threads()} thread(s)")

    # ---------------------------------------------------------------- one product
    v = torch.randn(ours.dim, device=dev)
    _, t_first = timed(lambda: ours.hvp(v))  # auto: double backward, keeping each batch's graph if it fits
    kept = ours.graph.batch(0) is not None
    t_ours, t_theirs = cpu_seconds(ours.hvp, v), cpu_seconds(theirs.hvp, v)
    t_func = float("nan") if args.lean else cpu_seconds(func.hvp, v)
    print(
        f"one product (CPU s): PyHessian data loader (recompute) {t_theirs:.3f}; losslab {ours.method}, graph "
        f"{'kept' if kept else 'not kept'} ({ours.graph.bytes / 2**20:,.0f} MiB saved tensors) {t_ours:.3f} "
        f"(first, building it: {t_first:.3f}); forward-over-reverse {t_func:.3f}; "
        f"per-product speed-up {t_theirs / t_ours:.2f}x"
    )
    if kept and not args.lean:
        block = torch.randn(BLOCK, ours.dim, device=dev)
        t_block = cpu_seconds(block_hvp, ours, block) / BLOCK
        print(f"block of {BLOCK} vectors through the kept graph (vmap over tangents): {t_block:.3f} per vector")
    single = (
        None
        if args.lean
        else HessianOperator(
            model,
            F.cross_entropy,
            [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))],
            method="double",
            device=dev,
            graph_budget=budget,
        )
    )
    if single is not None and single.hvp(v) is not None and single.graph.batch(0) is not None:
        print(f"PyHessian single batch (all {n} images, graph kept): {cpu_seconds(single.hvp, v):.3f} per product")
    del single

    # ---------------------------------------------------------------- top eigenvalue
    ref = lanczos_eigenvalues(ours.hvp, ours.dim, k=1, tol=1e-7, max_steps=150, seed=123, dtype=ours.dtype, device=dev)
    lam = ref.values[0]
    print(f"reference top eigenvalue {lam:.6f} (residual {ref.residuals[0]:.1e}, {ref.steps} Lanczos steps)")
    acc = args.accuracy
    before = theirs.hvp_count
    shipped_power, t_power = timed(lambda: power_iteration(theirs, 100, 0, tol=acc))
    n_power_shipped = theirs.hvp_count - before
    settings = ProbeSettings(probes=("eig",), top_k=1, eig_tol=acc, eig_warm=args.warm, seed=0)
    fresh = operator(model, batches, dev, budget, args.stratum)  # as shipped: the graphs are built inside
    own, t_lanczos = timed(lambda: probe_eig(fresh, settings))
    warm_products = fresh.hvp_count - own["lanczos_steps"]
    print(
        f"as shipped, eigenvalue: PyHessian power iteration (tol {acc:g}) {n_power_shipped} products, "
        f"{t_power:.1f} CPU s, error {abs(shipped_power[-1] - lam) / abs(lam):.1e}; losslab (warm start on "
        f"{args.warm} images: {warm_products} products; Lanczos on all {n}, estimated eigenvalue error <= {acc:g}·λ) "
        f"{own['lanczos_steps']} products, {t_lanczos:.1f} CPU s in all (graphs built included), "
        f"error {abs(own['eigenvalues'][0] - lam) / abs(lam):.1e} -> speed-up {t_power / t_lanczos:.1f}x"
    )
    del fresh
    if args.eig_only:
        return
    power = power_iteration(theirs, 30 if args.lean else 100, 0, ref=lam)
    fresh = operator(model, batches, dev, budget, args.stratum)
    warm, t_warm = timed(lambda: warm_start(fresh, settings, "largest"))
    ritz: list[list[float]] = []
    kw = {
        "k": 1,
        "tol": 0.0,
        "max_steps": 8 if args.lean else 12,
        "seed": 0,
        "dtype": ours.dtype,
        "device": dev,
        "measure": False,
    }
    lanczos_eigenvalues(ours.hvp, ours.dim, history=ritz, **kw, **warm)
    cold: list[list[float]] = []
    lanczos_eigenvalues(ours.hvp, ours.dim, history=cold, **kw)
    tops, colds = [h[0] for h in ritz], [h[0] for h in cold]
    print(f"warm stage: {t_warm:.1f} CPU s ({fresh.hvp_count} products on {args.warm} images, graph built included)")
    for accuracy in ACCURACIES:
        n_power = first_within(power, lam, accuracy)
        n_warm, n_cold = first_within(tops, lam, accuracy), first_within(colds, lam, accuracy)
        line = (
            f"oracle stop, eigenvalue within {accuracy:g}: power iteration {n_power} products; Lanczos from the warm "
            f"start {n_warm} (+ the warm stage), from a random start {n_cold}"
        )
        if n_power is not None and n_warm is not None and n_cold is not None:
            build = t_first - t_ours  # the first product of a fresh operator builds its graphs
            line += (
                f" -> speed-up {(n_power * t_theirs) / (t_warm + build + n_warm * t_ours):.1f}x warm, "
                f"{(n_power * t_theirs) / (build + n_cold * t_ours):.1f}x cold"
            )
        print(line)

    # ---------------------------------------------------------------- trace
    strat = {"quadratic": ours.stratified_quadratic}
    (hpp, t_hpp) = timed(
        lambda: hutch_plus_plus(
            ours.hvp, ours.dim, rank=args.rank, samples=pilot, seed=0, tol=acc, min_samples=pilot, **strat
        )
    )
    hut = hutchinson(theirs.hvp, theirs.dim, samples=pilot, seed=0, dtype=theirs.dtype, device=dev)
    shut = hutchinson(ours.hvp, ours.dim, samples=pilot, seed=0, dtype=ours.dtype, device=dev, **strat)
    tr = hpp.trace
    strata = len(set(ours.strata))
    print(
        f"trace {tr:.4f} ± {hpp.stderr:.4f} (Hutch++ rank {args.rank}, one vector per stratum: {strata} strata of "
        f"{args.stratum} images; {hpp.matvecs} products, {t_hpp:.1f} CPU s); Hutchinson {hut.trace:.4f} ± "
        f"{hut.stderr:.4f}; Hutchinson with one vector per stratum {shut.trace:.4f} ± {shut.stderr:.4f} "
        f"({pilot} samples each)"
    )
    if not args.skip_shipped_trace:
        shipped, t_shipped = timed(lambda: pyhessian_trace(theirs, 100, acc, seed=1))
        t = torch.tensor(shipped, dtype=torch.float64)
        err = float(t.std() / math.sqrt(len(t))) if len(t) > 1 else float("nan")
        print(
            f"as shipped, trace: PyHessian Hutchinson (tol {acc:g} on the running mean) {len(shipped)} products, "
            f"{t_shipped:.1f} CPU s, trace {float(t.mean()):.4f}, its standard error {err:.4f} "
            f"({err / abs(tr):.1e} relative), off the Hutch++ estimate by {abs(float(t.mean()) - tr) / abs(tr):.1e}"
        )
    t_strat = cpu_seconds(lambda: ours.stratified_quadratic(lambda: torch.randn(ours.dim, device=dev), lambda u: u))
    need_hpp = 2 * args.rank + (hpp.stderr * math.sqrt(hpp.samples) / (acc * abs(tr))) ** 2
    need_shut = (shut.stderr * math.sqrt(pilot) / (acc * abs(tr))) ** 2
    need_hut = (hut.stderr * math.sqrt(pilot) / (acc * abs(tr))) ** 2
    print(
        f"oracle stop, products for stderr <= {acc:g}·|trace|: Hutch++ per stratum {need_hpp:,.0f}, Hutchinson per "
        f"stratum {need_shut:,.0f}, Hutchinson {need_hut:,.0f}; CPU s per stratified sample {t_strat:.3f}"
    )
    cost_hpp = 2 * args.rank * t_ours + (need_hpp - 2 * args.rank) * t_strat
    print(
        f"trace speed-up: {(need_hut * t_theirs) / cost_hpp:.1f}x Hutch++ per stratum, "
        f"{(need_hut * t_theirs) / (need_shut * t_strat):.1f}x Hutchinson per stratum (target >= 2x)"
    )


def operator(model: torch.nn.Module, batches: list, dev: torch.device, budget: int, stratum: int) -> HessianOperator:
    """losslab's operator as ``losslab landscape`` builds it: graphs kept within ``budget``, strata of ``stratum``."""
    return HessianOperator(model, F.cross_entropy, batches, device=dev, graph_budget=budget, stratum=stratum)


if __name__ == "__main__":
    main()
