"""Text and Markdown tables: columns aligned, numbers right-aligned, explicit alignment honoured."""

from __future__ import annotations

from losslab.tables import format_table


def test_text_table_aligns_columns() -> None:
    text = format_table(["method", "bits", "top-1"], [["gpfq", 4, 97.25], ["rtn", 8, None]])
    lines = text.splitlines()
    assert lines[0] == "method  bits  top-1"
    assert lines[2] == "gpfq       4  97.25"
    assert lines[3] == "rtn        8      -"
    assert len({len(line) for line in lines}) == 1


def test_markdown_and_explicit_alignment() -> None:
    md = format_table(["a", "b"], [["x", "1.0 ± 0.1"]], markdown=True, align="lr")
    assert md.splitlines() == ["| a |         b |", "| - | --------: |", "| x | 1.0 ± 0.1 |"]
