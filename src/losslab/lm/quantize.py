"""Sequential, decoder-layer-by-layer weight quantization of a causal LM (GPTQ's driver, llm.md §6).

1. The decoder layers are found (:func:`losslab.lm.models.decoder_parts`); everything else (embeddings, final
   norm, LM head) stays float and is moved to ``device``.
2. Layer 0 is replaced by a catcher that stores its hidden-state input and **all** keyword arguments (attention
   mask, position ids/embeddings, cache position) and aborts; the calibration windows are fed one at a time.
3. Per layer (only this one on ``device``): hooks on its linear sublayers accumulate the method's statistics
   (H = (2/n)ΣXᵀX for GPTQ/LDLQ, X the ``(tokens, in)`` input rows of a linear and n the number of rows; GPFQ's
   paired float/quantized Gram matrices) over all cached inputs; each linear is quantized by the per-layer
   algorithm of :mod:`losslab.quant.methods`; the cached inputs are re-run through the quantized layer and its
   outputs become the next layer's inputs. GPFQ keeps a second, float stream of inputs (X from the float
   network, X̃ from the quantized one).

By default all linears of a layer use statistics gathered from the layer's float weights, as in the reference.
``true_sequential=True`` (GPTQ's ``--true-sequential``) splits the layer into sub-groups in forward order, from a
per-architecture table (:data:`losslab.lm.models.SEQUENTIAL_GROUPS`; OPT: q/k/v → out_proj → fc1 → fc2) or
``sequential_groups=``, and re-collects the statistics before each group, so that e.g. out_proj's H comes from
inputs computed with the already quantized q/k/v. Data-free methods (RTN) give the same weights either way.

The result is fake quantization (dequantized weights written back), returned as a
:class:`losslab.quant.result.QuantResult` so packing and reports work as for any other model::

    from losslab.quant.methods import GPTQ
    calib = calibration_windows(train_ids, n_windows=128, seqlen=2048, seed=0)
    result = quantize_decoder(model, GPTQ(bits=4), calib, device="cuda")     # model stays on the CPU
    result = quantize_decoder(model, GPTQ(bits=4, act_order=True), calib, true_sequential=True)
    result.to_json("opt125m.gptq4.json")        # summary.calibration records true_sequential and the groups
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from losslab.errors import LosslabError
from losslab.lm.models import (
    decoder_parts,
    linear_targets,
    set_weight_matrix,
    true_sequential_groups,
    weight_matrix,
)
from losslab.quant.gptq import HessianStats
from losslab.quant.layer_metrics import proxy_loss, sparsity, sqnr_db, weight_mse
from losslab.quant.methods import QuantMethod
from losslab.quant.result import LayerReport, QuantResult, storage_bits_total
from losslab.quant.weight_quant import WeightQuant


class _Caught(Exception):
    """Raised by :class:`LayerInputCatcher` to stop the forward pass after layer 0's input is stored."""


@dataclass
class LayerCall:
    """One cached call of a decoder layer: its hidden-state input, the positional arguments after it (GPT-2
    passes ``past_key_values, attention_mask, encoder_hidden_states`` positionally) and every keyword argument."""

    hidden: Tensor
    kwargs: dict[str, Any]
    args: tuple[Any, ...] = ()


class LayerInputCatcher(nn.Module):
    """Stands in for decoder layer 0: records ``(hidden_states, args, kwargs)`` of each call, then aborts.

    Unknown attributes are read from the wrapped layer (some decoders read ``layer.attention_type``).
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.calls: list[LayerCall] = []

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self.calls.append(LayerCall(hidden_states.detach(), dict(kwargs), tuple(args)))
        raise _Caught


@contextmanager
def _outer_on(model: nn.Module, device: torch.device) -> Iterable[None]:
    """Move everything except the decoder layers to ``device`` for the duration of the block, then back."""
    parts = decoder_parts(model)
    home = next(model.parameters()).device
    layers = parts.layers
    setattr(parts.parent, parts.attr, nn.ModuleList())
    try:
        model.to(device)
        setattr(parts.parent, parts.attr, layers)
        yield
    finally:
        setattr(parts.parent, parts.attr, nn.ModuleList())
        model.to(home)
        setattr(parts.parent, parts.attr, layers)


def capture_layer_inputs(model: nn.Module, windows: Tensor, device: torch.device) -> list[LayerCall]:
    """Inputs and kwargs that decoder layer 0 receives for each calibration window ``windows[i]`` (1 × T)."""
    parts = decoder_parts(model)
    first = parts.layers[0]
    catcher = LayerInputCatcher(first)
    parts.layers[0] = catcher
    try:
        with _outer_on(model, device), torch.no_grad():
            for window in windows:
                with suppress(_Caught):
                    model(input_ids=window.view(1, -1).to(device), use_cache=False)
    finally:
        parts.layers[0] = first
    if len(catcher.calls) != len(windows):
        raise LosslabError("decoder layer 0 was not called once per window; this architecture is not supported")
    return catcher.calls


def _run_layer(layer: nn.Module, calls: list[LayerCall], hidden: list[Tensor]) -> list[Tensor]:
    """Outputs of ``layer`` for each cached call, with ``hidden`` as the hidden-state inputs."""
    outs = []
    with torch.no_grad():
        for call, h in zip(calls, hidden):
            out = layer(h, *call.args, **call.kwargs)
            outs.append(out[0] if isinstance(out, tuple | list) else out)
    return outs


@contextmanager
def _record_inputs(targets: dict[str, nn.Module], store: dict[str, Tensor]) -> Iterable[None]:
    """Forward pre-hooks that put each target's input rows ``(tokens, in)`` (float32) into ``store``."""

    def make(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            store[name] = x.reshape(-1, x.shape[-1]).float()

        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in targets.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _collect_stats(
    method: QuantMethod,
    layer: nn.Module,
    float_layer: nn.Module,
    names: list[str],
    calls: list[LayerCall],
    hidden_q: list[Tensor],
    hidden_f: list[Tensor] | None,
    metrics: bool,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, HessianStats], list[Tensor] | None]:
    """Stream every cached input through ``layer``; accumulate the method's and the metric statistics of the
    linears ``names`` (relative to the layer).

    With two streams (GPFQ) each window is run twice (float-stream input through ``float_layer``, a float copy
    of the layer, then quantized-stream input through ``layer``) and the pair of inputs of each linear updates
    its statistics; the float stream's outputs are returned.
    """
    targets = {n: layer.get_submodule(n) for n in names}
    float_targets = {n: float_layer.get_submodule(n) for n in names}
    stats = {n: method.new_stats(weight_matrix(m).shape[1], device) for n, m in targets.items()}
    if method.stats == "none" and not metrics:
        return stats, {}, None
    hessians = {n: s for n, s in stats.items() if isinstance(s, HessianStats)}
    if metrics and not hessians:
        hessians = {n: HessianStats(weight_matrix(m).shape[1], device=device) for n, m in targets.items()}
    outs_f = [] if hidden_f is not None else None
    x_f: dict[str, Tensor] = {}
    x_q: dict[str, Tensor] = {}
    for i, call in enumerate(calls):
        if hidden_f is not None:
            with _record_inputs(float_targets, x_f):
                outs_f.extend(_run_layer(float_layer, [call], [hidden_f[i]]))
        with _record_inputs(targets, x_q):
            _run_layer(layer, [call], [hidden_q[i]])
        for name in targets:
            x_tilde = x_q[name]
            method.update_stats(stats[name], x_f.get(name, x_tilde), x_tilde)
            if hessians.get(name) is not None and hessians[name] is not stats[name]:
                hessians[name].update(x_tilde)
    return stats, hessians, outs_f


def plan_sequential_groups(
    model: nn.Module,
    *,
    true_sequential: bool = False,
    sequential_groups: Sequence[Sequence[str]] | None = None,
    skip: Iterable[str] = (),
) -> list[list[str]] | None:
    """The sub-groups quantized one after the other in every decoder layer, or ``None`` (one group: default).

    With ``true_sequential`` the groups are ``sequential_groups`` if given, else the architecture's table
    (:func:`losslab.lm.models.true_sequential_groups`); names in ``skip`` are dropped. Checked against **every**
    decoder layer before any work: each name must be a linear of the layer, and each linear not skipped must
    be in exactly one group. Raises :class:`LosslabError` naming the problem and the fix.
    """
    if sequential_groups is not None and not true_sequential:
        raise LosslabError("sequential_groups is only used with true_sequential=True; set it or drop the groups")
    if not true_sequential:
        return None
    if sequential_groups is None:
        groups = [list(g) for g in true_sequential_groups(model)]
    elif isinstance(sequential_groups, str) or not all(
        not isinstance(g, str) and len(g) > 0 and all(isinstance(n, str) for n in g) for g in sequential_groups
    ):
        raise LosslabError(
            f"sequential_groups={sequential_groups!r} must be a list of non-empty lists of linear names, "
            'e.g. [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.out_proj"], ...]'
        )
    else:
        groups = [list(g) for g in sequential_groups]
    skip = set(skip)
    listed = [n for g in groups for n in g]
    for index, layer in enumerate(decoder_parts(model).layers):
        linears = list(linear_targets(layer))
        problems = {
            "not linears of the layer": sorted(set(listed) - set(linears)),
            "in no group": [n for n in linears if n not in listed and n not in skip],
            "in several groups": sorted({n for n in listed if listed.count(n) > 1}),
        }
        found = "; ".join(f"{label}: {', '.join(names)}" for label, names in problems.items() if names)
        if found:
            raise LosslabError(
                f"the true-sequential groups do not match decoder layer {index} ({found}); its linears are "
                f"{', '.join(linears)}. Fix: pass sequential_groups= naming each of them once, in forward order "
                "(put the ones to keep float in skip=)"
            )
    plan = [[n for n in g if n not in skip] for g in groups]
    return [g for g in plan if g]


def _layer_report(
    name: str, method: QuantMethod, wq: WeightQuant, weight: Tensor, hessian: Tensor | None, seconds: float
) -> LayerReport:
    q = wq.q.to(weight.dtype)
    proxy = None if hessian is None else float(proxy_loss(weight.double(), q.double(), hessian.double()))
    return LayerReport(
        name=name,
        kind="linear",
        shape=tuple(weight.shape),
        groups=1,
        method=method.describe(),
        bits=wq.bits,
        levels=wq.levels,
        storage_bits=wq.storage_bits,
        grid=wq.grid,
        group_size=getattr(method, "group_size", None),
        n_weights=weight.numel(),
        bits_per_weight=storage_bits_total(wq) / weight.numel(),
        weight_mse=float(weight_mse(weight, q)),
        sqnr_db=float(sqnr_db(weight, q)),
        proxy_loss=proxy,
        sparsity=float(sparsity(q)),
        seconds=round(seconds, 4),
    )


def _to_cpu(wq: WeightQuant) -> WeightQuant:
    def move(v: Any) -> Any:
        if isinstance(v, Tensor):
            return v.cpu()
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        return v

    fields = ("q", "codes", "scale", "zero", "group_index", "lut")
    return replace(wq, **{f: move(getattr(wq, f)) for f in fields}, extras=move(wq.extras))


def quantize_decoder(
    model: nn.Module,
    method: QuantMethod,
    calib: Tensor,
    *,
    device: str | torch.device | None = None,
    skip: Iterable[str] = (),
    seed: int = 0,
    metrics: bool = False,
    keep_codes: bool = True,
    progress: bool = True,
    calib_name: str | None = None,
    calib_seed: int | None = None,
    true_sequential: bool = False,
    sequential_groups: Sequence[Sequence[str]] | None = None,
) -> QuantResult:
    """Quantize the linear layers of every decoder layer of ``model`` **in place**, one layer at a time.

    Args:
        model: a Hugging Face causal LM (OPT, Llama-style, GPT-2, GPT-NeoX); it stays where it is, only the
            current decoder layer visits ``device``.
        method: a per-layer config from :mod:`losslab.quant.methods` (``RTN``, ``GPTQ``, ``LDLQ``, ``GPFQ``,
            ``Identity16``).
        calib: calibration token windows ``(n, T)`` (int64).
        device: where layers are processed (default: the model's device).
        skip: linear names relative to a decoder layer kept in float (e.g. ``("fc2",)``).
        seed: random parts (incoherence transforms) use ``seed + running linear index`` (module order).
        metrics: also gather H for RTN/GPFQ so every layer reports the proxy loss tr((W−Q)H(W−Q)ᵀ); for
            GPTQ/LDLQ it is always reported with the method's own H = (2/n)ΣX̃ᵀX̃ (n token rows).
        keep_codes: keep the codes of every layer in ``result.weights`` (CPU) for :func:`save_packed`.
        calib_name, calib_seed: recorded in ``result.calibration``.
        true_sequential: re-collect the statistics after each sub-group of a layer is quantized (GPTQ's
            ``--true-sequential``), so each group sees inputs from the already quantized groups before it.
            Groups come from :data:`losslab.lm.models.SEQUENTIAL_GROUPS` by ``config.model_type`` (OPT:
            q/k/v → out_proj → fc1 → fc2; Llama/Mistral/Qwen2: q/k/v → o_proj → gate/up → down_proj; GPT-2:
            c_attn → attn.c_proj → c_fc → mlp.c_proj; GPT-NeoX). Other architectures raise
            :class:`LosslabError` unless ``sequential_groups`` is given (no silent guess from module order).
            Costs one extra pass over the calibration inputs per group; GPFQ keeps a float copy of the layer
            for its float stream.
        sequential_groups: explicit groups for ``true_sequential``: lists of linear names relative to a decoder
            layer, in forward order, each linear once.

    Returns:
        ``QuantResult`` (``kind == "fake"``) with one ``LayerReport`` per linear (in processing order) and
        ``result.model is model``; ``result.calibration`` holds ``windows``, ``seqlen``, ``seed``, ``name``,
        ``true_sequential`` and ``sequential_groups`` (the groups used, or ``None``).
    """
    if not isinstance(method, QuantMethod):
        raise LosslabError(f"method={method!r} is not a losslab.quant method config (RTN(...), GPTQ(...), ...)")
    if calib.dim() != 2 or calib.dtype != torch.long or calib.shape[0] == 0:
        raise LosslabError(f"calib must be a non-empty (n, T) int64 tensor of token windows, got {tuple(calib.shape)}")
    parts = decoder_parts(model)
    skip = set(skip)
    plan = plan_sequential_groups(
        model, true_sequential=true_sequential, sequential_groups=sequential_groups, skip=skip
    )
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    prefix = next(n for n, m in model.named_modules() if m is parts.layers)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    calls = capture_layer_inputs(model, calib, dev)
    hidden_q = [c.hidden for c in calls]
    hidden_f = list(hidden_q) if method.stats == "gpfq" else None
    reports: list[LayerReport] = []
    weights: dict[str, list[WeightQuant]] = {}
    counter = 0
    for index in tqdm(range(len(parts.layers)), desc=method.describe(), disable=not progress, leave=False):
        layer = parts.layers[index]
        home = next(layer.parameters()).device
        layer.to(dev)
        names = [n for n in linear_targets(layer) if n not in skip]
        groups = plan or [names]  # one group (default), or every linear skipped
        # GPFQ's float stream must see the float layer also after the first group is quantized.
        float_layer = copy.deepcopy(layer) if hidden_f is not None and len(groups) > 1 else layer
        for group in groups:
            stats, hessians, outs_f = _collect_stats(
                method, layer, float_layer, group, calls, hidden_q, hidden_f, metrics, dev
            )
            for name in group:
                module = layer.get_submodule(name)
                t0 = time.perf_counter()
                weight = weight_matrix(module).to(torch.float32, copy=True)
                wq = method.quantize_layer(weight, stats[name], seed=seed + counter + names.index(name))
                set_weight_matrix(module, wq.q.to(weight.dtype))
                hessian = hessians[name].hessian if name in hessians else None
                full = f"{prefix}.{index}.{name}"
                reports.append(_layer_report(full, method, wq, weight, hessian, time.perf_counter() - t0))
                if keep_codes:
                    weights[full] = [_to_cpu(wq)]
            del stats, hessians
        counter += len(names)
        del float_layer
        hidden_q = _run_layer(layer, calls, hidden_q)
        hidden_f = outs_f
        layer.to(home)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    model.train(was_training)
    calibration = {"windows": int(calib.shape[0]), "seqlen": int(calib.shape[1]), "seed": calib_seed}
    calibration.update(name=calib_name, true_sequential=bool(true_sequential), sequential_groups=plan)
    return QuantResult(
        model=model,
        layers=reports,
        weights=weights,
        method=method.describe(),
        overrides={},
        calibration=calibration,
        seed=seed,
        seconds=time.perf_counter() - start,
    )
