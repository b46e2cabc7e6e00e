"""The helpers behind the attack suite, checked at their boundaries: the content checksum, the bounded YAML
loader, output claiming, the state-dict check and the removal of a killed writer's temporary file."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from losslab.errors import ConfigError, CorruptFileError
from losslab.io import (
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    OUTPUT_MARKER,
    atomic_path,
    claim_output,
    claim_output_dir,
    load_yaml_file,
    save_torch_atomic,
)
from losslab.serialization import CHECKSUM_KEY, check_state_dict, content_digest, load_torch_file


def _sample() -> dict:
    return {
        "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "t": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),  # not contiguous
        "h": torch.ones(5, dtype=torch.bfloat16),
        "s": torch.tensor(3.5),  # 0-dim
        "od": OrderedDict(b=1, a=[1.5, float("nan"), "x", None, True]),
        "set": {"b", "a", "c"},
        "tup": (torch.Size([2, 3]), b"raw"),
    }


def _roundtrip(obj: dict) -> dict:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_digest_survives_a_save_load_roundtrip() -> None:
    obj = _sample()
    assert content_digest(_roundtrip(obj)) == content_digest(obj)


def test_digest_changes_with_every_flipped_byte_dtype_and_shape() -> None:
    base = content_digest(_sample())
    w = _sample()["w"]
    raw = w.view(torch.uint8).reshape(-1)
    for i in range(0, raw.numel(), 7):
        flipped = raw.clone()
        flipped[i] ^= 1
        assert content_digest({**_sample(), "w": flipped.view(torch.float32).reshape(3, 4)}) != base
    assert content_digest({**_sample(), "w": w.view(torch.int32)}) != base  # same bytes, other dtype
    assert content_digest({**_sample(), "w": w.reshape(4, 3)}) != base  # same bytes, other shape
    assert content_digest({**_sample(), "od": OrderedDict(a=1, b=[1.5, float("nan"), "x", None, True])}) != base


def test_saved_dicts_are_verified_and_the_key_removed(tmp_path: Path) -> None:
    path = save_torch_atomic(tmp_path / "x.pt", {"w": torch.ones(3)})
    assert torch.load(path, weights_only=True)[CHECKSUM_KEY] == content_digest({"w": torch.ones(3)})
    assert set(load_torch_file(path)) == {"w"}
    data = bytearray(path.read_bytes())
    offset = data.find(torch.ones(3).numpy().tobytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="fails its checksum"):
        load_torch_file(path)


def test_state_dict_check_names_each_forgery(tmp_path: Path) -> None:
    ref = {"w": torch.zeros(2, 2), "n": torch.zeros((), dtype=torch.int64)}
    check_state_dict({"w": torch.ones(2, 2), "n": torch.tensor(3)}, ref, tmp_path / "f")
    cases = [
        ({"w": torch.ones(2, 2, dtype=torch.int64), "n": torch.tensor(3)}, "torch.int64 but the model holds"),
        ({"w": torch.ones(2, 2), "n": torch.tensor(3.0)}, "torch.float32 but the model holds torch.int64"),
        ({"w": torch.ones(2), "n": torch.tensor(3)}, "has shape"),
        ({"w": torch.ones(2, 2), "n": torch.tensor(3), "x": torch.ones(1)}, "unexpected"),
        ({"w": torch.tensor([[0.0, float("-inf")], [0, 0]]), "n": torch.tensor(3)}, "holds 1 NaN/Inf"),
    ]
    for state, message in cases:
        with pytest.raises(CorruptFileError, match=message):
            check_state_dict(state, ref, tmp_path / "f")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_yaml_depth_limit_is_exact(tmp_path: Path) -> None:
    ok, deep = tmp_path / "ok.yaml", tmp_path / "deep.yaml"
    ok.write_text(_nested(MAX_YAML_DEPTH))
    deep.write_text(_nested(MAX_YAML_DEPTH + 1))
    assert load_yaml_file(ok) is not None
    with pytest.raises(ConfigError, match="nests deeper"):
        load_yaml_file(deep)


def test_yaml_alias_expansion_is_counted(tmp_path: Path) -> None:
    # a: 10 scalars in a list (11 values); b: 10 aliases of a (1 + 110 values); c: n aliases of b
    def laughs(n: int) -> str:
        a = "a: &a [" + ", ".join(["1"] * 10) + "]\n"
        b = "b: &b [" + ", ".join(["*a"] * 10) + "]\n"
        return a + b + "c: [" + ", ".join(["*b"] * n) + "]\n"

    def values(n: int) -> int:  # mapping + 3 keys + a + b + c
        return 1 + 3 + 11 + 111 + (1 + 111 * n)

    fits = max(n for n in range(1, 2000) if values(n) <= MAX_YAML_NODES)
    path = tmp_path / "l.yaml"
    path.write_text(laughs(fits))
    assert len(load_yaml_file(path)["c"]) == fits
    path.write_text(laughs(fits + 1))
    with pytest.raises(ConfigError, match="expands to more than"):
        load_yaml_file(path)


def test_yaml_python_tags_build_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "t.yaml"
    path.write_text(f"x: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml_file(path)
    assert not marker.exists()


def test_claim_output_file(tmp_path: Path) -> None:
    new = tmp_path / "sub" / "new.json"
    assert claim_output(new, overwrite=False, what="x", flag="--json") == new
    mine = tmp_path / "mine.json"
    mine.write_text("{}")
    with pytest.raises(ConfigError, match="already exists"):
        claim_output(mine, overwrite=False, what="x", flag="--json")
    claim_output(mine, overwrite=True, what="x", flag="--json")
    (tmp_path / "link.json").symlink_to(mine)
    with pytest.raises(ConfigError, match="symbolic link"):
        claim_output(tmp_path / "link.json", overwrite=True, what="x", flag="--json")


def test_claim_output_dir_marks_and_refuses(tmp_path: Path) -> None:
    out = claim_output_dir(tmp_path / "r", kind="report", outputs=["a.md"], overwrite=False, flag="--out-dir")
    assert json.loads((out / OUTPUT_MARKER).read_text())["kind"] == "report"
    (out / "a.md").write_text("old")
    with pytest.raises(ConfigError, match="pass --overwrite"):
        claim_output_dir(out, kind="report", outputs=["a.md"], overwrite=False, flag="--out-dir")
    claim_output_dir(out, kind="report", outputs=["a.md"], overwrite=True, flag="--out-dir")
    with pytest.raises(ConfigError, match="did not make for a study"):  # a report folder is not a study folder
        claim_output_dir(out, kind="study", outputs=[], overwrite=True, flag="--out-dir")
    (out / OUTPUT_MARKER).write_text("[1, 2]")  # a forged marker that is not losslab's JSON
    with pytest.raises(ConfigError, match="did not make"):
        claim_output_dir(out, kind="report", outputs=["a.md"], overwrite=True, flag="--out-dir")


def test_a_killed_writers_temporary_file_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".h.json.{int(dead.stdout)}.abc_12.tmp"
    live = tmp_path / f".h.json.{os.getppid()}.xyz.tmp"
    other = tmp_path / f".other.json.{int(dead.stdout)}.abc.tmp"
    for path in (stale, live, other):
        path.write_text("half")
    with atomic_path(tmp_path / "h.json") as tmp:
        tmp.write_text("{}")
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "h.json").read_text() == "{}"


def test_a_full_disk_inside_a_library_writer_is_a_disk_error(tmp_path: Path) -> None:
    """safetensors reports ENOSPC as text in its own error; the write must say "no space", not "corrupt"."""
    from safetensors import SafetensorError

    from losslab.errors import OutputError

    target = tmp_path / "model.safetensors"
    with pytest.raises(OutputError, match="no space left on the device"), atomic_path(target):
        raise SafetensorError(
            f'Error while serializing: IoError(Os {{ code: 28, kind: StorageFull, message: "{os.strerror(28)}" }})'
        )
    assert not target.exists() and list(tmp_path.iterdir()) == []
