"""The loss zoo: cross entropy, focal, rooted (two forms), softmax gradient tampering, GAN terms, logit statistics.

Every classification loss takes raw logits [..., C] (class dim last; image logits N×C and LM logits B×T×V alike)
and integer targets with ``ignore_index`` (or probability targets where the math allows), and computes in float32
with autocast off::

    from losslab.objectives import create, list_objectives, rooted_loss

    loss_fn = create("root", k=3.0, m=3.0)         # nn.Module; also "ce", "focal", "root_convex", "sgt", ...
    loss = loss_fn(logits, target)
    loss = rooted_loss(logits, target, k=3.0, m=3.0)  # the same, functional
    loss = causal_lm_loss(lm_logits, input_ids, TokenLossSpec("root", k=5.0, m=5.0))  # per token, chunked

See docs/objectives.md and the objectives spec for formulas, numerics and the mapping from the seed codes' flags.
"""

import importlib
import pkgutil

from losslab.objectives.cross_entropy import CrossEntropyLoss, cross_entropy
from losslab.objectives.focal import FocalLoss, focal_loss, focal_rlo_paper
from losslab.objectives.gan import GanLosses, gan_losses
from losslab.objectives.registry import (
    OBJECTIVES,
    config_kwargs,
    create,
    create_from_config,
    hyperparameters,
    list_objectives,
    objective_kwargs,
)
from losslab.objectives.rooted import RootedLoss, RootedLossConvex, rooted_logistic, rooted_loss, rooted_loss_convex
from losslab.objectives.sgt import SGTCrossEntropyLoss, SoftmaxGradientTampering, sgt_cross_entropy
from losslab.objectives.statistics import logit_statistics
from losslab.objectives.token import TokenLossSpec, causal_lm_loss, token_loss

# Every module of this package is imported, so an objective registered in a new file is available by name.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "OBJECTIVES",
    "CrossEntropyLoss",
    "FocalLoss",
    "GanLosses",
    "RootedLoss",
    "RootedLossConvex",
    "SGTCrossEntropyLoss",
    "SoftmaxGradientTampering",
    "TokenLossSpec",
    "causal_lm_loss",
    "config_kwargs",
    "create",
    "create_from_config",
    "cross_entropy",
    "focal_loss",
    "focal_rlo_paper",
    "gan_losses",
    "hyperparameters",
    "list_objectives",
    "logit_statistics",
    "objective_kwargs",
    "rooted_logistic",
    "rooted_loss",
    "rooted_loss_convex",
    "sgt_cross_entropy",
    "token_loss",
]
