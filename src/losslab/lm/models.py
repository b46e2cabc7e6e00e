"""Load Hugging Face causal LMs and their tokenizers, and split a decoder into pre-modules | layers | post.

    model = load_causal_lm("facebook/opt-125m")          # or a local folder, or a packed file (.pt)
    tok = load_tokenizer("facebook/opt-125m", pad_token="eos")
    parts = decoder_parts(model)                          # parts.layers: the nn.ModuleList of decoder layers
    targets = linear_targets(parts.layers[0])             # {"self_attn.q_proj": Linear, ..., "fc2": Linear}
    groups = true_sequential_groups(model)                # OPT: (q, k, v), (out_proj,), (fc1,), (fc2,)

What ``--model`` means (:func:`model_source`): an existing file is a packed model, an existing folder a
``save_pretrained`` folder; a string that looks like a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x.safetensors``)
but does not exist is an error, never a hub lookup; only a valid hub id (``org/name``) goes to the Hugging Face
hub. A hub id is read from the local cache first (no network at all when cached); only when it is not cached is
the hub contacted, after a quick reachability check, so an offline machine fails at once with one message
(:class:`DataNotFoundError`: pass ``--model /local/path`` or go online) instead of retrying for a minute.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from losslab.errors import CorruptFileError, DataNotFoundError, LosslabError, UnsafeFileError
from losslab.hub import hub_offline as _hub_offline
from losslab.hub import reachable as _reachable  # noqa: F401  (tests clear its cache)

# Attribute paths of the decoder layer list, for the families GPTQ-style drivers support.
_LAYER_PATHS = ("model.decoder.layers", "model.layers", "transformer.h", "gpt_neox.layers", "transformer.blocks")

_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_LLAMA_GROUPS = (_QKV, ("self_attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))

#: Sub-groups of one decoder layer's linears in forward order, by ``config.model_type``, for true-sequential
#: quantization (GPTQ's ``--true-sequential``, llm.md §6): a group's statistics are gathered after every earlier
#: group of the same layer is quantized. Linears of one group read the same input, so they share statistics.
#: Read-only; other architectures pass ``sequential_groups=`` to :func:`losslab.lm.quantize.quantize_decoder`.
SEQUENTIAL_GROUPS: MappingProxyType[str, tuple[tuple[str, ...], ...]] = MappingProxyType(
    {
        "opt": (_QKV, ("self_attn.out_proj",), ("fc1",), ("fc2",)),
        "llama": _LLAMA_GROUPS,
        "mistral": _LLAMA_GROUPS,
        "qwen2": _LLAMA_GROUPS,
        "gpt2": (("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",)),
        "gpt_neox": (
            ("attention.query_key_value",),
            ("attention.dense",),
            ("mlp.dense_h_to_4h",),
            ("mlp.dense_4h_to_h",),
        ),
    }
)


#: A Hugging Face hub id: ``name`` or ``org/name`` (letters, digits, ``-_.``; no ``--`` or ``..``, at most 96 chars).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
#: Suffixes of model files: a name ending in one is a mistyped local path, not a hub id.
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar", ".json")


def is_hub_id(name: str) -> bool:
    """True when ``name`` can be a Hugging Face hub model id (``facebook/opt-125m``, ``gpt2``)."""
    return (
        len(name) <= 96
        and _HUB_ID.match(name) is not None
        and "--" not in name
        and ".." not in name
        and not name.lower().endswith(_FILE_SUFFIXES)
    )


def model_source(name_or_path: str | Path) -> Path | str:
    """An existing local file/folder (as a Path), or a hub id (as a str); a missing local-looking path is an error.

    >>> model_source("facebook/opt-125m")
    'facebook/opt-125m'
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if isinstance(name_or_path, Path) or not is_hub_id(text):
        raise DataNotFoundError(
            f"model {text!r} looks like a local path but does not exist; check the path (a packed .safetensors file "
            "or a folder saved with save_pretrained). A Hugging Face hub name looks like org/name, e.g. "
            "facebook/opt-125m"
        )
    return text


def _offline_message(name: str, err: Exception | None) -> str:
    cause = f" ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})" if err is not None else ""
    return (
        f"could not load {name!r}{cause}. If you are offline, pass a local folder with --model /local/path (save one "
        "with save_pretrained), or go online once so the Hugging Face cache holds it."
    )


#: Files of a model folder that can name custom code (``auto_map``) for transformers to import.
_CODE_FILES = ("config.json", "tokenizer_config.json", "processor_config.json")


def refuse_custom_code(folder: Path) -> None:
    """:class:`UnsafeFileError` when ``folder``'s config names custom code (``auto_map``).

    transformers would ask on stdin whether to run that code (and run it on "y"); losslab never runs code from a
    model folder, so such a folder is refused before anything is loaded.
    """
    for name in _CODE_FILES:
        file = folder / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise CorruptFileError(
                f"{str(file)!r} is not readable JSON ({type(err).__name__}); re-save the model"
            ) from None
        if isinstance(data, dict) and "auto_map" in data:
            raise UnsafeFileError(
                f"{str(file)!r} names custom code (auto_map: {', '.join(map(str, data['auto_map']))}); losslab never "
                "runs code from a model folder: use a model whose architecture transformers ships"
            )


def _from_hub_or_local(
    loader: Callable[..., Any], name_or_path: str | Path, *, local_only: bool = False, **kwargs: Any
) -> Any:
    """``loader.from_pretrained`` for a local folder, or a hub id: cache first, then the hub if reachable.

    Custom code is never run (``trust_remote_code=False``; a folder naming it is refused first). ``local_only``:
    a hub id is read from the local cache only (no network), e.g. the tokenizer a local packed file names.
    """
    kwargs["trust_remote_code"] = False
    source = model_source(name_or_path)
    if isinstance(source, Path):
        refuse_custom_code(source if source.is_dir() else source.parent)
        try:
            return loader(str(source), **kwargs)
        except (OSError, ValueError) as err:
            raise DataNotFoundError(
                f"{str(source)!r} is not a loadable model/tokenizer folder ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); pass a folder written by save_pretrained"
            ) from err
    try:
        return loader(source, local_files_only=True, **kwargs)  # cached: no network at all
    except (OSError, ValueError) as err:
        if local_only:
            raise DataNotFoundError(
                f"{source!r} is not in the local Hugging Face cache and losslab does not go online for it here "
                f"({type(err).__name__}); pass --tokenizer /local/folder (saved with save_pretrained)"
            ) from None
    if _hub_offline():
        raise DataNotFoundError(_offline_message(source, None) + " (the hub is not reachable and it is not cached)")
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as err:
        raise DataNotFoundError(_offline_message(source, err)) from err


#: Config keys whose value sizes a causal LM's tables (checked before anything is built).
_SIZE_KEYS = ("vocab_size", "hidden_size", "n_embd", "d_model", "intermediate_size", "ffn_dim", "n_inner",
              "num_hidden_layers", "n_layer", "max_position_embeddings", "n_positions")  # fmt: skip
MAX_MODEL_DIM = 1 << 20  # widths, layer counts and context lengths above this are no real model's


def check_config_size(config: Any, source: str | os.PathLike[str]) -> int:
    """Parameters of the model ``config`` describes, counted on the meta device (nothing allocated); a
    :class:`~losslab.errors.ConfigError` when a declared size is absurd or the model would not fit in memory."""
    from transformers import AutoModelForCausalLM

    from losslab.limits import MAX_VOCAB, check_allocation, check_count

    for key in _SIZE_KEYS:
        value = getattr(config, key, None)
        if value is not None:
            check_count(key, value, high=MAX_VOCAB if key == "vocab_size" else MAX_MODEL_DIM, source=source)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    n_params = sum(p.numel() for p in skeleton.parameters())
    check_allocation(f"a {n_params:,}-parameter model", 4 * n_params, source=source)
    return n_params


def load_causal_lm(name_or_path: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """An ``AutoModelForCausalLM`` by hub name or local folder, or a packed model file written by
    :func:`losslab.lm.packing.save_packed_lm`; in eval mode, ``use_cache`` off. See :func:`model_source`."""
    source = model_source(name_or_path)
    if isinstance(source, Path) and source.is_file():
        from losslab.lm.packing import load_packed_lm

        model = load_packed_lm(source)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        if isinstance(source, Path):  # a local folder: its declared sizes are checked before anything is built
            config = _from_hub_or_local(AutoConfig.from_pretrained, source)
            check_config_size(config, source / "config.json")
        model = _from_hub_or_local(AutoModelForCausalLM.from_pretrained, source, dtype=dtype)
    if dtype is not None:
        model = model.to(dtype)
    model.config.use_cache = False
    return model.eval()


def load_tokenizer(name_or_path: str | Path, pad_token: str | None = None, local_only: bool = False) -> Any:
    """The model's tokenizer (``AutoTokenizer``). ``pad_token="eos"`` sets pad = EOS (the RLO reference).

    ``local_only``: a hub name is read from the local cache only (for the tokenizer a packed file records)."""
    from transformers import AutoTokenizer

    if pad_token not in (None, "eos"):
        raise LosslabError(f"pad_token={pad_token!r} is not supported; use 'eos' or leave it unset")
    source = model_source(name_or_path)
    if (
        isinstance(source, Path)
        and source.is_dir()
        and not any(
            (source / name).is_file()
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "config.json")
        )
    ):
        raise DataNotFoundError(
            f"folder {str(source)!r} holds no model or tokenizer files (config.json, tokenizer.json, ...); pass a "
            "folder saved with save_pretrained, a packed .safetensors file, or a hub name"
        )
    tok = _from_hub_or_local(AutoTokenizer.from_pretrained, name_or_path, local_only=local_only)
    if pad_token == "eos":
        tok.pad_token = tok.eos_token
    return tok


def context_length(model: nn.Module) -> int:
    """The model's maximum sequence length (``max_position_embeddings`` or ``n_positions``)."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise LosslabError("cannot read the model's context length from its config; pass --seqlen explicitly")


def check_seqlen(model: nn.Module, seqlen: int | None) -> int:
    """``seqlen`` (default: the model's context), refused when above the model's context."""
    context = context_length(model)
    if seqlen is None:
        return context
    if seqlen < 2 or seqlen > context:
        raise LosslabError(
            f"seqlen={seqlen} is not allowed: the model's context is {context} tokens; use 2 <= --seqlen <= {context}"
        )
    return seqlen


@dataclass
class DecoderParts:
    """A causal LM split for sequential processing: ``layers`` (the decoder blocks) inside ``parent`` at
    attribute ``attr``; everything else (embeddings, final norm, LM head) is "outer" and stays float."""

    layers: nn.ModuleList
    parent: nn.Module
    attr: str


def decoder_parts(model: nn.Module) -> DecoderParts:
    """Find the decoder layer list (OPT ``model.decoder.layers``, Llama-style ``model.layers``, GPT-2
    ``transformer.h``, GPT-NeoX ``gpt_neox.layers``)."""
    for path in _LAYER_PATHS:
        parent_path, _, attr = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path)
        except AttributeError:
            continue
        layers = getattr(parent, attr, None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return DecoderParts(layers, parent, attr)
    raise LosslabError(
        f"cannot find the decoder layers of {type(model).__name__}: looked for {', '.join(_LAYER_PATHS)}; "
        "this architecture is not supported yet"
    )


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and GPT-2's ``Conv1D`` (weight stored (in, out))."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_targets(layer: nn.Module) -> dict[str, nn.Module]:
    """The linear sublayers of one decoder layer, by name relative to the layer, in registration order."""
    return {name: m for name, m in layer.named_modules() if name and is_linear(m)}


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out, in]`` (transposes GPT-2's ``Conv1D``)."""
    w = module.weight.detach()
    return w if isinstance(module, nn.Linear) else w.t()


def set_weight_matrix(module: nn.Module, q: torch.Tensor) -> None:
    """Write an ``[out, in]`` weight back into ``module`` (in its own layout and dtype)."""
    with torch.no_grad():
        module.weight.copy_(q if isinstance(module, nn.Linear) else q.t())


def true_sequential_groups(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    """The true-sequential sub-groups of ``model``'s decoder layers from :data:`SEQUENTIAL_GROUPS`.

    Names are relative to a decoder layer (as in :func:`linear_targets`). Raises :class:`LosslabError` for an
    architecture without a table, naming this model's linears and the fix (``sequential_groups=`` or no
    true-sequential): guessing an order from module registration could silently differ from the data flow
    (OPT registers k, v, q).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in SEQUENTIAL_GROUPS:
        return SEQUENTIAL_GROUPS[model_type]
    names = ", ".join(linear_targets(decoder_parts(model).layers[0]))
    raise LosslabError(
        f"true_sequential has no sub-group table for model_type={model_type!r} (known: "
        f"{', '.join(sorted(SEQUENTIAL_GROUPS))}). Fix: call quantize_decoder(..., true_sequential=True, "
        f"sequential_groups=[[...], ...]) listing this model's decoder-layer linears ({names}) in forward order, "
        "one list per group that reads the same input; or quantize without true_sequential (drop --true-sequential)"
    )
