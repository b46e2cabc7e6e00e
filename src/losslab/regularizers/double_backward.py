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

from torch import nn

from losslab.regularizers.batchnorm_grad import fast_batchnorm_forward
from losslab.regularizers.conv_grad import fast_conv_forward

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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
