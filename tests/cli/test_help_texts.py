"""Help texts say what each command does: real defaults only, and only the options the command accepts."""

from __future__ import annotations

from collections.abc import Callable

import click

from losslab.cli.app import cli
from losslab.quant.methods import build_methods, method_options


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


def test_help_shows_no_empty_default(cli_main: Callable[[list[str]], tuple[int, str, str]]) -> None:
    """No option's help reads "[default: None]" (or an empty one) beside the real default its text describes."""
    bad = {}
    for path in _commands(cli):
        code, out, _ = cli_main([*path, "--help"])
        assert code == 0, path
        flat = " ".join(out.split())
        if "[default: None]" in flat or "[default: ]" in flat:
            bad[" ".join(path)] = flat
    assert not bad, sorted(bad)
    code, out, _ = cli_main(["train", "--help"])
    flat = " ".join(out.split())
    assert "Random seed (model init, data order, augmentation). [default: 0]" in flat  # a real default stays
    assert "$LOSSLAB_DATA_DIR or ~/.cache/losslab/data." in flat


def test_lm_quantize_lists_only_options_its_methods_take(cli_main: Callable[[list[str]], tuple[int, str, str]]) -> None:
    """Every method flag in `lm quantize --help` is accepted by at least one of its --method choices."""
    from losslab.cli.lm import lm

    command = lm.commands["quantize"]
    ctx = click.Context(command, info_name="quantize")
    (method,) = [p for p in command.get_params(ctx) if "--method" in p.opts]
    choices = list(method.type.choices)
    code, out, _ = cli_main(["lm", "quantize", "--help"])
    assert code == 0
    flat = " ".join(out.split())
    for option in method_options():
        takers = [m for m in option.methods if m in choices]
        assert (option.flag + " " in flat) == bool(takers), option.flag
        for name in takers:  # shown flags work: no "applies to ..., not to the chosen method" refusal
            build_methods([name], [4], {option.name: dict(option.defaults)[name]})
    assert "--scheme" not in flat and "--breakpoint" not in flat  # PWLQ's, a method lm quantize does not offer
