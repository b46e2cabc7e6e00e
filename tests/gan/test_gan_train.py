"""GAN networks, the training step (R1 and EMA oracles), the run folder, resume and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from losslab.cli import cli, main
from losslab.errors import ConfigError
from losslab.gan import GanConfig, GanTrainer, train_gan
from losslab.gan.data import load_gan_data
from losslab.gan.models import DCGANDiscriminator, DCGANGenerator
from losslab.gan.train import r1_penalty


@pytest.mark.parametrize("size", [16, 32, 64])
def test_dcgan_shapes(size: int) -> None:
    G, D = DCGANGenerator(size, 3, z_dim=8, width=8), DCGANDiscriminator(size, 3, width=8)
    x = G(torch.randn(2, 8))
    assert x.shape == (2, 3, size, size) and x.abs().max() <= 1
    assert D(x).shape == (2, 1)


def test_bad_img_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        DCGANGenerator(24)
    with pytest.raises(ConfigError, match="img_size"):
        GanConfig.build({"data": "ring", "img_size": 32})


def test_optimiser_defaults_follow_the_data_kind_and_given_values_win() -> None:
    image = GanConfig.build({"data": "digits"})
    assert (image.batch_size, image.lr, image.beta1, image.beta2, image.r1_gamma, image.ema_decay) == (
        64,
        2e-4,
        0.5,
        0.999,
        0.0,
        0.999,
    )  # DCGAN's
    toy = GanConfig.build({"data": "ring", "lr": 3e-4})
    assert (toy.batch_size, toy.lr, toy.beta1, toy.beta2, toy.r1_gamma, toy.ema_decay) == (
        128,
        3e-4,
        0.0,
        0.9,
        1.0,
        0.99,
    )
    assert GanConfig.build(toy.to_dict()) == toy  # a stored config (resume) reads back unchanged


def test_r1_penalty_of_a_linear_discriminator_is_the_squared_weight_norm() -> None:
    D = nn.Linear(5, 1)
    x = torch.randn(7, 5, requires_grad=True)
    assert r1_penalty(D(x), x).item() == pytest.approx(D.weight.square().sum().item(), rel=1e-6)


def _tiny(**kw: object) -> GanConfig:
    base = {"data": "ring", "toy_samples": 256, "batch_size": 64, "width": 16, "z_dim": 4, "metrics": False}
    return GanConfig.build({**base, **kw})


def test_ema_update_is_the_convex_combination() -> None:
    trainer = GanTrainer(_tiny(ema_decay=0.9), load_gan_data("ring", n_toy=256))
    before = [p.clone() for p in trainer.G_ema.parameters()]
    with torch.no_grad():
        for p in trainer.G.parameters():
            p.add_(1.0)
    trainer.update_ema()
    for old, new, g in zip(before, trainer.G_ema.parameters(), trainer.G.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * g)


def test_step_trains_both_networks_with_r1() -> None:
    trainer = GanTrainer(_tiny(r1_gamma=1.0, loss="rooted", k=4.0), load_gan_data("ring", n_toy=256))
    g0, d0 = [p.clone() for p in trainer.G.parameters()], [p.clone() for p in trainer.D.parameters()]
    out = trainer.step(trainer.real[:64])
    assert out.shape == (3,) and torch.isfinite(out).all() and out[2] > 0
    assert all(not torch.equal(a, b) for a, b in zip(g0, trainer.G.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, trainer.D.parameters()))


@pytest.mark.slow
def test_resume_continues_bit_for_bit(tmp_path: Path) -> None:
    straight = train_gan(_tiny(epochs=2, out_dir=tmp_path, run_name="straight", progress=False))
    train_gan(_tiny(epochs=1, out_dir=tmp_path, run_name="split", progress=False))
    resumed = train_gan(_tiny(epochs=2, out_dir=tmp_path, resume=tmp_path / "split", progress=False))
    assert resumed.run_dir == tmp_path / "split" and resumed.epochs == 2
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)["trainer"]
    b = torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=False)["trainer"]
    for name in ("G", "D", "G_ema"):
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    assert [h["d_loss"] for h in straight.history] == [h["d_loss"] for h in resumed.history]
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train_gan(_tiny(epochs=1, out_dir=tmp_path, run_name="straight"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not a GAN run"):
        train_gan(_tiny(epochs=1, resume=tmp_path / "empty"))


def test_cli_train_writes_the_run_folder(tmp_path: Path) -> None:
    args = ["gan", "train", "--data", "ring", "--toy-samples", "512", "--batch-size", "128", "--width", "16"]
    args += ["--epochs", "2", "--eval-samples", "1000", "--out-dir", str(tmp_path), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "ring_rooted_k2_seed0"
    assert "modes covered" in result.output
    data = json.loads((run / "result.json").read_text())
    assert data["epochs"] == 2 and data["steps"] == 8 and data["metrics"]["num_modes"] == 8
    assert sum(data["metrics"]["mode_counts"]) <= 1000
    for epoch in (1, 2):
        assert (run / "samples" / f"epoch_{epoch:03d}.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "metrics.csv").read_text().count("\n") == 3


def test_cli_bad_input_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["gan", "train", "--data", "ring", "--img-size", "32"])
    assert exc.value.code == 2 and "img_size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["gan", "train", "--data", "digits", "--img-size", "24", "--epochs", "1"])
    assert "power of two" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dcgan_step_makes_no_host_sync_on_cuda() -> None:
    data = load_gan_data("digits", img_size=32)
    trainer = GanTrainer(GanConfig.build({"data": "digits", "img_size": 32, "r1_gamma": 0.1}), data, "cuda")
    trainer.step(trainer.real[:64])  # warm-up (lazy init may sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.step(trainer.real[:64])
    finally:
        torch.cuda.set_sync_debug_mode("default")
