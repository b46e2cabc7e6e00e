"""Sequential decoder quantization (llm.md §6, quantization.md §8/§11): catcher, identity, RTN equivalence,
8-bit near-lossless, 3-bit GPTQ/LDLQ < RTN, packed = fake."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from losslab.errors import LosslabError
from losslab.lm.data import calibration_windows, eval_windows
from losslab.lm.models import decoder_parts, linear_targets
from losslab.lm.packing import load_packed_lm, packed_tokenizer_source, save_packed_lm
from losslab.lm.perplexity import perplexity
from losslab.lm.quantize import capture_layer_inputs, quantize_decoder
from losslab.quant.methods import GPFQ, GPTQ, LDLQ, RTN, Identity16
from losslab.quant.rtn import rtn_weight

SEQ = 64


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_catcher_keeps_every_kwarg(trained_model, token_ids) -> None:
    calib = calibration_windows(token_ids["train"], 2, SEQ, seed=0)
    calls = capture_layer_inputs(trained_model, calib, torch.device("cpu"))
    layer0 = decoder_parts(trained_model).layers[0]
    seen = {}

    def hook(module, args, kwargs, output):
        seen.update(hidden=args[0], kwargs=kwargs, output=output)

    handle = layer0.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        trained_model(input_ids=calib[1:2], use_cache=False)
    handle.remove()
    assert set(calls[1].kwargs) == set(seen["kwargs"])
    torch.testing.assert_close(calls[1].hidden, seen["hidden"], rtol=0, atol=0)
    with torch.no_grad():
        replay = layer0(calls[1].hidden, **calls[1].kwargs)
    torch.testing.assert_close(replay, seen["output"], rtol=0, atol=0)


def test_identity_quantizer_leaves_logits_unchanged(trained_model, token_ids) -> None:
    ids = token_ids["test"][: 2 * SEQ].view(2, SEQ)
    before = _logits(trained_model, ids)
    result = quantize_decoder(
        trained_model,
        Identity16(),
        calibration_windows(token_ids["train"], 4, SEQ),
        progress=False,
        inplace=True,
    )
    torch.testing.assert_close(_logits(trained_model, ids), before, rtol=1e-5, atol=1e-5)
    assert len(result.layers) == 2 * 6  # q, k, v, out, fc1, fc2 per layer; embeddings and head stay float


def test_sequential_rtn_equals_direct_rtn(trained_model, token_ids) -> None:
    direct = copy.deepcopy(trained_model)
    for layer in decoder_parts(direct).layers:
        for module in linear_targets(layer).values():
            with torch.no_grad():
                module.weight.copy_(rtn_weight(module.weight.detach().clone(), 4).q)
    quantize_decoder(
        trained_model, RTN(bits=4), calibration_windows(token_ids["train"], 2, SEQ), progress=False, inplace=True
    )
    for (name, a), b in zip(trained_model.state_dict().items(), direct.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_8bit_every_method_changes_perplexity_under_one_percent(trained_model, token_ids) -> None:
    windows = eval_windows(token_ids["test"], SEQ)
    calib = calibration_windows(token_ids["train"], 16, SEQ, seed=0)
    base = perplexity(trained_model, windows).ppl
    methods = [
        RTN(bits=8),
        GPTQ(bits=8),
        GPTQ(bits=8, act_order=True, group_size=32),
        LDLQ(bits=8),
        GPFQ(bits=8),
        LDLQ(bits=8, grid="quip", incoherence="hadamard"),
    ]
    for method in methods:
        model = copy.deepcopy(trained_model)
        quantize_decoder(model, method, calib, progress=False, inplace=True)
        ppl = perplexity(model, windows).ppl
        assert abs(ppl / base - 1) < 0.01, (method.describe(), base, ppl)


@pytest.mark.slow
def test_3bit_gptq_and_ldlq_beat_rtn_mean_of_three_calibration_seeds(trained_model, token_ids) -> None:
    windows = eval_windows(token_ids["test"], SEQ)
    rtn = copy.deepcopy(trained_model)
    quantize_decoder(rtn, RTN(bits=3), calibration_windows(token_ids["train"], 2, SEQ), progress=False, inplace=True)
    ppl_rtn = perplexity(rtn, windows).ppl
    for method in (GPTQ(bits=3), LDLQ(bits=3)):
        ppls = []
        for seed in (0, 1, 2):
            model = copy.deepcopy(trained_model)
            calib = calibration_windows(token_ids["train"], 16, SEQ, seed=seed)
            quantize_decoder(model, method, calib, progress=False, inplace=True)
            ppls.append(perplexity(model, windows).ppl)
        assert sum(ppls) / 3 < ppl_rtn, (method.describe(), ppls, ppl_rtn)


def test_packed_file_rebuilds_the_fake_quantized_model(trained_model, token_ids, tmp_path) -> None:
    calib = calibration_windows(token_ids["train"], 4, SEQ)
    result = quantize_decoder(
        trained_model, GPTQ(bits=3, act_order=True, group_size=32), calib, progress=False, inplace=True
    )
    path = tmp_path / "tiny.gptq3.safetensors"
    save_packed_lm(result, path, tokenizer="byte-tokenizer")
    loaded = load_packed_lm(path)
    for key, value in trained_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert packed_tokenizer_source(path) == "byte-tokenizer"
    rows = json.loads(result.to_json(tmp_path / "errors.json"))["layers"]
    assert rows[0]["name"] == "model.decoder.layers.0.self_attn.k_proj" and rows[0]["proxy_loss"] > 0
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_bad_calibration_input_is_refused(trained_model) -> None:
    with pytest.raises(LosslabError, match="int64"):
        quantize_decoder(trained_model, RTN(bits=4), torch.randn(2, SEQ), progress=False, inplace=True)
    with pytest.raises(LosslabError, match="decoder layers"):
        quantize_decoder(
            torch.nn.Linear(3, 3), RTN(bits=4), torch.zeros(1, 4, dtype=torch.long), progress=False, inplace=True
        )


def test_default_contract_is_the_engines_the_model_passed_in_is_not_modified(trained_model, token_ids) -> None:
    """Like ``losslab.quant.quantize``: a quantized copy by default; ``inplace=True`` quantizes the model itself."""
    model = copy.deepcopy(trained_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = calibration_windows(token_ids["train"], 2, SEQ)
    copied = quantize_decoder(model, RTN(bits=3), calib, progress=False)
    assert copied.model is not model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    in_place = quantize_decoder(model, RTN(bits=3), calib, progress=False, inplace=True)
    assert in_place.model is model
    for key, value in copied.model.state_dict().items():
        assert torch.equal(value, in_place.model.state_dict()[key]), key
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
