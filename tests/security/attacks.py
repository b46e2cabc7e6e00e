"""The attack table of ``test_attacks.py``: one row per attack on a command that reads or writes a path.

Each :class:`Attack` builds its files in a fresh folder (a payload, a victim file, a forged file or a bomb) and
returns a :class:`Case`: the command line, the exit status and message it must end with, the files that must be
unchanged afterwards, the files that must not appear, and a time bound. Another command joins the suite by adding
rows to :data:`ATTACKS` (its builders may use the shared :class:`Env`: a trained run and a finished study).

``python tests/security/attacks.py`` prints the counts table of ``docs/security.md`` (checked by a test).
"""

from __future__ import annotations

import pickle
import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

#: What the attacker plants, in the issue's words.
KINDS = ("payload", "victim", "forged", "bomb")
#: The issue's classes: 1 code from a file, 2 outputs over others' files, 3 integrity, 4 meaningless numbers,
#: 5 sizes, 6 raw tracebacks, 7 recovery.
CLASSES = {
    1: "code from a file",
    2: "outputs over files losslab did not make",
    3: "integrity of files read",
    4: "numbers that mean nothing",
    5: "sizes an input controls",
    6: "raw tracebacks",
    7: "recovery",
}


@dataclass
class Env:
    """What builders work with: a fresh folder, a finished training run and a finished study (copy before use)."""

    tmp: Path
    run: Path
    study: Path

    def copy_run(self, name: str = "run") -> Path:
        """A private copy of the trained run folder."""
        return Path(shutil.copytree(self.run, self.tmp / name))

    def copy_study(self, name: str = "study") -> Path:
        """A private copy of the finished study folder (its report included)."""
        return Path(shutil.copytree(self.study, self.tmp / name))


@dataclass
class Case:
    """What one attack runs and what must hold afterwards."""

    argv: list[str]
    expect: str | None  # regex the one-line error must match (exit 2); None: the command must succeed (exit 0)
    victims: list[Path] = field(default_factory=list)  # unchanged byte for byte
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards (marker files, outputs)
    present: list[Path] = field(default_factory=list)  # must exist afterwards (a recovered run)
    seconds: float = 30.0
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Attack:
    """One row: an id, the issue class it tests, what is planted, the command attacked and the case builder."""

    id: str
    cls: int
    kind: str
    command: str
    build: Callable[[Env], Case]

    @property
    def outcome(self) -> str:
        """``clear`` (one-line error, exit 2) or ``fine`` (the command does the right thing, exit 0)."""
        return "fine" if self.id in FINE else "clear"


# ---------------------------------------------------------------------------------------------------- helpers
def _ckpt(run: Path) -> Path:
    return run / "checkpoints" / "best.ckpt"


def forge(env: Env, edit: Callable[[dict[str, torch.Tensor]], None], reseal: bool = True) -> Path:
    """A copy of the run whose best checkpoint's state dict was edited; ``reseal`` recomputes the checksum (an
    attacker who knows the format), else the file is written by plain ``torch.save`` without one."""
    from losslab.io import save_torch_atomic
    from losslab.serialization import CHECKSUM_KEY

    run = env.copy_run("forged")
    ckpt = torch.load(_ckpt(run), weights_only=True)
    edit(ckpt["state_dict"])
    if reseal:
        save_torch_atomic(_ckpt(run), ckpt)
    else:
        ckpt.pop(CHECKSUM_KEY, None)
        torch.save(ckpt, _ckpt(run))
    return _ckpt(run)


def flip_byte(env: Env) -> Path:
    """A copy of the run's best checkpoint with one bit flipped in the middle of its largest tensor."""
    run = env.copy_run("flipped")
    data = bytearray(_ckpt(run).read_bytes())
    data[len(data) // 2] ^= 0x10
    _ckpt(run).write_bytes(bytes(data))
    return _ckpt(run)


def victim(path: Path, text: str = "the user's own file\n") -> Path:
    """A file of the user's, which no attack may change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def refused(argv: list[str], out: Path, expect: str, seconds: float = 30.0) -> Case:
    """``argv --out-dir OUT`` must end with the one-line error ``expect`` and leave no ``out`` behind."""
    return Case([*argv, "--out-dir", str(out)], expect, absent=[out], seconds=seconds)


def yaml_file(env: Env, text: str, name: str = "file.yaml") -> Path:
    path = env.tmp / name
    path.write_text(text)
    return path


BILLION_LAUGHS = "name: bomb\n" + "".join(
    f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}" if i else "1"] * 9) + "]\n" for i in range(9)
)
TINY_STUDY = (
    "name: tiny\ntrain: {dataset: digits, model: mlp, epochs: 1}\n"
    "compress: {methods: [{method: rtn, bits: [8]}], calibration: {samples: 64}}\n"
)


def cifar_folder(env: Env, how: str = "mismatch") -> Path:
    """A cifar-10-batches-py folder whose first batch is damaged: ``mismatch`` (4 images, 3 labels), ``list``
    (a pickled list instead of a dict) or ``truncated`` (half of its bytes); the other files are well formed."""
    root = env.tmp / "cifar" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    for b in range(1, 6):
        labels = [1, 2, 3] if b == 1 and how == "mismatch" else [1, 2, 3, 4]
        data = np.zeros((4, 3072), dtype=np.uint8)
        (root / f"data_batch_{b}").write_bytes(pickle.dumps({b"labels": labels, b"data": data}))
    first = root / "data_batch_1"
    if how == "list":
        first.write_bytes(pickle.dumps([1, 2, 3]))
    elif how == "truncated":
        first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    (root / "test_batch").write_bytes(pickle.dumps({b"labels": [1], b"data": np.zeros((1, 3072), np.uint8)}))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return root.parent


def lm_folder(env: Env, nan_bias: bool = False) -> Path:
    """A tiny OPT with its byte tokenizer saved as a Hugging Face folder (``losslab.lm.offline``); ``nan_bias``
    puts one NaN in the first decoder layer's fc1 bias."""
    from losslab.lm.offline import byte_tokenizer, tiny_opt

    folder = env.tmp / "lm"
    model = tiny_opt(seed=0)
    if nan_bias:
        with torch.no_grad():
            model.model.decoder.layers[0].fc1.bias[0] = float("nan")
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def lm_text(env: Env) -> Path:
    """4000 characters of the seeded synthetic corpus, the text the LM commands read."""
    from losslab.lm.offline import synthetic_corpus

    path = env.tmp / "text.txt"
    path.write_text(synthetic_corpus(seed=0)["train"][:4000])
    return path


def binary_file(env: Env, name: str = "binary.txt") -> Path:
    """3000 seeded random bytes (not UTF-8) under a text file's name."""
    return _bytes(env.tmp / name, np.random.default_rng(2).bytes(3000))


LM_SMALL = ["--seqlen", "32", "--device", "cpu"]


CIFAR_TRAIN = ["train", "--dataset", "cifar10", "--model", "mlp", "--epochs", "1"]


def broken_study(env: Env, how: str) -> Path:
    """A copy of the finished study whose ``study.db`` is damaged in one way."""
    study = env.copy_study(f"study-{how}")
    db = study / "study.db"
    if how == "dropped":
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE compressions")
        return study
    for extra in ("study.db-wal", "study.db-shm"):
        (study / extra).unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    if how == "corrupt":
        for i in range(100, len(data), 97):
            data[i] ^= 0xFF
        db.write_bytes(bytes(data))
    elif how == "truncated":
        db.write_bytes(bytes(data[: len(data) // 3]))
    elif how == "folder":
        db.unlink()
        db.mkdir()
    return study


def _payload_yaml(env: Env, marker: Path, head: str) -> Path:
    """A YAML file whose tag would call ``Path.write_text(marker)`` under an unsafe loader."""
    tag = f"!!python/object/apply:pathlib.Path.write_text [!!python/object/apply:pathlib.Path ['{marker}'], pwned]"
    return yaml_file(env, f"{head}\nlr: {tag}\n", "payload.yaml")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return Path.write_text, (self.marker, "pwned")


def pickled_payload(env: Env) -> tuple[Path, Path]:
    run = env.copy_run("evil")
    marker = env.tmp / "PWNED"
    ckpt = torch.load(_ckpt(run), weights_only=True)
    ckpt["callbacks"] = {"evil": _Payload(marker)}
    torch.save(ckpt, _ckpt(run))
    return _ckpt(run), marker


def _set(key: str, value: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        state[key] = value(state[key])

    return edit


def _nan_first(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


FIRST_BIAS = "model.features.0.bn.bias"
RUNNING_VAR = "model.features.0.bn.running_var"
FIRST_WEIGHT = "model.features.0.conv.weight"


# ---------------------------------------------------------------------------------------------------- the rows
Register = Callable[[Callable[[Env], Case]], Callable[[Env], Case]]


def row_adder(rows: list[Attack]) -> Callable[[str, int, str, str], Register]:
    """``@add(id, cls, kind, command)``: a decorator appending the builder it decorates to ``rows`` as one row."""

    def add(id: str, cls: int, kind: str, command: str) -> Register:
        def register(build: Callable[[Env], Case]) -> Callable[[Env], Case]:
            rows.append(Attack(id, cls, kind, command, build))
            return build

        return register

    return add


def _rows() -> list[Attack]:
    rows: list[Attack] = []

    add = row_adder(rows)

    # ---- class 1: code from a file (payloads)
    @add("evaluate-pickled-code", 1, "payload", "evaluate")
    def _(env: Env) -> Case:
        ckpt, marker = pickled_payload(env)
        return Case(["evaluate", str(ckpt)], "pickled code/objects", absent=[marker])

    @add("quantize-pickled-code", 1, "payload", "quantize")
    def _(env: Env) -> Case:
        ckpt, marker = pickled_payload(env)
        return Case(["quantize", str(ckpt), "--method", "rtn", "--bits", "8"], "pickled code/objects", absent=[marker])

    @add("train-config-python-tag", 1, "payload", "train")
    def _(env: Env) -> Case:
        marker = env.tmp / "PWNED"
        cfg = _payload_yaml(env, marker, "model: mlp")
        return Case(["train", "--config", str(cfg), "--out-dir", str(env.tmp / "o")], "not valid YAML", absent=[marker])

    @add("study-run-python-tag", 1, "payload", "study run")
    def _(env: Env) -> Case:
        marker = env.tmp / "PWNED"
        study = _payload_yaml(env, marker, TINY_STUDY.replace("name: tiny", "name: evil"))
        out = env.tmp / "o"
        return Case(["study", "run", str(study), "--out-dir", str(out)], "not valid YAML", absent=[marker, out])

    # ---- class 2: outputs over files losslab did not make (victims)
    @add("report-user-folder", 2, "victim", "report")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "mine" / "report.md")
        return Case(
            ["report", str(env.study), "--out-dir", str(mine.parent), "--overwrite"],
            "holds files losslab did not make",
            victims=[mine],
            absent=[mine.parent / "report.html"],
        )

    @add("report-user-figures", 2, "victim", "report")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "mine" / "figures" / "accuracy_vs_bits.png", "my figure")
        return Case(["report", str(env.study), "--out-dir", str(mine.parent.parent)], "did not make", victims=[mine])

    @add("report-existing-without-overwrite", 2, "victim", "report")
    def _(env: Env) -> Case:
        study = env.copy_study()
        html = study / "report" / "report.html"
        return Case(["report", str(study)], "pass --overwrite", victims=[html])

    @add("report-existing-with-overwrite", 2, "victim", "report")
    def _(env: Env) -> Case:
        study = env.copy_study()
        return Case(["report", str(study), "--overwrite"], None, present=[study / "report" / "report.html"])

    @add("report-out-dir-is-a-file", 2, "victim", "report")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "notes.txt")
        return Case(["report", str(env.study), "--out-dir", str(mine)], "is a file", victims=[mine])

    @add("study-run-user-study-yaml", 2, "victim", "study run")
    def _(env: Env) -> Case:
        folder = env.tmp / "mystudy"
        mine = victim(folder / "study.yaml", TINY_STUDY)
        return Case(
            ["study", "run", str(mine), "--out-dir", str(folder)],
            "did not make",
            victims=[mine],
            absent=[folder / "study.db"],
        )

    @add("demo-user-folder", 2, "victim", "demo")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "mine" / "study.yaml")
        return Case(
            ["demo", "--out-dir", str(mine.parent)], "did not make", victims=[mine], absent=[mine.parent / "runs"]
        )

    @add("evaluate-json-existing", 2, "victim", "evaluate")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "metrics.json")
        return Case(["evaluate", str(env.run), "--json", str(mine)], "already exists", victims=[mine])

    @add("evaluate-json-symlink", 2, "victim", "evaluate")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "bashrc")
        link = env.tmp / "out.json"
        link.symlink_to(mine)
        return Case(["evaluate", str(env.run), "--json", str(link), "--overwrite"], "symbolic link", victims=[mine])

    @add("evaluate-json-folder", 2, "victim", "evaluate")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "out" / "keep.txt")
        return Case(["evaluate", str(env.run), "--json", str(mine.parent)], "is a directory", victims=[mine])

    @add("quantize-json-existing", 2, "victim", "quantize")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "results.json")
        argv = ["quantize", str(env.run), "--method", "rtn", "--bits", "8", "--json", str(mine)]
        return Case(argv, "already exists", victims=[mine])

    @add("train-overwrite-user-staging-folder", 2, "victim", "train")
    def _(env: Env) -> Case:
        run = Path(shutil.copytree(env.run, env.tmp / "o" / "good"))
        mine = victim(env.tmp / "o" / ".good.new" / "result.json", "{}")  # the user's, named like losslab's staging
        argv = ["train", "--out-dir", str(run.parent), "--run-name", "good", "--overwrite", "--epochs", "1"]
        return Case(argv, "not a run losslab staged", victims=[mine, run / "result.json"])

    @add("train-user-folder-named-like-a-backup", 2, "victim", "train")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "o" / ".good.old-123" / "result.json", "{}")  # NAME absent: not restored from it
        argv = ["train", "--out-dir", str(mine.parent.parent), "--run-name", "good", "--epochs", "1", "--model", "mlp"]
        return Case(argv, None, victims=[mine], present=[env.tmp / "o" / "good" / ".losslab-run"])

    # ---- class 3: integrity of every file read (forged)
    @add("evaluate-flipped-byte", 3, "forged", "evaluate")
    def _(env: Env) -> Case:
        return Case(["evaluate", str(flip_byte(env))], "fails its checksum")

    @add("quantize-flipped-byte", 3, "forged", "quantize")
    def _(env: Env) -> Case:
        return Case(["quantize", str(flip_byte(env)), "--method", "rtn", "--bits", "8"], "fails its checksum")

    @add("evaluate-no-checksum", 3, "forged", "evaluate")
    def _(env: Env) -> Case:  # a run from before checksums: evaluated (with a warning), its tensors still checked
        return Case(["evaluate", str(forge(env, lambda s: None, reseal=False))], None)

    @add("evaluate-no-checksum-nan", 3, "forged", "evaluate")
    def _(env: Env) -> Case:  # ... and without a checksum a damaged tensor is still refused
        ckpt = forge(env, _set(FIRST_WEIGHT, _nan_first), reseal=False)
        return Case(["evaluate", str(ckpt)], "NaN")

    @add("evaluate-int64-state", 3, "forged", "evaluate")
    def _(env: Env) -> Case:
        ckpt = forge(env, _set(FIRST_WEIGHT, lambda t: (t * 100).to(torch.int64)))
        return Case(["evaluate", str(ckpt)], "is torch.int64 but the model holds torch.float32")

    @add("evaluate-nan-bias", 3, "forged", "evaluate")
    def _(env: Env) -> Case:
        return Case(["evaluate", str(forge(env, _set(FIRST_BIAS, _nan_first)))], f"'{FIRST_BIAS[6:]}' holds 1 NaN/Inf")

    @add("evaluate-inf-batchnorm-buffer", 3, "forged", "evaluate")
    def _(env: Env) -> Case:
        ckpt = forge(env, _set(RUNNING_VAR, lambda t: t + float("inf")))
        return Case(["evaluate", str(ckpt)], f"'{RUNNING_VAR[6:]}' holds 16 NaN/Inf")

    @add("quantize-nan-batchnorm-buffer", 3, "forged", "quantize")
    def _(env: Env) -> Case:
        ckpt = forge(env, _set(RUNNING_VAR, _nan_first))
        return Case(["quantize", str(ckpt), "--method", "rtn", "--bits", "8"], "NaN/Inf")

    @add("evaluate-edited-shape", 3, "forged", "evaluate")
    def _(env: Env) -> Case:
        ckpt = forge(env, _set(FIRST_BIAS, lambda t: t[:8].clone()))
        return Case(["evaluate", str(ckpt)], r"has shape \(8,\) but the model needs \(16,\)")

    @add("train-cifar-labels-shorter-than-data", 3, "forged", "train")
    def _(env: Env) -> Case:
        data = cifar_folder(env)
        out = env.tmp / "o"
        argv = ["train", "--dataset", "cifar10", "--data-dir", str(data), "--model", "mlp", "--epochs", "1"]
        return Case([*argv, "--out-dir", str(out)], "holds 4 images but 3 labels")

    # ---- class 4: numbers that mean nothing
    @add("evaluate-inf-logits", 4, "forged", "evaluate")
    def _(env: Env) -> Case:
        ckpt = forge(env, _set(FIRST_WEIGHT, lambda t: t * 3e38))
        return Case(["evaluate", str(ckpt)], "logits are NaN/Inf")

    @add("quantize-inf-logits", 4, "forged", "quantize")
    def _(env: Env) -> Case:
        ckpt = forge(env, _set(FIRST_WEIGHT, lambda t: t * 3e38))
        return Case(["quantize", str(ckpt), "--method", "rtn", "--bits", "8"], "logits are NaN/Inf")

    # ---- class 5: sizes an input controls (bombs)
    @add("study-run-billion-laughs", 5, "bomb", "study run")
    def _(env: Env) -> Case:
        study = yaml_file(env, BILLION_LAUGHS + TINY_STUDY.split("\n", 1)[1])
        return Case(["study", "run", str(study), "--out-dir", str(env.tmp / "o")], "expands to more than", seconds=10)

    @add("study-run-huge-grid", 5, "bomb", "study run")
    def _(env: Env) -> Case:
        values = ", ".join(str(0.01 * (i + 1)) for i in range(100))
        text = TINY_STUDY + f"grid: {{lr: &v [{values}], weight_decay: *v, seed: &s [{values}]}}\n"
        study = yaml_file(env, text.replace("[0.01", "[0.01").replace("seed: &s", "label_smoothing: &s"))
        return Case(["study", "run", str(study), "--out-dir", str(env.tmp / "o")], "1,000,000 points", seconds=10)

    @add("train-config-too-large", 5, "bomb", "train")
    def _(env: Env) -> Case:
        cfg = yaml_file(env, "model: mlp\n# " + "x" * (2 << 20) + "\n")
        return Case(["train", "--config", str(cfg)], "bytes; losslab reads YAML files of at most", seconds=10)

    @add("train-config-deep-nesting", 5, "bomb", "train")
    def _(env: Env) -> Case:
        return Case(["train", "--config", str(yaml_file(env, "[" * 100_000))], "nests deeper than", seconds=10)

    @add("study-run-deep-nesting", 5, "bomb", "study run")
    def _(env: Env) -> Case:
        study = yaml_file(env, "a:\n" + "".join("  " * i + "- \n" for i in range(1, 200)))
        return Case(["study", "run", str(study)], "nests deeper than", seconds=10)

    @add("train-threads", 5, "bomb", "train")
    def _(env: Env) -> Case:
        return Case(["train", "--threads", "100000", "--out-dir", str(env.tmp / "o")], "threads")

    @add("train-img-size", 5, "bomb", "train")
    def _(env: Env) -> Case:
        return Case(["train", "--img-size", "100000", "--out-dir", str(env.tmp / "o")], "img_size")

    @add("train-num-workers", 5, "bomb", "train")
    def _(env: Env) -> Case:
        return Case(["train", "--num-workers", "100000", "--out-dir", str(env.tmp / "o")], "num_workers")

    @add("quantize-calib-samples", 5, "bomb", "quantize")
    def _(env: Env) -> Case:
        argv = ["quantize", str(env.run), "--method", "rtn", "--bits", "8", "--calib-samples", "100000"]
        return Case(argv, "more than the 1293 images")

    # ---- class 6: raw tracebacks (garbled files, damaged stores, changed flags, offline)
    def garbled(name: str, make: Callable[[Path], None]) -> Callable[[Env], Path]:
        def build(env: Env) -> Path:
            path = env.tmp / name
            make(path)
            return path

        return build

    checkpoints = {
        "text": garbled("text.ckpt", lambda p: p.write_text("hello world\n")),
        "binary": garbled("bin.ckpt", lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000))),
        "truncated": lambda env: _truncate(_ckpt(env.copy_run("trunc"))),
        "list": garbled("list.ckpt", lambda p: torch.save([1, 2, 3], p)),
        "folder": garbled("dir.ckpt", lambda p: p.mkdir()),
    }
    messages = {
        "text": "truncated or corrupt",
        "binary": "truncated or corrupt",
        "truncated": "truncated or corrupt",
        "list": "not a losslab classifier checkpoint",
        "folder": "holds no checkpoints/best.ckpt",
    }
    for what, make in checkpoints.items():
        for command in ("evaluate", "quantize"):
            extra = ["--method", "rtn", "--bits", "8"] if command == "quantize" else []
            rows.append(
                Attack(
                    f"{command}-{what}-checkpoint",
                    6,
                    "forged",
                    command,
                    lambda env, make=make, command=command, extra=extra, what=what: Case(
                        [command, str(make(env)), *extra], messages[what]
                    ),
                )
            )
    configs = {
        "binary": (lambda env: _bytes(env.tmp / "c.yaml", np.random.default_rng(1).bytes(3000)), "not a text file"),
        "invalid": (lambda env: yaml_file(env, "x: [\n"), "not valid YAML"),
        "list": (lambda env: yaml_file(env, "- a\n- b\n"), "mapping"),
    }
    for what, (make, message) in configs.items():
        rows.append(
            Attack(
                f"train-{what}-config",
                6,
                "forged",
                "train",
                lambda env, make=make, message=message: Case(
                    ["train", "--config", str(make(env)), "--out-dir", str(env.tmp / "o")],
                    message,
                    absent=[env.tmp / "o"],
                ),
            )
        )
        rows.append(
            Attack(
                f"study-run-{what}-file",
                6,
                "forged",
                "study run",
                lambda env, make=make, message=message: Case(
                    ["study", "run", str(make(env)), "--out-dir", str(env.tmp / "o")], message, absent=[env.tmp / "o"]
                ),
            )
        )
    stores = {
        "corrupt": "cannot be read as a study database",
        "truncated": "cannot be read as a study database",
        "dropped": "table 'compressions' is missing",
        "folder": "is not a file",
    }
    for how, message in stores.items():
        for command in (["study", "status"], ["study", "table"], ["report"]):
            rows.append(
                Attack(
                    f"{'-'.join(command)}-{how}-study-db",
                    6,
                    "forged",
                    " ".join(command),
                    lambda env, how=how, command=command, message=message: _store_case(env, how, command, message),
                )
            )

    for how, message in (("list", "holds a list, not a dict"), ("truncated", "truncated or corrupt")):
        rows.append(
            Attack(
                f"train-cifar-{how}-batch",
                6,
                "forged",
                "train",
                lambda env, how=how, message=message: Case(
                    [*CIFAR_TRAIN, "--data-dir", str(cifar_folder(env, how)), "--out-dir", str(env.tmp / "o")],
                    message,
                ),
            )
        )
    for command in (["study", "status"], ["study", "table"], ["report"]):
        rows.append(
            Attack(
                f"{'-'.join(command)}-not-a-study",
                6,
                "forged",
                " ".join(command),
                lambda env, command=command: Case(
                    [*command, str(victim(env.tmp / "notes" / "a.txt").parent)],
                    "no study database",
                    victims=[env.tmp / "notes" / "a.txt"],
                    absent=[env.tmp / "notes" / "study.db"],
                ),
            )
        )

    @add("train-resume-changed-architecture", 6, "forged", "train")
    def _(env: Env) -> Case:
        run = env.copy_run("unfinished")
        (run / "result.json").unlink()
        ckpts = sorted((run / "checkpoints").iterdir())
        return Case(
            ["train", "--resume", str(run), "--model", "mlp", "--epochs", "3"],
            "the run was trained with model='small_cnn'",
            victims=ckpts,
        )

    @add("train-pretrained-offline", 6, "forged", "train")
    def _(env: Env) -> Case:
        out = env.tmp / "o"
        argv = [
            "train",
            "--model",
            "resnet18",
            "--pretrained",
            "--epochs",
            "1",
            "--out-dir",
            str(out),
            "--run-name",
            "p",
        ]
        return Case(argv, "not in the local cache", absent=[out / "p"], seconds=20, env={"HF_HUB_OFFLINE": "1"})

    # ---- class 7: recovery
    @add("study-run-after-deleting-a-run-folder", 7, "victim", "study run")
    def _(env: Env) -> Case:
        study = env.copy_study()
        (run,) = (study / "runs").iterdir()
        shutil.rmtree(run)  # what the docs advise for a corrupt run folder; the job has a point left to compute
        wider = yaml_file(env, TINY_STUDY.replace("bits: [8]", "bits: [8, 4]"), "wider.yaml")
        return Case(["study", "run", str(wider), "--out-dir", str(study)], None, present=[run / "result.json"])

    @add("report-stale-temporary-file", 7, "victim", "report")
    def _(env: Env) -> Case:
        study = env.copy_study()
        stale = victim(study / "report" / ".report.md.999999999.abc123.tmp", "half a report")
        return Case(["report", str(study), "--overwrite"], None, absent=[stale])

    @add("train-run-name-too-long", 7, "victim", "train")
    def _(env: Env) -> Case:
        return refused(["train", "--run-name", "r" * 246], env.tmp / "o", "at most 239 are allowed")

    # ---- the other commands that read or write a path: quantize --budget, landscape, lm, gan, logreg, translate
    rows.extend(_more_rows())
    return rows


def _more_rows() -> list[Attack]:
    """Rows for quantize --budget, landscape, lm eval/quantize/finetune/landscape, gan, logreg and translate."""
    rows: list[Attack] = []

    add = row_adder(rows)

    budget = ["--method", "rtn", "--budget", "6", "--bits-choices", "4,8"]

    @add("quantize-budget-figure-existing", 2, "victim", "quantize --budget")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "pareto.png", "my figure")
        out = env.tmp / "q.json"
        argv = ["quantize", str(env.run), *budget, "--figure", str(mine), "--json", str(out)]
        return Case(argv, "--figure .* already exists", victims=[mine], absent=[out])

    @add("quantize-budget-nan", 4, "forged", "quantize --budget")
    def _(env: Env) -> Case:
        out = env.tmp / "q.json"
        argv = ["quantize", str(env.run), "--method", "rtn", "--budget", "nan", "--json", str(out)]
        return Case(argv, "--budget nan must be positive", absent=[out])

    @add("quantize-budget-flipped-byte", 3, "forged", "quantize --budget")
    def _(env: Env) -> Case:
        return Case(["quantize", str(flip_byte(env)), *budget], "fails its checksum")

    @add("quantize-save-packed-is-a-file", 2, "victim", "quantize")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "packed.txt")
        out = env.tmp / "q.json"
        argv = [
            "quantize",
            str(env.run),
            "--method",
            "rtn",
            "--bits",
            "8",
            "--save-packed",
            str(mine),
            "--json",
            str(out),
        ]
        return Case(argv, "is a file; give a folder", victims=[mine], absent=[out])

    land = ["--probes", "trace", "--samples", "16", "--no-save"]

    @add("landscape-json-existing", 2, "victim", "landscape")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "land.json")
        return Case(["landscape", str(env.run), *land, "--json", str(mine)], "already exists", victims=[mine])

    @add("landscape-pickled-code", 1, "payload", "landscape")
    def _(env: Env) -> Case:
        ckpt, marker = pickled_payload(env)
        return Case(["landscape", str(ckpt), *land], "pickled code/objects", absent=[marker])

    @add("landscape-flipped-byte", 3, "forged", "landscape")
    def _(env: Env) -> Case:
        return Case(["landscape", str(flip_byte(env)), *land], "fails its checksum")

    @add("landscape-nan-bias", 3, "forged", "landscape")
    def _(env: Env) -> Case:
        return Case(["landscape", str(forge(env, _set(FIRST_BIAS, _nan_first))), *land], "holds 1 NaN/Inf")

    @add("landscape-text-checkpoint", 6, "forged", "landscape")
    def _(env: Env) -> Case:
        return Case(["landscape", str(_bytes(env.tmp / "t.ckpt", b"hello\n")), *land], "truncated or corrupt")

    @add("landscape-top-k-bomb", 5, "bomb", "landscape")
    def _(env: Env) -> Case:
        argv = ["landscape", str(env.run), "--probes", "eig", "--top-k", "100000000", "--samples", "16", "--no-save"]
        return Case(argv, "'--top-k': 100000000 is not in the range 1<=x<=100", seconds=10)

    @add("landscape-samples-bomb", 5, "bomb", "landscape")
    def _(env: Env) -> Case:
        argv = ["landscape", str(env.run), "--probes", "trace", "--samples", "100000000", "--no-save"]
        return Case(argv, "has 1293 images; pass 1..1293 or all", seconds=10)

    @add("lm-eval-json-existing", 2, "victim", "lm eval")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "e.json")
        argv = ["lm", "eval", "--model", str(lm_folder(env)), "--text-file", str(lm_text(env)), *LM_SMALL]
        return Case([*argv, "--json", str(mine)], "already exists", victims=[mine])

    @add("lm-eval-binary-text", 6, "forged", "lm eval")
    def _(env: Env) -> Case:
        argv = ["lm", "eval", "--model", str(lm_folder(env)), "--text-file", str(binary_file(env)), *LM_SMALL]
        return Case(argv, "is not UTF-8 text")

    @add("lm-eval-text-as-packed-model", 6, "forged", "lm eval")
    def _(env: Env) -> Case:
        model = _bytes(env.tmp / "m.safetensors", b"hello\n")
        return Case(["lm", "eval", "--model", str(model), "--text-file", str(lm_text(env))], "is corrupt")

    @add("lm-eval-nan-weights", 4, "forged", "lm eval")
    def _(env: Env) -> Case:
        out = env.tmp / "e.json"
        argv = ["lm", "eval", "--model", str(lm_folder(env, nan_bias=True)), "--text-file", str(lm_text(env))]
        return Case([*argv, *LM_SMALL, "--max-windows", "2", "--json", str(out)], "is nan .* NaN/Inf", absent=[out])

    @add("lm-eval-seqlen-bomb", 5, "bomb", "lm eval")
    def _(env: Env) -> Case:
        argv = ["lm", "eval", "--model", str(lm_folder(env)), "--text-file", str(lm_text(env)), "--device", "cpu"]
        return Case([*argv, "--seqlen", "100000000"], "the model's context is 128 tokens", seconds=10)

    def lm_quantize(env: Env) -> list[str]:
        model, text = lm_folder(env), lm_text(env)
        return ["lm", "quantize", "--model", str(model), "--method", "rtn", "--text-file", str(text), *LM_SMALL]

    @add("lm-quantize-save-packed-existing", 2, "victim", "lm quantize")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "m.safetensors")
        argv = [
            *lm_quantize(env),
            "--calib-samples",
            "2",
            "--save-packed",
            str(mine),
            "--json",
            str(env.tmp / "q.json"),
        ]
        return Case(argv, "already exists", victims=[mine], absent=[env.tmp / "q.json"])

    @add("lm-quantize-json-existing", 2, "victim", "lm quantize")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "q.json")
        return Case([*lm_quantize(env), "--calib-samples", "2", "--json", str(mine)], "already exists", victims=[mine])

    @add("lm-quantize-calib-samples-bomb", 5, "bomb", "lm quantize")
    def _(env: Env) -> Case:
        out = env.tmp / "q.json"
        argv = [*lm_quantize(env), "--calib-samples", "1000000", "--json", str(out)]
        return Case(argv, "has only [0-9,]+ distinct windows of 32 tokens", absent=[out], seconds=10)

    @add("lm-quantize-calib-memory-bomb", 5, "bomb", "lm quantize")
    def _(env: Env) -> Case:
        out = env.tmp / "q.json"
        argv = [*lm_quantize(env), "--calib-samples", "100000000000", "--json", str(out)]
        return Case(argv, "calibration windows .* needs [0-9,.]+ GiB", absent=[out], seconds=10)

    @add("lm-finetune-binary-text", 6, "forged", "lm finetune")
    def _(env: Env) -> Case:
        out = env.tmp / "ft"
        argv = ["lm", "finetune", "--model", str(lm_folder(env)), "--out-dir", str(out), "--text-file"]
        extra = ["--max-steps", "1", "--warmup-steps", "0", "--block-size", "32", "--accelerator", "cpu"]
        return Case([*argv, str(binary_file(env)), *extra], "is not UTF-8 text")

    def lm_landscape(env: Env) -> list[str]:
        model, text = lm_folder(env), lm_text(env)
        return ["lm", "landscape", "--model", str(model), "--probes", "trace", "--text-file", str(text), *LM_SMALL]

    @add("lm-landscape-json-existing", 2, "victim", "lm landscape")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "l.json")
        return Case([*lm_landscape(env), "--calib-samples", "1", "--json", str(mine)], "already exists", victims=[mine])

    @add("lm-landscape-calib-samples-bomb", 5, "bomb", "lm landscape")
    def _(env: Env) -> Case:
        return Case([*lm_landscape(env), "--calib-samples", "1000000"], "distinct windows", seconds=10)

    ring = ["gan", "train", "--data", "ring", "--epochs", "1"]

    @add("gan-train-toy-samples-bomb", 5, "bomb", "gan train")
    def _(env: Env) -> Case:
        argv = [*ring, "--toy-samples", "100000000000"]
        return refused(argv, env.tmp / "g", "'--toy-samples': 100000000000 is not in the range")

    @add("gan-train-eval-samples-bomb", 5, "bomb", "gan train")
    def _(env: Env) -> Case:
        argv = [*ring, "--toy-samples", "256", "--eval-samples", "100000000000"]
        return refused(argv, env.tmp / "g", "'--eval-samples': 100000000000 is not in the range")

    @add("gan-train-lr-inf", 4, "forged", "gan train")
    def _(env: Env) -> Case:
        argv = [*ring, "--toy-samples", "256", "--lr", "inf"]
        return refused(argv, env.tmp / "g", "'--lr': 'inf' is not a finite number")

    @add("gan-train-resume-text-file", 6, "forged", "gan train")
    def _(env: Env) -> Case:
        return Case(["gan", "train", "--resume", str(_bytes(env.tmp / "t.ckpt", b"hi\n"))], "is not a GAN run")

    @add("gan-sweep-binary-config", 6, "forged", "gan sweep")
    def _(env: Env) -> Case:
        return refused(["gan", "sweep", "--config", str(binary_file(env, "c.yaml"))], env.tmp / "g", "not a text file")

    @add("gan-sweep-billion-laughs", 5, "bomb", "gan sweep")
    def _(env: Env) -> Case:
        argv = ["gan", "sweep", "--config", str(yaml_file(env, BILLION_LAUGHS))]
        return refused(argv, env.tmp / "g", "expands to more than", seconds=10)

    @add("gan-sweep-list-config", 6, "forged", "gan sweep")
    def _(env: Env) -> Case:
        return refused(
            ["gan", "sweep", "--config", str(yaml_file(env, "- a\n- b\n"))], env.tmp / "g", "must be a mapping"
        )

    @add("logreg-json-existing", 2, "victim", "logreg")
    def _(env: Env) -> Case:
        mine = victim(env.tmp / "fits.json")
        return Case(["logreg", "--dataset", "iris_binary", "--json", str(mine)], "already exists", victims=[mine])

    @add("logreg-binary-csv", 6, "forged", "logreg")
    def _(env: Env) -> Case:
        return Case(["logreg", "--csv", str(binary_file(env, "d.csv")), "--target", "y"], "is not UTF-8 text")

    @add("logreg-nan-cell", 3, "forged", "logreg")
    def _(env: Env) -> Case:
        csv = victim(env.tmp / "d.csv", "a,b,y\n1,nan,0\n2,3,1\n3,4,0\n4,5,1\n5,1,0\n6,2,1\n")
        return Case(["logreg", "--csv", str(csv), "--target", "y"], "'nan' is not a finite number")

    @add("logreg-ragged-csv", 6, "forged", "logreg")
    def _(env: Env) -> Case:
        csv = victim(env.tmp / "d.csv", "a,b,y\n1,2,0\n2,3\n3,4,0\n4,5,1\n5,1,0\n")
        return Case(["logreg", "--csv", str(csv), "--target", "y"], "line 3 has 2 cells; the header has 3")

    @add("logreg-sweep-path-as-dataset", 6, "forged", "logreg sweep")
    def _(env: Env) -> Case:
        argv = ["logreg", "sweep", "--datasets", "../../etc/passwd"]
        return refused(argv, env.tmp / "o", "unknown dataset '../../etc/passwd'")

    toy = ["--arch", "toy", "--accelerator", "cpu", "--epochs", "1"]

    @add("translate-train-binary-source", 6, "forged", "translate train")
    def _(env: Env) -> Case:
        bad = str(binary_file(env, "a.src"))
        return refused(
            ["translate", "train", "--src-file", bad, "--tgt-file", bad, *toy], env.tmp / "t", "is not UTF-8 text"
        )

    @add("translate-train-misaligned", 3, "forged", "translate train")
    def _(env: Env) -> Case:
        src, tgt = victim(env.tmp / "a.src", "a b\nc d\n"), victim(env.tmp / "a.tgt", "x\n")
        argv = ["translate", "train", "--src-file", str(src), "--tgt-file", str(tgt), *toy]
        return refused(argv, env.tmp / "t", "has 2 lines but .* has 1; the files must align")

    @add("translate-eval-binary-source", 6, "forged", "translate eval")
    def _(env: Env) -> Case:
        bad = str(binary_file(env, "a.src"))
        return Case(["translate", "eval", "--out-dir", str(env.tmp), "--src-file", bad, "--tgt-file", bad],
                    "is not UTF-8 text")  # fmt: skip

    @add("translate-demo-epochs-bomb", 5, "bomb", "translate demo")
    def _(env: Env) -> Case:
        return refused(["translate", "demo", "--epochs", "100000"], env.tmp / "d", "1<=x<=1000")

    return rows


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _store_case(env: Env, how: str, command: list[str], message: str) -> Case:
    study = broken_study(env, how)
    db = study / "study.db"
    return Case([*command, str(study)], message, victims=[db] if db.is_file() else [])


#: Attacks whose right outcome is that the command succeeds (it recovers, or does what was asked of it).
FINE = {
    "train-user-folder-named-like-a-backup",
    "report-existing-with-overwrite",
    "study-run-after-deleting-a-run-folder",
    "report-stale-temporary-file",
    "evaluate-no-checksum",
}
ATTACKS = _rows()


def counts_table(attacks: list[Attack] = ATTACKS) -> str:
    """The Markdown table of ``docs/security.md``: attacks per class and what they end in."""
    by = Counter((a.cls, a.outcome) for a in attacks)
    kinds = Counter((a.cls, a.kind) for a in attacks)
    lines = [
        "| class | attacks | payload / victim / forged / bomb | clear error | fine | code run | data lost | wrong "
        "result | hang | traceback |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cls, name in CLASSES.items():
        total = by[cls, "clear"] + by[cls, "fine"]
        planted = " / ".join(str(kinds[cls, k]) for k in KINDS)
        lines.append(
            f"| {cls}. {name} | {total} | {planted} | {by[cls, 'clear']} | {by[cls, 'fine']} | 0 | 0 | 0 | 0 | 0 |"
        )
    commands = sorted({a.command for a in attacks})
    lines.append(f"\n{len(attacks)} attacks over {len(commands)} commands: {', '.join(commands)}.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(counts_table())
