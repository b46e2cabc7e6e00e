"""Packed storage for quantized Hugging Face causal LMs, on top of :mod:`losslab.quant.packed`.

The packed file is the engine's safetensors format; the recipe stores the HF config so the architecture can be
rebuilt offline with ``AutoModelForCausalLM.from_config``::

    result = quantize_decoder(model, GPTQ(bits=4), calib)
    save_packed_lm(result, "opt125m.gptq4.safetensors")
    model = load_packed_lm("opt125m.gptq4.safetensors")      # dequantized weights, bit-exact to the fake ones
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from losslab.errors import LosslabError
from losslab.quant.packed import load_packed, read_packed_metadata, save_packed
from losslab.quant.result import QuantResult

RECIPE_KEY = "hf_causal_lm_config"


def hf_recipe(model: nn.Module, tokenizer: str | None = None) -> dict[str, Any]:
    """The recipe stored with a packed HF model: its config dict and where its tokenizer comes from."""
    return {RECIPE_KEY: model.config.to_dict(), "tokenizer": tokenizer}


def save_packed_lm(result: QuantResult, path: str | os.PathLike[str], tokenizer: str | None = None) -> int:
    """Write ``result`` (from :func:`losslab.lm.quantize.quantize_decoder`) packed; atomic; returns bytes.

    ``tokenizer`` (a hub name or folder) is recorded so ``losslab lm eval`` can find it for the packed file.
    """
    if not result.weights:
        raise LosslabError("the result holds no codes (quantized with keep_codes=False); quantize again to pack")
    return save_packed(result, path, model_recipe=hf_recipe(result.model, tokenizer))


def packed_tokenizer_source(path: str | os.PathLike[str]) -> str | None:
    """The tokenizer recorded in a packed LM file (None if none was recorded)."""
    return (read_packed_metadata(path).get("recipe") or {}).get("tokenizer")


def load_packed_lm(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild a packed HF causal LM from its stored config (offline) with dequantized weights, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from losslab.lm.models import check_config_size

    recipe = read_packed_metadata(path).get("recipe") or {}
    if RECIPE_KEY not in recipe:
        raise LosslabError(f"{os.fspath(path)!r} is not a packed causal LM (no {RECIPE_KEY!r} in its recipe)")
    config_dict = dict(recipe[RECIPE_KEY])
    config_dict.pop("auto_map", None)  # remote code is never run for a packed file
    try:
        config = AutoConfig.for_model(config_dict.pop("model_type", None), **config_dict)
        check_config_size(config, path)  # declared sizes are checked before the skeleton is allocated
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except LosslabError:
        raise
    except (KeyError, ValueError, TypeError) as err:
        raise LosslabError(
            f"{os.fspath(path)!r} stores a model config transformers cannot build offline ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); re-export it with this losslab and transformers"
        ) from None
    model = load_packed(path, model=skeleton)
    model.config.use_cache = False
    return model.eval()
