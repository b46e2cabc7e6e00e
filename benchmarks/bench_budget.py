"""Storage budget (issue 20 part 2): budgeted widths against uniform widths, predicted against realised.

    python benchmarks/bench_budget.py --out cells.jsonl             # 2-core CPU protocol (every cell, resumable)
    python benchmarks/bench_budget.py --out cells.jsonl --report    # the tables from what is there
    python benchmarks/bench_budget.py --out c.jsonl --full          # 15/30 epochs, 256 calibration images (GPU)

Cells (every one recorded, also where the budget loses), one line of ``--out`` per (model, seed, method), so a
killed run resumes where it stopped (trained runs are kept under ``--runs``):

1. digits ``small_cnn`` and ``cifar_resnet20`` (32 px), seeds, GPTQ and GPFQ (per-channel asym grid), B ∈ {2.25,
   2.5, 3, 3.5}: the budgeted model's top-1 (the command's default ``--sensitivity``, ``--refine``,
   ``--refine-score``, ``--refine-noise`` and ``--select-samples`` unless given to this script as ``--refine``,
   ``--refine-score``, ``--refine-noise``, ``--select``; exact solver, widths 2,3,4,8) against the uniform model at the
   narrowest width whose stored bits per weight are >= B (the issue's target) and at the widest width within B;
   the seeds' std rule: a loss counts against the target when it exceeds the std over seeds of the uniform
   reference's top-1;
2. rank correlation (Spearman) between predicted total sensitivity and the realised accuracy drop across budgets
   and seeds, per sensitivity metric (knapsack plans, no refinement), on small_cnn GPTQ; and of the refined
   plans' calibration loss (their ``--refine-score``);
3. the tiny offline OPT of ``lm quantize`` at B = 3.25 (widths 2,3,4) against uniform 3 and 4 bits (``--opt``);
4. the knapsack solvers on 500 layers x 5 widths (exact ≤ 1 s is the target; greedy for reference).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

BUDGETS = (2.25, 2.5, 3.0, 3.5)
CHOICES = [2, 3, 4, 8]
METRICS = ("proxy", "hawq", "fisher", "loss")


def train(model: str, seed: int, epochs: int, out: Path) -> Path:
    """The digits run of ``model`` (reused when ``out`` already holds it: a resumed benchmark)."""
    from losslab.train import TrainConfig, fit

    done = out / f"{model}-s{seed}"
    if (done / "result.json").exists():  # written when training finished
        return done
    cfg = TrainConfig(
        dataset="digits",
        model=model,
        img_size=32 if model != "small_cnn" else None,
        epochs=epochs,
        seed=seed,
        out_dir=out,
        run_name=f"{model}-s{seed}",
        progress=False,
    )
    return fit(cfg).run_dir


def budget_report(
    run: Path,
    method: str,
    metric: str,
    calib: int,
    tmp: Path,
    refine: int,
    score: str = "quantized",
    noise: int = 0,
    select: int | None = None,
) -> dict[str, Any]:
    """``quantize_run_budget`` at each budget separately (one cached table): the results of the feasible budgets,
    the uniform widths and the budgets below the cheapest plan."""
    from losslab.compress.budget import BudgetOptions, quantize_run_budget
    from losslab.compress.quantize_run import QuantizeOptions
    from losslab.quant.budget import BudgetError
    from losslab.quant.methods import method_from_name

    merged: dict[str, Any] = {"results": [], "impossible": []}
    for b in BUDGETS:
        stem = f"{run.name}-{method}-{metric}-r{refine}{score}-n{noise}-s{select}-B{b}"
        opts = QuantizeOptions(calib_samples=calib, calib_batch_size=64, out=tmp / f"{stem}.json", overwrite=True)
        budget = BudgetOptions(
            [b], CHOICES, metric, "exact", figure=tmp / f"{stem}.png", refine=refine, refine_score=score
        )
        budget.refine_noise, budget.select_samples = noise, select
        try:
            quantize_run_budget(run, method_from_name(method, bits=4), budget, opts, echo=lambda *_: None)
        except BudgetError as err:
            merged["impossible"].append({"budget": b, "why": str(err)})
            continue
        report = json.loads(opts.out.read_text())
        merged["results"] += report["results"]
        merged["uniform"], merged["float"] = report["uniform"], report["float"]
    return merged


def cells(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per budget: budgeted top-1 and the narrowest uniform with stored bits >= B."""
    out = []
    for entry in report["results"]:
        b = entry["budget"]
        above = [u for u in report["uniform"] if u["stored_bits_per_weight"] >= b]
        ref = min(above, key=lambda u: u["stored_bits_per_weight"])
        below = [u for u in report["uniform"] if u["stored_bits_per_weight"] <= b]
        low = max(below, key=lambda u: u["stored_bits_per_weight"]) if below else None
        out.append(
            {
                "budget": b,
                "budgeted_bpw": entry["stored_bits_per_weight"],
                "budgeted_top1": entry["metrics"]["top1"],
                "uniform_bits": ref["bits"],
                "uniform_bpw": ref["stored_bits_per_weight"],
                "uniform_top1": ref["top1"],
                "uniform_below_bits": low and low["bits"],
                "uniform_below_bpw": low and low["stored_bits_per_weight"],
                "uniform_below_top1": low and low["top1"],
                "predicted": entry["predicted_sensitivity"],
                "float_top1": report["float"]["top1"],
                "search": {k: v for k, v in (entry.get("search") or {}).items() if k != "knapsack_chosen"},
                "chosen": {a["layer"]: a["chosen_bits"] for a in entry["allocation"]},
            }
        )
    return out


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def solver_timing() -> dict[str, float]:
    from losslab.quant.budget import solve_exact, solve_greedy

    rng = np.random.default_rng(0)
    n = rng.integers(500, 2_000_000, size=500)
    bits = [2, 3, 4, 6, 8]
    costs = [[int(w * b + (w // 128) * (16 + b)) for b in bits] for w in n]
    values = [[float(w * 4.0**-b * rng.uniform(0.1, 10)) for b in bits] for w in n]
    solve_exact(costs[:5], values[:5], sum(c[1] for c in costs[:5]))  # import scipy before timing
    out = {}
    for name, solver in (("exact", solve_exact), ("greedy", solve_greedy)):
        times = []
        for b in (2.5, 3.0, 3.5, 4.5):
            start = time.perf_counter()
            plan = solver(costs, values, int(b * n.sum()))
            times.append(time.perf_counter() - start)
        out[f"{name}_s_max"] = max(times)
        out[f"{name}_last_sensitivity"] = plan.sensitivity
    return out


def tiny_opt_cell(tmp: Path, steps: int) -> dict[str, Any]:
    from bench_nncf import trained_opt  # the one tiny-OPT recipe of both benchmarks
    from losslab.compress.budget import BudgetOptions
    from losslab.compress.lm_budget import LmBudgetJob, quantize_lm_budget
    from losslab.lm.data import calibration_windows, eval_windows
    from losslab.quant.methods import GPTQ

    model, ids = trained_opt(steps)
    job = LmBudgetJob(
        model,
        "tiny-opt",
        calibration_windows(ids["train"], 16, 64, seed=0),
        tmp / "opt.json",
        eval_windows=eval_windows(ids["test"], 64),
        calib_name="synthetic",
    )
    report = quantize_lm_budget(job, GPTQ(bits=4), BudgetOptions([3.25], [2, 3, 4]), echo=lambda *_: None)
    (entry,) = report["results"]
    uniform = {u["bits"]: u for u in json.loads(Path(report["json"]).read_text())["uniform"]}
    return {
        "budget_bpw": entry["stored_bits_per_weight"],
        "budget_ppl": entry["metrics"]["ppl"],
        **{f"uniform{b}_{k}": uniform[b][k] for b in (3, 4) for k in ("stored_bits_per_weight", "ppl")},
    }


def unit(model: str, seed: int, method: str, args: argparse.Namespace, epochs: dict, calib: int) -> dict[str, Any]:
    """One resumable unit: train (or reuse) the run, then every budget of ``method`` with the defaults; on
    small_cnn GPTQ also every metric's knapsack plans (no refinement) for the rank correlation."""
    from losslab.quant.budget import DEFAULT_SENSITIVITY

    start = time.perf_counter()
    run = train(model, seed, epochs[model], args.runs)
    tmp = args.runs / "reports"
    report = budget_report(
        run, method, DEFAULT_SENSITIVITY, calib, tmp, args.refine, args.refine_score, args.refine_noise, args.select
    )
    out: dict[str, Any] = {"model": model, "seed": seed, "method": method, "cells": cells(report)}
    out["impossible"] = report["impossible"]
    if model == "small_cnn" and method == "gptq" and not args.no_metrics:
        out["metrics"] = {m: cells(budget_report(run, "gptq", m, calib, tmp, 1)) for m in METRICS}
    out["seconds"] = time.perf_counter() - start
    return out


def load_units(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def std_by_cell(rows: list[dict[str, Any]], key: str) -> dict[tuple, float]:
    """Sample std over seeds of ``key`` per (model, method, budget)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["budget"]), []).append(r[key])
    return {k: statistics.stdev(v) if len(v) > 1 else float("nan") for k, v in groups.items()}


def report(units: list[dict[str, Any]]) -> None:
    """Every cell, the count against the 80 % target, the seeds' std rule and the rank correlations."""
    rows = [{"model": u["model"], "seed": u["seed"], "method": u["method"], **c} for u in units for c in u["cells"]]
    rows.sort(key=lambda r: (r["model"] != "small_cnn", r["method"], r["budget"], r["seed"]))
    std = std_by_cell(rows, "uniform_top1")
    print(
        "| model | method | B | seed | budgeted bpw | budgeted top-1 | uniform ≥ B: bits, bpw, top-1 | Δ | "
        "seeds' std | uniform ≤ B: bits, bpw, top-1 |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    wins = within = 0
    for r in rows:
        delta = r["budgeted_top1"] - r["uniform_top1"]
        s = std[(r["model"], r["method"], r["budget"])]
        wins += delta >= 0
        within += delta >= -s
        below = (
            f"{r['uniform_below_bits']}, {r['uniform_below_bpw']:.3f}, {r['uniform_below_top1']:.2f}"
            if r["uniform_below_bits"]
            else "-"
        )
        print(
            f"| {r['model']} | {r['method']} | {r['budget']} | {r['seed']} | {r['budgeted_bpw']:.3f} | "
            f"{r['budgeted_top1']:.2f} | {r['uniform_bits']}, {r['uniform_bpw']:.3f}, {r['uniform_top1']:.2f} | "
            f"{delta:+.2f} | {s:.2f} | {below} |"
        )
    n = len(rows)
    if n:
        print(f"\nbudgeted >= uniform(narrowest with stored bits >= B): {wins}/{n} cells ({100 * wins / n:.0f} %)")
        print(f"budgeted >= uniform - seeds' std of uniform: {within}/{n}")
        deltas = [r["budgeted_top1"] - r["uniform_top1"] for r in rows]
        below_deltas = [r["budgeted_top1"] - r["uniform_below_top1"] for r in rows if r["uniform_below_bits"]]
        print(f"mean (budgeted - uniform >= B): {statistics.mean(deltas):+.2f} pp; worst {min(deltas):+.2f} pp")
        if below_deltas:
            wins_below = sum(d >= 0 for d in below_deltas)
            print(f"budgeted >= uniform <= B: {wins_below}/{len(below_deltas)}")
        for key in sorted({(r["model"], r["method"]) for r in rows}):
            sub = [r["budgeted_top1"] - r["uniform_top1"] for r in rows if (r["model"], r["method"]) == key]
            print(f"  {key[0]} {key[1]}: {sum(d >= 0 for d in sub)}/{len(sub)} cells, mean {statistics.mean(sub):+.2f}")
    corr: dict[str, list[tuple[float, float]]] = {}
    for u in units:
        for metric, cs in u.get("metrics", {}).items():
            corr.setdefault(metric, []).extend((c["predicted"], c["float_top1"] - c["budgeted_top1"]) for c in cs)
    for key in sorted({(r["model"], r["method"]) for r in rows}):
        sub = [r for r in rows if (r["model"], r["method"]) == key]
        corr[f"default metric, {key[0]} {key[1]}"] = [
            (r["predicted"], r["float_top1"] - r["budgeted_top1"]) for r in sub
        ]
    for r in rows:
        if r["search"].get("calib_loss") is not None:
            corr.setdefault("refine score: calibration loss of the refined plans", []).append(
                (r["search"]["calib_loss"], r["float_top1"] - r["budgeted_top1"])
            )
    for metric, pts in corr.items():
        if len(pts) > 2:
            print(
                f"Spearman, predicted vs realised top-1 drop, {metric}: {spearman(*zip(*pts)):.2f} ({len(pts)} points)"
            )
    for u in units:
        for gone in u.get("impossible", []):
            print(f"{u['model']} seed {u['seed']} {u['method']}: {gone['why']}")
    print("unit wall seconds:", {f"{u['model']}/{u['seed']}/{u['method']}": round(u["seconds"]) for u in units})


def main() -> None:
    from losslab.quant.budget import DEFAULT_REFINE, DEFAULT_REFINE_SCORE, REFINE_SCORES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per (model, seed, method)")
    parser.add_argument("--runs", type=Path, default=Path("bench-budget-runs"), help="trained runs (kept)")
    parser.add_argument("--full", action="store_true", help="15/30 epochs and 256 calibration images")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default="small_cnn,cifar_resnet20")
    parser.add_argument("--methods", default="gptq,gpfq")
    parser.add_argument("--no-metrics", action="store_true", help="skip the per-metric rank correlation")
    parser.add_argument("--opt", action="store_true", help="also the tiny OPT cell")
    parser.add_argument("--solver-timing", action="store_true", help="also time the solvers")
    parser.add_argument("--report", action="store_true", help="only print the tables from --out")
    parser.add_argument("--refine", type=int, default=DEFAULT_REFINE, help="plans scored per budget (--refine)")
    parser.add_argument("--refine-score", default=DEFAULT_REFINE_SCORE, choices=REFINE_SCORES)
    parser.add_argument("--refine-noise", type=int, default=0, help="noise candidates per budget (--refine-noise)")
    parser.add_argument("--select", type=int, default=None, help="--select-samples (default: the calibration set)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.report:
        epochs = {"small_cnn": 15 if args.full else 6, "cifar_resnet20": 30 if args.full else 4}
        calib = 256 if args.full else 128
        print(f"machine: {torch.get_num_threads()} torch thread(s); epochs {epochs}; calib {calib}", flush=True)
        if args.solver_timing:
            print("solver, 500 layers x 5 widths:", json.dumps({k: round(v, 4) for k, v in solver_timing().items()}))
        done = {(u["model"], u["seed"], u["method"]) for u in load_units(args.out)}
        for seed in (int(x) for x in args.seeds.split(",")):
            for model in args.models.split(","):
                for method in args.methods.split(","):
                    if (model, seed, method) in done:
                        continue
                    result = unit(model, seed, method, args, epochs, calib)
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(result) + "\n")
                    print(f"done {model} seed {seed} {method} in {result['seconds']:.0f} s", flush=True)
        if args.opt:
            with tempfile.TemporaryDirectory() as t:
                print("tiny OPT:", json.dumps(tiny_opt_cell(Path(t), 200)), flush=True)
    report(load_units(args.out))


if __name__ == "__main__":
    main()
