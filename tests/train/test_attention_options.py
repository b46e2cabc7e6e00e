"""`losslab train --attention-spectral / --attention-frobenius-decay / --attention-products` (factorized.md §6):
config -> model and optimizer wiring, a short ViT run whose logs match independently computed penalties and
statistics, and the errors for models without attention.

The model is timm's ``test_vit`` (d = 64, 2 heads, 6 blocks) on the synthetic ``fake`` data (32x32, 4 tokens).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from click.testing import CliRunner

from losslab.cli import cli, main
from losslab.data import dataset_info
from losslab.layers import LowRankLinear, attention_modules
from losslab.layers.attention import AttentionFrobeniusDecay, attention_statistics
from losslab.train import TrainConfig, fit
from losslab.train.build import build_model, build_objective, build_regularization
from losslab.train.classifier import ClassifierModule

VIT = {"dataset": "fake", "model": "test_vit", "progress": False}


def built(**values: Any) -> tuple[TrainConfig, torch.nn.Module, list[Any], torch.optim.Optimizer]:
    """(config, model, always-on regularizers, optimizer) exactly as ``fit`` wires them."""
    cfg = TrainConfig.build({**VIT, **values})
    model, _ = build_model(cfg, dataset_info(cfg.dataset))
    schedule, always_on = build_regularization(cfg, model)
    module = ClassifierModule(cfg, model, build_objective(cfg), schedule=schedule, always_on=always_on)
    return cfg, model, always_on, module.configure_optimizers()["optimizer"]


def exempt_ids(optimizer: torch.optim.Optimizer, weight_decay: float) -> set[int]:
    """ids of the parameters in the weight-decay-0 group (and a check that every other one has ``weight_decay``)."""
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert set(decays.values()) <= {0.0, weight_decay}
    return {key for key, value in decays.items() if value == 0.0}


@pytest.mark.parametrize(("products", "qk", "ov"), [("both", True, True), ("qk", True, False), ("ov", False, True)])
def test_attention_fd_replaces_weight_decay_on_qkv_and_proj(products: str, qk: bool, ov: bool) -> None:
    _, model, always_on, optimizer = built(
        attention_frobenius_decay=True, attention_products=products, weight_decay=3e-3
    )
    assert len(always_on) == 1
    reg = always_on[0]
    assert isinstance(reg, AttentionFrobeniusDecay)
    assert (reg.lam, reg.qk, reg.ov, reg.side) == (3e-3, qk, ov, "grad")
    attns = [a for _, a in attention_modules(model)]
    assert len(attns) == 6
    expected = {id(a.qkv.weight) for a in attns} | ({id(a.proj.weight) for a in attns} if ov else set())
    assert exempt_ids(optimizer, 3e-3) == expected


def test_plain_run_keeps_weight_decay_on_attention() -> None:
    _, _, always_on, optimizer = built(weight_decay=3e-3)
    assert always_on == [] and exempt_ids(optimizer, 3e-3) == set()


def test_factorized_vit_keeps_attention_dense_and_exempts_both_kinds() -> None:
    """--rank-scale with --frobenius-decay and --attention-frobenius-decay: the MLPs are factorized, qkv/proj stay
    dense (§4); the factors and the attention weights leave weight decay, each under its own regularizer."""
    _, model, always_on, optimizer = built(
        rank_scale=0.5, frobenius_decay=True, attention_frobenius_decay=True, weight_decay=1e-3
    )
    assert [reg.name for reg in always_on] == ["frobenius_decay", "attention_frobenius_decay"]
    attns = [a for _, a in attention_modules(model)]
    assert len(attns) == 6 and all(type(a.qkv) is torch.nn.Linear and type(a.proj) is torch.nn.Linear for a in attns)
    lowrank = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    assert len(lowrank) == 12  # fc1 and fc2 of the 6 blocks
    factors = {id(p) for m in lowrank for p in (m.U, m.V)}
    attention = {id(p) for a in attns for p in (a.qkv.weight, a.proj.weight)}
    assert exempt_ids(optimizer, 1e-3) == factors | attention


def test_attention_spectral_keeps_the_function_and_balances_heads() -> None:
    x = torch.randn(4, 3, 32, 32)
    models = {}
    for on in (False, True):
        torch.manual_seed(3)
        models[on] = build_model(TrainConfig.build({**VIT, "attention_spectral": on}), dataset_info("fake"))[0].eval()
    plain, rebalanced = models[False](x), models[True](x)
    assert ((rebalanced - plain).norm() / plain.norm()).item() < 1e-5  # §6 oracle: output unchanged to 1e-5
    for (_, a0), (_, a1) in zip(attention_modules(models[False]), attention_modules(models[True])):
        heads, d_h = a1.num_heads, a1.head_dim
        w0, w1 = (a.qkv.weight.detach().double().view(3, heads, d_h, -1) for a in (a0, a1))
        o0, o1 = (a.proj.weight.detach().double().view(-1, heads, d_h).transpose(0, 1) for a in (a0, a1))
        torch.testing.assert_close(w1[0].transpose(1, 2) @ w1[1], w0[0].transpose(1, 2) @ w0[1])
        torch.testing.assert_close(o1 @ w1[2], o0 @ w0[2])
        norms = w1.norm(dim=(2, 3))  # [3, heads]: ‖Q_h‖_F, ‖K_h‖_F, ‖V_h‖_F
        torch.testing.assert_close(norms[0], norms[1])  # Q_hQ_hᵀ = K_hK_hᵀ = diag(Σ)
        torch.testing.assert_close(o1.norm(dim=(1, 2)), norms[2])  # O_hᵀO_h = V_hV_hᵀ = diag(Σ)
        assert not torch.allclose(w0.norm(dim=(2, 3))[0], w0.norm(dim=(2, 3))[1], rtol=1e-3)  # timm's init is not
    stats = attention_statistics(models[True])
    assert stats["qk_factor_sq_norm"] == pytest.approx(stats["qk_nuclear_norm"], rel=1e-5)
    assert stats["ov_factor_sq_norm"] == pytest.approx(stats["ov_nuclear_norm"], rel=1e-5)


class RecordPenalty(pl.Callback):
    """The attention FD penalty (own regularizer object, float64 copy of the weights) before every optimizer step."""

    def __init__(self, lam: float) -> None:
        self.fd = AttentionFrobeniusDecay(lam)
        self.values: dict[int, list[float]] = {}

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        value = self.fd.penalty(copy.deepcopy(pl_module.model).double()).item()
        self.values.setdefault(trainer.current_epoch, []).append(value)


@pytest.mark.slow
def test_short_vit_run_logs_the_attention_terms(tmp_path: Path) -> None:
    cfg = TrainConfig.build(
        {
            **VIT,
            "epochs": 2,
            "batch_size": 100,
            "weight_decay": 1e-3,
            "attention_spectral": True,
            "attention_frobenius_decay": True,
            "out_dir": tmp_path,
            "run_name": "vit",
        }
    )
    recorder = RecordPenalty(lam=1e-3)
    result = fit(cfg, callbacks=[recorder])
    assert [len(recorder.values[e]) for e in (0, 1)] == [9, 9]  # 900 training images / 100
    for row in result.epochs:
        steps = recorder.values[row["epoch"]]
        assert row["reg/attention_frobenius_decay"] == pytest.approx(sum(steps) / len(steps), rel=1e-5)
    # The end-of-epoch statistics of the last epoch describe the final weights (last.ckpt).
    state = torch.load(result.last_ckpt, weights_only=False)["state_dict"]
    final, _ = build_model(cfg.model_copy(update={"attention_spectral": False}), dataset_info("fake"))
    final.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    logged = [
        {k.removeprefix("attention/"): v for k, v in row.items() if k.startswith("attention/")} for row in result.epochs
    ]
    assert logged[-1] == pytest.approx(attention_statistics(final), rel=1e-5)
    assert logged[-1] != pytest.approx(logged[0], rel=1e-5)  # the weights moved between the two epochs
    assert "reg/frobenius_decay" not in result.epochs[-1]  # --frobenius-decay is off: attention FD is its own option


def test_flags_and_yaml_reach_the_config(tmp_path: Path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("model: test_vit\ndataset: fake\nattention_spectral: true\nattention_products: qk\n")
    args = ["train", "--config", str(file), "--attention-frobenius-decay", "--print-config"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    printed = yaml.safe_load(out.output)
    assert (printed["attention_spectral"], printed["attention_frobenius_decay"], printed["attention_products"]) == (
        True,
        True,
        "qk",
    )
    assert printed["frobenius_decay"] is False


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["--attention-frobenius-decay"],
            "attention_frobenius_decay (--attention-frobenius-decay): model 'small_cnn' has no timm-style attention",
        ),
        (["--attention-spectral", "--model", "mlp"], "choose a ViT, e.g. --model vit_tiny_patch16_224"),
        (["--attention-products", "ov"], "attention_products='ov' has no effect: add attention_frobenius_decay"),
        (
            ["--attention-frobenius-decay", "--weight-decay", "0", "--model", "test_vit"],
            "uses lambda = weight_decay, which is 0",
        ),
    ],
)
def test_bad_attention_options_fail_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out-dir", str(tmp_path), "--epochs", "1", *args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert fragment in captured.err + captured.out
    assert not any(tmp_path.iterdir())  # nothing was started
