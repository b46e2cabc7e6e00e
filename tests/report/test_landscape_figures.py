"""What the "landscape vs compression" scatter draws: every point, a distinct (colour, marker) per training variant
(24 variants, more than any colour map has colours), one legend below the panels, a log axis for a probe spanning
decades, τ in each title."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import itertools

import numpy as np
import pytest
from matplotlib.colors import to_hex

from losslab.report.landscape import LOG_SPAN, draw_scatter, scatter


def rows(probe: str, x_scale: float, variants: int = 24, points: int = 9) -> list[dict]:
    rng = np.random.default_rng(0)
    names = [f"loss=l{i % 4}, regularizer=r{i // 4 % 3}, lr={i // 12}" for i in range(variants)]
    out = []
    for method, bits in [("rtn", 4), ("rtn", 2), ("gptq", 3), ("gpfq", 2)][:points]:
        x = list(x_scale ** rng.uniform(0, 1, 3 * variants))
        out.append(
            {
                "probe": probe,
                "method": method,
                "bits": bits,
                "tau": 0.25,
                "tau_low": -0.1,
                "tau_high": 0.5,
                "x": x,
                "y": list(rng.normal(size=3 * variants)),
                "variants": [n for n in names for _ in range(3)],
            }
        )
    return out


def style(collection) -> tuple[str, bytes]:
    """(colour, marker outline) of a scatter's points."""
    return to_hex(collection.get_facecolor()[0]), collection.get_paths()[0].vertices.round(6).tobytes()


def test_every_variant_has_its_own_style_and_one_legend_below_the_panels() -> None:
    data = rows("trace", x_scale=1000.0)
    fig = draw_scatter(data, "trace")
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 4
    for ax, r in zip(panels, data):
        assert sum(len(c.get_offsets()) for c in ax.collections) == len(r["x"])  # every model drawn
        assert "τ +0.25 [-0.10, +0.50]" in ax.get_title()
        assert ax.get_xscale() == "log"  # 1 .. 1000: decades
        assert any(line.get_ydata()[0] == 0 for line in ax.get_lines())  # the no-drop line
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == list(dict.fromkeys(data[0]["variants"]))
    styles = [style(h) for h in legend.legend_handles]
    assert len(set(styles)) == 24  # no two variants drawn alike
    # each variant's points in a panel carry its legend style
    legend_style = dict(zip(labels, styles))
    for c in panels[0].collections:
        assert style(c) == legend_style[c.get_label()]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    lowest = min(ax.get_tightbbox(renderer).y0 for ax in panels)
    assert box.y1 <= lowest + 1  # below every panel, not over one
    assert lowest - box.y1 < 0.1 * fig.bbox.height  # and right under them
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width + 1  # inside the picture


@pytest.mark.parametrize(("x_scale", "log"), [(LOG_SPAN * 0.5, False), (LOG_SPAN * 2, True)])
def test_log_axis_only_when_the_probe_spans_decades(x_scale: float, log: bool) -> None:
    data = rows("top eigenvalue", x_scale=x_scale, variants=3, points=1)
    data[0]["x"][0], data[0]["x"][1] = 1.0, x_scale  # the span is exactly x_scale
    fig = draw_scatter(data, "top eigenvalue")
    assert (fig.axes[0].get_xscale() == "log") is log
    data[0]["x"][0] = -1.0  # a negative value: never log
    assert draw_scatter(data, "top eigenvalue").axes[0].get_xscale() == "linear"


def test_tick_labels_of_small_values_do_not_run_into_each_other() -> None:
    data = rows("adaptive sharpness (average)", x_scale=2.0, variants=3, points=1)
    data[0]["x"] = [v * 1e-3 - 1.5e-3 for v in range(len(data[0]["x"]))]  # -0.0015 .. 0.0045, both signs
    fig = draw_scatter(data, "adaptive sharpness (average)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels() if t.get_visible() and t.get_text()]
    assert len(boxes) >= 2
    boxes.sort(key=lambda b: b.x0)
    assert all(a.x1 < b.x0 for a, b in itertools.pairwise(boxes))


def test_scatter_writes_a_png_and_nothing_for_an_absent_probe(tmp_path) -> None:
    path = scatter(rows("trace", 10.0, variants=2, points=1), "trace", tmp_path / "f.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert scatter(rows("trace", 10.0), "sharpness (worst)", tmp_path / "g.png") is None
    assert not (tmp_path / "g.png").exists()
