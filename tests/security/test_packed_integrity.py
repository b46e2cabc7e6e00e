"""Packed files are checked before use: a flipped byte, edited metadata, a truncated file or an old format without
checksums is refused with :class:`CorruptFileError` (or a re-export message), never loaded as different weights;
a recipe that asks for pretrained weights or another file is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from losslab.errors import CorruptFileError, LosslabError
from losslab.quant import RTN, load_packed, quantize, save_packed
from losslab.quant.packed import META_KEY, META_SHA_KEY


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()


@pytest.fixture()
def packed(tmp_path: Path) -> Path:
    path = tmp_path / "m.safetensors"
    save_packed(quantize(_model(), RTN(bits=3), [torch.randn(8, 16)], progress=False), path)
    load_packed(path, model=_model())  # the untouched file loads
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118


def _rewrite(path: Path, edit_meta=None, edit_tensors=None, rehash: bool = False) -> None:
    """Rewrite ``path`` with edited metadata/tensors; ``rehash`` recomputes the metadata checksum (a forger)."""
    tensors, stored = _read(path)
    meta = json.loads(stored[META_KEY])
    if edit_meta is not None:
        edit_meta(meta)
    if edit_tensors is not None:
        edit_tensors(tensors)
    text = json.dumps(meta)
    sha = hashlib.sha256(text.encode()).hexdigest() if rehash else stored[META_SHA_KEY]
    save_file(tensors, str(path), metadata={META_KEY: text, META_SHA_KEY: sha})


def test_flipped_code_byte_is_refused(packed: Path) -> None:
    data = bytearray(packed.read_bytes())
    tensors, _ = _read(packed)
    codes = tensors["0.g0.codes"].numpy().tobytes()
    at = bytes(data).index(codes) + 3  # a byte inside the codes buffer of layer 0
    data[at] ^= 0x10
    packed.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"0\.g0\.codes.*do not match their checksums"):
        load_packed(packed, model=_model())


def test_flipped_scale_is_refused(packed: Path) -> None:
    def flip(t: dict[str, torch.Tensor]) -> None:
        t["2.g0.scale"] = t["2.g0.scale"].clone()
        t["2.g0.scale"][0, 0] *= 2

    _rewrite(packed, edit_tensors=flip)
    with pytest.raises(CorruptFileError, match="checksums"):
        load_packed(packed, model=_model())


@pytest.mark.parametrize("field,delta", [("code_bits", 1), ("code_offset", 1)])
def test_edited_code_metadata_is_refused(packed: Path, field: str, delta: int) -> None:
    def edit(meta: dict) -> None:
        meta["layers"]["0"]["groups"][0][field] += delta

    _rewrite(packed, edit_meta=edit)
    with pytest.raises(CorruptFileError, match="metadata does not match its checksum"):
        load_packed(packed, model=_model())


def test_forged_metadata_checksum_still_checked_against_buffers(packed: Path) -> None:
    """Even with a recomputed metadata checksum, code_bits must fit the codes buffer."""

    def edit(meta: dict) -> None:
        meta["layers"]["0"]["groups"][0]["code_bits"] += 2

    _rewrite(packed, edit_meta=edit, rehash=True)
    with pytest.raises(CorruptFileError, match="bytes, not the"):
        load_packed(packed, model=_model())


def test_metadata_dtype_must_be_a_dtype(packed: Path) -> None:
    def edit(meta: dict) -> None:
        meta["layers"]["0"]["groups"][0]["dtype"] = "load"  # torch.load is a torch attribute, not a dtype

    _rewrite(packed, edit_meta=edit, rehash=True)
    with pytest.raises(CorruptFileError, match="not a torch dtype"):
        load_packed(packed, model=_model())


def test_extra_or_missing_tensor_is_refused(packed: Path) -> None:
    _rewrite(packed, edit_tensors=lambda t: t.update(smuggled=torch.zeros(1)))
    with pytest.raises(CorruptFileError, match="smuggled"):
        load_packed(packed, model=_model())


@pytest.mark.parametrize("cut", [0, 40, -20])
def test_truncated_packed_file_is_refused(packed: Path, cut: int) -> None:
    data = packed.read_bytes()
    packed.write_bytes(data[:cut] if cut else b"")
    with pytest.raises(CorruptFileError, match=r"m\.safetensors"):
        load_packed(packed, model=_model())


def test_format_1_without_checksums_asks_for_a_reexport(packed: Path) -> None:
    tensors, stored = _read(packed)
    meta = json.loads(stored[META_KEY])
    meta["format_version"] = 1
    del meta["sha256"]
    save_file(tensors, str(packed), metadata={META_KEY: json.dumps(meta)})
    with pytest.raises(LosslabError, match="Re-export"):
        load_packed(packed, model=_model())


@pytest.mark.parametrize(
    "kwargs",
    [{"pretrained": True}, {"checkpoint_path": "/tmp/other.pth"}, {"pretrained_cfg_overlay": {"url": "http://x"}}],
)
def test_recipe_cannot_enable_downloads_or_other_files(tmp_path: Path, kwargs: dict) -> None:
    from losslab.models import create_model, rebuild

    model = create_model("small_cnn", num_classes=10, in_chans=1).eval()
    path = tmp_path / "small.safetensors"
    save_packed(quantize(model, RTN(bits=4), [torch.randn(4, 1, 8, 8)], progress=False), path)

    def edit(meta: dict) -> None:
        meta["recipe"]["kwargs"].update(kwargs)

    _rewrite(path, edit_meta=edit, rehash=True)
    with pytest.raises(LosslabError, match="never downloads"):
        load_packed(path)
    with pytest.raises(LosslabError, match="never downloads"):
        rebuild({"name": "small_cnn", "num_classes": 10, "in_chans": 1, "img_size": None, "kwargs": kwargs})


def test_recipe_types_are_checked() -> None:
    from losslab.models import rebuild

    with pytest.raises(LosslabError, match="wrong types"):
        rebuild({"name": "small_cnn", "num_classes": "10", "in_chans": 1, "img_size": None, "kwargs": {}})
    with pytest.raises(LosslabError, match="lacks keys"):
        rebuild({"name": "small_cnn"})
