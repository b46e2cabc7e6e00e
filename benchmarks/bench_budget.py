"""Storage budget (issue 20 part 2): budgeted widths against uniform widths, predicted against realised.

    python benchmarks/bench_budget.py --quick          # 2-core CPU: small_cnn + resnet20, 1 seed, few epochs
    python benchmarks/bench_budget.py                  # 3 seeds, 15/30 epochs (GPU machine)

Cells (every one printed, also where the budget loses):

1. digits ``small_cnn`` and ``cifar_resnet20`` (32 px), seeds, GPTQ and GPFQ, B ∈ {2.25, 2.5, 3, 3.5}: the
   budgeted model's top-1 (``--sensitivity proxy``, exact solver, widths 2,3,4,8) against the uniform model at the
   narrowest width whose stored bits per weight are >= B (the uniform model that spends at least as much: the
   issue's target) and at the widest width within B (what a uniform width gets under the same budget);
2. rank correlation (Spearman) between predicted total sensitivity and the realised accuracy drop across budgets
   (and seeds), per sensitivity metric (proxy, hawq, fisher, loss), on small_cnn GPTQ;
3. the tiny offline OPT of ``lm quantize`` at B = 3.25 (widths 2,3,4) against uniform 3 and 4 bits (perplexity);
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
    from losslab.train import TrainConfig, fit

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


def budget_report(run: Path, method: str, metric: str, calib: int, tmp: Path) -> dict[str, Any]:
    """``quantize_run_budget`` at each budget separately (one cached table): the results of the feasible budgets,
    the uniform widths and the budgets below the cheapest plan."""
    from losslab.compress.budget import BudgetOptions, quantize_run_budget
    from losslab.compress.quantize_run import QuantizeOptions
    from losslab.quant.budget import BudgetError
    from losslab.quant.methods import method_from_name

    merged: dict[str, Any] = {"results": [], "impossible": []}
    for b in BUDGETS:
        stem = f"{run.name}-{method}-{metric}-B{b}"
        opts = QuantizeOptions(calib_samples=calib, calib_batch_size=64, out=tmp / f"{stem}.json")
        budget = BudgetOptions([b], CHOICES, metric, "exact", figure=tmp / f"{stem}.png")
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
    from losslab.compress.budget import BudgetOptions
    from losslab.compress.lm_budget import LmBudgetJob, quantize_lm_budget
    from losslab.lm.data import calibration_windows, eval_windows, tokenize_text
    from losslab.lm.offline import byte_tokenizer, synthetic_corpus, tiny_opt
    from losslab.quant.methods import GPTQ

    tok, corpus = byte_tokenizer(), synthetic_corpus(seed=0)
    ids = {k: tokenize_text(tok, v) for k, v in corpus.items()}
    model = tiny_opt(seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, ids["train"].numel() - 64, (8,), generator=gen)
        batch = torch.stack([ids["train"][s : s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, few epochs, 128 calibration images")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--models", default="small_cnn,cifar_resnet20")
    parser.add_argument("--methods", default="gptq,gpfq")
    parser.add_argument("--json", type=Path, default=None, help="write every cell here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = {"small_cnn": 6 if args.quick else 15, "cifar_resnet20": 4 if args.quick else 30}
    calib = 128 if args.quick else 256
    print(f"machine: {torch.get_num_threads()} torch thread(s); seeds {seeds}; epochs {epochs}; calib {calib}")
    result: dict[str, Any] = {"solver": solver_timing()}
    print("solver, 500 layers x 5 widths:", json.dumps({k: round(v, 4) for k, v in result["solver"].items()}))
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        rows, corr = [], {}
        for model in args.models.split(","):
            for seed in range(seeds):
                start = time.perf_counter()
                run = train(model, seed, epochs[model], tmp / "runs")
                print(f"trained {model} seed {seed} in {time.perf_counter() - start:.0f} s")
                reports = {}
                for method in args.methods.split(","):
                    reports[method] = report = budget_report(run, method, "proxy", calib, tmp)
                    for c in cells(report):
                        rows.append({"model": model, "seed": seed, "method": method, **c})
                        print(json.dumps(rows[-1]))
                    for gone in report["impossible"]:
                        print(f"{model} seed {seed} {method}: {gone['why']}")
                if model == "small_cnn":
                    for metric in METRICS:
                        report = reports.get("gptq") if metric == "proxy" else None
                        report = report or budget_report(run, "gptq", metric, calib, tmp)
                        for c in cells(report):
                            corr.setdefault(metric, []).append((c["predicted"], c["float_top1"] - c["budgeted_top1"]))
        result["cells"] = rows
        result["rank_correlation"] = {m: spearman(*zip(*pts)) for m, pts in corr.items() if len(pts) > 2}
        result["tiny_opt"] = tiny_opt_cell(tmp, 200)
    wins = sum(r["budgeted_top1"] >= r["uniform_top1"] for r in rows)
    print(f"\nbudgeted >= uniform(narrowest with stored bits >= B) in {wins}/{len(rows)} cells")
    print(
        "| model | seed | method | B | budgeted bpw | budgeted top-1 | uniform >= B: bits, bpw, top-1 |"
        " uniform <= B: bits, bpw, top-1 |\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['model']} | {r['seed']} | {r['method']} | {r['budget']} | {r['budgeted_bpw']:.3f} | "
            f"{r['budgeted_top1']:.2f} | {r['uniform_bits']}, {r['uniform_bpw']:.3f}, {r['uniform_top1']:.2f} | "
            + (
                f"{r['uniform_below_bits']}, {r['uniform_below_bpw']:.3f}, {r['uniform_below_top1']:.2f} |"
                if r["uniform_below_bits"]
                else "- |"
            )
        )
    print("rank correlation (Spearman, predicted sensitivity vs realised drop):", result["rank_correlation"])
    print("tiny OPT:", json.dumps(result["tiny_opt"]))
    if len(rows) > 1:
        deltas = [r["budgeted_top1"] - r["uniform_top1"] for r in rows]
        print(f"mean (budgeted - uniform) top-1: {statistics.mean(deltas):.2f} pp")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
