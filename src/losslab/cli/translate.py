"""``losslab translate``: train and evaluate a Transformer translation model, and an offline demo on a toy pair.

    losslab translate demo --out-dir runs/toy --accelerator cpu     # offline: toy SVO->SOV pair, BLEU ~0 -> ~98
    losslab translate demo --out-dir runs/toy-fnl --rank-scale 0.5  # the same with FNL's factorization
    losslab translate train --out-dir runs/iwslt --src-file train.de --tgt-file train.en \\
        --valid-src valid.de --valid-tgt valid.en --test-src test.de --test-tgt test.en --config fnl_iwslt14
    losslab translate train --out-dir runs/iwslt --download --arch transformer_small --rank-scale 0.5 --spectral \\
        --wd2fd --spectral-quekey --spectral-outval --wd2fd-quekey --wd2fd-outval   # FNL's flags are aliases
    losslab translate train --resume runs/iwslt                     # continue a killed run (stored config, data)
    losslab translate eval --out-dir runs/iwslt --src-file test.de --tgt-file test.en --beam 5 --json -

Every config key (``losslab.seq2seq.config.TranslateConfig``) is a flag; ``--config`` reads a YAML file of them
(or a shipped one by name, e.g. ``fnl_iwslt14``); flags given on the command line win. The seed's other fairseq
flags (``--criterion``, ``--lr-scheduler``, ...) are mapped or refused (:data:`FAIRSEQ_FLAGS`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from losslab.cli.groups import shared_option
from losslab.cli.options import (
    LosslabCommand,
    given_options,
    options_from_model,
    pop_options,
    progress_option,
    resolve_progress,
)
from losslab.errors import ConfigError
from losslab.seq2seq.config import (
    FAIRSEQ_FLAGS,
    SEED_ALIASES,
    TranslateConfig,
    TranslateDemoOptions,
    TranslateEvalOptions,
    TranslateInputs,
    TranslateRunOptions,
    check_seed_frobenius_decay,
    fairseq_overrides,
)


def _training_device(run: TranslateRunOptions) -> str:
    """One torch device from Lightning-style ``--accelerator/--devices`` (translation trains on one device per
    process; torchrun starts one process per device)."""
    from losslab.runs import resolve_device

    if run.devices != 1:
        raise ConfigError(
            f"--devices {run.devices}: losslab translate trains on one device per process; use --devices 1, and for "
            f"{run.devices} devices start it with torchrun --nproc_per_node {run.devices}"
        )
    return str(resolve_device(run.accelerator, flag="--accelerator"))


def _config(config_file: str | None, flags: dict[str, Any], stored: dict[str, Any] | None = None) -> Any:
    """The run's config: a resumed run's stored config, then --config's keys, then the flags typed."""
    values: dict[str, Any] = dict(stored or {})
    if config_file:
        import yaml

        from losslab.presets import resolve_yaml

        path = resolve_yaml(config_file, "configs")
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        values.update(loaded.get("translate", loaded))
    seed_flags = {key: flags.pop(key, None) for key in [_fairseq_key(f) for f in FAIRSEQ_FLAGS]}
    values.update(fairseq_overrides(seed_flags))
    values.update(given_options(flags))
    return TranslateConfig.build(values)


def _fairseq_key(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _fairseq_options(func: Any) -> Any:
    """The seed's other fairseq flags (:data:`FAIRSEQ_FLAGS`): mapped to config values or refused with the fix."""
    for flag, help_text in reversed(FAIRSEQ_FLAGS.items()):
        if flag == "--no-epoch-checkpoints":
            func = click.option(flag, _fairseq_key(flag), is_flag=True, default=None, help=help_text)(func)
        else:
            func = click.option(flag, _fairseq_key(flag), default=None, metavar="VALUE", help=help_text)(func)
    return func


@click.group("translate")
def translate() -> None:
    """Machine translation with a (factorized) Transformer: train, eval (BLEU, beam search), offline demo."""


def _common_out(func: Any) -> Any:
    """The run-folder options (losslab.runs: confined name, lock, marker, staged --overwrite), the device, and
    ``--progress``."""
    return options_from_model(TranslateRunOptions)(progress_option(func))


class _TrainCommand(LosslabCommand):
    """``translate train``: also refuses the seed's ``--frobenius-decay FLOAT`` with the losslab spelling."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        check_seed_frobenius_decay(args)
        return super().parse_args(ctx, args)


@translate.command("train", cls=_TrainCommand)
@_common_out
@options_from_model(TranslateInputs)
@options_from_model(TranslateConfig, aliases={**SEED_ALIASES, "max_epochs": [*SEED_ALIASES["max_epochs"], "--epochs"]})
@_fairseq_options
def train_cmd(progress: bool | None, **flags: Any) -> None:
    """Train a translation Transformer and report BLEU (sacrebleu, detokenized) on valid/test.

    The run folder (--out-dir, or --out-dir/--run-name) holds config.yaml, tokenizer.json, history.json,
    metrics.csv, checkpoints/last.ckpt and result.json; --resume RUN continues a killed run with its stored config
    and data (flags given on top must keep its architecture)."""
    run, inputs = pop_options(TranslateRunOptions, flags), pop_options(TranslateInputs, flags)
    stored: dict[str, Any] = {}
    if run.resume is not None:
        from losslab.seq2seq.train import stored_run_config

        stored = stored_run_config(run.resume)
        if not inputs.data():
            inputs = TranslateInputs.build({**(stored.get("data") or {}), "config": inputs.config})
    cfg = _config(inputs.config, flags, {k: v for k, v in stored.items() if k != "data"})
    device = _training_device(run)
    corpus = _corpus(inputs)
    from losslab.seq2seq.train import train_translation

    result = train_translation(
        cfg, corpus, run.out_dir, device, **run.folder(), data=inputs.data(), log=click.echo, progress=progress
    )
    from losslab.runs import is_child_rank

    if is_child_rank():  # torchrun: rank 0 reports
        return
    click.echo(json.dumps({k: v for k, v in result.items() if k in ("epochs", "steps", "train_tokens_per_s")}))


def _corpus(inputs: TranslateInputs) -> dict:
    """The corpus of the one data source ``inputs`` names (aligned files, the IWSLT download or the toy pair)."""
    given = sum([bool(inputs.src_file or inputs.tgt_file), inputs.download, inputs.toy])
    if given != 1:
        raise ConfigError("give exactly one data source: --src-file/--tgt-file, --download (IWSLT) or --toy")
    if inputs.toy:
        from losslab.seq2seq.toy import toy_corpus

        return toy_corpus()
    if inputs.download:
        from losslab.seq2seq.data import download_iwslt

        return download_iwslt()
    from losslab.seq2seq.data import load_parallel_files

    splits = {}
    for name, pair in (
        ("train", (inputs.src_file, inputs.tgt_file)),
        ("valid", (inputs.valid_src, inputs.valid_tgt)),
        ("test", (inputs.test_src, inputs.test_tgt)),
    ):
        if any(pair) and not all(pair):
            raise ConfigError(f"the {name} split needs both its source and target file")
        if all(pair):
            splits[name] = (Path(pair[0]), Path(pair[1]))
    return load_parallel_files(splits)


@translate.command("eval", cls=LosslabCommand)
@shared_option(
    "out_dir", "the trained run folder", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path)
)
@options_from_model(TranslateEvalOptions, flags={"json_path": "--json"})
@progress_option
def eval_cmd(out_dir: Path, progress: bool | None, **flags: Any) -> None:
    """BLEU of a trained run on a parallel text, with beam search; prints the tokenizer and sacrebleu signature.

    With ``--json -`` stdout holds the JSON only (the summary lines go to stderr)."""
    from losslab.runs import resolve_device
    from losslab.seq2seq.data import read_parallel
    from losslab.seq2seq.train import bleu_of, load_run

    opts = TranslateEvalOptions(**given_options(flags))  # --beam and --lenpen have the config's ranges
    dev = resolve_device(opts.device or "auto")
    pairs = read_parallel(opts.src_file, opts.tgt_file)
    model, tok, cfg = load_run(out_dir, dev)
    cfg = cfg.model_copy(update=opts.model_dump(include={"beam", "lenpen"}, exclude_none=True))
    result = bleu_of(model, tok, pairs, cfg, dev, progress=resolve_progress(progress))
    result["tokenizer"] = tok.describe()
    to_stderr = opts.json_path == "-"
    click.echo(f"tokenizer: {result['tokenizer']}", err=to_stderr)
    click.echo(f"{result['bleu_text']}  [{result['signature']}]  ({result['sentences_per_s']:.1f} sentences/s)",
               err=to_stderr)  # fmt: skip
    if opts.json_path == "-":
        click.echo(json.dumps(result, indent=2))
    elif opts.json_path:
        from losslab.io import write_json_atomic

        write_json_atomic(opts.json_path, result)


@translate.command("demo", cls=LosslabCommand)
@_common_out
@options_from_model(TranslateDemoOptions)
def demo_cmd(progress: bool | None, **flags: Any) -> None:
    """Offline demo: learn the toy SVO->SOV language pair; prints BLEU before and after training.

    ``--rank-scale 0.5`` trains the FNL factorized model instead and prints both parameter counts."""
    import torch

    from losslab.runs import is_child_rank
    from losslab.seq2seq.toy import toy_corpus
    from losslab.seq2seq.train import bleu_of, build_model, train_translation

    run, opts = pop_options(TranslateRunOptions, flags), TranslateDemoOptions(**given_options(flags))
    rank_scale = opts.rank_scale
    dev = torch.device(_training_device(run))
    fnl = {} if rank_scale is None else {"rank_scale": rank_scale, "spectral": True, "frobenius_decay": True}
    cfg = TranslateConfig.build(dict(arch="toy", vocab_size=160, lr=3e-3, warmup_updates=50, max_epochs=opts.epochs,
                                max_tokens=1024, normalize_before=True, eval_batch_size=100, **fnl))  # fmt: skip
    corpus = toy_corpus(1000, 100, 100, seed=0)

    def untrained(model: Any, tok: Any) -> None:
        if is_child_rank():  # torchrun: rank 0 reports
            return
        if rank_scale is not None:
            dense = build_model(cfg.model_copy(update={"rank_scale": None, "spectral": False}), tok.vocab_size)
            n_dense, n_fnl = (sum(p.numel() for p in m.parameters()) for m in (dense, model))
            click.echo(f"FNL rank scale {rank_scale:g}: {n_fnl:,} parameters (dense {n_dense:,}, "
                       f"{n_fnl / n_dense:.3f}x)")  # fmt: skip
        device = next(model.parameters()).device  # this process's (cuda:LOCAL_RANK under torchrun)
        click.echo(f"untrained test: {bleu_of(model, tok, corpus['test'], cfg, device)['bleu_text']}")

    result = train_translation(cfg, corpus, run.out_dir, dev, **run.folder(), data={"toy": True}, log=click.echo,
                               progress=progress, on_start=untrained)  # fmt: skip
    if is_child_rank():
        return
    src, ref = corpus["test"][0]
    click.echo(f"example: {src!r} -> {result['test']['example']!r} (reference {ref!r})")
    click.echo(f"sacrebleu signature: {result['test']['signature']}")
