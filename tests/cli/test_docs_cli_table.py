"""docs/cli.md's vocabulary table matches the commands' real options (issue 18: "the table is generated or tested").

For every row, each flag in the first column must be an option of exactly the commands the third column lists
(found by walking ``losslab.cli.app.cli``), and each old spelling in the last column must be a deprecated alias of
the current flag for the command it names (``DEPRECATED_FLAGS``), so a flag added to or removed from a command, or
a table row that drifts, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from losslab.cli.app import cli
from losslab.cli.groups import command_params, walk_commands
from losslab.cli.options import DEPRECATED_FLAGS

COMMANDS = dict(walk_commands(cli))
DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def table_rows() -> list[list[str]]:
    """The cells of the first table of docs/cli.md (the vocabulary), header and rule left out."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| flag | meaning | commands"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


ROWS = table_rows()


def flags_of(cell: str) -> list[str]:
    """``--progress/--no-progress`` -> both; ``--calib-samples N`, `--calib-seed S`` -> each."""
    flags = []
    for code in re.findall(r"`([^`]+)`", cell):
        first = code.split()[0]
        flags += [flag for flag in first.split("/") if flag.startswith("--")]
    return flags


def commands_of(cell: str) -> set[str]:
    """``every long command: train, lm eval (a note)`` -> {"train", "lm eval"}."""
    cell = cell.split(":", 1)[1] if ":" in cell else cell
    return {re.sub(r"\(.*?\)", "", name).strip() for name in cell.split(",") if name.strip()}


def options_of(command: click.Command) -> set[str]:
    return {
        flag for p in command_params(command) if isinstance(p, click.Option) for flag in (*p.opts, *p.secondary_opts)
    }


def test_the_table_was_found() -> None:
    assert len(ROWS) >= 15 and all(len(row) == 4 for row in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_each_flag_is_an_option_of_exactly_the_commands_listed(row: list[str]) -> None:
    flag_cell, _, command_cell, _ = row
    listed = commands_of(command_cell)
    for flag in flags_of(flag_cell):
        if listed == {"all"}:  # a root option (losslab --verbose CMD)
            assert flag in options_of(cli)
            continue
        having = {path for path, command in COMMANDS.items() if flag in options_of(command)}
        assert having == listed, f"{flag}: docs/cli.md lists {sorted(listed)}, the commands have {sorted(having)}"


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_each_old_spelling_is_a_deprecated_alias(row: list[str]) -> None:
    """Each ``--old`` (command) of the last column renames to a flag of that row for that command."""
    current = flags_of(row[0])
    for old, where in re.findall(r"`(--[\w-]+)[^`]*`\s*\(([^)]*)\)", row[3]):
        commands = [name.strip() for name in where.split(",")]
        declared = [path for path in commands if old in DEPRECATED_FLAGS.get(path, {})]
        assert declared, f"{old}: no command of {commands} lists it in DEPRECATED_FLAGS"
        for path in declared:
            new = DEPRECATED_FLAGS[path][old].split("=")[0]
            assert new in current, f"{path} {old} renames to {new}, not to this row's {current}"
