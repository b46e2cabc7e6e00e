"""Plain-text and Markdown tables for CLI output and reports.

print(format_table(["method", "bits", "top-1"], [["gpfq", 4, 97.2]], floatfmt=".2f"))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, floatfmt)
    return str(value)


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    floatfmt: str = ".2f",
    markdown: bool = False,
    align: str | None = None,
) -> str:
    """Align ``rows`` under ``headers``; ``markdown=True`` gives a GitHub table.

    ``align`` holds one letter per column, ``l`` or ``r``; by default numeric columns are right-aligned.
    """
    cells = [[_cell(v, floatfmt) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if align is None:
        numeric = [
            all(isinstance(row[i], int | float) or row[i] is None for row in rows) and bool(rows)
            for i in range(len(headers))
        ]
    else:
        numeric = [a == "r" for a in align]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    out = [line(list(headers))]
    if markdown:
        out.append(
            "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)) + " |"
        )
    else:
        out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)
