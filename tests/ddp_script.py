"""One tiny ``lm finetune`` or ``translate train`` run, in one process or under ``torchrun`` (tests/lm/test_lm_ddp.py,
tests/seq2seq/test_translate_ddp.py)::

    python tests/ddp_script.py lm RUN --data DIR --batch 2 [--grad-accum 2] [--float64] [--kill] [--resume]
    torchrun --standalone --nproc_per_node 2 tests/ddp_script.py translate RUN --batch 64 ...

``--batch`` is per process (lm: blocks per micro-batch; translate: --max-tokens). ``--float64`` trains the model in
float64 (a new run). ``--kill`` raises after the first checkpoint is written (a killed run); ``--resume`` continues
RUN. The lm data are ``DIR/train.txt`` and ``DIR/val.txt``; translation uses the toy corpus (dropout 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


class Killed(Exception):
    """Raised right after the first checkpoint is on disk."""


def kill_after_first_checkpoint() -> None:
    import losslab.io

    original = losslab.io.save_torch_atomic

    def save_then_die(path: Any, *args: Any, **kwargs: Any) -> Any:
        original(path, *args, **kwargs)
        raise Killed(path)

    losslab.io.save_torch_atomic = save_then_die


def run_lm(args: argparse.Namespace) -> None:
    import torch

    from losslab.lm.config import FinetuneConfig
    from losslab.lm.finetune import finetune
    from losslab.lm.offline import byte_tokenizer, tiny_opt

    folder = {"resume": args.run} if args.resume else {"out_dir": args.run}
    cfg = FinetuneConfig.build({**folder, "model": "tiny", "text_file": args.data / "train.txt",
                                "val_file": args.data / "val.txt", "block_size": 32, "batch_size": args.batch,
                                "grad_accum": args.grad_accum, "epochs": 2, "lr": 3e-3, "warmup_steps": 2,
                                "checkpoint_every": 4, "eval_every": 4, "max_eval_windows": 12, "progress": False,
                                "accelerator": "cpu"})  # fmt: skip
    model = tiny_opt(seed=0)
    finetune(cfg, model=model.to(torch.float64) if args.float64 else model, tokenizer=byte_tokenizer())


def run_translate(args: argparse.Namespace) -> None:
    import torch

    from losslab.seq2seq.config import TranslateConfig
    from losslab.seq2seq.toy import toy_corpus
    from losslab.seq2seq.train import train_translation

    cfg = TranslateConfig.build({"arch": "toy", "vocab_size": 80, "max_epochs": 2, "dropout": 0.0, "beam": 2,
                                 "max_tokens": args.batch, "warmup_updates": 4, "lr": 3e-3, "seed": 0,
                                 "eval_batch_size": args.eval_batch})  # fmt: skip

    def to_float64(model: torch.nn.Module, tok: Any) -> None:
        model.to(torch.float64)

    folder: dict[str, Any] = {"resume": args.run} if args.resume else {}
    train_translation(cfg, toy_corpus(96, 20, 20, seed=1), None if args.resume else args.run, "cpu", **folder,
                      log=lambda message: None, on_start=to_float64 if args.float64 else None)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment", choices=["lm", "translate"])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--eval-batch", type=int, default=8)  # translate: sentences per evaluation batch
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--kill", action="store_true")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    if args.kill:
        kill_after_first_checkpoint()
    (run_lm if args.experiment == "lm" else run_translate)(args)


if __name__ == "__main__":
    main()
