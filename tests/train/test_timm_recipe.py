"""timm's recipe in ``losslab train``: SGT's flags paste as is, Mixup/CutMix with any loss, model EMA, drop-path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from losslab.cli import cli
from losslab.errors import ConfigError, LosslabError
from losslab.objectives import create
from losslab.train import TrainConfig, fit
from losslab.train.build import build_model
from losslab.train.engine_lightning import ModelEma
from losslab.train.recipe import mix_batch, mixed_loss


def printed_config(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["train", *args, "--print-config"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize(
    ("timm_flags", "losslab_flags"),
    [
        (["--sched", "multistep"], ["--scheduler", "multistep"]),
        (
            ["--dataset", "imagenet", "--data_dir", "/data/imagenet"],
            ["--dataset", "imagenet", "--data-dir", "/data/imagenet"],
        ),
        (["--amp"], ["--precision", "16-mixed"]),
        (["--amp", "--amp-dtype", "bfloat16"], ["--precision", "bf16-mixed"]),
        (["--smoothing", "0.1"], ["--label-smoothing", "0.1"]),
        (["--clip-grad", "5"], ["--gradient-clip", "5"]),
        # with the SGT fork's parser defaults (parser.py: --warmup-lr 0.01, --min-lr 1e-4)
        (
            ["--modify-softmax", "0.25"],
            [
                "--loss",
                "sgt",
                "--sgt-alpha",
                "0.25",
                "--warmup-lr",
                "0.01",
                "--min-lr",
                "1e-4",
                "--optimizer",
                "nesterov",
            ],
        ),
        (["--warmup-epochs", "5", "--cooldown-epochs", "2"], ["--warmup-epochs", "5", "--cooldown-epochs", "2"]),
        (["--dali"], []),
    ],
)
def test_timm_spelling_gives_the_losslab_config(timm_flags: list[str], losslab_flags: list[str]) -> None:
    assert printed_config(*timm_flags) == printed_config(*losslab_flags)


def test_sgt_recipe_pastes(tmp_path: Path) -> None:
    """SGT's README command line (less the launcher) is accepted and means SGT with its options, on the ImageNet
    tree its data folder holds."""
    for split in ("train", "val"):
        (tmp_path / split / "n01440764").mkdir(parents=True)
    recipe = [
        *("--data_dir", str(tmp_path), "--dali", "--amp", "--momentum", "0.9", "--weight-decay", "5e-4"),
        *("--sched", "cosine", "--model", "resnet18", "--batch-size", "256", "--lr", "1e-1", "--epochs", "90"),
        *("--warmup-epochs", "5", "--cooldown-epochs", "10", "--modify-softmax", "0.25", "--logit-stats"),
    ]
    cfg = printed_config(*recipe)
    assert cfg["loss"] == "sgt" and cfg["sgt_alpha"] == 0.25 and cfg["precision"] == "16-mixed"
    assert cfg["scheduler"] == "cosine" and cfg["cooldown_epochs"] == 10 and cfg["logit_stats"] is True
    assert cfg["dataset"] == "imagenet" and cfg["data_dir"] == str(tmp_path)


def test_modify_softmax_keeps_a_named_loss() -> None:
    assert printed_config("--loss", "ce", "--modify-softmax", "0.5")["loss"] == "ce"


def test_amp_conflicting_precision_is_an_error() -> None:
    result = CliRunner().invoke(cli, ["train", "--amp", "--precision", "bf16-mixed", "--print-config"])
    assert result.exit_code != 0 and "--amp means --precision 16-mixed" in str(result.exception or result.output)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixed_ce_equals_timm_soft_target_ce(mode: str) -> None:
    """With CE, λ·CE(z, y) + (1 − λ)·CE(z, y') is timm's SoftTargetCrossEntropy on the mixed soft targets."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, mode=mode, label_smoothing=0.0, num_classes=5)
    np.random.seed(1)  # timm's Mixup draws λ and the boxes with numpy
    xm, ya, yb, lam = mix_batch(mixup, x, y)
    np.random.seed(1)
    xm_ref, soft = mixup(x.clone(), y)
    assert torch.equal(xm, xm_ref)
    # the recovered λ rebuilds timm's soft targets exactly
    rebuilt = lam[:, None] * torch.nn.functional.one_hot(ya, 5) + (1 - lam[:, None]) * torch.nn.functional.one_hot(
        yb, 5
    )
    assert torch.allclose(rebuilt.float(), soft, atol=1e-6)
    logits = torch.randn(8, 5, dtype=torch.float64)
    ours = mixed_loss(create("ce", reduction="none"), logits, ya, yb, lam.double())
    assert torch.allclose(ours, SoftTargetCrossEntropy()(logits, soft.double()), atol=1e-12)


def test_mixed_rooted_loss_is_the_lambda_mixture() -> None:
    logits, y, y2 = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1]), torch.arange(6) % 4
    lam = torch.linspace(0, 1, 6, dtype=torch.float64)
    k, m = 3.0, 3.0
    p = logits.softmax(-1)
    per = lambda t: m * (1 - p.gather(1, t[:, None]).squeeze(1) ** (1 / k))  # noqa: E731  (spec §3 closed form)
    expected = (lam * per(y) + (1 - lam) * per(y2)).mean()
    assert torch.allclose(mixed_loss(create("root", k=k, m=m, reduction="none"), logits, y, y2, lam), expected)


def test_odd_batch_with_mixup_is_refused(tmp_path: Path) -> None:
    cfg = TrainConfig(model="mlp", epochs=1, batch_size=63, mixup=0.2, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="even batch_size"):
        fit(cfg)


def test_model_ema_weights_are_saved_and_raw_weights_resume(tmp_path: Path) -> None:
    """The best checkpoint's weights are the EMA (oracle: the recurrence on the raw weights after each step), the
    raw weights travel beside them, and the final test metrics are those of the EMA weights."""
    from lightning.pytorch.callbacks import Callback

    decay = 0.8
    seen: list[dict[str, torch.Tensor]] = []

    class Record(Callback):
        def on_train_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
            seen.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:  # type: ignore[no-untyped-def]
            seen.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    cfg = TrainConfig(
        model="mlp", epochs=1, batch_size=256, model_ema=True, model_ema_decay=decay, out_dir=tmp_path, run_name="e"
    )
    # ModelEma is appended after user callbacks, so Record sees the raw weights before the EMA update
    result = fit(cfg, callbacks=[Record()])
    ckpt = torch.load(tmp_path / "e" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # timm's ModelEmaV3 with a step count: the first update copies (decay 0), then ema = d·ema + (1 − d)·w
    expected = {k: v.clone() for k, v in seen[1].items()}
    for raw in seen[2:]:
        for key in expected:
            expected[key] = decay * expected[key] + (1 - decay) * raw[key]
    for key, value in expected.items():
        assert torch.allclose(ckpt["state_dict"][f"model.{key}"], value, atol=1e-6), key
        assert torch.equal(ckpt["ema_raw_state_dict"][key], seen[-1][key])
    assert any(not torch.equal(ckpt["state_dict"][f"model.{k}"], v) for k, v in seen[-1].items())

    from losslab.compress.evaluate_run import evaluate_checkpoint

    assert evaluate_checkpoint(result.best_ckpt)["top1"] == pytest.approx(result.test_acc, abs=1e-6)

    # resume: the model continues from the raw weights, the EMA from the averaged ones
    cb = ModelEma(decay)
    from losslab.train.classifier import ClassifierModule

    module = ClassifierModule(cfg, build_model(cfg, _digits_spec())[0], create("ce"))
    module.load_state_dict(ckpt["state_dict"])
    cb.on_load_checkpoint(None, module, ckpt)  # type: ignore[arg-type]
    cb.on_fit_start(None, module)  # type: ignore[arg-type]
    for key, value in seen[-1].items():
        assert torch.equal(module.model.state_dict()[key], value)
        assert torch.allclose(cb.ema.module.state_dict()[key], expected[key], atol=1e-6)


def _digits_spec():  # type: ignore[no-untyped-def]
    from losslab.data import dataset_info

    return dataset_info("digits")


def test_drop_path_reaches_timm_models_and_is_refused_by_others() -> None:
    spec = _digits_spec()
    model, _ = build_model(TrainConfig(model="resnet10t", drop_path=0.2, img_size=32), spec)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="drop_path_rate"):
        build_model(TrainConfig(model="small_cnn", drop_path=0.2), spec)


def _timm_file(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A checkpoint in timm train.py's layout (``module.`` prefixes from DDP, argparse args) for an mlp on digits."""
    import argparse

    torch.manual_seed(3)
    model, _ = build_model(TrainConfig(model="mlp"), _digits_spec())
    path = tmp_path / "model_best.pth.tar"
    torch.save(
        {
            "epoch": 7,
            "arch": "mlp",
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "args": argparse.Namespace(model="mlp", lr=0.1),
        },
        path,
    )
    return path, model.eval()


def test_evaluate_and_validate_read_a_timm_checkpoint(tmp_path: Path) -> None:
    from losslab.compress.evaluate_run import evaluate_checkpoint
    from losslab.train import evaluate_model
    from losslab.train.build import make_loaders

    path, model = _timm_file(tmp_path)
    expected = evaluate_model(model, make_loaders(TrainConfig(model="mlp")).test)
    got = evaluate_checkpoint(path, dataset="digits")
    assert got["top1"] == pytest.approx(expected["top1"]) and got["ce"] == pytest.approx(expected["ce"])
    out = CliRunner().invoke(cli, ["train", "--validate", "--resume", str(path), "--dataset", "digits"])
    assert out.exit_code == 0 and f"top-1 {expected['top1']:.2f}%" in out.stdout
    refused = CliRunner().invoke(cli, ["evaluate", str(path)])
    assert refused.exit_code != 0 and "--dataset" in str(refused.exception)


def test_resume_from_a_timm_checkpoint_starts_from_its_weights(tmp_path: Path) -> None:
    path, model = _timm_file(tmp_path)
    cfg = printed_config("--resume", str(path), "--model", "mlp")
    assert cfg["initial_checkpoint"] == str(path) and cfg["resume"] is None
    built, _ = build_model(TrainConfig(model="mlp", initial_checkpoint=path), _digits_spec())
    for key, value in model.state_dict().items():
        assert torch.equal(built.state_dict()[key], value)
    with pytest.raises(Exception, match="does not fit"):
        build_model(TrainConfig(model="small_cnn", initial_checkpoint=path), _digits_spec())


def test_a_mismatched_timm_checkpoint_names_the_keys_and_shapes(tmp_path: Path) -> None:
    """The error lists what does not fit (counts, first keys, both shapes), not only torch's header line."""
    from losslab.models import create_model
    from losslab.train.checkpoint import load_timm_checkpoint

    path, model = _timm_file(tmp_path)
    head = [k for k, v in model.state_dict().items() if v.shape[0] == 10]  # the 10-class classifier's tensors
    assert head
    four = create_model("mlp", num_classes=4, in_chans=1, img_size=8)
    with pytest.raises(LosslabError, match="does not fit") as info:
        load_timm_checkpoint(four, path)
    message = str(info.value)
    assert f"{len(head)} shape mismatch(es), checkpoint vs model" in message
    first = head[0]
    assert f"{first} {tuple(model.state_dict()[first].shape)} vs {tuple(four.state_dict()[first].shape)}" in message
    assert "Error(s) in loading" not in message and "\n" not in message
