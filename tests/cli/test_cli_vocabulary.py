"""One vocabulary across the CLI (docs/cli.md): walk every command's --help and check the shared option names.

Every command (recursively through groups) must answer ``--help``; shared concepts have one spelling: output
folders are ``--out-dir``, JSON results ``--json FILE`` (``-`` = stdout), long commands have
``--progress/--no-progress`` defaulting to "stderr is a terminal", training commands take Lightning's
``--accelerator/--devices/--num-nodes/--strategy`` and precision values, single-device commands ``--device``, and
no command declares a deprecated spelling as a real option (those live in ``DEPRECATED_FLAGS``).
"""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from losslab.cli.app import cli
from losslab.cli.options import DEPRECATED_FLAGS, DEPRECATED_VALUES, LosslabCommand

# Old spellings that no command may declare (they are accepted only as deprecated aliases).
# (timm's own spellings such as --clip-grad and --sched are permanent aliases of the train command, not retired.)
RETIRED = {"--output-dir", "--out", "--output", "--grad-clip", "--calib-windows", "--sym"}
OUT_DIR = {"train", "lm finetune", "study run", "report", "demo"}
JSON_FILE = {"evaluate", "quantize", "lm quantize", "lm eval", "logreg"}
LONG = {"train", "evaluate", "quantize", "lm finetune", "lm quantize", "lm eval", "study run", "demo"}
TRAINING = {"train", "lm finetune"}
MULTI_NODE = {"train"}  # Lightning's --num-nodes/--strategy (lm finetune trains in the plain loop: torchrun)
SINGLE_DEVICE = {"evaluate", "quantize", "lm quantize", "lm eval"}
LIGHTNING_PRECISIONS = {"32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"}
QUANTIZERS = {"quantize", "lm quantize"}

# (command, rule) pairs whose flags belong to the quantize/lm-command owner of issue 13 and are renamed on that
# branch; remove an entry once that branch is merged (the test then passes for it).
PENDING: set[tuple[str, str]] = set()


def walk(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """(path without the program name, command) for every leaf command under ``group``."""
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}".strip()
        if isinstance(command, click.Group):
            if command.invoke_without_command:  # a group that is also a command (logreg, logreg sweep)
                yield path, command
            yield from walk(command, path)
        else:
            yield path, command


COMMANDS = dict(walk(cli))


def options(command: click.Command) -> dict[str, click.Option]:
    """Every option string of ``command`` (both halves of --x/--no-x) -> its click.Option."""
    out: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for flag in (*param.opts, *param.secondary_opts):
                out[flag] = param
    return out


def check(command: str, rule: str, ok: bool, detail: str = "") -> None:
    if (command, rule) in PENDING:
        if ok:
            pytest.fail(f"{command}: rule {rule!r} passes now; remove it from PENDING")
        pytest.xfail(f"{command}: {rule} is renamed on the quantize owner's branch")
    assert ok, f"{command}: {rule} {detail}"


def test_the_walk_finds_every_command_group() -> None:
    assert {"train", "evaluate", "quantize", "lm finetune", "lm quantize", "lm eval", "logreg"} <= set(COMMANDS)
    assert {"study run", "study status", "study table", "study list", "report", "demo", "models"} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_answers_help_and_follows_the_vocabulary(path: str) -> None:
    result = CliRunner().invoke(cli, [*path.split(), "--help"])
    assert result.exit_code == 0, result.output
    text = result.output
    command = COMMANDS[path]
    opts = options(command)
    for flag in opts:
        assert flag in text, f"{path} --help does not show {flag}"
    retired = sorted(RETIRED & set(opts))
    check(path, "retired", not retired, f"declares retired spelling(s) {retired}")
    assert not set(DEPRECATED_FLAGS.get(path, {})) & set(opts), f"{path} declares a deprecated alias itself"
    if DEPRECATED_FLAGS.get(path):
        assert isinstance(command, LosslabCommand), f"{path} has deprecated aliases but is not a LosslabCommand"
    if path in OUT_DIR:
        check(path, "out-dir", "--out-dir" in opts, "has no --out-dir")
    if path in JSON_FILE:
        param = opts.get("--json")
        # the quantize commands print their tables on stdout, so their --json is a file only
        dash = path in QUANTIZERS or getattr(getattr(param, "type", None), "allow_dash", False)
        takes_file = param is not None and not param.is_bool_flag and dash
        check(path, "json", takes_file, "has no --json FILE (with - for stdout)")
    if path in LONG:
        param = opts.get("--progress")
        ok = param is not None and "--no-progress" in opts and param.default is None
        check(path, "progress", ok, "needs --progress/--no-progress defaulting to None (terminal check)")
    if path in TRAINING:
        for flag in ("--accelerator", "--devices", "--gradient-clip", "--precision"):
            check(path, "lightning", flag in opts, f"has no {flag}")
        for flag in ("--num-nodes", "--strategy"):
            check(path, "multi-node", (flag in opts) == (path in MULTI_NODE), f"{flag} only where Lightning runs")
        choices = set(getattr(opts["--precision"].type, "choices", []))
        assert choices and choices <= LIGHTNING_PRECISIONS, f"{path} --precision choices {choices}"
        assert "--device" not in opts
    if path in SINGLE_DEVICE:
        check(path, "device", "--device" in opts and "--devices" not in opts, "needs --device, not --devices")
    if path in QUANTIZERS:
        calib = {"--calib-samples", "--calib-seed", "--calib-batch-size", "--incoherence"}
        check(path, "calibration", calib <= set(opts), f"lacks {sorted(calib - set(opts))}")
        bits = opts.get("--bits")
        check(path, "bits", bits is not None and bits.type is not click.INT, "--bits must take a comma list")


def test_deprecated_tables_name_real_commands_and_current_flags() -> None:
    for path, table in DEPRECATED_FLAGS.items():
        assert path in COMMANDS, f"DEPRECATED_FLAGS names unknown command {path!r}"
        current = options(COMMANDS[path])
        for old, new in table.items():
            assert new.split("=")[0] in current, f"{path}: {old} maps to {new}, which the command does not have"
    assert set(DEPRECATED_VALUES["--precision"].values()) <= LIGHTNING_PRECISIONS
