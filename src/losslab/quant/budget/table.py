"""Per-layer sensitivity tables: for each candidate width, each budgeted layer's sensitivity and stored bits.

The table comes from the one layer-wise driver: for every width b in the choices the network is quantized once,
uniformly at b (the user's ``skip``/``overrides`` layers kept as they are), and each budgeted layer's row is read
off the driver's per-layer report (:class:`losslab.quant.result.LayerReport`):

* ``stored_bits`` = Σ :func:`losslab.quant.result.storage_bits_total` over the layer's weight blocks (codes,
  scales, zero points, look-up tables, act-order indices: what the packed file holds), i.e.
  ``bits_per_weight · n_weights``;
* ``sensitivity`` by metric (``--sensitivity``):

  - ``proxy``: the report's proxy loss tr((W−Q)Σ(W−Q)ᵀ), Σ = XᵀX/n of the layer's calibration inputs;
  - ``hawq``: HAWQ-V2's Tr(H_W)/|W| · ‖W−Q‖² with the Hessian trace from Hutchinson on the calibration loss;
  - ``fisher``: Σ F_ii (W−Q)_i², F the empirical Fisher diagonal (mean squared per-batch gradient);
  - ``loss``: the calibration loss of the float network with only this layer's weight replaced by Q, minus
    the float loss (one forward pass over the calibration set per layer and width); with per-sample losses
    also its standard error ``stderr`` = std(d)/√n of the per-sample differences d (the entry's noise).

  The Q of a layer is the one its uniform-b run wrote (layers quantized sequentially, as always).

The table is cached as JSON (:class:`TableCache`) under a key of everything it depends on (run, calibration,
method settings, widths, metric); each width's rows are written, atomically, as soon as that width is done, so a
killed computation resumes at the next width, and a change of any key item starts a new table.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from losslab.errors import ConfigError
from losslab.io import save_torch_atomic, write_json_atomic

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DEFAULT_SENSITIVITY",
    "SENSITIVITIES",
    "LayerRow",
    "SensitivityTable",
    "TableCache",
    "WidthRun",
    "clamp_monotone",
    "fill_table",
]

SENSITIVITIES = ("proxy", "hawq", "loss", "fisher")
DEFAULT_SENSITIVITY = "loss"  # predicted best in BENCHMARKS.md (Storage budget)
TABLE_FORMAT = 3  # 2: each width's quantized weights kept next to the table (``--refine``); 3: rows carry stderr


def check_sensitivity(name: str) -> str:
    """``name`` if it is a known metric, else a ConfigError listing them."""
    if name not in SENSITIVITIES:
        raise ConfigError(f"--sensitivity {name!r} is not known: choose one of {', '.join(SENSITIVITIES)}")
    return name


def clamp_monotone(values: Sequence[float]) -> list[float]:
    """One layer's sensitivities over its widths sorted ascending, made non-increasing in the width:
    s'(b_k) = min_{j <= k} s(b_j). A wider width is never predicted worse than a narrower one; a measured
    increase (calibration noise: the ``loss`` metric's differences between 3, 4 and 8 bits are at its noise
    floor) becomes a tie, which the exact solver breaks toward more stored bits
    (:func:`losslab.quant.budget.solver.solve_exact`)."""
    out: list[float] = []
    for v in values:
        out.append(min(out[-1], float(v)) if out else float(v))
    return out


@dataclass
class LayerRow:
    """One layer at one width: its sensitivity, stored bits (exact integer) and the sensitivity's standard error
    (``loss`` with per-sample losses; else None)."""

    sensitivity: float
    stored_bits: int
    stderr: float | None = None


@dataclass
class WidthRun:
    """What one uniform run at one width gives the table: per budgeted layer a row, the stored bits of the fixed
    layers (``skip`` excluded, ``overrides`` included), the uniform model's metrics (accuracy, ...) and, when
    kept, each budgeted layer's quantized weight Q (what :mod:`losslab.quant.budget.search` stitches plans from;
    stored beside the JSON, not in it)."""

    rows: dict[str, LayerRow]
    fixed_bits: int
    metrics: dict[str, Any] = field(default_factory=dict)
    stored_bits_per_weight: float | None = None
    weights: dict[str, Tensor] | None = None


@dataclass
class SensitivityTable:
    """Layers (in order) with their weight counts, and per width the :class:`WidthRun`."""

    layers: list[str]
    weights: dict[str, int]
    fixed_weights: int
    widths: dict[int, WidthRun]
    metric: str

    def clamped(self, layer: str) -> list[float]:
        """``layer``'s sensitivities, narrowest width first, as the solver uses them (:func:`clamp_monotone`)."""
        return clamp_monotone([run.rows[layer].sensitivity for _, run in sorted(self.widths.items())])

    def choices(self, layer: str) -> list[dict[str, Any]]:
        """``[{"bits", "sensitivity", "stderr", "sensitivity_clamped", "stored_bits"}, ...]`` of ``layer``,
        narrowest width first: ``sensitivity`` as measured (``stderr`` its standard error or None),
        ``sensitivity_clamped`` what the solver minimizes."""
        return [
            {
                "bits": b,
                "sensitivity": run.rows[layer].sensitivity,
                "stderr": run.rows[layer].stderr,
                "sensitivity_clamped": s,
                "stored_bits": run.rows[layer].stored_bits,
            }
            for (b, run), s in zip(sorted(self.widths.items()), self.clamped(layer))
        ]

    def perturbed(self, generator: Any) -> SensitivityTable:
        """A copy whose every entry is s + se·ε, ε ~ N(0, 1) drawn independently per (width, layer) from
        ``generator`` (a ``numpy.random.Generator``), widths ascending and layers in order: a table the
        measurement could as well have given. Stored bits and everything else are shared. ConfigError when an
        entry has no standard error."""
        missing = [n for run in self.widths.values() for n, r in run.rows.items() if r.stderr is None]
        if missing:
            raise ConfigError(
                f"the {self.metric} table has no standard error for {missing[0]}: noise candidates need "
                "--sensitivity loss measured with per-sample losses"
            )
        widths = {}
        for b, run in sorted(self.widths.items()):
            eps = generator.standard_normal(len(self.layers))
            rows = {
                n: LayerRow(run.rows[n].sensitivity + run.rows[n].stderr * float(e), run.rows[n].stored_bits, 0.0)
                for n, e in zip(self.layers, eps)
            }
            widths[b] = WidthRun(rows, run.fixed_bits, run.metrics, run.stored_bits_per_weight)
        return SensitivityTable(self.layers, self.weights, self.fixed_weights, widths, self.metric)

    @property
    def fixed_bits(self) -> int:
        """Stored bits of the layers the plan does not choose (the same at every width)."""
        return next(iter(self.widths.values())).fixed_bits

    @property
    def total_weights(self) -> int:
        """Weights that count in bits per weight: budgeted plus fixed (quantized) layers."""
        return sum(self.weights.values()) + self.fixed_weights

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "weights": self.weights,
            "fixed_weights": self.fixed_weights,
            "metric": self.metric,
            "widths": {
                str(b): {
                    "rows": {n: [r.sensitivity, r.stored_bits, r.stderr] for n, r in run.rows.items()},
                    "fixed_bits": run.fixed_bits,
                    "metrics": run.metrics,
                    "stored_bits_per_weight": run.stored_bits_per_weight,
                }
                for b, run in sorted(self.widths.items())
            },
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SensitivityTable:
        widths = {
            int(b): WidthRun(
                {n: LayerRow(float(s), int(c), None if e is None else float(e)) for n, (s, c, e) in w["rows"].items()},
                int(w["fixed_bits"]),
                dict(w["metrics"]),
                w.get("stored_bits_per_weight"),
            )
            for b, w in obj["widths"].items()
        }
        return cls(list(obj["layers"]), dict(obj["weights"]), int(obj["fixed_weights"]), widths, obj["metric"])


class TableCache:
    """The table's JSON file in ``folder``, named by the SHA-256 of its key (``sensitivity-<hash>.json``).

    The key holds everything the rows depend on; a file whose stored key differs is never read. Writes are
    atomic (:func:`losslab.io.write_json_atomic`).
    """

    def __init__(self, folder: Path, key: Mapping[str, Any]) -> None:
        self.key = {"format": TABLE_FORMAT, **key}
        text = json.dumps(self.key, sort_keys=True, default=str)
        self.path = Path(folder) / f"sensitivity-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"

    def load(self) -> SensitivityTable | None:
        """The cached (possibly partial) table, or None when there is none for this key; each width's weights
        are read back when their file is there."""
        if not self.path.exists():
            return None
        obj = json.loads(self.path.read_text())
        if json.loads(json.dumps(self.key, sort_keys=True, default=str)) != obj.get("key"):
            return None
        table = SensitivityTable.from_json(obj["table"])
        for b, run in table.widths.items():
            if self.weights_path(b).exists():
                run.weights = _load_weights(self.weights_path(b))
        return table

    def weights_path(self, bits: int) -> Path:
        """``sensitivity-<hash>.<bits>bit.pt``: the quantized weights of the uniform run at ``bits``."""
        return self.path.with_name(f"{self.path.stem}.{bits}bit.pt")

    def save(self, table: SensitivityTable, bits: int | None = None) -> None:
        """The table (atomically) and, when given, the weights of width ``bits`` (written first)."""
        if bits is not None and table.widths[bits].weights is not None:
            save_torch_atomic(self.weights_path(bits), dict(table.widths[bits].weights))
        write_json_atomic(self.path, {"key": json.loads(json.dumps(self.key, default=str)), "table": table.to_json()})


def _load_weights(path: Path) -> dict[str, Tensor]:
    from losslab.serialization import load_torch_file

    return dict(load_torch_file(path, what="cached quantized weights"))


def fill_table(
    widths: Sequence[int],
    layers: Sequence[str],
    weights: Mapping[str, int],
    fixed_weights: int,
    metric: str,
    run_width: Callable[[int], WidthRun],
    cache: TableCache | None = None,
    on_width: Callable[[int, bool], None] | None = None,
    need_weights: bool = False,
) -> SensitivityTable:
    """The table for ``widths``: cached widths read back, missing ones computed by ``run_width(b)`` in order,
    each saved as soon as it is done. With ``need_weights``, a cached width whose quantized weights were not
    kept is computed again. ``on_width(b, cached)`` is told about each width (progress output)."""
    table = cache.load() if cache is not None else None
    if table is None:
        table = SensitivityTable(list(layers), dict(weights), fixed_weights, {}, metric)
    for b in widths:
        cached = b in table.widths and (table.widths[b].weights is not None or not need_weights)
        if not cached:
            run = run_width(b)
            missing = [n for n in layers if n not in run.rows]
            if missing:
                raise ConfigError(f"the {b}-bit run reported no row for {', '.join(missing)}")
            bad = [n for n, r in run.rows.items() if not math.isfinite(r.sensitivity)]
            if bad:
                raise ConfigError(f"the {metric} sensitivity of {', '.join(bad)} at {b} bits is not finite")
            table.widths[b] = run
            if cache is not None:
                cache.save(table, b)
        if on_width is not None:
            on_width(b, cached)
    table.widths = {b: table.widths[b] for b in widths}
    return table
