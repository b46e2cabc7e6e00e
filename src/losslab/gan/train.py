"""GAN training with the logistic or rooted non-saturating loss: run folder, per-epoch checkpoints and sample grids.

    from losslab.gan import GanConfig, train_gan
    result = train_gan(GanConfig(data="ring", loss="rooted", k=2.0, epochs=10))
    result.metrics["modes_covered"], result.run_dir

The GAN is a task of the one plain loop (:class:`GanTask`, :mod:`losslab.runs.loop`) with two phases per batch
(:class:`losslab.runs.task.Phase`): D on a real batch and a detached fake batch with the ``d_fake`` + ``d_real``
terms of :func:`~losslab.objectives.gan.gan_term` (plus R1 (γ/2)·‖∇ₓD(x)‖² on the reals when ``r1_gamma`` > 0),
then G with the ``g`` term on a fresh fake batch (D frozen), then the generator EMA (``torch._foreach_lerp_``) with
StyleGAN2-ADA's ramp (:func:`ema_beta`: the half-life grows with the images seen, so a short run's EMA is not still
mostly its initial weights). The EMA averages parameters only; its BatchNorm statistics are re-estimated for the
averaged weights before it is sampled (:func:`recalibrate_batchnorm`, as SWA does) rather than copied from G, whose
statistics belong to other weights. Both generators are measured; the samples show the EMA generator.
Adam (fused on CUDA; DCGAN's lr 2e-4, β 0.5/0.999 for images, the 2-D defaults in :mod:`losslab.gan.config`).
Data live on the device as one tensor (:class:`~losslab.gan.data.ShuffledBatches`: each epoch a device-side
permutation), and the loop sums the logged losses on the device and reads them once per epoch, so a step makes no
host synchronisation. The loop owns the epochs, checkpoints, history, progress and the NaN stop; the GAN adds the
per-epoch sample grid (a loop hook, :class:`SampleGrids`) and, after training, its metrics (mode coverage, FD,
precision/recall need all samples at once, so they are no per-batch evaluation tally; there is no validation split).

Run folder ``out_dir/run_name``, claimed through :mod:`losslab.runs` (the rules of every losslab run: a confined
name, a lock, ``--overwrite`` only of losslab's folders and staged until the new run finishes, a resume checked
against the stored config): ``config.yaml``, ``checkpoints/last.ckpt`` (the loop's layout: ``state_dict`` with
``G.``/``D.``/``G_ema.`` keys, both optimizers' states in ``optimizer_states`` (D, G), and under ``task`` the EMA
clock and the RNG states, so a resumed run continues bit-for-bit on the same device; read only through the safe
loader),
``samples/epoch_NNN.png`` (a grid of EMA-generator samples from fixed latents; a titled scatter over the modes for
2-D data), ``history.json`` and ``metrics.csv`` (per-epoch losses) and ``result.json`` (``metrics``: the EMA
generator's; ``metrics_live``: the live generator's). A NaN/inf loss stops the run
(:class:`~losslab.errors.TrainingDivergedError`) before that epoch's checkpoint is written. ``resume=RUN``
continues a killed run.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError, CorruptFileError
from losslab.gan.config import GanConfig
from losslab.gan.data import GanData, ShuffledBatches, load_gan_data, load_images
from losslab.gan.models import build_pair, count_parameters, generate
from losslab.objectives.gan import gan_term
from losslab.runs.task import LogFn, Phase

if TYPE_CHECKING:
    from losslab.runs import RunSpec
    from losslab.runs.loop import LoopSettings

GRID_SEED_OFFSET = 12_345
EVAL_SEED_OFFSET = 54_321
BN_SEED_OFFSET = 777
BN_BATCHES = 16  # batches of fresh latents that estimate the EMA generator's BatchNorm statistics
SAMPLES_FROM = "G_ema"  # the generator the sample grids and the reported metrics use
DIVERGED_HINT = (
    "the run stopped and its last good checkpoint (checkpoints/last.ckpt, from the epoch before, if any) is kept. "
    "Lower --lr or raise --r1-gamma"
)


def ema_beta(batch_size: int, nimg: int, ema_kimg: float, rampup: float) -> float:
    """Per-step EMA decay of StyleGAN2-ADA (Karras et al. 2020, ``training_loop.py``): β = 0.5^(B / h).

    The half-life h is ``ema_kimg``·1000 images, capped at ``rampup``·``nimg`` when ``rampup`` > 0 (``nimg``: images
    seen before this step), so the first step copies G (β = 0) and the average covers the last ``rampup`` share of
    training until it reaches ``ema_kimg``.
    """
    half_life = ema_kimg * 1000.0
    if rampup > 0:
        half_life = min(half_life, nimg * rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def recalibrate_batchnorm(
    gen: nn.Module, z_dim: int, batch_size: int, batches: int = BN_BATCHES, seed: int = 0
) -> None:
    """Re-estimate ``gen``'s BatchNorm running statistics for its current weights (SWA's ``update_bn``).

    The running means/variances are reset and set to the plain average over ``batches`` train-mode forwards of
    seeded latents (momentum ``None``); ``gen`` is left in eval mode. No-op without BatchNorm; the global RNG is
    not touched.
    """
    norms = [m for m in gen.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        momenta = [m.momentum for m in norms]
        device = next(gen.parameters()).device
        gen_z = torch.Generator().manual_seed(seed)
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        gen.train()
        for _ in range(batches):
            gen(torch.randn(batch_size, z_dim, generator=gen_z).to(device))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    gen.eval()


def r1_penalty(real_logits: Tensor, real: Tensor) -> Tensor:
    """Mean over the batch of ‖∇ₓD(x)‖² (``real`` must require grad; differentiable: create_graph)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)  # [B, ...]
    return grad.square().flatten(1).sum(1).mean()


@dataclass
class GanResult:
    """What a finished run returns and writes to ``result.json``."""

    run_dir: Path
    config: dict[str, Any]
    epochs: int
    steps: int
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    parameters: dict[str, int]
    train_seconds: float
    notes: list[str] = field(default_factory=list)
    metrics_live: dict[str, Any] = field(default_factory=dict)
    samples_from: str = SAMPLES_FROM
    ema: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        return out


class GanTask:
    """The GAN as a task of the plain loop (:mod:`losslab.runs.task`): two phases per batch, D then G (module doc).

    Builds G, D (seeded by ``cfg.seed``), the EMA generator and both Adam optimisers on ``device``; the loop owns
    the epochs, the batches (:class:`~losslab.gan.data.ShuffledBatches`), precision, checkpoints and history.
    """

    def __init__(self, cfg: GanConfig, data: GanData, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.data = data
        if len(data.tensor) < cfg.batch_size:
            raise ConfigError(f"batch_size={cfg.batch_size} exceeds the {len(data.tensor)} training samples")
        torch.manual_seed(cfg.seed)
        self.G, self.D = (
            m.to(self.device) for m in build_pair(data.sample_shape, cfg.z_dim, cfg.net_width, cfg.d_norm)
        )
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas, **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas, **fused)
        self._g_params = list(self.G.parameters())
        self._ema_params = list(self.G_ema.parameters())
        self.nimg = 0  # images shown to G so far (the EMA ramp's clock)
        self.ema_init_share = 1.0  # product of the EMA decays so far: the initial weights' share in G_ema
        self._nonfinite: Tensor | None = None

    # ------------------------------------------------------------------ the task protocol (losslab.runs.task)
    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema}

    def phases(self) -> list[Phase]:
        """The discriminator's step, then the generator's (followed by the EMA update)."""
        return [
            Phase("D", self.opt_d, self.discriminator_loss),
            Phase("G", self.opt_g, self.generator_loss, after_step=self.update_ema),
        ]

    def attach(self) -> None:
        """Nothing to install (no regularizer hooks)."""

    def detach(self) -> None:
        """Nothing to remove."""

    def start_epoch(self, epoch: int) -> None:
        """No per-epoch switch."""

    def prepare(self, batch: Tensor) -> Tensor:
        return batch

    def batch_size(self, batch: Tensor) -> int:
        return int(batch.shape[0])

    def take_nonfinite(self) -> Tensor | None:
        """Whether a D or G loss since the last call was NaN/inf (a device bool; None before any step)."""
        bad, self._nonfinite = self._nonfinite, None
        return bad

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint holds besides the modules and optimisers: the EMA clock and the RNG the steps draw
        their latents (and each epoch's order) from, so a resumed run continues bit-for-bit on the same device."""
        state = {"nimg": self.nimg, "ema_init_share": self.ema_init_share, "cpu_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nimg = int(state["nimg"])
        self.ema_init_share = float(state["ema_init_share"])
        torch.set_rng_state(state["cpu_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    # ------------------------------------------------------------------ the two phases
    def _term(self, logits: Tensor, term: str) -> Tensor:
        return gan_term(logits, term, self.cfg.loss, self.cfg.k).mean()

    def _watch(self, loss: Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad

    def discriminator_loss(self, real: Tensor, epoch: int, log: LogFn) -> Tensor:
        """D's loss on the real batch [B, ...] and a detached fake batch: ``d_fake`` + ``d_real`` terms, plus
        (γ/2)·R1 on the reals when ``r1_gamma`` > 0. Logs ``d_loss`` and ``r1``."""
        cfg = self.cfg
        self.D.requires_grad_(True)
        with torch.no_grad():
            fake = self.G(torch.randn(real.shape[0], cfg.z_dim, device=real.device))
        if cfg.r1_gamma > 0:
            real = real.detach().requires_grad_(True)
        d_real = self.D(real)  # [B, 1]; before D(fake): with BatchNorm in D the order sets its running statistics
        d_loss = self._term(self.D(fake), "d_fake") + self._term(d_real, "d_real")
        if cfg.r1_gamma > 0:
            r1 = r1_penalty(d_real, real)
            total = d_loss + 0.5 * cfg.r1_gamma * r1
        else:
            r1, total = torch.zeros((), device=real.device), d_loss
        log("d_loss", d_loss.detach())
        log("r1", r1.detach())
        self._watch(total)
        return total

    def generator_loss(self, real: Tensor, epoch: int, log: LogFn) -> Tensor:
        """G's ``g`` term on a fresh fake batch of the real batch's size, D frozen (no parameter gradients for it)."""
        self.D.requires_grad_(False)
        g_loss = self._term(self.D(self.G(torch.randn(real.shape[0], self.cfg.z_dim, device=real.device))), "g")
        log("g_loss", g_loss.detach())
        self._watch(g_loss)
        return g_loss

    # ------------------------------------------------------------------ the generator EMA and its samples
    @property
    def ema_kimg(self) -> float:
        """The EMA half-life cap in kimg: ``ema_kimg`` or StyleGAN2-ADA's default batch·10/32."""
        return self.cfg.ema_kimg if self.cfg.ema_kimg is not None else self.cfg.batch_size * 10 / 32

    def current_ema_beta(self) -> float:
        """The decay the next EMA update uses: the fixed ``ema_decay`` or :func:`ema_beta` at the images seen."""
        if self.cfg.ema_decay is not None:
            return self.cfg.ema_decay
        return ema_beta(self.cfg.batch_size, self.nimg, self.ema_kimg, self.cfg.ema_rampup)

    @torch.no_grad()
    def update_ema(self) -> None:
        """G_ema ← β·G_ema + (1 − β)·G on the parameters (β: :meth:`current_ema_beta`); counts the batch's images.

        BatchNorm statistics are not averaged or copied: :meth:`samples` re-estimates them for the EMA weights.
        """
        beta = self.current_ema_beta()
        torch._foreach_lerp_(self._ema_params, self._g_params, 1.0 - beta)
        self.ema_init_share *= beta
        self.nimg += self.cfg.batch_size

    def ema_summary(self) -> dict[str, Any]:
        """How the EMA was formed: fixed decay or ramp (kimg, rampup), the decay of the last step, its half-life in
        steps, and the share of the initial weights still in the EMA (the product of all decays; 0 with the ramp)."""
        beta = self.current_ema_beta()
        half_life = math.log(0.5) / math.log(beta) if 0 < beta < 1 else (0.0 if beta == 0 else math.inf)
        return {
            "rule": "fixed" if self.cfg.ema_decay is not None else "stylegan2-ada ramp",
            "kimg": self.ema_kimg,
            "rampup": self.cfg.ema_rampup,
            "last_decay": beta,
            "half_life_steps": half_life,
            "initial_weight_share": self.ema_init_share,
        }

    def samples(self, n: int, seed: int, live: bool = False) -> Tensor:
        """``n`` samples from seeded latents (eval mode) of the EMA generator (its BatchNorm statistics re-estimated
        first) or, with ``live``, of the trained G (its own running statistics); the global RNG is not touched."""
        if live:
            out = generate(self.G.eval(), n, self.cfg.z_dim, seed=seed)
            self.G.train()
            return out
        recalibrate_batchnorm(self.G_ema, self.cfg.z_dim, self.cfg.batch_size, seed=self.cfg.seed + BN_SEED_OFFSET)
        return generate(self.G_ema, n, self.cfg.z_dim, seed=seed)


def run_label(cfg: GanConfig) -> str:
    """The loss and k of a run, as figure titles and progress lines show it: ``logistic`` or ``root k=2``."""
    return "logistic" if cfg.loss == "logistic" else f"root k={cfg.k:g}"


def scatter_figure(samples: Tensor, data: GanData, title: str) -> Any:
    """A matplotlib Figure of 2-D ``samples`` over the mixture's modes (red ×), titled ``title``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert data.mixture is not None
    fig, ax = plt.subplots(figsize=(4, 4))
    pts = samples.float().cpu()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, label=f"{len(pts)} samples")
    ax.scatter(data.mixture.modes[:, 0], data.mixture.modes[:, 1], marker="x", c="red", s=30, label="modes")
    lim = float(data.mixture.modes.abs().max()) + 1.5
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=7)
    return fig


def save_sample_grid(samples: Tensor, path: Path, data: GanData, title: str = "") -> Path:
    """A PNG of ``samples``: an image grid (8 per row) or, for 2-D points, a titled scatter over the mixture's modes."""
    from losslab.io import atomic_path

    if data.is_toy:
        from losslab.report.figures import save_figure

        return save_figure(scatter_figure(samples, data, title), path)
    from torchvision.utils import save_image

    with atomic_path(path) as tmp:
        save_image((samples.float().cpu() + 1) / 2, tmp, nrow=8, format="png")
    return path


#: Config keys that fix what the checkpoint holds (network shapes, data, loss): a resume must not change them.
MATCH_KEYS = ("data", "img_size", "loss", "k", "z_dim", "width", "d_norm", "batch_size", "toy_samples", "seed")
#: What each epoch's progress line shows.
PROGRESS_SUMMARY = {"d_loss": "d_loss", "g_loss": "g_loss", "r1": "r1"}


def check_checkpoint(path: Path) -> dict[str, Any]:
    """A resume checkpoint, checked before any work: safe to load (:func:`losslab.runs.check`) and in the loop's
    layout with two optimizer states (D, G); else :class:`~losslab.errors.CorruptFileError`."""
    from losslab import runs

    state = runs.check(path)
    if "state_dict" not in state or len(state.get("optimizer_states") or ()) != 2 or "task" not in state:
        raise CorruptFileError(
            f"GAN checkpoint {str(path)!r} is not a checkpoint of the training loop (state_dict, D's and G's "
            "optimizer states): it was written by another experiment or by losslab before the GAN moved into the "
            "one loop, and cannot be continued. Start a new run (the old folder's samples and history stay)"
        )
    return state


def run_spec(cfg: GanConfig) -> RunSpec:
    """The :class:`losslab.runs.RunSpec` of ``cfg``'s run: its folder rules are those of every losslab run."""
    from losslab import runs

    name = cfg.run_name if cfg.run_name is not None else runs.safe_run_name(cfg.default_run_name())
    return runs.RunSpec(
        out_dir=Path(cfg.out_dir),
        run_name=name,
        resume=cfg.resume,
        overwrite=cfg.overwrite,
        config={**cfg.to_dict(), "resume": None, "overwrite": False},
        match_keys=MATCH_KEYS,
        epochs=cfg.epochs,
        validate=check_checkpoint,
    )


def resume_config(resume: Path, overrides: dict[str, Any]) -> GanConfig:
    """The stored config of the run being resumed with ``overrides`` on top (``epochs`` to train longer); a changed
    :data:`MATCH_KEYS` value is refused when the run folder is claimed."""
    from losslab.runs.folder import stored_config

    fix = (
        "it is not a GAN run: pass a folder made by `losslab gan train` (it holds config.yaml and "
        "checkpoints/last.ckpt)"
    )
    stored = stored_config(resume, fix)
    return GanConfig.build({**stored, **overrides, "resume": resume})


def evaluate_generator(
    task: GanTask, real: Tensor, classifier_cache: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Final metrics of the EMA generator and of the live G (module docstring of :mod:`losslab.gan.metrics`), and
    notes; both from the same seeded latents."""
    from losslab.gan import metrics as M

    cfg, data, notes = task.cfg, task.data, []
    seed = cfg.seed + EVAL_SEED_OFFSET
    n = cfg.eval_samples or (10_000 if data.is_toy else 1_000)
    fakes = [task.samples(n, seed), task.samples(n, seed, live=True)]  # EMA, live
    if data.is_toy:
        assert data.mixture is not None
        ema, live = (M.mode_metrics(fake, data.mixture) for fake in fakes)
        return ema, live, notes
    outs: list[dict[str, Any]] = [{}, {}]
    if cfg.data == "digits":
        clf, acc = M.digits_classifier(classifier_cache)
        real = load_images("digits", fakes[0].shape[-1], split="test").to(fakes[0].device)
        for out, fake in zip(outs, fakes):
            out.update(M.image_metrics(fake, real, clf), classifier_test_accuracy=acc, real_images=len(real))
    else:
        notes.append(f"digits-FD and precision/recall use the digits classifier; not computed for {cfg.data!r}")
    if cfg.fid_weights is not None:
        for out, fake in zip(outs, fakes):
            out["fid"] = M.inception_fid(fake, real[: len(fake)], cfg.fid_weights)
    else:
        notes.append(M.fid_message(None) or "")
    return outs[0], outs[1], notes


class SampleGrids:
    """Loop hook: after each epoch's steps (before its history row and checkpoint), the grid of EMA-generator
    samples from fixed latents, ``samples/epoch_NNN.png`` (1-based, as before the one loop)."""

    def __init__(self, task: GanTask, run_dir: Path) -> None:
        cfg = task.cfg
        self.task, self.run_dir = task, run_dir
        self.seed, self.title = cfg.seed + GRID_SEED_OFFSET, run_label(cfg)
        self.n = cfg.grid_samples or (2000 if task.data.is_toy else 64)

    def end_epoch(self, epoch: int) -> None:
        path = self.run_dir / "samples" / f"epoch_{epoch + 1:03d}.png"
        title = f"epoch {epoch + 1}, {self.title}, EMA generator"
        save_sample_grid(self.task.samples(self.n, self.seed), path, self.task.data, title)


def loop_settings(cfg: GanConfig, run_dir: Path, resume_ckpt: Path | None, device: torch.device) -> LoopSettings:
    """The plain loop's settings for a GAN run: full precision, no validation split, no best checkpoint."""
    from losslab.runs.loop import LoopSettings

    return LoopSettings(
        run_dir=run_dir,
        epochs=cfg.epochs,
        device=device,
        resume_ckpt=resume_ckpt,
        progress=cfg.progress,
        progress_summary=PROGRESS_SUMMARY,
        hyper_parameters={"config": {**cfg.to_dict(), "resume": None, "overwrite": False}},  # as config.yaml
        started=time.perf_counter(),
        diverged_hint=DIVERGED_HINT,
    )


def train_gan(cfg: GanConfig, data: GanData | None = None) -> GanResult:
    """Train (or continue) the run of ``cfg`` in its run folder through the plain loop (:mod:`losslab.runs.loop`);
    returns the :class:`GanResult`.

    Everything that can be refused (device, data, batch size, the run folder and a resume's checkpoint and config) is
    checked before the folder is made; an ``--overwrite`` trains in a staging folder and replaces the old run only
    when it has finished.
    """
    from losslab import runs
    from losslab.runs.loop import run_loop

    device = runs.resolve_device(cfg.accelerator, flag="--accelerator")
    if cfg.fid_weights is not None and not Path(cfg.fid_weights).is_file():
        raise ConfigError(f"--fid-weights {str(cfg.fid_weights)!r} is not a file; give the local weights or drop it")
    if data is None:
        data = load_gan_data(
            cfg.data,
            img_size=cfg.img_size,
            n_toy=cfg.toy_samples,
            seed=cfg.seed,
            data_dir=cfg.data_dir,
            download=cfg.download,
        )
    task = GanTask(cfg, data, device)
    loaders = SimpleNamespace(train=ShuffledBatches(data.tensor, cfg.batch_size).to(device), val=None, test=None)
    with runs.claim(run_spec(cfg)) as run:
        work = run.create()
        run.write_config()
        start = time.perf_counter()
        outcome = run_loop(task, loaders, loop_settings(cfg, work, run.resume_ckpt, device), [SampleGrids(task, work)])
        train_seconds = time.perf_counter() - start
        metrics, live, notes = ({}, {}, [])
        if cfg.metrics:
            metrics, live, notes = evaluate_generator(task, loaders.train.tensor, cfg.out_dir / "digits_classifier.pt")
        epochs = len(outcome.rows)
        result = GanResult(
            run_dir=run.final,
            config=cfg.to_dict(),
            epochs=epochs,
            steps=epochs * len(loaders.train),
            history=outcome.rows,
            metrics=metrics,
            metrics_live=live,
            parameters={"G": count_parameters(task.G), "D": count_parameters(task.D)},
            train_seconds=train_seconds,
            notes=[n for n in notes if n],
            ema=task.ema_summary(),
            speed={
                "items_per_s": outcome.images_per_s,
                "first_step_s": outcome.first_step_s,
                "first_step_unix": outcome.first_step_unix,
                "threads": runs.thread_report(),
            },
        )
        run.write_result(result.to_dict())
        run.commit()
    return result


__all__ = [
    "GanResult",
    "GanTask",
    "ema_beta",
    "recalibrate_batchnorm",
    "resume_config",
    "run_spec",
    "train_gan",
]
