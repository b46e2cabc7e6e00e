"""A drop-in for StyleGAN2-ADA's ``training/loss.py: StyleGAN2Loss`` with the rooted loss in place of softplus.

StyleGAN2-ADA's ``accumulate_gradients(phase, real_img, real_c, gen_z, gen_c, sync, gain)`` runs the phases
``Gmain``/``Greg``/``Gboth`` and ``Dmain``/``Dreg``/``Dboth``; its softplus-form terms are

    Gmain  softplus(−gen_logits)           rooted: ℓ_k(gen_logits)     = gan_term(gen_logits, "g", ...)
    Dgen   softplus(gen_logits)            rooted: ℓ_k(−gen_logits)    = gan_term(gen_logits, "d_fake", ...)
    Dreal  softplus(−real_logits)          rooted: ℓ_k(real_logits)    = gan_term(real_logits, "d_real", ...)

with ℓ_k(t) = k·(1 + e^{−t})^{1/k} (k = 2 in the RLO seed, which switched with the module globals ``kparam`` and
``ls``; here they are the constructor's ``kind`` and ``k``). Path-length (Greg) and R1 (Dreg) are unchanged. Every
term is ``.mean().mul(gain).backward()``-ed as in the original. :class:`RootedStyleGAN2Loss` has the same
constructor and method signature, so with ``run_G``/``run_D`` from the original it trains the same networks::

    loss = RootedStyleGAN2Loss(device, G_mapping, G_synthesis, D, augment_pipe, r1_gamma=0.0128,
                               kind="rooted", k=2.0)
    loss.accumulate_gradients("Gmain", real_img, real_c, gen_z, gen_c, sync=True, gain=1)

The networks are called through ``run_G(z, c, sync)`` → (img, ws) and ``run_D(img, c, sync)`` → logits [N, 1];
subclass and override them to match StyleGAN2-ADA's mapping/synthesis/style-mixing code, or pass the networks of
its ``training`` package (the default ``run_G`` calls ``G_mapping(z, c)`` then ``G_synthesis(ws)``, without style
mixing, ``augment_pipe`` applied in ``run_D`` when given). docs/gan.md shows the exact change to their loss.py.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.objectives.gan import gan_term

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")


class RootedStyleGAN2Loss:
    """StyleGAN2Loss's interface; ``kind`` ``logistic`` gives the original softplus terms, ``rooted`` the RLO ones."""

    def __init__(
        self,
        device: torch.device | str,
        G_mapping: nn.Module,
        G_synthesis: nn.Module,
        D: nn.Module,
        augment_pipe: nn.Module | None = None,
        style_mixing_prob: float = 0.9,
        r1_gamma: float = 10.0,
        pl_batch_shrink: int = 2,
        pl_decay: float = 0.01,
        pl_weight: float = 2.0,
        *,
        kind: str = "rooted",
        k: float = 2.0,
    ) -> None:
        gan_term(torch.zeros(1), "g", kind, k)  # validates kind and k before any training
        self.device = torch.device(device)
        self.G_mapping, self.G_synthesis, self.D = G_mapping, G_synthesis, D
        self.augment_pipe = augment_pipe
        self.style_mixing_prob = style_mixing_prob
        self.r1_gamma = r1_gamma
        self.pl_batch_shrink, self.pl_decay, self.pl_weight = pl_batch_shrink, pl_decay, pl_weight
        self.pl_mean = torch.zeros([], device=self.device)
        self.kind, self.k = kind, k
        self.stats: dict[str, Tensor] = {}

    def run_G(self, z: Tensor, c: Tensor, sync: bool) -> tuple[Tensor, Tensor]:
        """(img, ws) = G_synthesis(G_mapping(z, c)); override for style mixing or DDP sync handling."""
        ws = self.G_mapping(z, c)
        return self.G_synthesis(ws), ws

    def run_D(self, img: Tensor, c: Tensor, sync: bool) -> Tensor:
        """D's logits [N, 1] on ``img`` (augmented by ``augment_pipe`` when given)."""
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    def term(self, logits: Tensor, name: str) -> Tensor:
        """The per-sample term ``g``/``d_fake``/``d_real`` of this loss (float32, shaped like ``logits``)."""
        return gan_term(logits, name, self.kind, self.k)

    def accumulate_gradients(
        self, phase: str, real_img: Tensor, real_c: Tensor, gen_z: Tensor, gen_c: Tensor, sync: bool, gain: float
    ) -> None:
        """Backward the phase's terms, each ``.mean().mul(gain)``, as StyleGAN2Loss does (stats kept in ``stats``)."""
        if phase not in PHASES:
            raise ConfigError(f"phase={phase!r} is not one of StyleGAN2's phases: {', '.join(PHASES)}")
        do_Gmain = phase in ("Gmain", "Gboth")
        do_Dmain = phase in ("Dmain", "Dboth")
        do_Gpl = phase in ("Greg", "Gboth") and self.pl_weight != 0
        do_Dr1 = phase in ("Dreg", "Dboth") and self.r1_gamma != 0

        if do_Gmain:
            gen_img, _ = self.run_G(gen_z, gen_c, sync=sync and not do_Gpl)
            gen_logits = self.run_D(gen_img, gen_c, sync=False)
            loss_Gmain = self.term(gen_logits, "g")  # softplus(−gen_logits) → ℓ_k(gen_logits)
            self.stats["Loss/G/loss"] = loss_Gmain.detach()
            loss_Gmain.mean().mul(gain).backward()

        if do_Gpl:
            batch_size = gen_z.shape[0] // self.pl_batch_shrink
            gen_img, gen_ws = self.run_G(gen_z[:batch_size], gen_c[:batch_size], sync=sync)
            pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
            (pl_grads,) = torch.autograd.grad(
                outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws], create_graph=True, only_inputs=True
            )
            pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
            pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            loss_Gpl = (pl_lengths - pl_mean).square() * self.pl_weight
            self.stats["Loss/G/reg"] = loss_Gpl.detach()
            (gen_img[:, 0, 0, 0] * 0 + loss_Gpl).mean().mul(gain).backward()

        loss_Dgen: Tensor | int = 0
        if do_Dmain:
            gen_img, _ = self.run_G(gen_z, gen_c, sync=False)
            gen_logits = self.run_D(gen_img.detach(), gen_c, sync=False)
            loss_Dgen = self.term(gen_logits, "d_fake")  # softplus(gen_logits) → ℓ_k(−gen_logits)
            loss_Dgen.mean().mul(gain).backward()

        if do_Dmain or do_Dr1:
            real_img_tmp = real_img.detach().requires_grad_(do_Dr1)
            real_logits = self.run_D(real_img_tmp, real_c, sync=sync)
            loss_Dreal: Tensor | int = 0
            if do_Dmain:
                loss_Dreal = self.term(real_logits, "d_real")  # softplus(−real_logits) → ℓ_k(real_logits)
                self.stats["Loss/D/loss"] = (loss_Dgen + loss_Dreal).detach()
            loss_Dr1: Tensor | int = 0
            if do_Dr1:
                (r1_grads,) = torch.autograd.grad(
                    outputs=[real_logits.sum()], inputs=[real_img_tmp], create_graph=True, only_inputs=True
                )
                r1_penalty = r1_grads.square().sum([1, 2, 3])
                loss_Dr1 = r1_penalty * (self.r1_gamma / 2)
                self.stats["Loss/D/reg"] = loss_Dr1.detach()
            (real_logits * 0 + loss_Dreal + loss_Dr1).mean().mul(gain).backward()


__all__ = ["PHASES", "RootedStyleGAN2Loss"]
