"""True-sequential decoder quantization (llm.md §6.5, quantization.md §8): statistics re-collected after each
sub-group of a decoder layer (OPT: q/k/v → out_proj → fc1 → fc2) is quantized."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from losslab.cli.lm import lm
from losslab.errors import LosslabError
from losslab.lm.data import calibration_windows, eval_windows
from losslab.lm.models import SEQUENTIAL_GROUPS, decoder_parts, linear_targets
from losslab.lm.perplexity import perplexity
from losslab.lm.quantize import plan_sequential_groups, quantize_decoder
from losslab.quant.methods import GPFQ, GPTQ, RTN, QuantMethod

SEQ = 64
OPT_GROUPS = [
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    ["self_attn.out_proj"],
    ["fc1"],
    ["fc2"],
]


def _record(monkeypatch: pytest.MonkeyPatch, cls: type, field: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Patch ``cls.quantize_layer`` to record (float weight, a copy of ``stats.<field>``) for every linear."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = cls.quantize_layer

    def recording(self, weight, stats, *, seed=0):
        seen.append((weight.clone(), getattr(stats, field).clone()))
        return original(self, weight, stats, seed=seed)

    monkeypatch.setattr(cls, "quantize_layer", recording)
    return seen


def _stats_of(seen: list[tuple[torch.Tensor, torch.Tensor]], weight: torch.Tensor) -> torch.Tensor:
    """The recorded statistics of the linear whose float weight is ``weight``."""
    (stats,) = [s for w, s in seen if torch.equal(w, weight)]
    return stats


def _true_sequential(
    model: torch.nn.Module, calib: torch.Tensor, method: QuantMethod | None = None, **groups: Any
) -> Any:
    """``quantize_decoder`` in place, silently, true-sequential, with ``method`` (GPTQ 3-bit by default)."""
    return quantize_decoder(
        model, method or GPTQ(bits=3), calib, progress=False, true_sequential=True, inplace=True, **groups
    )


def _out_proj_hessian_reference(float_model, quantized_model, calib: torch.Tensor) -> torch.Tensor:
    """(2/N)·XᵀX in float64 of layer 0's out_proj input rows X (N rows): a float64 copy of the float model with
    layer 0's q/k/v replaced by the quantized ones, run end to end on each calibration window."""
    ref = copy.deepcopy(float_model).double()
    attn, attn_q = ref.model.decoder.layers[0].self_attn, quantized_model.model.decoder.layers[0].self_attn
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(attn, name).weight.copy_(getattr(attn_q, name).weight.double())
    rows: list[torch.Tensor] = []
    handle = attn.out_proj.register_forward_pre_hook(
        lambda m, args: rows.append(args[0].reshape(-1, args[0].shape[-1]))
    )
    with torch.no_grad():
        for window in calib:
            ref(input_ids=window.view(1, -1))
    handle.remove()
    x = torch.cat(rows)
    return 2.0 * x.T @ x / x.shape[0]


def test_out_proj_hessian_comes_from_the_quantized_qkv(trained_model, token_ids, monkeypatch) -> None:
    calib = calibration_windows(token_ids["train"], 4, SEQ, seed=0)
    seen = _record(monkeypatch, GPTQ, "hessian")
    float_model = copy.deepcopy(trained_model)
    attn = float_model.model.decoder.layers[0].self_attn
    runs = {}
    for ts in (False, True):
        seen.clear()
        model = copy.deepcopy(float_model)
        result = quantize_decoder(model, GPTQ(bits=3), calib, progress=False, true_sequential=ts, inplace=True)
        runs[ts] = (model, result, {n: _stats_of(seen, getattr(attn, n).weight) for n in ("q_proj", "out_proj")})
    model_ts, result_ts, h_ts = runs[True]
    h_ref = _out_proj_hessian_reference(float_model, model_ts, calib)
    # float32 accumulation over 256 rows against a float64 reference: a few float32 ulps of the largest entry
    atol = 1e-5 * h_ref.abs().max().item()
    torch.testing.assert_close(h_ts["out_proj"].double(), h_ref, rtol=1e-5, atol=atol)
    # the default run's out_proj H (from float q/k/v) is far from it, so the comparison can tell them apart
    assert (runs[False][2]["out_proj"].double() - h_ref).abs().max() > 100 * atol
    # q/k/v see the same (float) layer input either way
    assert torch.equal(runs[False][2]["q_proj"], h_ts["q_proj"])
    assert result_ts.calibration["true_sequential"] is True and result_ts.calibration["sequential_groups"] == OPT_GROUPS
    assert runs[False][1].calibration["true_sequential"] is False
    assert [r.name.split("layers.0.")[1] for r in result_ts.layers[:6]] == [n for g in OPT_GROUPS for n in g]


def test_rtn_is_bit_identical_with_and_without_true_sequential(trained_model, token_ids) -> None:
    calib = calibration_windows(token_ids["train"], 2, SEQ)
    plain, seq = copy.deepcopy(trained_model), trained_model
    a = quantize_decoder(plain, RTN(bits=3), calib, progress=False, metrics=True, inplace=True)
    b = quantize_decoder(seq, RTN(bits=3), calib, progress=False, metrics=True, true_sequential=True, inplace=True)
    for (name, x), y in zip(plain.state_dict().items(), seq.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    # the metric Hessians were re-collected: out_proj's proxy loss now uses inputs from the quantized q/k/v
    proxy = {r.name: r.proxy_loss for r in a.layers}, {r.name: r.proxy_loss for r in b.layers}
    key = "model.decoder.layers.0.self_attn.out_proj"
    assert proxy[0][key] != proxy[1][key]
    assert proxy[0]["model.decoder.layers.0.self_attn.q_proj"] == proxy[1]["model.decoder.layers.0.self_attn.q_proj"]


def test_gptq_3bit_true_sequential_changes_weights_and_keeps_perplexity_sane(trained_model, token_ids) -> None:
    calib = calibration_windows(token_ids["train"], 8, SEQ, seed=0)
    windows = eval_windows(token_ids["test"], SEQ)
    models, ppl = {}, {}
    for ts in (False, True):
        models[ts] = copy.deepcopy(trained_model)
        quantize_decoder(models[ts], GPTQ(bits=3), calib, progress=False, true_sequential=ts, inplace=True)
        ppl[ts] = perplexity(models[ts], windows).ppl
    layers = {ts: decoder_parts(m).layers for ts, m in models.items()}
    weight = {ts: {n: m.weight for n, m in linear_targets(layers[ts][0]).items()} for ts in models}
    assert torch.equal(weight[False]["self_attn.q_proj"], weight[True]["self_attn.q_proj"])
    for name in ("self_attn.out_proj", "fc1", "fc2"):
        assert not torch.equal(weight[False][name], weight[True][name]), name
    assert not torch.equal(layers[False][1].fc2.weight, layers[True][1].fc2.weight)
    assert math.isfinite(ppl[True]) and abs(math.log(ppl[True] / ppl[False])) < math.log(1.05), ppl


def test_gpfq_float_stream_stays_float_under_true_sequential(trained_model, token_ids, monkeypatch) -> None:
    calib = calibration_windows(token_ids["train"], 2, SEQ)
    layers = decoder_parts(trained_model).layers
    probes = {"l0.out": layers[0].self_attn.out_proj.weight, "l1.fc1": layers[1].fc1.weight}
    probes = {k: v.detach().clone() for k, v in probes.items()}
    xx, h_tilde = {}, {}
    for ts in (False, True):
        for field, store in (("xx", xx), ("h_tilde", h_tilde)):
            seen = _record(monkeypatch, GPFQ, field)
            quantize_decoder(
                copy.deepcopy(trained_model),
                GPFQ(bits=3, grid="gpfq"),
                calib,
                progress=False,
                true_sequential=ts,
                inplace=True,
            )
            store[ts] = {k: _stats_of(seen, w) for k, w in probes.items()}
            monkeypatch.undo()
    for key in probes:  # XᵀX of the float network is the same; X̃ᵀX̃ differs once earlier groups are quantized
        torch.testing.assert_close(xx[True][key], xx[False][key], rtol=1e-12, atol=0)
    assert not torch.allclose(h_tilde[True]["l0.out"], h_tilde[False]["l0.out"])


def test_explicit_groups_equal_the_table(trained_model, token_ids) -> None:
    calib = calibration_windows(token_ids["train"], 2, SEQ)
    table = copy.deepcopy(trained_model)
    _true_sequential(table, calib)
    result = _true_sequential(trained_model, calib, sequential_groups=OPT_GROUPS)
    for (name, x), y in zip(table.state_dict().items(), trained_model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert result.calibration["sequential_groups"] == OPT_GROUPS


def _tiny(family: str) -> torch.nn.Module:
    """A one-layer seeded model of each architecture in the table (no download)."""
    import transformers as tf

    common = {"vocab_size": 64}
    configs = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {"num_hidden_layers": 1, "hidden_size": 32}),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {"num_hidden_layers": 1, "hidden_size": 32}),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {"num_hidden_layers": 1, "hidden_size": 32}),
        "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel, {"n_layer": 1, "n_embd": 32, "bos_token_id": 0, "eos_token_id": 0}),
        "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, {"num_hidden_layers": 1, "hidden_size": 32}),
    }
    config_cls, model_cls, extra = configs[family]
    sizes = {} if family == "gpt2" else {"intermediate_size": 64, "num_attention_heads": 4}
    if family in ("mistral", "qwen2"):
        sizes["num_key_value_heads"] = 2
    if family == "gpt2":
        sizes["n_head"] = 4
    torch.manual_seed(0)
    return model_cls(config_cls(**common, **extra, **sizes)).eval()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gpt2", "gpt_neox"])
def test_table_matches_each_architecture_and_runs(family: str) -> None:
    model = _tiny(family)
    plan = plan_sequential_groups(model, true_sequential=True)
    assert plan == [list(g) for g in SEQUENTIAL_GROUPS[family]]
    layer = decoder_parts(model).layers[0]
    before = {n: m.weight.detach().clone() for n, m in linear_targets(layer).items()}
    calib = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    result = _true_sequential(model, calib)
    assert [r.name.rsplit(".0.", 1)[1] for r in result.layers] == [n for g in plan for n in g]
    for name, module in linear_targets(layer).items():
        assert not torch.equal(module.weight, before[name]), name


def _tiny_bloom() -> torch.nn.Module:
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    return BloomForCausalLM(BloomConfig(vocab_size=260, hidden_size=32, n_layer=1, n_head=4)).eval()


def test_unsupported_architecture_is_refused_before_work_and_names_the_fix() -> None:
    model = _tiny_bloom()  # BLOOM: decoder layers found (transformer.h), no true-sequential table
    before = copy.deepcopy(model.state_dict())
    calib = torch.randint(0, 260, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(LosslabError, match=r"model_type='bloom'.*sequential_groups=.*drop --true-sequential") as err:
        _true_sequential(model, calib)
    assert "self_attention.query_key_value, self_attention.dense, mlp.dense_h_to_4h" in str(err.value)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    groups = [
        ["self_attention.query_key_value"],
        ["self_attention.dense"],
        ["mlp.dense_h_to_4h"],
        ["mlp.dense_4h_to_h"],
    ]
    result = _true_sequential(model, calib, sequential_groups=groups)
    assert len(result.layers) == 4 and result.calibration["sequential_groups"] == groups


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (OPT_GROUPS[:3], "in no group: fc2"),
        ([*OPT_GROUPS, ["fc3"]], "not linears of the layer: fc3"),
        ([*OPT_GROUPS, ["fc1"]], "in several groups: fc1"),
        ("fc1", "list of non-empty lists"),
        ([[], ["fc1"]], "list of non-empty lists"),
    ],
)
def test_bad_groups_are_refused(trained_model, groups, message: str) -> None:
    calib = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(LosslabError, match=message):
        _true_sequential(trained_model, calib, RTN(bits=4), sequential_groups=groups)
    with pytest.raises(LosslabError, match="only used with true_sequential=True"):
        quantize_decoder(trained_model, RTN(bits=4), calib, progress=False, sequential_groups=OPT_GROUPS, inplace=True)


def test_skipped_linears_leave_the_groups(trained_model) -> None:
    plan = plan_sequential_groups(trained_model, true_sequential=True, skip=["fc2", "self_attn.k_proj"])
    assert plan == [["self_attn.q_proj", "self_attn.v_proj"], ["self_attn.out_proj"], ["fc1"]]
    assert plan_sequential_groups(trained_model) is None


def test_cli_true_sequential_and_ldlq_act_order(tmp_path, trained_model, tokenizer, corpus) -> None:
    folder = tmp_path / "tiny-opt"
    trained_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = tmp_path / "train.txt"
    text.write_text(corpus["train"])
    runner = CliRunner()
    assert "--true-sequential" in runner.invoke(lm, ["quantize", "--help"]).output
    base = ["quantize", "--model", str(folder), "--bits", "3", "--text-file", str(text), "--calib-windows", "4"]
    base += ["--seqlen", str(SEQ), "--device", "cpu", "--no-progress"]
    report = tmp_path / "a.json"
    out = runner.invoke(lm, [*base, "--method", "ldlq", "--act-order", "--true-sequential", "--json", str(report)])
    assert out.exit_code == 0, out.output
    assert "true-sequential statistics" in out.output
    summary = json.loads(report.read_text())["summary"]
    assert summary["calibration"]["true_sequential"] is True
    assert summary["method"] == "LDLQ(bits=3, order='act', act_order=True)"

    bloom = tmp_path / "tiny-bloom"
    _tiny_bloom().save_pretrained(bloom)
    tokenizer.save_pretrained(bloom)
    bad = runner.invoke(lm, [*base[:2], str(bloom), *base[3:], "--true-sequential", "--json", str(tmp_path / "b")])
    assert bad.exit_code != 0 and "model_type='bloom'" in str(bad.exception)
