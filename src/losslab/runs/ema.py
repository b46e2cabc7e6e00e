"""Model EMA (timm's ``ModelEmaV3``) for both engines, without Lightning.

As in timm's train.py, the averaged weights are the ones validated, selected and saved: a checkpoint's
``state_dict`` holds the EMA weights and ``ema_raw_state_dict`` the raw ones, so ``evaluate``, ``quantize`` and
studies see the EMA model and ``--resume`` continues training the raw weights::

    ema = EmaWeights(decay=0.9998)
    ema.start(model, raw_state=ckpt.get("ema_raw_state_dict"))   # after the checkpoint's weights were loaded
    ...optimizer.step(); ema.update(model, step=global_step)
    ema.swap_in(model); validate(model); ema.swap_out(model)
    ema.into_checkpoint(model, checkpoint)                        # EMA weights in, raw weights kept

The Lightning engine wraps it as a callback (``losslab.train.engine_lightning.ModelEma``); the plain engine calls
it from its loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class EmaWeights:
    """An exponential moving average of a model's weights, swapped in for evaluation and saving."""

    def __init__(self, decay: float, warmup: bool = False) -> None:
        self.decay = decay
        self.warmup = warmup
        self.ema: Any | None = None  # timm.utils.ModelEmaV3
        self._raw: dict[str, Tensor] | None = None  # the raw weights while the EMA ones are swapped in
        self.pending_raw: dict[str, Tensor] | None = None  # raw weights of a resumed checkpoint

    def ensure(self, model: nn.Module) -> Any:
        """The ``ModelEmaV3`` of ``model`` (made on first use), on the model's device."""
        if self.ema is None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=self.decay, use_warmup=self.warmup)
            self.ema.requires_grad_(False)
        device = next(model.parameters()).device
        self.ema.to(device)
        return self.ema

    def start(self, model: nn.Module, raw_state: dict[str, Tensor] | None = None) -> None:
        """Begin (or resume) training ``model``: with a resumed checkpoint's raw weights, the weights now in
        ``model`` (the checkpoint's EMA weights) become the average and the raw ones go back into the model."""
        raw_state = raw_state if raw_state is not None else self.pending_raw
        ema = self.ensure(model)
        if raw_state is not None:
            ema.module.load_state_dict(model.state_dict())
            model.load_state_dict({k: torch.as_tensor(v) for k, v in raw_state.items()})
            self.pending_raw = None

    def update(self, model: nn.Module, step: int) -> None:
        """Average in the weights after optimizer step number ``step`` (timm's warmup counts these)."""
        self.ensure(model).update(model, step=step)

    def swap_in(self, model: nn.Module) -> None:
        if self.ema is None or self._raw is not None:
            return
        self._raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.ema.module.state_dict())

    def swap_out(self, model: nn.Module) -> None:
        if self._raw is not None:
            model.load_state_dict(self._raw)
            self._raw = None

    def into_checkpoint(self, model: nn.Module, checkpoint: dict[str, Any], prefix: str = "model.") -> None:
        """Put the EMA weights into ``checkpoint["state_dict"]`` (the ``prefix`` keys) and the raw ones into
        ``checkpoint["ema_raw_state_dict"]``."""
        if self.ema is None:
            return
        raw = self._raw if self._raw is not None else model.state_dict()
        checkpoint["ema_raw_state_dict"] = {k: v.detach().cpu().clone() for k, v in raw.items()}
        ema_state = self.ema.module.state_dict()
        for key in list(checkpoint["state_dict"]):
            inner = key.removeprefix(prefix)
            if key.startswith(prefix) and inner in ema_state:
                checkpoint["state_dict"][key] = ema_state[inner].detach().cpu().clone()
