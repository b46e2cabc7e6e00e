"""Landscape probes of a causal language model on calibration windows (``losslab lm landscape``).

    result = probe_lm(model, windows, ProbeSettings(probes=("eig", "trace"), top_k=1), batch_size=4)

The loss is the mean next-token cross entropy over the windows (each window has the same number of predicted
tokens, so the batch weighting of :class:`HessianOperator` is the token mean); the model is in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab.landscape.operator import HessianOperator
from losslab.landscape.probes import ProbeSettings, run_probes

LM_PROBES = ("eig", "trace", "density", "sharpness", "kurtosis")

__all__ = ["LM_PROBES", "LogitsOf", "next_token_loss", "probe_lm"]


class LogitsOf(nn.Module):
    """A Hugging Face causal LM as ``input_ids → logits`` (what the probes call; :class:`HessianOperator` runs its
    products with attention on PyTorch's math kernel)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits


def next_token_loss(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Mean CE of token t+1 given tokens ≤ t, over every position of every window (in float32 or wider)."""
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(wide[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten())


def probe_lm(
    model: nn.Module,
    windows: Tensor,
    settings: ProbeSettings,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    on_probe: Any = None,
) -> dict[str, Any]:
    """Probe ``model`` on ``windows`` [n, seqlen] (token ids); returns the probes' JSON-ready dict."""
    from losslab.errors import ConfigError

    bad = [p for p in settings.probes if p not in LM_PROBES]
    if bad:
        raise ConfigError(
            f"probe {', '.join(bad)} is not offered for language models: choose from {', '.join(LM_PROBES)}"
        )
    wrapped = LogitsOf(model.eval()).to(device or "cpu")
    batches = [(w, w) for w in windows.split(batch_size)]
    op = HessianOperator(wrapped, next_token_loss, batches, device=device, stratum=settings.trace_stratum)
    result = run_probes(op, settings, model=model, on_probe=on_probe)
    result |= {"windows": int(windows.shape[0]), "seqlen": int(windows.shape[1]), "seed": settings.seed}
    result["hvps"] = op.hvp_count
    return result
