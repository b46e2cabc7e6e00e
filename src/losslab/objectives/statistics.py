"""Logit statistics for logging (objectives spec §5, as the SGT code's ``--logit-stats`` reported them).

    >>> logit_statistics(torch.tensor([[2.0, -1.0, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    {'norm': tensor(2.1456), 'mean': tensor(0.6875), 'max': tensor(1.5000), 'var': tensor(0.7812)}

Rows are the flattened leading dims of ``logits`` [..., C]. Under an initialised ``torch.distributed`` process
group the four values are averaged across ranks (pass ``all_reduce=False`` to keep them local). In validation,
average per-batch values with equal weight per batch, as the original did.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from losslab.errors import LosslabError

STATISTICS = ("norm", "mean", "max", "var")


@torch.no_grad()
def logit_statistics(logits: Tensor, *, all_reduce: bool = True) -> dict[str, Tensor]:
    """0-dim float32 tensors, averaged over rows z_n of ``logits`` [..., C] (C ≥ 2):

    norm = mean_n ‖z_n‖₂; mean = mean_n |mean_c z_nc|; max = mean_n |max_c z_nc|;
    var = mean_n var_c z_nc with the *unbiased* estimator (divide by C − 1), as the original did.
    """
    if logits.dim() < 1 or logits.shape[-1] < 2 or logits.numel() == 0:
        raise LosslabError(
            f"logit_statistics needs logits [..., C] with C >= 2 and at least one row; got {tuple(logits.shape)}"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        rows = logits.reshape(-1, logits.shape[-1]).float()
        values = torch.stack(
            [
                torch.linalg.vector_norm(rows, dim=-1).mean(),
                rows.mean(-1).abs().mean(),
                rows.amax(-1).abs().mean(),
                rows.var(-1, correction=1).mean(),
            ]
        )
        if all_reduce and dist.is_available() and dist.is_initialized():
            dist.all_reduce(values)
            values /= dist.get_world_size()
    return dict(zip(STATISTICS, values.unbind(0)))
