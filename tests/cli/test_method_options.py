"""Method flags generated from the method dataclasses (issue 11 item 2, issue 13 vocabulary): every field is a
flag of `quantize` and `lm quantize` where one of the command's methods has it, a new field adds one, and every
deprecated spelling gives the same config."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import click
import pytest
from click.testing import CliRunner

from losslab.cli.app import cli
from losslab.cli.lm import lm, lm_quantize_plan
from losslab.cli.method_options import MethodOptionsCommand
from losslab.cli.quantize import quantize
from losslab.errors import ConfigError
from losslab.quant import methods as quant_methods
from losslab.quant.methods import GPTQ, LDLQ, RTN, build_methods, method_classes, method_options


def _flags(command: click.Command) -> set[str]:
    ctx = click.Context(command)
    return {opt for p in command.get_params(ctx) for opt in (*p.opts, *p.secondary_opts)}


def _offered(command: click.Command) -> set[str]:
    ctx = click.Context(command)
    (method,) = [p for p in command.get_params(ctx) if "--method" in p.opts]
    return set(getattr(method.type, "choices", method_classes()))  # quantize's --method takes every method


def test_every_dataclass_field_of_an_offered_method_is_a_flag_of_both_commands() -> None:
    every = {f.name for cls in method_classes().values() for f in fields(cls) if f.name != "bits"}
    assert len(every) >= 20
    for command in (quantize, lm.commands["quantize"]):
        offered = {name: cls for name, cls in method_classes().items() if name in _offered(command)}
        expected = {
            "--" + f.name.replace("_", "-") for cls in offered.values() for f in fields(cls) if f.name != "bits"
        }
        assert expected <= _flags(command)
        # a field no offered method has would only ever be refused: it is not a flag (PWLQ's in lm quantize)
        assert not {"--" + name.replace("_", "-") for name in every} - expected & _flags(command)
    assert "--scheme" in _flags(quantize) and "--scheme" not in _flags(lm.commands["quantize"])
    for command in (quantize, lm.commands["quantize"]):
        assert {"--bits", "--json", "--save-packed", "--device", "--calib-samples", "--calib-seed"} <= _flags(command)
    assert "--sym" not in _flags(lm.commands["quantize"]) and "--ldlq-order" not in _flags(lm.commands["quantize"])
    assert {"--calib-batch-size", "--override", "--skip", "--keep-8bit", "--overwrite"} <= _flags(
        lm.commands["quantize"]
    )
    assert {"--json", "--device", "--progress"} <= _flags(lm.commands["eval"])


def test_a_new_field_adds_its_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass(frozen=True, kw_only=True)
    class Probe(RTN):
        extra_knob: int = 3
        name: ClassVar[str] = "probe"

    monkeypatch.setattr(quant_methods, "method_classes", lambda: {"rtn": RTN, "probe": Probe})
    with pytest.raises(ConfigError, match="extra_knob"):  # a field without help text is refused, not hidden
        method_options()
    monkeypatch.setitem(quant_methods.METHOD_OPTION_HELP, "extra_knob", "A test knob.")
    (option,) = [o for o in method_options() if o.name == "extra_knob"]
    assert option.flag == "--extra-knob" and option.methods == ("probe",) and option.parse("7") == 7

    @click.command(cls=type("ProbeCommand", (MethodOptionsCommand,), {}))
    def probe_cmd(**opts: object) -> None: ...

    assert "--extra-knob" in _flags(probe_cmd)


def _params(command: click.Command, group: click.Group | None, args: list[str]) -> dict[str, object]:
    root = click.Context(cli, info_name="losslab")
    parent = click.Context(group, info_name=group.name, parent=root) if group is not None else root
    return command.make_context(command.name, list(args), parent=parent).params


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (["--sym"], ["--grid", "sym"]),
        (["--ldlq-order", "ldlqRG", "--method", "ldlq"], ["--order", "ldlqRG", "--method", "ldlq"]),
        (["--calib-windows", "8"], ["--calib-samples", "8"]),
        (["--seed", "3"], ["--calib-seed", "3"]),
        (["--output", "m.safetensors"], ["--save-packed", "m.safetensors"]),
    ],
)
def test_lm_quantize_aliases_give_the_same_config(old: list[str], new: list[str]) -> None:
    command = lm.commands["quantize"]
    a = _params(command, lm, ["--model", "m", *old])
    b = _params(command, lm, ["--model", "m", *new])
    assert a == b
    assert lm_quantize_plan(a) == lm_quantize_plan(b)


def test_quantize_out_alias_and_lm_option_meanings() -> None:
    a = _params(quantize, None, ["run", "--out", "r.json"])
    b = _params(quantize, None, ["run", "--json", "r.json"])
    assert a == b and str(a["json_path"]) == "r.json"
    base = ["--model", "m", "--method", "ldlq", "--bits", "3,2"]
    methods, _, _ = lm_quantize_plan(_params(lm.commands["quantize"], lm, [*base, "--incoherence", "hadamard"]))
    assert methods == [
        LDLQ(bits=3, grid="quip", incoherence="hadamard"),
        LDLQ(bits=2, grid="quip", incoherence="hadamard"),
    ]
    plan = lm_quantize_plan(
        _params(
            lm.commands["quantize"], lm, ["--model", "m", "--bits", "3", "--act-order", "--override", "*.fc2=gptq:8"]
        )
    )
    assert plan == ([GPTQ(bits=3, act_order=True)], {"*.fc2": GPTQ(bits=8, act_order=True)}, [])
    none = _params(lm.commands["quantize"], lm, ["--model", "m", "--incoherence", "none"])
    assert lm_quantize_plan(none)[0] == [GPTQ(bits=4)]


def test_build_methods_validates_once_in_the_config() -> None:
    with pytest.raises(ConfigError, match="grid='nope'"):
        build_methods(["gptq"], [4], {"grid": "nope"})
    with pytest.raises(ConfigError, match="--order applies to ldlq"):
        build_methods(["gptq"], [4], {"order": "act"})
    assert build_methods(["rtn", "gptq"], [4], {"group_size": 64}) == [
        RTN(bits=4, group_size=64),
        GPTQ(bits=4, group_size=64),
    ]


def test_bits_range_is_the_method_configs_range() -> None:
    """--bits accepts exactly the widths the method dataclasses accept (one range: BITS_RANGE)."""
    from losslab.quant.bits import BITS_RANGE, parse_bits

    for cls in (RTN, GPTQ, LDLQ):
        assert cls.bits_range == BITS_RANGE
    for b in range(-1, 18):
        try:
            RTN(bits=b)
            config_ok = True
        except ConfigError:
            config_ok = False
        try:
            cli_ok = parse_bits(str(b)) == [b]
        except ConfigError:
            cli_ok = False
        assert cli_ok == config_ok == (BITS_RANGE[0] <= b <= BITS_RANGE[1]), b


@pytest.mark.parametrize(
    ("command", "group", "args", "message"),
    [
        (quantize, None, ["run", "--act-order", "--bits", "9"], "--bits 9 is out of range"),
        (lm.commands["quantize"], lm, ["--model", "m", "--seed", "1", "--bits", "x"], "--bits 'x' is not an integer"),
        (lm.commands["quantize"], lm, ["--model", "m", "--bits="], "--bits is empty"),
    ],
)
def test_bad_bits_is_a_usage_error_while_parsing(
    command: click.Command, group: click.Group | None, args: list[str], message: str
) -> None:
    with pytest.raises(click.UsageError) as info:
        _params(command, group, args)
    assert info.value.exit_code == 2 and message in info.value.format_message()
    result = CliRunner().invoke(cli, [*([group.name] if group else []), command.name, *args])
    error = [line for line in result.output.splitlines() if line.startswith("error: ")]  # after any warning
    assert result.exit_code == 2 and len(error) == 1 and message in error[0]
    assert f"see `cli {' '.join([*([group.name] if group else []), command.name])} --help`" in result.output


def test_early_bits_check_reads_the_tokens_as_click_does() -> None:
    # "--bits" as the value of --skip is not the --bits flag; a generated flag's value is not a --bits value
    params = _params(quantize, None, ["run", "--skip", "--bits", "--grid", "sym", "--bits", "8,3"])
    assert params["skip"] == ("--bits",) and params["bits"] == ("8,3",) and params["grid"] == "sym"
    params = _params(lm.commands["quantize"], lm, ["--model", "m", "--override", "*.fc2=rtn:8", "--bits", "2"])
    assert lm_quantize_plan(params)[0] == [GPTQ(bits=2)]
