"""Fold eval-mode BatchNorm into the preceding conv or linear layer (Jacob et al., CVPR 2018; spec §9).

For a layer ``y = W x + b`` followed by ``BN(y) = γ (y − μ)/√(σ² + ε) + β`` (running statistics):

    W' = W · γ/√(σ² + ε)   (per output channel),    b' = β + (b − μ) · γ/√(σ² + ε)

and the BatchNorm becomes ``nn.Identity``. Eval-mode outputs are unchanged (to float rounding)::

    folded = fold_batchnorm(model)   # a folded deep copy; ``model`` is untouched
    pairs = find_bn_pairs(model)     # [("conv1", "bn1"), ...]

A BN is folded when it directly follows a Conv2d/Linear in the traced graph (``torch.fx``); models that cannot
be traced fall back to registration order (a BN registered right after a layer with matching channel count),
which matches torchvision/timm ResNets, VGGs and the losslab models.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from losslab.errors import LosslabError

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _pairs_from_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return None
    modules = dict(model.named_modules())
    users: dict[str, int] = {}
    for node in graph.nodes:
        for arg in node.all_input_nodes:
            users[arg.name] = users.get(arg.name, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(modules.get(src.target), nn.Conv2d | nn.Linear)
            and users.get(src.name, 0) == 1
        ):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _pairs_from_order(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    prev: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, _BN) and prev is not None:
            layer = prev[1]
            if module.num_features == layer.weight.shape[0]:
                pairs.append((prev[0], name))
            prev = None
        elif isinstance(module, nn.Conv2d | nn.Linear):
            prev = (name, module)
    return pairs


def find_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, BatchNorm name) pairs where the BN directly consumes the layer's output."""
    pairs = _pairs_from_fx(model)
    return pairs if pairs is not None else _pairs_from_order(model)


def fold_bn_into(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
    """Fold ``bn``'s running statistics and affine parameters into ``layer`` in place (formula in module doc)."""
    if bn.running_mean is None or bn.running_var is None:
        raise LosslabError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    with torch.no_grad():
        var = bn.running_var.to(torch.float64)
        mean = bn.running_mean.to(torch.float64)
        gamma = bn.weight.to(torch.float64) if bn.affine else torch.ones_like(var)
        beta = bn.bias.to(torch.float64) if bn.affine else torch.zeros_like(var)
        factor = gamma / torch.sqrt(var + bn.eps)
        weight = layer.weight.to(torch.float64)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        bias = layer.bias.to(torch.float64) if layer.bias is not None else torch.zeros_like(mean)
        layer.weight.copy_((weight * factor.reshape(shape)).to(layer.weight.dtype))
        new_bias = (beta + (bias - mean) * factor).to(layer.weight.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias)
        else:
            layer.bias.copy_(new_bias)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return ``model`` (a deep copy unless ``inplace``) with every foldable BatchNorm folded and replaced."""
    target = model if inplace else copy.deepcopy(model)
    for layer_name, bn_name in find_bn_pairs(target):
        fold_bn_into(target.get_submodule(layer_name), target.get_submodule(bn_name))
        _set_module(target, bn_name, nn.Identity())
    return target
