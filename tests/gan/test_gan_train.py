"""GAN networks, the training step (R1 and EMA oracles), the GAN task in the plain loop against a plain reference
loop, the run folder, bit-identical resume and the CLI."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from losslab.cli import cli, main
from losslab.errors import ConfigError
from losslab.gan import GanConfig, GanTask, train_gan
from losslab.gan.data import load_gan_data
from losslab.gan.models import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator, build_pair
from losslab.gan.train import ema_beta, r1_penalty, recalibrate_batchnorm
from losslab.objectives.gan import gan_term


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
    assert (image.batch_size, image.lr, image.beta1, image.beta2, image.r1_gamma) == (64, 2e-4, 0.5, 0.999, 0.0)
    toy = GanConfig.build({"data": "ring", "lr": 3e-4})
    assert (toy.batch_size, toy.lr, toy.beta1, toy.beta2, toy.r1_gamma) == (128, 3e-4, 0.0, 0.9, 1.0)
    assert (image.ema_kimg, image.ema_rampup, image.ema_decay) == (None, 0.05, None)  # StyleGAN2-ADA's ramp
    assert GanConfig.build(toy.to_dict()) == toy  # a stored config (resume) reads back unchanged


def test_r1_penalty_of_a_linear_discriminator_is_the_squared_weight_norm() -> None:
    D = nn.Linear(5, 1)
    x = torch.randn(7, 5, requires_grad=True)
    assert r1_penalty(D(x), x).item() == pytest.approx(D.weight.square().sum().item(), rel=1e-6)


def _tiny(**kw: object) -> GanConfig:
    base = {"data": "ring", "toy_samples": 256, "batch_size": 64, "width": 16, "z_dim": 4, "metrics": False}
    return GanConfig.build({**base, **kw})


def _step(task: GanTask, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """One batch as the loop runs it in full precision (zero_grad, loss, backward, step, after_step per phase);
    returns what the phases logged."""
    logged: dict[str, torch.Tensor] = {}
    for phase in task.phases():
        phase.optimizer.zero_grad(set_to_none=True)
        phase.loss(real, 0, lambda name, value, prog_bar=False: logged.__setitem__(name, value)).backward()
        phase.optimizer.step()
        if phase.after_step is not None:
            phase.after_step()
    return logged


def test_ema_update_is_the_convex_combination() -> None:
    trainer = GanTask(_tiny(ema_decay=0.9), load_gan_data("ring", n_toy=256))
    before = [p.clone() for p in trainer.G_ema.parameters()]
    with torch.no_grad():
        for p in trainer.G.parameters():
            p.add_(1.0)
    trainer.update_ema()
    for old, new, g in zip(before, trainer.G_ema.parameters(), trainer.G.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * g)


def test_ema_beta_is_stylegan2_adas_ramp() -> None:
    """β = 0.5^(B / h), h = min(ema_kimg·1000, rampup·images seen) (StyleGAN2-ADA training_loop.py)."""
    assert ema_beta(64, 0, 20.0, 0.05) == 0.0  # the first step copies G
    assert ema_beta(64, 28_160, 20.0, 0.05) == pytest.approx(0.5 ** (64 / (0.05 * 28_160)), rel=1e-12)
    assert ema_beta(64, 10**7, 20.0, 0.05) == pytest.approx(0.5 ** (64 / 20_000), rel=1e-12)  # capped at ema_kimg
    assert ema_beta(64, 0, 20.0, 0.0) == pytest.approx(0.5 ** (64 / 20_000), rel=1e-12)  # no ramp


def test_ema_of_a_short_run_holds_no_initial_weights() -> None:
    """The README's digits run: 440 steps of batch 64. A fixed 0.999 kept 0.999^440 = 64 % of the initial weights;
    the ramp's first step copies G, and the final half-life is 5 % of the images seen (22 steps)."""
    betas, share = [], 1.0
    for step in range(440):
        betas.append(ema_beta(64, 64 * step, 64 * 10 / 32, 0.05))
        share *= betas[-1]
    assert pytest.approx(0.644, abs=1e-3) == 0.999**440 and share == 0.0
    assert math.log(0.5) / math.log(betas[-1]) == pytest.approx(0.05 * 64 * 439 / 64, rel=1e-9)
    trainer = GanTask(_tiny(), data := load_gan_data("ring", n_toy=256))
    _step(trainer, data.tensor[:64])
    for ema, g in zip(trainer.G_ema.parameters(), trainer.G.parameters()):
        torch.testing.assert_close(ema, g, rtol=0, atol=0)
    _step(trainer, data.tensor[64:128])
    assert trainer.ema_summary()["initial_weight_share"] == 0.0


def test_batchnorm_statistics_of_the_ema_are_estimated_for_its_weights() -> None:
    """recalibrate_batchnorm sets running mean = mean of the BN inputs over all batches and running var = the mean of
    the per-batch unbiased variances, from the seeded latents (closed form on Linear → BatchNorm1d)."""
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    gen[1].running_mean.fill_(5.0)  # stale statistics (as copied from another network) must not survive
    recalibrate_batchnorm(gen, z_dim=4, batch_size=32, batches=5, seed=7)
    z = torch.randn(5, 32, 4, generator=torch.Generator().manual_seed(7))  # the same draws, batch by batch
    with torch.no_grad():
        h = gen[0](z.reshape(-1, 4)).reshape(5, 32, 3).double()
    torch.testing.assert_close(gen[1].running_mean.double(), h.mean((0, 1)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gen[1].running_var.double(), h.var(1, unbiased=True).mean(0), rtol=1e-5, atol=1e-6)
    assert not gen.training and gen[1].momentum == 0.1


def test_ema_generator_does_not_copy_gs_batchnorm_buffers() -> None:
    data = load_gan_data("digits", img_size=8)
    cfg = GanConfig.build({"data": "digits", "img_size": 8, "width": 4, "z_dim": 4, "batch_size": 16, "metrics": False})
    trainer = GanTask(cfg, data)
    for _ in range(3):
        _step(trainer, data.tensor[:16])
    trainer.samples(4, seed=0)
    g_bn = [m for m in trainer.G.modules() if isinstance(m, nn.BatchNorm2d)]
    ema_bn = [m for m in trainer.G_ema.modules() if isinstance(m, nn.BatchNorm2d)]
    assert ema_bn and all(not torch.equal(a.running_mean, b.running_mean) for a, b in zip(ema_bn, g_bn))


def test_step_trains_both_networks_with_r1() -> None:
    trainer = GanTask(_tiny(r1_gamma=1.0, loss="root", k=4.0), data := load_gan_data("ring", n_toy=256))
    g0, d0 = [p.clone() for p in trainer.G.parameters()], [p.clone() for p in trainer.D.parameters()]
    out = _step(trainer, data.tensor[:64])
    assert set(out) == {"d_loss", "r1", "g_loss"} and all(torch.isfinite(v) for v in out.values()) and out["r1"] > 0
    assert all(not torch.equal(a, b) for a, b in zip(g0, trainer.G.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, trainer.D.parameters()))


def _reference_run(cfg: GanConfig) -> tuple[dict[str, nn.Module], list[list[float]]]:
    """The GAN's training written out as a plain loop (the seed's order of draws: model init after manual_seed; per
    epoch one randperm; per step z for D's fake batch, D(real) before D(fake), then z for G's batch; StyleGAN2-ADA
    EMA after G's step); returns the networks and the float64 mean (d_loss, g_loss, r1) per epoch."""
    data = load_gan_data(cfg.data, n_toy=cfg.toy_samples, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    G, D = build_pair(data.sample_shape, cfg.z_dim, cfg.net_width, cfg.d_norm)
    G_ema = copy.deepcopy(G).requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    B, nimg, history = cfg.batch_size, 0, []

    def term(logits: torch.Tensor, name: str) -> torch.Tensor:
        return gan_term(logits, name, cfg.loss, cfg.k).mean()

    for _ in range(cfg.epochs):
        order, sums = torch.randperm(len(data.tensor)), []
        for i in range(len(data.tensor) // B):
            real = data.tensor[order[i * B : (i + 1) * B]].requires_grad_(True)
            D.requires_grad_(True)
            with torch.no_grad():
                fake = G(torch.randn(B, cfg.z_dim))
            d_real = D(real)
            d_loss = term(D(fake), "d_fake") + term(d_real, "d_real")
            (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            r1 = grad.square().flatten(1).sum(1).mean()
            opt_d.zero_grad()
            (d_loss + 0.5 * cfg.r1_gamma * r1).backward()
            opt_d.step()
            D.requires_grad_(False)
            g_loss = term(D(G(torch.randn(B, cfg.z_dim))), "g")
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            beta = 0.5 ** (B / max(min(B * 10 / 32 * 1000, nimg * cfg.ema_rampup), 1e-8))
            with torch.no_grad():
                for e, g in zip(G_ema.parameters(), G.parameters()):
                    e.copy_(torch.lerp(e, g, 1.0 - beta))
            nimg += B
            sums.append([d_loss.item(), g_loss.item(), r1.item()])
        history.append([sum(col) / len(sums) for col in zip(*sums)])
    return {"G": G, "D": D, "G_ema": G_ema}, history


def test_the_loop_trains_the_reference_gan_bit_for_bit(tmp_path: Path) -> None:
    """train_gan (the GAN task in the plain loop) gives the same weights as the plain reference loop, bit for bit;
    the epoch means of the losses agree to float32 rounding (the loop sums batch-size-weighted float32 values and
    divides in float64; the reference averages float64 copies)."""
    cfg = _tiny(epochs=2, toy_samples=320, out_dir=tmp_path, progress=False)  # 5 steps per epoch
    nets, history = _reference_run(cfg)
    result = train_gan(cfg)
    state = torch.load(tmp_path / result.run_dir.name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            assert torch.equal(state[f"{name}.{key}"], value), (name, key)
    for row, ref in zip(result.history, history, strict=True):
        assert [row["d_loss"], row["g_loss"], row["r1"]] == pytest.approx(ref, rel=1e-6)


def _state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def _assert_same_state(a: object, b: object, where: str = "") -> None:
    """Nested checkpoint values equal exactly (tensors by torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@pytest.mark.parametrize("data", ["ring", "digits"])
def test_every_checkpoint_entry_resumes_bit_identically(tmp_path: Path, data: str) -> None:
    """2 epochs straight vs 1 epoch, kill, resume 1 epoch: the same weights (G, D, G_ema, BatchNorm buffers), both
    Adam states, the EMA clock and RNG, the same history rows and the same final metrics."""
    kw = {"data": "ring"} if data == "ring" else {"data": "digits", "img_size": 8, "width": 4, "r1_gamma": 0.1}
    tiny = {**kw, "batch_size": 64, "z_dim": 4, "progress": False, "eval_samples": 200, "out_dir": tmp_path}
    if data == "ring":
        tiny.update(toy_samples=256, width=16)
    straight = train_gan(GanConfig.build({**tiny, "epochs": 2, "run_name": "straight"}))
    train_gan(GanConfig.build({**tiny, "epochs": 1, "run_name": "split", "metrics": False}))
    (tmp_path / "split" / "result.json").unlink()  # as if killed after epoch 1's checkpoint
    resumed = train_gan(GanConfig.build({**tiny, "epochs": 2, "resume": tmp_path / "split"}))
    assert resumed.run_dir == tmp_path / "split" and resumed.epochs == 2
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "split")
    assert len(a["optimizer_states"]) == 2 and all(s["state"] for s in a["optimizer_states"])  # D's and G's Adam
    a.pop("losslab_sha256"), b.pop("losslab_sha256")  # a checksum of the whole file, run name included
    config_a, config_b = a.pop("hyper_parameters")["config"], b.pop("hyper_parameters")["config"]
    assert {k: v for k, v in config_a.items() if config_b[k] != v} == {"run_name": "straight"}
    _assert_same_state(a, b)
    assert straight.history == resumed.history
    assert straight.metrics == resumed.metrics and straight.metrics_live == resumed.metrics_live
    assert straight.ema == resumed.ema


def test_refused_runs_and_resumes(tmp_path: Path) -> None:
    train_gan(_tiny(epochs=1, out_dir=tmp_path, run_name="done", progress=False))
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train_gan(_tiny(epochs=1, out_dir=tmp_path, run_name="done"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint at"):
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
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [0, 1]
    assert (run / ".losslab-run").is_file() and (run / "config.yaml").is_file()


def test_cli_bad_input_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out-dir gan_runs is relative: nothing may appear here
    with pytest.raises(SystemExit) as exc:
        main(["gan", "train", "--data", "ring", "--img-size", "32"])
    assert exc.value.code == 2 and "img_size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["gan", "train", "--data", "digits", "--img-size", "24", "--epochs", "1"])
    assert "power of two" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dcgan_step_makes_no_host_sync_on_cuda() -> None:
    data = load_gan_data("digits", img_size=32)
    trainer = GanTask(GanConfig.build({"data": "digits", "img_size": 32, "r1_gamma": 0.1}), data, "cuda")
    real = data.tensor[:64].cuda()
    _step(trainer, real)  # warm-up (lazy init may sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            _step(trainer, real)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _ring_args(tmp_path: Path, *extra: str) -> list[str]:
    args = ["gan", "train", "--data", "ring", "--toy-samples", "256", "--batch-size", "128", "--width", "8"]
    return [*args, "--epochs", "2", "--eval-samples", "500", "--out-dir", str(tmp_path), *extra]


def test_result_reports_the_ema_and_the_live_generator_and_both_parameter_counts(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, _ring_args(tmp_path, "--no-progress"))
    assert result.exit_code == 0, result.output
    assert "EMA generator (the samples" in result.output and "live generator: modes covered" in result.output
    data = json.loads((tmp_path / "ring_rooted_k2_seed0" / "result.json").read_text())
    assert data["samples_from"] == "G_ema" and data["ema"]["rule"] == "stylegan2-ada ramp"
    assert data["speed"]["items_per_s"] > 0 and data["speed"]["threads"]
    assert data["ema"]["initial_weight_share"] == 0.0
    for key in ("metrics", "metrics_live"):
        assert data[key]["num_modes"] == 8 and sum(data[key]["mode_counts"]) <= 500
    # D is frozen during G's step: its parameters must still be counted (was 0)
    want_d = sum(p.numel() for p in MLPDiscriminator(2, 8).parameters())
    want_g = sum(p.numel() for p in MLPGenerator(64, 2, 8).parameters())
    assert data["parameters"] == {"G": want_g, "D": want_d} and want_d > 0


def test_progress_is_one_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, _ring_args(tmp_path, "--no-metrics"))  # CliRunner's stderr is no terminal
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"] and "d_loss" in lines[0]


def test_a_non_finite_loss_stops_with_exit_2_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_main: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    real_loss = GanTask.generator_loss

    def generator_loss(self: GanTask, real: torch.Tensor, epoch: int, log: object) -> torch.Tensor:
        loss = real_loss(self, real, epoch, log)
        return loss * math.nan if epoch == 1 else loss  # the second epoch diverges

    monkeypatch.setattr(GanTask, "generator_loss", generator_loss)
    code, _, err = cli_main(_ring_args(tmp_path, "--epochs", "3", "--no-progress"))
    run = tmp_path / "ring_rooted_k2_seed0"
    assert code == 2 and "diverged" in err.splitlines()[-1] and "--r1-gamma" in err and "Traceback" not in err
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 0 and not (run / "result.json").exists()  # the first epoch's checkpoint
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [0]


@pytest.mark.parametrize(
    "flag",
    [
        ("--lr", "inf"),
        ("--lr", "nan"),
        ("--lr", "0"),
        ("--k", "-3"),
        ("--k", "inf"),
        ("--epochs", "0"),
        ("--beta1", "1"),
        ("--r1-gamma", "-1"),
        ("--ema-kimg", "0"),
        ("--ema-rampup", "2"),
        ("--ema-decay", "nan"),
        ("--seed", "-1"),
        ("--grid-samples", "0"),
        ("--eval-samples", "-1"),
        ("--toy-samples", "100000000"),
        ("--batch-size", "1"),
        ("--loss", "ce"),
    ],
)
def test_out_of_range_flags_are_one_line_errors_before_any_folder(
    tmp_path: Path, flag: tuple[str, str], cli_main: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    code, _, err = cli_main(_ring_args(tmp_path, *flag))
    assert code == 2, err
    named = flag[0] in err or flag[0].lstrip("-").replace("-", "_") in err  # the flag typed, or the config key
    assert named and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_rejected_run_leaves_no_folder(tmp_path: Path, cli_main: Callable[[list[str]], tuple[int, str, str]]) -> None:
    code, _, err = cli_main(_ring_args(tmp_path, "--toy-samples", "64"))  # batch 128 > 64 points
    assert code == 2 and "batch_size=128 exceeds" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["root", "rooted", "rlo", "ROOT"])
def test_the_loss_vocabulary_is_the_objective_registrys(name: str) -> None:
    assert GanConfig.build({"data": "ring", "loss": name}).loss == "root"
    assert GanConfig.build({"data": "ring", "loss": "logistic"}).loss == "logistic"


def test_cli_accepts_loss_root(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, _ring_args(tmp_path, "--loss", "root", "--k", "4", "--epochs", "1", "--no-metrics")
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ring_rooted_k4_seed0" / "result.json").read_text())["config"]["loss"] == "root"


def test_2d_samples_are_titled_and_follow_grid_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import losslab.gan.train as gan_train

    drawn = []

    def record(data, title):
        fig = real_figure(data[0], data[1], title)
        ax = fig.axes[0]
        drawn.append((ax.get_title(), len(ax.collections[0].get_offsets())))
        return fig

    real_figure = gan_train.scatter_figure
    monkeypatch.setattr(gan_train, "scatter_figure", lambda samples, data, title: record((samples, data), title))
    train_gan(_tiny(epochs=2, out_dir=tmp_path, loss="root", k=4.0, grid_samples=100, progress=False))
    assert drawn == [("epoch 1, root k=4, EMA generator", 100), ("epoch 2, root k=4, EMA generator", 100)]
    train_gan(_tiny(epochs=1, out_dir=tmp_path, run_name="logistic", loss="logistic", progress=False))
    assert drawn[-1] == ("epoch 1, logistic, EMA generator", 2000)  # the 2-D default
