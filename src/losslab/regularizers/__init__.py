"""Penalties added to the task loss (or its gradient) to shape what survives compression, and their schedules.

Families: LPGrad (``lp_grad``, ``l1grad``, ``l2grad``: gradient p-norms by double backprop), the VarianceNorm
family (``variance``, ``std``, ``inverse_variance``, ``inverse_std``) and Frobenius decay (``frobenius_decay``)
for factorized layers. ``Schedule`` switches them on per epoch. Spec: regularizers.md; guide: docs/regularizers.md.

Example::

    from losslab.regularizers import Schedule, create, list_regularizers

    reg = create("l2grad", lam=0.05, activations=False)
    reg.attach(model)
    loss = F.cross_entropy(model(x), y)
    total = loss + reg.loss_term(model, loss, x.shape[0])
"""

from losslab.regularizers.base import (
    REGULARIZERS,
    ActivationCapture,
    Regularizer,
    create,
    default_activation_names,
    is_conv_or_linear,
    list_regularizers,
    named_weight_tensors,
    weight_tensors,
)
from losslab.regularizers.frobenius import (
    FrobeniusDecay,
    factorized_modules,
    frobenius_decay_grads,
    frobenius_norm,
    squared_frobenius_norm,
)
from losslab.regularizers.lp_grad import LPGrad
from losslab.regularizers.schedule import Phase, Schedule
from losslab.regularizers.variance import (
    InverseStdDevNorm,
    InverseVarianceNorm,
    StdDevNorm,
    VarianceNorm,
    WeightSpread,
    weight_shape_stats,
)

__all__ = [
    "REGULARIZERS",
    "ActivationCapture",
    "FrobeniusDecay",
    "InverseStdDevNorm",
    "InverseVarianceNorm",
    "LPGrad",
    "Phase",
    "Regularizer",
    "Schedule",
    "StdDevNorm",
    "VarianceNorm",
    "WeightSpread",
    "create",
    "default_activation_names",
    "factorized_modules",
    "frobenius_decay_grads",
    "frobenius_norm",
    "is_conv_or_linear",
    "list_regularizers",
    "named_weight_tensors",
    "squared_frobenius_norm",
    "weight_shape_stats",
    "weight_tensors",
]
