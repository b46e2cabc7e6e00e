"""Packed storage of a quantized model in one safetensors file, and loading it back bit-exactly.

Format (``format_version`` 2). Tensors, for each quantized layer ``L`` and conv group ``k``:

- ``L.g{k}.codes``: uint8 buffer, the integer codes (minus ``code_offset``) bit-packed little-endian with
  ``code_bits`` bits each, row-major over ``[out/groups, in]``;
- ``L.g{k}.scale`` (fp16 when that is exact, else fp32), ``L.g{k}.zero``, ``L.g{k}.group_index``, ``L.g{k}.lut``
  when the grid has them; ``L.g{k}.x.<path>`` tensors of ``extras["incoherence"]`` (rotation seeds, r, ...) and of
  ``extras["lut_params"]``: a level table defined by a few parameters (PWLQ's range m and breakpoint p per row, plus
  the bias-correction shift and gain) is stored as those parameters and rebuilt on load
  (:func:`losslab.quant.pwlq.pwlq_level_table`), not as its 2^(b+1) entries per row;
- ``L.g{k}.q``: the float weight for the 16-bit ``identity`` grid;

plus every other entry of the model's state dict unchanged (biases, BatchNorm, unquantized layers). The
safetensors metadata key ``losslab_packed`` holds JSON: format version, ``kind: "packed"``, the model recipe
(``model.losslab_recipe``, rebuilt by ``losslab.models.rebuild``), per-layer shape/dtype/grid/bits/levels,
non-tensor incoherence extras, BN folding and activation ranges, the quantization summary, and ``sha256``: per tensor
the first 16 hex digits (64 bits) of the SHA-256 of its bytes. The metadata key ``losslab_packed.sha256`` holds the
full SHA-256 of that JSON text. The checksums detect damage (a flipped bit, a truncated copy, a hand edit); they are
not a signature: whoever can write the file can recompute them.

Loading verifies both checksums and the metadata against the buffers (every stored tensor described, codes
buffers of the size ``code_shape`` × ``code_bits`` needs, dtypes that are dtypes): a flipped byte or an edited
``code_bits``/``code_offset`` raises :class:`CorruptFileError`. Files of format 1 (no checksums) are refused with
a message to re-export them. Nothing in a packed file is executed: it is safetensors plus JSON, and the recipe
rebuilds a randomly initialised architecture (never pretrained weights, see ``losslab.models.rebuild``)::

    size = save_packed(result, "model.4bit.safetensors")     # bytes on disk (os.path.getsize)
    model = load_packed("model.4bit.safetensors")            # or load_packed(path, model=skeleton)

The dequantized weights equal ``result.model``'s fake-quantized weights bit-exactly (tested).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from losslab.errors import CorruptFileError, DataNotFoundError, LosslabError
from losslab.io import atomic_path
from losslab.quant.bn_fold import fold_batchnorm
from losslab.quant.engine_act import install_act_quant
from losslab.quant.pwlq import pwlq_level_table
from losslab.quant.result import QuantResult
from losslab.quant.weight_quant import WeightQuant

FORMAT_VERSION = 2
META_KEY = "losslab_packed"
META_SHA_KEY = "losslab_packed.sha256"
MAX_CODE_BITS = 32
_PARAM_FIELDS = ("scale", "zero", "group_index", "lut")


def pack_bits(values: Tensor, nbits: int) -> Tensor:
    """Pack non-negative integers ``< 2^nbits`` into a uint8 buffer, ``nbits`` bits each, little-endian."""
    flat = values.reshape(-1).to(torch.int64)
    shifts = torch.arange(nbits, device=flat.device)
    bits = ((flat[:, None] >> shifts) & 1).to(torch.uint8).reshape(-1)
    bits = torch.cat([bits, bits.new_zeros((-bits.numel()) % 8)])
    weights = (1 << torch.arange(8, device=flat.device)).to(torch.uint8)
    return (bits.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.int64).to(torch.uint8)


def unpack_bits(buffer: Tensor, nbits: int, count: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` ``nbits``-bit integers of ``buffer`` (int64)."""
    bits = ((buffer.to(torch.int64)[:, None] >> torch.arange(8)) & 1).reshape(-1)[: count * nbits]
    return (bits.reshape(count, nbits) << torch.arange(nbits)).sum(dim=1)


def _flatten_extras(prefix: str, obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Move tensors of a nested dict/list into ``tensors``; return the JSON skeleton with references."""
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {str(k): _flatten_extras(f"{prefix}.{k}", v, tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_flatten_extras(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    return obj


def _restore_extras(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dtype__" in obj:
            return _dtype(obj["__dtype__"])
        return {k: _restore_extras(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_extras(v, tensors) for v in obj]
    return obj


def _pack_group(key: str, wq: WeightQuant, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Store one WeightQuant under ``key``; return its JSON description."""
    meta: dict[str, Any] = {
        "bits": wq.bits,
        "levels": wq.levels,
        "storage_bits": wq.storage_bits,
        "grid": wq.grid,
        "shape": list(wq.q.shape),
        "dtype": str(wq.q.dtype).removeprefix("torch."),
    }
    if wq.grid == "identity":
        tensors[f"{key}.q"] = wq.q.detach().cpu().contiguous().clone()
        return meta
    codes = wq.codes.detach().cpu().to(torch.int64)
    offset = int(codes.min()) if codes.numel() else 0
    span = int(codes.max()) - offset if codes.numel() else 0
    meta.update(
        code_offset=offset,
        code_bits=max(wq.storage_bits, span.bit_length(), 1),
        code_shape=list(codes.shape),
        code_dtype=str(wq.codes.dtype).removeprefix("torch."),
    )
    tensors[f"{key}.codes"] = pack_bits(codes - offset, meta["code_bits"])
    lut_params = wq.extras.get("lut_params")
    for name in _PARAM_FIELDS:
        value = getattr(wq, name)
        if value is None or (name == "lut" and lut_params is not None):
            continue
        value = value.detach().cpu()
        if name == "scale" and value.dtype == torch.float32 and torch.equal(value.half().float(), value):
            meta["scale_dtype"] = "float32"
            value = value.half()
        tensors[f"{key}.{name}"] = value.contiguous().clone()
    extras = {k: v for k, v in wq.extras.items() if k in ("incoherence", "lut_params")}
    meta["extras"] = _flatten_extras(f"{key}.x", extras, tensors)
    return meta


def _dtype(name: object) -> torch.dtype:
    """The torch dtype called ``name`` in the metadata; anything else (another torch attribute) is refused."""
    value = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(value, torch.dtype):
        raise CorruptFileError(f"packed metadata names {name!r} as a dtype, which is not a torch dtype")
    return value


def _unpack_group(key: str, meta: dict[str, Any], tensors: dict[str, Tensor]) -> Tensor:
    """Rebuild one dequantized weight block from its stored tensors."""
    dtype = _dtype(meta["dtype"])
    if meta["grid"] == "identity":
        return tensors[f"{key}.q"]
    shape = meta["code_shape"]
    count = shape[0] * shape[1]
    codes = unpack_bits(tensors[f"{key}.codes"], meta["code_bits"], count) + meta["code_offset"]
    params = {}
    for name in _PARAM_FIELDS:
        value = tensors.get(f"{key}.{name}")
        if value is not None and name == "scale" and "scale_dtype" in meta:
            value = value.to(_dtype(meta["scale_dtype"]))
        params[name] = value
    extras = _restore_extras(meta.get("extras", {}), tensors)
    if "lut_params" in extras:  # the level table is stored as the parameters that define it
        params["lut"] = pwlq_level_table(extras["lut_params"], shape[0])
    wq = WeightQuant(
        q=torch.empty(0, dtype=dtype),
        codes=codes.reshape(shape).to(_dtype(meta["code_dtype"])),
        bits=meta["bits"],
        levels=meta["levels"],
        storage_bits=meta["storage_bits"],
        grid=meta["grid"],
        extras=extras,
        **params,
    )
    return wq.dequantize()


def save_packed(result: QuantResult, path: str | os.PathLike[str], model_recipe: dict[str, Any] | None = None) -> int:
    """Write ``result`` as a packed safetensors file (format in the module doc); return its size in bytes.

    ``model_recipe`` defaults to ``result.model.losslab_recipe`` (set by ``losslab.models.create_model``); without
    one, :func:`load_packed` needs a skeleton model.
    """
    if not isinstance(result, QuantResult):
        raise LosslabError(f"save_packed needs a QuantResult from losslab.quant.quantize, got {type(result).__name__}")
    recipe = model_recipe if model_recipe is not None else getattr(result.model, "losslab_recipe", None)
    try:
        json.dumps(recipe)
    except TypeError as err:
        raise LosslabError(f"model_recipe must be JSON-serializable: {err}") from err
    tensors: dict[str, Tensor] = {}
    layers = {}
    for name, wqs in result.weights.items():
        layer = result.model.get_submodule(name)
        layers[name] = {
            "shape": list(layer.weight.shape),
            "groups": [_pack_group(f"{name}.g{k}", wq, tensors) for k, wq in enumerate(wqs)],
        }
    quantized = {f"{name}.weight" for name in result.weights}
    for key, value in result.model.state_dict().items():
        if key not in quantized:
            tensors[key] = value.detach().cpu().contiguous().clone()
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "packed",
        "recipe": recipe,
        "layers": layers,
        "fold_bn": result.fold_bn,
        "act_bits": result.act_bits,
        "act_ranges": result.act_ranges,
        "summary": result.summary(),
        "sha256": {key: tensor_sha256(value) for key, value in tensors.items()},
    }
    text = json.dumps(meta, default=str)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: text, META_SHA_KEY: _text_sha256(text)})
    return packed_size_bytes(path)


def tensor_sha256(tensor: Tensor) -> str:
    """First 16 hex digits of the SHA-256 of a tensor's raw bytes in C order (dtype/shape are checked separately)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"").hexdigest()[:16]


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def packed_size_bytes(path: str | os.PathLike[str]) -> int:
    """The real size of a packed file on disk, in bytes."""
    return os.path.getsize(path)


def read_packed_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata of a packed file (format version, recipe, layers, summary), checksum-verified."""
    file = os.fspath(path)
    if not os.path.isfile(file):
        raise DataNotFoundError(f"packed file {file!r} does not exist (or is not a file)")
    try:
        with safe_open(file, framework="pt") as fh:
            stored = fh.metadata() or {}
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) for unreadable files
        raise _corrupt(file, f"not a readable safetensors file: {type(err).__name__}: {err}") from None
    raw = stored.get(META_KEY)
    if raw is None:
        raise LosslabError(f"{file!r} is not a losslab packed file (no {META_KEY!r} metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise _corrupt(file, f"its metadata is not valid JSON ({err})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version == 1:
        raise LosslabError(
            f"packed file {file!r} has format_version 1, written by an older losslab without checksums; losslab no "
            "longer loads it (it cannot detect damage). Re-export it from the run: losslab quantize RUN "
            "--save-packed DIR (or losslab lm quantize ... --save-packed FILE)"
        )
    if version != FORMAT_VERSION:
        raise LosslabError(f"packed format_version {version!r} is not supported (need {FORMAT_VERSION})")
    if stored.get(META_SHA_KEY) != _text_sha256(raw):
        raise _corrupt(file, "its metadata does not match its checksum (edited or damaged)")
    return meta


def _corrupt(file: str, what: str) -> CorruptFileError:
    return CorruptFileError(
        f"packed file {file!r} is corrupt: {what}. It is refused rather than loaded wrong; re-export it "
        "(losslab quantize ... --save-packed, or losslab lm quantize ... --save-packed)"
    )


def _read_verified_tensors(file: str, meta: dict[str, Any]) -> dict[str, Tensor]:
    """Every tensor of the file, each checked against its SHA-256 in ``meta``; the sets of names must agree."""
    sums = meta.get("sha256")
    if not isinstance(sums, dict):
        raise _corrupt(file, "its metadata has no tensor checksums")
    try:
        with safe_open(file, framework="pt") as fh:
            names = set(fh.keys())
            if names != set(sums):
                raise _corrupt(file, f"stored tensors {sorted(names ^ set(sums))[:6]} do not match the metadata")
            tensors = {k: fh.get_tensor(k) for k in sorted(names)}
    except CorruptFileError:
        raise
    except Exception as err:  # truncated data section, unreadable file
        raise _corrupt(file, f"its tensors cannot be read ({type(err).__name__}: {err})") from None
    bad = [k for k, v in tensors.items() if tensor_sha256(v) != sums[k]]
    if bad:
        raise _corrupt(file, f"the bytes of {bad[:6]} do not match their checksums")
    return tensors


def _check_layers(file: str, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """The metadata of each quantized layer agrees with its buffers (sizes, bits, shapes) before decoding."""
    for name, info in meta["layers"].items():
        total = 0
        for k, group in enumerate(info["groups"]):
            key = f"{name}.g{k}"
            _dtype(group["dtype"])
            if group["grid"] == "identity":
                if list(tensors[f"{key}.q"].shape) != group["shape"]:
                    raise _corrupt(file, f"{key}.q has shape {list(tensors[f'{key}.q'].shape)}, not {group['shape']}")
                total += math.prod(group["shape"])
                continue
            bits, shape, codes = group["code_bits"], group["code_shape"], tensors.get(f"{key}.codes")
            if not (isinstance(bits, int) and 1 <= bits <= MAX_CODE_BITS) or not isinstance(group["code_offset"], int):
                raise _corrupt(file, f"{key} has code_bits={bits!r}, code_offset={group['code_offset']!r}")
            if codes is None or codes.dtype != torch.uint8 or shape != group["shape"] or len(shape) != 2:
                raise _corrupt(file, f"{key}: codes buffer missing or code_shape {shape} != shape {group['shape']}")
            if codes.numel() != math.ceil(shape[0] * shape[1] * bits / 8):
                raise _corrupt(
                    file, f"{key}.codes holds {codes.numel()} bytes, not the {shape} x {bits} bits the metadata says"
                )
            total += shape[0] * shape[1]
        if math.prod(info["shape"]) != total:
            raise _corrupt(file, f"layer {name}: its groups do not make up its shape {info['shape']}")


def load_packed(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Rebuild the model from a packed file with dequantized weights (bit-exact to the fake-quantized ones).

    Without ``model`` the architecture comes from the stored recipe via ``losslab.models.rebuild``; with
    ``model`` a deep copy of that skeleton is filled. A skeleton whose state dict does not match the file
    (another architecture) raises :class:`LosslabError` listing the differing keys.
    """
    meta = read_packed_metadata(path)
    tensors = _read_verified_tensors(os.fspath(path), meta)
    try:
        _check_layers(os.fspath(path), meta, tensors)
    except (KeyError, TypeError, IndexError) as err:
        raise _corrupt(os.fspath(path), f"its layer metadata is incomplete ({type(err).__name__}: {err})") from None
    if model is None:
        if meta.get("recipe") is None:
            raise LosslabError(
                f"{os.fspath(path)!r} stores no model recipe; pass the architecture: load_packed(path, model=...)"
            )
        from losslab.models import rebuild

        model = rebuild(meta["recipe"])
    else:
        model = copy.deepcopy(model)
    if meta["fold_bn"]:
        fold_batchnorm(model, inplace=True)
    state = {k: v for k, v in tensors.items() if not any(k.startswith(f"{n}.g") for n in meta["layers"])}
    for name, info in meta["layers"].items():
        blocks = [_unpack_group(f"{name}.g{k}", g, tensors) for k, g in enumerate(info["groups"])]
        state[f"{name}.weight"] = torch.cat(blocks).reshape(info["shape"])
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise LosslabError(
            f"packed file {os.fspath(path)!r} does not fit this model (another architecture?): "
            f"missing {missing[:8]}, unexpected {unexpected[:8]}, wrong shape {wrong[:8]}"
        )
    model.load_state_dict(state)
    model.eval()
    if meta["act_bits"] is not None:
        install_act_quant(model, {k: tuple(v) for k, v in meta["act_ranges"].items()}, meta["act_bits"])
    return model
