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

from losslab.cli.groups import number_type, shared_option
from losslab.cli.options import LosslabCommand, given_options, options_from_model, progress_option, resolve_progress
from losslab.errors import ConfigError
from losslab.seq2seq.config import (
    FAIRSEQ_FLAGS,
    MAX_BEAM,
    SEED_ALIASES,
    TranslateConfig,
    check_seed_frobenius_decay,
    fairseq_overrides,
)


def _training_device(accelerator: str, devices: int) -> str:
    """One torch device from Lightning-style ``--accelerator/--devices`` (translation trains on one device)."""
    from losslab.runs import resolve_device

    if devices != 1:
        raise ConfigError(f"--devices {devices}: losslab translate trains on one device; use --devices 1")
    return str(resolve_device(accelerator, flag="--accelerator"))


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
    """The run-folder options (losslab.runs: confined name, lock, marker, staged --overwrite) and the device."""
    func = progress_option(func)
    func = shared_option("overwrite", "a run folder, once the new run has finished", default=False)(func)
    func = shared_option("resume")(func)
    func = click.option(
        "--devices", type=click.IntRange(min=1), default=1, show_default=True, help="Number of devices (only 1)."
    )(func)
    func = shared_option("accelerator", "one device", default="auto")(func)
    func = shared_option("run_name", "default: --out-dir is the run")(func)
    return shared_option("out_dir", "the run folder")(func)


class _TrainCommand(LosslabCommand):
    """``translate train``: also refuses the seed's ``--frobenius-decay FLOAT`` with the losslab spelling."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        check_seed_frobenius_decay(args)
        return super().parse_args(ctx, args)


@translate.command("train", cls=_TrainCommand)
@_common_out
@click.option("--config", "config_file", default=None, help="YAML file (or shipped name) of config keys.")
@click.option("--src-file", type=click.Path(), default=None, help="Training source text, one sentence per line.")
@click.option("--tgt-file", type=click.Path(), default=None, help="Training target text, aligned with --src-file.")
@click.option("--valid-src", type=click.Path(), default=None, help="Validation source text.")
@click.option("--valid-tgt", type=click.Path(), default=None, help="Validation target text.")
@click.option("--test-src", type=click.Path(), default=None, help="Test source text.")
@click.option("--test-tgt", type=click.Path(), default=None, help="Test target text.")
@click.option("--download", is_flag=True, help="Fetch IWSLT2017 de-en through datasets (network).")
@click.option("--toy", is_flag=True, help="Use the built-in toy language pair (offline).")
@options_from_model(TranslateConfig, aliases={**SEED_ALIASES, "max_epochs": [*SEED_ALIASES["max_epochs"], "--epochs"]})
@_fairseq_options
def train_cmd(
    out_dir: Path | None,
    run_name: str | None,
    overwrite: bool,
    resume: Path | None,
    accelerator: str,
    devices: int,
    progress: bool | None,
    config_file: str | None,
    download: bool,
    toy: bool,
    **flags: Any,
) -> None:
    """Train a translation Transformer and report BLEU (sacrebleu, detokenized) on valid/test.

    The run folder (--out-dir, or --out-dir/--run-name) holds config.yaml, tokenizer.json, history.json,
    metrics.csv, checkpoints/last.ckpt and result.json; --resume RUN continues a killed run with its stored config
    and data (flags given on top must keep its architecture)."""
    data = {key: flags.pop(key) for key in DATA_FLAGS if key not in ("download", "toy")}
    data.update(download=download, toy=toy)
    stored: dict[str, Any] = {}
    if resume is not None:
        from losslab.seq2seq.train import stored_run_config

        stored = stored_run_config(resume)
        if not _given_data(data):
            data = dict(stored.get("data") or {})
    cfg = _config(config_file, flags, {k: v for k, v in stored.items() if k != "data"})
    device = _training_device(accelerator, devices)
    corpus = _corpus(**{key: data.get(key) for key in DATA_FLAGS})
    from losslab.seq2seq.train import train_translation

    result = train_translation(cfg, corpus, out_dir, device, run_name=run_name, resume=resume, overwrite=overwrite,
                               data=_absolute(data), log=click.echo, progress=progress)  # fmt: skip
    click.echo(json.dumps({k: v for k, v in result.items() if k in ("epochs", "steps", "train_tokens_per_s")}))


DATA_FLAGS = ("src_file", "tgt_file", "valid_src", "valid_tgt", "test_src", "test_tgt", "download", "toy")


def _given_data(data: dict[str, Any]) -> bool:
    return any(bool(data.get(key)) for key in DATA_FLAGS)


def _absolute(data: dict[str, Any]) -> dict[str, Any]:
    """The data source as recorded in config.yaml (file paths absolute, so that --resume finds them)."""
    return {key: (str(Path(v).resolve()) if isinstance(v, str) else v) for key, v in data.items() if v}


def _corpus(src_file: str | None, tgt_file: str | None, valid_src: str | None, valid_tgt: str | None,
            test_src: str | None, test_tgt: str | None, download: bool | None, toy: bool | None) -> dict:  # fmt: skip
    given = sum([bool(src_file or tgt_file), bool(download), bool(toy)])
    if given != 1:
        raise ConfigError("give exactly one data source: --src-file/--tgt-file, --download (IWSLT) or --toy")
    if toy:
        from losslab.seq2seq.toy import toy_corpus

        return toy_corpus()
    if download:
        from losslab.seq2seq.data import download_iwslt

        return download_iwslt()
    from losslab.seq2seq.data import load_parallel_files

    splits = {}
    for name, pair in (
        ("train", (src_file, tgt_file)),
        ("valid", (valid_src, valid_tgt)),
        ("test", (test_src, test_tgt)),
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
@click.option("--src-file", type=click.Path(), required=True, help="Source text, one sentence per line.")
@click.option("--tgt-file", type=click.Path(), required=True, help="Reference translations, aligned.")
@click.option(
    "--beam", type=number_type(int, ge=1, le=MAX_BEAM), default=None, help="Beam size (default: the run's, 5)."
)
@click.option(
    "--lenpen", type=number_type(float, ge=0, le=10), default=None, help="Length penalty (default: the run's)."
)
@shared_option("device", "default: cuda if available")
@click.option("--json", "json_file", default=None, help="Write the results as JSON to this file ('-' = stdout).")
@progress_option
def eval_cmd(out_dir: str, src_file: str, tgt_file: str, beam: int | None, lenpen: float | None,
             device: str | None, json_file: str | None, progress: bool | None) -> None:  # fmt: skip
    """BLEU of a trained run on a parallel text, with beam search; prints the tokenizer and sacrebleu signature.

    With ``--json -`` stdout holds the JSON only (the summary lines go to stderr)."""
    from losslab.runs import resolve_device
    from losslab.seq2seq.data import read_parallel
    from losslab.seq2seq.train import bleu_of, load_run

    dev = resolve_device(device or "auto")
    asked = given_options({"beam": beam, "lenpen": lenpen})
    TranslateConfig.build(asked)  # the config's ranges check --beam and --lenpen before anything is loaded
    pairs = read_parallel(Path(src_file), Path(tgt_file))
    model, tok, cfg = load_run(Path(out_dir), dev)
    cfg = cfg.model_copy(update=asked)
    result = bleu_of(model, tok, pairs, cfg, dev, progress=resolve_progress(progress))
    result["tokenizer"] = tok.describe()
    to_stderr = json_file == "-"
    click.echo(f"tokenizer: {result['tokenizer']}", err=to_stderr)
    click.echo(f"{result['bleu_text']}  [{result['signature']}]  ({result['sentences_per_s']:.1f} sentences/s)",
               err=to_stderr)  # fmt: skip
    if json_file == "-":
        click.echo(json.dumps(result, indent=2))
    elif json_file:
        from losslab.io import write_json_atomic

        write_json_atomic(json_file, result)


@translate.command("demo", cls=LosslabCommand)
@_common_out
@click.option("--epochs", type=number_type(int, ge=1, le=1000), default=12, show_default=True, help="Training epochs.")
@click.option(
    "--rank-scale",
    type=number_type(float, gt=0, le=1),
    default=None,
    help="FNL option: factorize the FFN, embeddings and output at rank scale s and shrink each head to "
    "int(s·d/H), with spectral init and Frobenius decay (the seed's --rank-scale s --spectral --wd2fd).",
)
def demo_cmd(out_dir: Path | None, run_name: str | None, overwrite: bool, resume: Path | None, accelerator: str,
             devices: int, progress: bool | None, epochs: int, rank_scale: float | None) -> None:  # fmt: skip
    """Offline demo: learn the toy SVO->SOV language pair; prints BLEU before and after training.

    ``--rank-scale 0.5`` trains the FNL factorized model instead and prints both parameter counts."""
    import torch

    from losslab.seq2seq.toy import toy_corpus
    from losslab.seq2seq.train import bleu_of, build_model, train_translation

    dev = torch.device(_training_device(accelerator, devices))
    fnl = {} if rank_scale is None else {"rank_scale": rank_scale, "spectral": True, "frobenius_decay": True}
    cfg = TranslateConfig.build(dict(arch="toy", vocab_size=160, lr=3e-3, warmup_updates=50, max_epochs=epochs,
                                max_tokens=1024, normalize_before=True, eval_batch_size=100, **fnl))  # fmt: skip
    corpus = toy_corpus(1000, 100, 100, seed=0)

    def untrained(model: Any, tok: Any) -> None:
        if rank_scale is not None:
            dense = build_model(cfg.model_copy(update={"rank_scale": None, "spectral": False}), tok.vocab_size)
            n_dense, n_fnl = (sum(p.numel() for p in m.parameters()) for m in (dense, model))
            click.echo(f"FNL rank scale {rank_scale:g}: {n_fnl:,} parameters (dense {n_dense:,}, "
                       f"{n_fnl / n_dense:.3f}x)")  # fmt: skip
        click.echo(f"untrained test: {bleu_of(model, tok, corpus['test'], cfg, dev)['bleu_text']}")

    result = train_translation(cfg, corpus, out_dir, dev, run_name=run_name, resume=resume, overwrite=overwrite,
                               data={"toy": True}, log=click.echo, progress=progress, on_start=untrained)  # fmt: skip
    src, ref = corpus["test"][0]
    click.echo(f"example: {src!r} -> {result['test']['example']!r} (reference {ref!r})")
    click.echo(f"sacrebleu signature: {result['test']['signature']}")
