"""Load torch files (checkpoints, state dicts, recorded tensors) safely: tensors and plain data only, never code.

Every ``torch.load`` in losslab goes through :func:`load_torch_file`, which always passes ``weights_only=True``:
the unpickler then builds only tensors, containers (dict/list/tuple/set) and scalars/strings, and refuses any
other global (a class, a function such as ``os.system``). A refused file raises :class:`UnsafeFileError`; an
empty, truncated or garbled one raises :class:`CorruptFileError`; both name the file and what to do::

    from losslab.serialization import load_torch_file

    state = load_torch_file("model.pt", what="state dict")            # dict of tensors
    ckpt = load_torch_file(path, what="checkpoint", mmap=True)         # validate cheaply, tensors stay on disk

``allow`` widens the allowlist by a few well-understood plain-data classes for one call (timm checkpoints store
their training arguments as an ``argparse.Namespace``); it is never used for a class that runs code on load.

Plain pickles of data (the CIFAR python batches) go through :func:`load_data_pickle`: an unpickler that builds
containers, strings and numpy arrays only (:data:`NUMPY_DATA_GLOBALS`) and refuses every other global.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import re
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch

from losslab.errors import CorruptFileError, DataNotFoundError, UnsafeFileError

#: What torch's legacy (non-zip) reader raises on bytes that are not a torch file (text, random data).
_GARBLED = (KeyError, IndexError, TypeError, AttributeError, OverflowError, MemoryError, struct.error)

_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL|GLOBAL) ([\w.]+)")


#: The key under which :func:`losslab.io.save_torch_atomic` stores the SHA-256 of a saved dict's content.
CHECKSUM_KEY = "losslab_sha256"


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) of the content of a torch-saveable object, as it reads back after ``torch.load``.

    The digest covers the structure (container types, lengths, dict keys in order, sets sorted by ``repr``),
    every scalar and string (``repr``) and every tensor (dtype, shape and raw bytes of its contiguous CPU copy);
    a top-level :data:`CHECKSUM_KEY` is left out. Any flipped byte of a value or tensor changes it; padding and
    zip metadata that do not change what loads do not.
    """
    digest = hashlib.sha256()
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    """Add ``obj`` to ``digest`` (see :func:`content_digest`)."""
    if isinstance(obj, torch.Tensor):
        data = obj.detach().to("cpu").contiguous()
        digest.update(f"T{data.dtype}{tuple(data.shape)}".encode())
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    elif isinstance(obj, dict):
        digest.update(f"D{type(obj).__name__}{len(obj)}".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, list | tuple):
        digest.update(f"L{type(obj).__name__}{len(obj)}".encode())
        for value in obj:
            _feed(digest, value)
    elif isinstance(obj, set | frozenset):
        digest.update(f"S{len(obj)}".encode())
        for value in sorted(obj, key=repr):
            _feed(digest, value)
    else:
        digest.update(f"V{type(obj).__name__}:{obj!r}\0".encode())


def verify_checksum(obj: Any, file: Path, what: str, *, required: bool = False) -> Any:
    """Check and remove the :data:`CHECKSUM_KEY` of a loaded dict; :class:`CorruptFileError` if it does not match
    (or, with ``required``, is absent). Returns ``obj`` without the key."""
    if not isinstance(obj, dict) or CHECKSUM_KEY not in obj:
        if required:
            raise CorruptFileError(
                f"{what} {str(file)!r} carries no losslab checksum: it was not written by losslab, or was edited "
                f"and saved again by another tool. Fix: {_CHECKPOINT_HINT}"
            )
        return obj
    stored = obj.pop(CHECKSUM_KEY)
    if stored != content_digest(obj):
        raise CorruptFileError(
            f"{what} {str(file)!r} fails its checksum: its content changed after losslab wrote it (a damaged "
            f"disk or copy, or an edit). Fix: {_CHECKPOINT_HINT}"
        )
    return obj


def load_torch_file(
    path: str | os.PathLike[str],
    *,
    what: str = "file",
    map_location: str | torch.device = "cpu",
    allow: Sequence[type] = (),
    mmap: bool = False,
    verify: bool = True,
) -> Any:
    """``torch.load(path, weights_only=True)`` with one clear :class:`LosslabError` for every way it can fail.

    ``what`` names the file's role in messages ("checkpoint", "state dict"). A dict written by
    :func:`losslab.io.save_torch_atomic` carries its content's SHA-256 (:data:`CHECKSUM_KEY`); it is verified and
    removed here (``verify=False`` leaves it for the caller's :func:`verify_checksum`, e.g. to require it once
    the file is known to be a losslab checkpoint). Raises :class:`DataNotFoundError`
    (missing), :class:`CorruptFileError` (empty, truncated, garbled, wrong checksum) or :class:`UnsafeFileError`
    (pickled code or objects other than tensors and plain data).
    """
    loaded = _load(path, what=what, map_location=map_location, allow=allow, mmap=mmap)
    return verify_checksum(loaded, Path(path), what) if verify else loaded


def _load(
    path: str | os.PathLike[str],
    *,
    what: str,
    map_location: str | torch.device,
    allow: Sequence[type],
    mmap: bool,
) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one :class:`LosslabError`."""
    file = Path(path)
    if not file.is_file():
        raise DataNotFoundError(f"{what} {str(file)!r} does not exist (or is not a file)")
    if file.stat().st_size == 0:
        raise CorruptFileError(
            f"{what} {str(file)!r} is empty (0 bytes), probably left by a full disk or a killed write; delete it "
            "and re-create it (re-run the command that wrote it) or use another checkpoint"
        )
    mmap = mmap and zipfile.is_zipfile(file)  # legacy (non-zip) torch files cannot be memory-mapped
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err))
        name = found.group(1) if found is not None else _first_global(file)
        if name is not None:
            raise UnsafeFileError(
                f"{what} {str(file)!r} holds pickled code/objects losslab does not load (it refers to "
                f"{name!r}); losslab loads only tensors and plain data (torch.load weights_only=True), so "
                "a file cannot run code. If you made this file yourself with another tool, re-save only its "
                "tensors, e.g. torch.save(model.state_dict(), path)"
            ) from None
        raise _corrupt(what, file, err) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, UnicodeDecodeError, ValueError, OSError, *_GARBLED) as err:
        if isinstance(err, OSError) and not _looks_corrupt(err):
            raise
        raise _corrupt(what, file, err) from None


def check_state_dict(
    state: dict[str, Any], reference: dict[str, torch.Tensor], file: str | os.PathLike[str], what: str = "checkpoint"
) -> None:
    """Check a loaded state dict against the model it is for, before ``load_state_dict`` copies (and casts) it.

    Every key of ``reference`` must be present and no other; each tensor must have the reference's shape; a
    floating reference needs a floating tensor (an integer copy of float weights would load truncated) and an
    integer or bool one the same dtype; every floating tensor must be finite (weights, biases, BatchNorm running
    statistics alike). Raises :class:`CorruptFileError` naming the file and the first offending tensor.
    """
    where = f"{what} {str(file)!r}"
    fix = f"Fix: {_CHECKPOINT_HINT}"
    missing = [k for k in reference if k not in state]
    extra = [k for k in state if k not in reference]
    if missing or extra:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else ""]
        raise CorruptFileError(
            f"{where} does not match its model ({'; '.join(p for p in parts if p)}); it was edited or belongs to "
            f"another architecture. {fix}"
        )
    for key, ref in reference.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise CorruptFileError(f"{where}: {key!r} is a {type(value).__name__}, not a tensor. {fix}")
        if tuple(value.shape) != tuple(ref.shape):
            raise CorruptFileError(
                f"{where}: tensor {key!r} has shape {tuple(value.shape)} but the model needs {tuple(ref.shape)}; "
                f"the file was edited or belongs to another architecture. {fix}"
            )
        if ref.is_floating_point() != value.is_floating_point() or (
            not ref.is_floating_point() and value.dtype != ref.dtype
        ):
            raise CorruptFileError(
                f"{where}: tensor {key!r} is {value.dtype} but the model holds {ref.dtype} (an integer copy of float "
                f"weights would load truncated). {fix}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CorruptFileError(f"{where}: tensor {key!r} holds {bad} NaN/Inf value(s) of {value.numel()}. {fix}")


#: The only globals a data pickle may name: numpy's array/dtype/scalar rebuilders (numpy 1 and 2 spellings) and
#: ``_codecs.encode`` (how Python 3 writes bytes in a protocol-2 pickle).
NUMPY_DATA_GLOBALS = frozenset(
    {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
        *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    }
)


class _DataUnpickler(pickle.Unpickler):
    """Builds containers, strings, numbers and numpy arrays; any other global is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in NUMPY_DATA_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


class _RefusedGlobal(Exception):
    pass


def load_data_pickle(path: str | os.PathLike[str], *, what: str = "data file", encoding: str = "latin1") -> Any:
    """Unpickle a data file (dicts/lists/strings/numbers/numpy arrays only; no code can run).

    Raises :class:`UnsafeFileError` naming the refused global, :class:`CorruptFileError` for an unreadable file.
    """
    file = Path(path)
    try:
        with file.open("rb") as fh:
            return _DataUnpickler(fh, encoding=encoding).load()
    except _RefusedGlobal as refused:
        raise UnsafeFileError(
            f"{what} {str(file)!r} holds pickled code/objects losslab does not load (it refers to {str(refused)!r}); "
            "a data pickle may hold only containers, strings, numbers and numpy arrays. Replace the file with the "
            "original from its publisher"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise _corrupt(what, file, err, _DATA_HINT) from None


def _first_global(file: Path) -> str | None:
    """The first class/function a plain (non-zip) pickle file refers to, read with ``pickletools`` (which parses
    opcodes and executes nothing); ``None`` for torch's zip format (the unpickler's own message names any refused
    global there), for a pickle without globals and for one that cannot be parsed (reported as corrupt)."""
    if zipfile.is_zipfile(file):
        return None
    try:
        with file.open("rb") as fh:  # streamed: stops at the first global
            return _scan_pickle(fh)
    except Exception:  # any parse failure means "not a pickle"
        return None


def _scan_pickle(data: IO[bytes]) -> str | None:
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        if isinstance(arg, str):
            strings = [*strings[-1:], arg]
        if op.name == "GLOBAL":
            return str(arg).replace(" ", ".")
        if op.name == "STACK_GLOBAL":
            return ".".join(strings) if len(strings) == 2 else "a pickled global"
        if op.name in {"INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}:
            return f"a pickled object ({op.name})"
    return None


def _looks_corrupt(err: OSError) -> bool:
    """A read error that means "bad content" rather than permission/disk problems the caller should see."""
    return not isinstance(err, PermissionError | FileNotFoundError | IsADirectoryError)


_DATA_HINT = "re-extract the data set from its archive (or delete it and use --download)"
_CHECKPOINT_HINT = (
    "re-create it (re-run the command that wrote it) or use another checkpoint (a run folder keeps "
    "checkpoints/best.ckpt and last.ckpt)"
)


def _corrupt(what: str, file: Path, err: BaseException, hint: str = _CHECKPOINT_HINT) -> CorruptFileError:
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    detail = f"{type(err).__name__}: {first[:160]}" if first else type(err).__name__
    return CorruptFileError(f"{what} {str(file)!r} is truncated or corrupt ({detail}); it cannot be read. Fix: {hint}")
