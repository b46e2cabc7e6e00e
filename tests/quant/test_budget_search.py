"""``--refine``: the bounded knapsack against brute force, and the local search over whole-plan evaluations
against its definition (every plan within the budget, never worse than the knapsack plan, a local optimum)."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from losslab.errors import ConfigError
from losslab.quant.budget import BudgetError, SensitivityTable, allocate, capacity_bits, refine
from losslab.quant.budget.table import LayerRow, WidthRun

WIDTHS = (2, 3, 4, 8)


def random_table(rng: np.random.Generator, layers: int) -> SensitivityTable:
    """Layers of random size; stored bits b·n + 16 per 64 weights; sensitivities shrink with the width (noisy)."""
    names = [f"l{i}" for i in range(layers)]
    n = {name: int(rng.integers(1, 60)) * 64 for name in names}
    widths = {
        b: WidthRun(
            {k: LayerRow(float(n[k] * 4.0**-b * rng.uniform(0.2, 5.0)), n[k] * b + 16 * (n[k] // 64)) for k in names},
            0,
        )
        for b in WIDTHS
    }
    return SensitivityTable(names, n, 0, widths, "loss")


def brute(table: SensitivityTable, budget: float, bounds: list[tuple[int, int]]) -> float | None:
    """The least summed clamped sensitivity (running minimum over the widths, the solver's values) over every
    assignment within the bounds and the capacity."""
    room, best = capacity_bits(budget, table.total_weights), None
    clamped = {
        n: [min(table.widths[b].rows[n].sensitivity for b in WIDTHS[: k + 1]) for k in range(len(WIDTHS))]
        for n in table.layers
    }
    for choice in itertools.product(*(range(lo, hi + 1) for lo, hi in bounds)):
        rows = [table.widths[WIDTHS[j]].rows[n] for n, j in zip(table.layers, choice)]
        if sum(r.stored_bits for r in rows) <= room:
            value = sum(clamped[n][j] for n, j in zip(table.layers, choice))
            best = value if best is None else min(best, value)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_bounded_allocate_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = random_table(rng, int(rng.integers(2, 6)))
    for budget in (2.4, 3.0, 3.7, 5.0):
        bounds = [tuple(sorted(rng.integers(0, len(WIDTHS), size=2).tolist())) for _ in table.layers]
        best = brute(table, budget, bounds)
        if best is None:
            with pytest.raises(BudgetError):
                allocate(table, budget, "exact", None, bounds)
            continue
        plan = allocate(table, budget, "exact", None, bounds)
        assert plan.stored_bits <= capacity_bits(budget, table.total_weights)
        assert all(WIDTHS[lo] <= plan.chosen[n] <= WIDTHS[hi] for n, (lo, hi) in zip(table.layers, bounds))
        assert plan.predicted_sensitivity == pytest.approx(best, rel=1e-9)


def interacting_loss(table: SensitivityTable, penalty: float):
    """A 'measured' loss: the summed sensitivity plus an interaction the table cannot see (each pair of adjacent
    layers both at 2 bits costs ``penalty``)."""

    def evaluate(alloc):
        widths = [alloc.chosen[n] for n in table.layers]
        pairs = sum(a == 2 and b == 2 for a, b in itertools.pairwise(widths))
        return alloc.predicted_sensitivity + penalty * pairs, dict(alloc.chosen)

    return evaluate


@pytest.mark.parametrize("seed", range(6))
def test_refine_stays_within_budget_never_loses_and_ends_at_a_local_optimum(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    table = random_table(rng, 5)
    budget = 2.6
    scale = max(r.sensitivity for w in table.widths.values() for r in w.rows.values())
    evaluate = interacting_loss(table, scale)
    seen = []

    def recorded(alloc):
        seen.append(alloc)
        return evaluate(alloc)

    out = refine(table, budget, recorded, 200)
    start = allocate(table, budget)
    assert seen[0].chosen == start.chosen and out.start_loss == evaluate(start)[0]
    assert all(a.stored_bits <= capacity_bits(budget, table.total_weights) for a in seen)
    assert len({tuple(sorted(a.chosen.items())) for a in seen}) == len(seen) == out.allocation.search["evaluations"]
    assert out.loss == min(evaluate(a)[0] for a in seen) <= out.start_loss
    assert out.payload == out.allocation.chosen and out.loss == evaluate(out.allocation)[0]
    assert len(seen) < 200  # stopped because no neighbour of the result improved, not by the cap


def test_refine_without_interactions_keeps_the_knapsack_plan_and_respects_the_cap() -> None:
    table = random_table(np.random.default_rng(7), 5)
    calls = []

    def exact(alloc):
        calls.append(alloc)
        return alloc.predicted_sensitivity, None

    out = refine(table, 3.0, exact, 4)
    assert len(calls) <= 4 and out.allocation.chosen == allocate(table, 3.0).chosen
    assert refine(table, 3.0, exact, 1).allocation.search["evaluations"] == 1
    with pytest.raises(ConfigError, match="at least 1"):
        refine(table, 3.0, exact, 0)


def test_refine_finds_the_plan_the_interaction_favours() -> None:
    """Three equal layers, widths 2 and 4, room (810 bits) for one at 4 bits. The knapsack widens the most
    sensitive layer, a, leaving b and c adjacent at 2 bits, which the measured loss penalises by 10; the best
    measured plan widens b (predicted 4.1, measured 4.1, against 3.1 + 10)."""
    names = ["a", "b", "c"]
    sens = {2: {"a": 3.0, "b": 2.0, "c": 1.0}, 4: {"a": 0.1, "b": 0.1, "c": 0.1}}
    widths = {b: WidthRun({n: LayerRow(sens[b][n], 100 * b) for n in names}, 0) for b in (2, 4)}
    table = SensitivityTable(names, dict.fromkeys(names, 100), 0, widths, "loss")
    evaluate = interacting_loss(table, 10.0)
    assert allocate(table, 2.7).chosen == {"a": 4, "b": 2, "c": 2}
    out = refine(table, 2.7, evaluate, 10)
    assert out.allocation.chosen == {"a": 2, "b": 4, "c": 2}
    assert out.start_loss == pytest.approx(13.1) and out.loss == pytest.approx(4.1)


def test_the_quantized_weights_are_kept_beside_the_table_and_a_width_without_them_is_recomputed(tmp_path) -> None:
    import torch

    from losslab.quant.budget import TableCache, fill_table

    calls: list[int] = []

    def run_width(keep: bool):
        def run(bits: int) -> WidthRun:
            calls.append(bits)
            weights = {"a": torch.full((2, 3), float(bits))} if keep else None
            return WidthRun({"a": LayerRow(1.0 / bits, 6 * bits)}, 0, {}, None, weights)

        return run

    key = {"checkpoint_sha256": "abc"}
    fill_table([2, 3], ["a"], {"a": 6}, 0, "loss", run_width(False), TableCache(tmp_path, key))
    assert calls == [2, 3] and not TableCache(tmp_path, key).weights_path(2).exists()
    calls.clear()  # --refine needs the weights: both widths again, now kept
    table = fill_table([2, 3], ["a"], {"a": 6}, 0, "loss", run_width(True), TableCache(tmp_path, key), None, True)
    assert calls == [2, 3] and TableCache(tmp_path, key).weights_path(3).exists()
    calls.clear()  # read back from disk, bit-exact, nothing recomputed
    again = fill_table([2, 3], ["a"], {"a": 6}, 0, "loss", run_width(True), TableCache(tmp_path, key), None, True)
    assert calls == [] and torch.equal(again.widths[3].weights["a"], table.widths[3].weights["a"])
    assert torch.equal(again.widths[2].weights["a"], torch.full((2, 3), 2.0))


def test_stitched_loss_is_the_calibration_loss_of_the_network_with_the_plans_weights() -> None:
    """Against a reference built by hand: a copy of the network with each layer's weight set to the Q of its
    planned width, cross-entropy averaged over samples; the probe's own network is left as it was."""
    import copy

    import torch
    import torch.nn.functional as F
    from torch import nn

    from losslab.quant.budget import stitched_loss
    from losslab.quant.budget.allocation import Allocation
    from losslab.quant.budget.runner import Probe

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    q = {b: {n: torch.randn_like(net.get_submodule(n).weight) for n in ("0", "2")} for b in (2, 4)}
    table = SensitivityTable(
        ["0", "2"],
        {"0": 24, "2": 18},
        0,
        {b: WidthRun({n: LayerRow(0.0, 1) for n in ("0", "2")}, 0, {}, None, q[b]) for b in (2, 4)},
        "loss",
    )
    batches = [(torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))) for _ in range(2)]
    batches.append((torch.randn(3, 4, dtype=torch.float64), torch.randint(0, 3, (3,))))
    before = copy.deepcopy(net.state_dict())
    probe = Probe(net, batches, lambda m, b: F.cross_entropy(m(b[0]), b[1]), ["0", "2"])
    alloc = Allocation(3.0, "exact", {"0": 4, "2": 2}, 0, 42, 0.0)
    loss, _ = stitched_loss(table, probe)(alloc)
    ref = copy.deepcopy(net)
    with torch.no_grad():
        ref[0].weight.copy_(q[4]["0"])
        ref[2].weight.copy_(q[2]["2"])
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert loss == pytest.approx(float(F.cross_entropy(ref(x), y, reduction="mean")), rel=1e-12)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def _driver_setup():
    """A three-layer MLP, 48 calibration samples in three batches, GPTQ, the loss probe, the loss table of its
    uniform runs at 2, 3 and 4 bits (stored bits from the driver's own results), the driver with overrides and
    the quantized score of a plan."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from losslab.quant.budget import quantized_loss
    from losslab.quant.budget.runner import Probe, width_run
    from losslab.quant.engine import quantize
    from losslab.quant.methods import GPTQ

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    batches = [(torch.randn(16, 8), torch.randint(0, 4, (16,))) for _ in range(3)]
    layers = ["0", "2", "4"]
    method = GPTQ(bits=4)
    probe = Probe(net, batches, lambda m, b: F.cross_entropy(m(b[0]), b[1]), layers)

    def run(overrides):
        return quantize(net, method, batches, overrides=overrides, progress=False)

    widths = {b: width_run(run({n: GPTQ(bits=b) for n in layers}), layers, "loss", probe, {}, True) for b in (2, 3, 4)}
    table = SensitivityTable(layers, {n: net.get_submodule(n).weight.numel() for n in layers}, 0, widths, "loss")
    evaluate = quantized_loss(lambda a: (lambda r: (r.model, r))(run(a.overrides(method))), probe)
    return batches, probe, table, run, evaluate


def _float64_loss(model, batches) -> float:
    """Cross-entropy of a float64 copy of ``model`` over every calibration sample, averaged by hand."""
    import copy

    import torch
    import torch.nn.functional as F

    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        total = sum(float(F.cross_entropy(ref(x.double()), y, reduction="sum")) for x, y in batches)
    return total / sum(len(y) for _, y in batches)


def test_quantized_loss_is_the_calibration_loss_of_the_model_the_driver_quantizes_with_the_plan() -> None:
    """The oracle quantizes with the plan directly (per-layer GPTQ widths as the driver's overrides) and averages
    the cross-entropy in float64; the stitched score of the same plan differs (the driver's error feedback)."""
    from losslab.quant.budget import stitched_loss
    from losslab.quant.budget.allocation import Allocation
    from losslab.quant.methods import GPTQ

    batches, probe, table, run, evaluate = _driver_setup()
    for chosen in ({"0": 4, "2": 2, "4": 3}, {"0": 2, "2": 4, "4": 2}):
        loss, result = evaluate(Allocation(3.0, "exact", chosen, 0, 1, 0.0))
        oracle = run({n: GPTQ(bits=b) for n, b in chosen.items()})
        assert loss == pytest.approx(_float64_loss(oracle.model, batches), rel=1e-5)
        assert all(torch_equal(result.model, oracle.model, n) for n in chosen)
        stitched, _ = stitched_loss(table, probe)(Allocation(3.0, "exact", chosen, 0, 1, 0.0))
        assert abs(stitched - loss) > 1e-6


def torch_equal(a, b, name: str) -> bool:
    import torch

    return torch.equal(a.get_submodule(name).weight, b.get_submodule(name).weight)


@pytest.mark.parametrize("evaluations", [1, 3, 8])
def test_refine_scored_by_quantizing_returns_the_best_quantized_plan_within_the_budget(evaluations: int) -> None:
    """At most ``evaluations`` quantize passes, every plan within the budget, the best-scored plan returned with
    its own quantized model (its stored bits are the plan's)."""
    from losslab.quant.result import storage_bits_total

    batches, _, table, _, evaluate = _driver_setup()
    scored: list[tuple[dict, float, object]] = []

    def recorded(alloc):
        loss, result = evaluate(alloc)
        scored.append((dict(alloc.chosen), loss, result))
        return loss, result

    out = refine(table, 2.9, recorded, evaluations)
    room = capacity_bits(2.9, table.total_weights)
    assert 1 <= len(scored) <= evaluations and len(scored) == out.allocation.search["evaluations"]
    assert all(sum(table.widths[b].rows[n].stored_bits for n, b in c.items()) <= room for c, _, _ in scored)
    best = min(scored, key=lambda s: s[1])
    assert out.allocation.chosen == best[0] and out.loss == best[1] and out.payload is best[2]
    assert out.loss == pytest.approx(_float64_loss(out.payload.model, batches), rel=1e-5)
    stored = sum(storage_bits_total(wq) for wqs in out.payload.weights.values() for wq in wqs)
    assert stored == out.allocation.stored_bits <= room


def noisy_table(rng: np.random.Generator, layers: int) -> SensitivityTable:
    """:func:`random_table` with a standard error per entry of the order of the entry."""
    table = random_table(rng, layers)
    for run in table.widths.values():
        for row in run.rows.values():
            row.stderr = float(row.sensitivity * rng.uniform(0.2, 1.5))
    return table


def brute_plan(table: SensitivityTable, budget: float) -> tuple[float, int]:
    """(least Σ clamped s, most stored bits among those) over every assignment within the capacity."""
    room, best = capacity_bits(budget, table.total_weights), None
    clamped = {n: table.clamped(n) for n in table.layers}
    for choice in itertools.product(range(len(WIDTHS)), repeat=len(table.layers)):
        bits = sum(table.widths[WIDTHS[j]].rows[n].stored_bits for n, j in zip(table.layers, choice))
        if bits <= room:
            key = (sum(clamped[n][j] for n, j in zip(table.layers, choice)), -bits)
            best = key if best is None or key < best else best
    return best[0], -best[1]


def test_perturbed_entries_are_s_plus_se_times_the_generators_normals_in_order() -> None:
    table = noisy_table(np.random.default_rng(3), 4)
    moved = table.perturbed(np.random.default_rng(11))
    eps = np.random.default_rng(11).standard_normal((len(WIDTHS), len(table.layers)))  # widths asc, layers in order
    for k, b in enumerate(WIDTHS):
        for i, n in enumerate(table.layers):
            row = table.widths[b].rows[n]
            assert moved.widths[b].rows[n].sensitivity == pytest.approx(row.sensitivity + row.stderr * eps[k, i])
            assert moved.widths[b].rows[n].stored_bits == row.stored_bits
    table.widths[2].rows["l0"].stderr = None
    with pytest.raises(ConfigError, match="no standard error"):
        table.perturbed(np.random.default_rng(0))


@pytest.mark.parametrize("seed", range(4))
def test_noise_plans_are_distinct_optima_of_tables_drawn_within_the_noise(seed: int) -> None:
    """Each candidate is new (not the knapsack plan, not an earlier candidate), fits the budget, and is the
    brute-force optimum (least Σ s', then most bits) of the perturbed table its draw made, replayed from the seed;
    its predicted sensitivity is the unperturbed Σ s'."""
    from losslab.quant.budget import noise_plans

    rng = np.random.default_rng(200 + seed)
    table = noisy_table(rng, 4)
    budget = 2.9
    plans = noise_plans(table, budget, 3, seed=seed)
    keys = [tuple(sorted(p.chosen.items())) for p in plans]
    start = tuple(sorted(allocate(table, budget).chosen.items()))
    assert len(set(keys)) == len(keys) and start not in keys and plans
    replay, found = np.random.default_rng(seed), []
    while len(found) < len(plans):
        drawn = table.perturbed(replay)
        value, bits = brute_plan(drawn, budget)
        plan = allocate(drawn, budget)
        assert plan.predicted_sensitivity == pytest.approx(value, rel=1e-9) and plan.stored_bits == bits
        key = tuple(sorted(plan.chosen.items()))
        if key != start and key not in found:
            found.append(key)
    assert found == keys
    for p in plans:
        assert p.stored_bits <= capacity_bits(budget, table.total_weights)
        clamped = sum(table.clamped(n)[WIDTHS.index(b)] for n, b in p.chosen.items())
        assert p.predicted_sensitivity == pytest.approx(clamped, rel=1e-12)


def test_refine_scores_the_noise_candidates_first_within_the_evaluation_count() -> None:
    from losslab.quant.budget import noise_plans

    table = noisy_table(np.random.default_rng(5), 5)
    scores = {}

    def evaluate(alloc):  # an arbitrary but fixed score per plan
        key = tuple(sorted(alloc.chosen.items()))
        scores.setdefault(key, float(np.random.default_rng(zlib.crc32(repr(key).encode())).uniform()))
        return scores[key], key

    candidates = noise_plans(table, 3.0, 3, seed=9)
    out = refine(table, 3.0, evaluate, 6, noise=3, seed=9)
    trace = [tuple(sorted(c.items())) for c, _, _ in out.trace]
    assert trace[0] == tuple(sorted(allocate(table, 3.0).chosen.items()))
    assert trace[1 : 1 + len(candidates)] == [tuple(sorted(p.chosen.items())) for p in candidates]
    assert len(trace) <= 6 and len(set(trace)) == len(trace)
    assert out.loss == min(scores[k] for k in trace) and out.payload == tuple(sorted(out.allocation.chosen.items()))
    assert out.allocation.search["noise_candidates"] == len(candidates)
    assert len(refine(table, 3.0, evaluate, 2, noise=3, seed=9).trace) <= 2  # the cap counts the candidates


def test_the_table_json_keeps_each_entrys_standard_error() -> None:
    table = noisy_table(np.random.default_rng(1), 3)
    table.widths[8].rows["l1"].stderr = None
    back = SensitivityTable.from_json(table.to_json())
    assert {b: {n: r.stderr for n, r in w.rows.items()} for b, w in back.widths.items()} == {
        b: {n: r.stderr for n, r in w.rows.items()} for b, w in table.widths.items()
    }
    assert [c["stderr"] for c in back.choices("l0")] == [table.widths[b].rows["l0"].stderr for b in WIDTHS]
