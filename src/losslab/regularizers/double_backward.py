"""Swap closed-form double backwards into a model's BatchNorm and Conv2d layers while double backprop trains it.

LPGrad differentiates the backward pass itself. PyTorch's generic second-order formulas for BatchNorm
(:mod:`~losslab.regularizers.batchnorm_grad`) and convolution (:mod:`~losslab.regularizers.conv_grad`) are correct
but slow; those modules give the same derivatives with fewer and faster kernels. This module routes a model's layers
through them without changing the model::

    restore = use_fast_double_backward(model)     # overrides the instances' forward only
    ...                                           # train with double backprop (values, gradients unchanged)
    restore()                                     # the modules' own forward again

Parameters, buffers, ``state_dict`` and module types stay as they are. Only modules that run the stock forward are
swapped: a subclass with its own ``forward`` (timm's ``StdConv2d``, which standardizes its weight, or
``Conv2dSame``) and a module that already has an instance-level ``forward`` are left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType

import torch
from torch import Tensor, nn

from losslab.regularizers.batchnorm_grad import batch_norm_train
from losslab.regularizers.conv_grad import conv2d_train

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _eligible(module: nn.Module, x: Tensor) -> bool:
    """The closed forms apply: training with grad on, fp32/fp64 input and weight, outside autocast."""
    weight = getattr(module, "weight", None)
    return (
        module.training
        and torch.is_grad_enabled()
        and x.dtype in (torch.float32, torch.float64)
        and weight is not None
        and weight.dtype == x.dtype
        and not torch.is_autocast_enabled(x.device.type)
    )


def fast_batchnorm_forward(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """The module's forward, through :func:`~losslab.regularizers.batchnorm_grad.batch_norm_train` when eligible
    (affine layers only); running statistics are updated exactly as ``nn.BatchNorm`` does."""
    if not (self.affine and _eligible(self, x)):
        return type(self).forward(self, x)
    self._check_input_dim(x)
    momentum = 0.0 if self.momentum is None else self.momentum
    if self.track_running_stats and self.num_batches_tracked is not None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm does
            momentum = 1.0 / float(self.num_batches_tracked)
    return batch_norm_train(x, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps)


def fast_conv_forward(self: nn.Conv2d, x: Tensor) -> Tensor:
    """``nn.Conv2d.forward``, through :func:`~losslab.regularizers.conv_grad.conv2d_train` when eligible (4-D input,
    numeric zero padding)."""
    if not (x.dim() == 4 and self.padding_mode == "zeros" and not isinstance(self.padding, str) and _eligible(self, x)):
        return type(self).forward(self, x)
    return conv2d_train(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def use_fast_double_backward(model: nn.Module, *, batchnorm: bool = True, conv: bool = True) -> Callable[[], None]:
    """Route every BatchNorm1d/2d/3d (``batchnorm``) and Conv2d (``conv``) of ``model`` through the closed-form
    double backwards; returns the function that undoes it."""
    swapped: list[nn.Module] = []
    for module in model.modules():
        if "forward" in module.__dict__:
            continue
        stock = type(module).forward
        if batchnorm and isinstance(module, _BATCHNORMS) and stock is nn.modules.batchnorm._BatchNorm.forward:
            module.forward = MethodType(fast_batchnorm_forward, module)  # type: ignore[method-assign]
        elif conv and isinstance(module, nn.Conv2d) and stock is nn.Conv2d.forward:
            module.forward = MethodType(fast_conv_forward, module)  # type: ignore[method-assign]
        else:
            continue
        swapped.append(module)

    def restore() -> None:
        for module in swapped:
            module.__dict__.pop("forward", None)
        swapped.clear()

    return restore
