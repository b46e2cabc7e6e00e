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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
from losslab.quant.driver import Collected, LayerJob, drive
from losslab.quant.engine import plan_layers
from losslab.quant.gptq import HessianStats
from losslab.quant.methods import HessianAccumulator, LayerStats, QuantMethod
from losslab.quant.result import QuantResult
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


def _batched(value: Any, n: int) -> Any:
    """``value`` of one window's call, expanded to ``n`` windows along dim 0 (tensors of batch size 1)."""
    if isinstance(value, Tensor):
        return value.expand(n, *value.shape[1:]) if value.dim() >= 2 and value.shape[0] == 1 else value
    if isinstance(value, tuple | list):
        return type(value)(_batched(v, n) for v in value)
    if isinstance(value, dict):
        return {k: _batched(v, n) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, tuple | list):
        return isinstance(b, tuple | list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


def batchable(calls: list[LayerCall]) -> bool:
    """Whether the windows can be forwarded together: every call has the first one's arguments (same mask,
    positions; one hidden-state batch of 1 each)."""
    first = calls[0]
    return (
        all(
            c.hidden.shape == first.hidden.shape and _same(c.args, first.args) and _same(c.kwargs, first.kwargs)
            for c in calls
        )
        and first.hidden.shape[0] == 1
    )


def _run_layer(layer: nn.Module, calls: list[LayerCall], hidden: list[Tensor], micro: int = 1) -> list[Tensor]:
    """Outputs of ``layer`` for each cached call, with ``hidden`` as the hidden-state inputs; ``micro`` > 1
    forwards that many windows at once (only for :func:`batchable` calls)."""
    outs: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, len(calls), max(micro, 1)):
            chunk = range(start, min(start + max(micro, 1), len(calls)))
            call = calls[start]
            if len(chunk) == 1:
                h, args, kwargs = hidden[start], call.args, call.kwargs
            else:
                h = torch.cat([hidden[i] for i in chunk])  # [windows, T, d]
                args, kwargs = _batched(call.args, len(chunk)), _batched(call.kwargs, len(chunk))
            out = layer(h, *args, **kwargs)
            out = out[0] if isinstance(out, tuple | list) else out
            outs.extend(out.split(hidden[start].shape[0]) if len(chunk) > 1 else [out])
    return outs


def auto_micro_batch(layer: nn.Module, calls: list[LayerCall], device: torch.device) -> int:
    """Windows per forward on a CUDA device: the peak memory of one window's forward, measured, fitted into 40 %
    of the free memory (1 elsewhere, or when the calls cannot be batched)."""
    if device.type != "cuda" or len(calls) < 2 or not batchable(calls):
        return 1
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    _run_layer(layer, calls[:1], [calls[0].hidden])
    torch.cuda.synchronize(device)
    per_window = max(torch.cuda.max_memory_allocated(device) - before, 1)
    free = torch.cuda.mem_get_info(device)[0]
    return max(1, min(len(calls), int(0.4 * free / per_window)))


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
    methods: dict[str, QuantMethod],
    layer: nn.Module,
    float_layer: nn.Module,
    calls: list[LayerCall],
    hidden_q: list[Tensor],
    hidden_f: list[Tensor] | None,
    metrics: bool,
    device: torch.device,
    micro: int = 1,
) -> tuple[dict[str, LayerStats | None], dict[str, HessianStats], list[Tensor] | None]:
    """Stream every cached input through ``layer``; accumulate each linear's method statistics
    (``methods``: linear name relative to the layer → its method) and the metric Hessians.

    With two streams (a method reads the float network's inputs, GPFQ) each window is run twice (float-stream
    input through ``float_layer``, a float copy of the layer, then quantized-stream input through ``layer``)
    and the pair of inputs of each linear updates its statistics; the float stream's outputs are returned.
    """
    targets = {n: layer.get_submodule(n) for n in methods}
    float_targets = {n: float_layer.get_submodule(n) for n in methods}
    stats = {n: methods[n].new_stats(weight_matrix(m).shape[1], device) for n, m in targets.items()}
    hessians = {n: s.finalize() for n, s in stats.items() if isinstance(s, HessianAccumulator)}
    if metrics:
        for n, m in targets.items():
            hessians.setdefault(n, HessianStats(weight_matrix(m).shape[1], device=device))
    if hidden_f is None and not hessians and all(s is None for s in stats.values()):
        return stats, {}, None  # nothing to collect and no float stream to advance
    outs_f = [] if hidden_f is not None else None
    x_f: dict[str, Tensor] = {}
    x_q: dict[str, Tensor] = {}
    owner: dict[str, str] = {}  # linear -> the linear whose Hessian it shares (same input tensor: q/k/v)
    step = max(micro, 1)
    for i in range(0, len(calls), step):
        chunk = calls[i : i + step]
        if hidden_f is not None:
            with _record_inputs(float_targets, x_f):
                outs_f.extend(_run_layer(float_layer, chunk, hidden_f[i : i + step], step))
        with _record_inputs(targets, x_q):
            _run_layer(layer, chunk, hidden_q[i : i + step], step)
        if i == 0:
            owner = _shared_inputs(x_q, {n: isinstance(s, HessianAccumulator) for n, s in stats.items()})
        for name in targets:
            if owner[name] != name:
                continue  # its H is its owner's: one Hessian per distinct input
            x_tilde = x_q[name]
            if stats[name] is not None:
                stats[name].update(x_f.get(name, x_tilde), x_tilde)
            if name in hessians and not isinstance(stats[name], HessianAccumulator):
                hessians[name].update(x_tilde)
    for name, first in owner.items():
        if first != name:
            stats[name] = stats[first] if isinstance(stats[first], HessianAccumulator) else stats[name]
            if name in hessians:
                hessians[name] = hessians[first]
    return stats, hessians, outs_f


def _shared_inputs(inputs: dict[str, Tensor], hessian_only: dict[str, bool]) -> dict[str, str]:
    """For each linear, the first linear that reads the very same input tensor and keeps only X̃ statistics
    (a Hessian), else itself. q/k/v of an attention block share their input, so they share one H."""
    owner: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, x in inputs.items():
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, hessian_only[name])
        owner[name] = seen.setdefault(key, name) if hessian_only[name] else name
    return owner


def plan_decoder(
    model: nn.Module,
    method: QuantMethod,
    overrides: Mapping[str, QuantMethod] | None = None,
    skip: Iterable[str] = (),
) -> dict[str, QuantMethod | None]:
    """Method per decoder linear (full module name, in module order): None if a ``skip`` pattern matches, else
    the first matching override, else ``method`` — :func:`losslab.quant.engine.plan_layers`, the engine's rule.

    Patterns are fnmatch patterns on names relative to the model (``"*.fc2"``, ``"model.decoder.layers.0.*"``).
    A plain linear name relative to a decoder layer (``"fc2"``, ``"self_attn.k_proj"``: the older form of
    ``skip``) stands for that linear in every layer. A pattern that matches nothing raises ConfigError.
    """
    parts = decoder_parts(model)
    prefix = next(n for n, m in model.named_modules() if m is parts.layers)
    names = [f"{prefix}.{i}.{n}" for i, layer in enumerate(parts.layers) for n in linear_targets(layer)]
    relative = {n for layer in parts.layers for n in linear_targets(layer)}

    def widen(pattern: str) -> str:
        return f"{prefix}.*.{pattern}" if pattern in relative else pattern

    skip = [skip] if isinstance(skip, str) else list(skip)
    return plan_layers(names, method, {widen(p): m for p, m in (overrides or {}).items()}, [widen(p) for p in skip])


class _LayerPrefetch:
    """Copies the next decoder layer to a CUDA device on a side stream while the current one is solved.

    ``start(layer)`` launches the copy; ``wait(layer)`` makes the compute stream wait for it (and marks the new
    parameter memory as used by the compute stream, so the caching allocator does not hand it back early), then
    moves the layer synchronously if it is not there yet. On other devices both are a plain ``layer.to(device)``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def start(self, layer: nn.Module) -> None:
        if self.stream is None:
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            layer.to(self.device, non_blocking=True)

    def wait(self, layer: nn.Module) -> None:
        if self.stream is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(self.stream)
            for tensor in (*layer.parameters(), *layer.buffers()):
                if tensor.device.type == "cuda":
                    tensor.record_stream(main)
        layer.to(self.device)


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


def _to_cpu(wq: WeightQuant) -> WeightQuant:
    def move(v: Any) -> Any:
        if isinstance(v, Tensor):
            return v.cpu()
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        return v

    fields = ("q", "codes", "scale", "zero", "group_index", "lut")
    return replace(wq, **{f: move(getattr(wq, f)) for f in fields}, extras=move(wq.extras))


class DecoderSource:
    """The driver's source for causal LMs (:mod:`losslab.quant.driver`): the decoder-block catcher.

    Block by block: the block is moved to ``device`` (the next one is copied on a side stream meanwhile); its
    linears are collected group by group (one group, or GPTQ's true-sequential groups) in one pass over the cached
    windows each, through hooks on the block's forward (:func:`_collect_stats`); after the block's last unit the
    quantized block is run forward to give the next block its inputs (and, for methods that read the float
    network, a float copy runs alongside), then the block goes back where it lives.
    """

    def __init__(
        self,
        blocks: nn.ModuleList,
        prefix: str,
        layer_plan: dict[str, QuantMethod | None],
        groups: list[list[str]] | None,
        calls: list[LayerCall],
        device: torch.device,
        *,
        metrics: bool,
        keep_codes: bool,
        micro_batch: int | None,
        progress: bool,
        label: str,
    ) -> None:
        self.blocks, self.prefix, self.layer_plan, self.groups = blocks, prefix, layer_plan, groups
        self.calls, self.device, self.metrics, self.keep_codes = calls, device, metrics, keep_codes
        self.micro_batch, self.progress, self.label = micro_batch, progress, label
        self.index = {name: i for i, name in enumerate(layer_plan)}  # the seed rule's position
        self.micro: int | None = None
        self.hidden_q = [c.hidden for c in calls]
        two_streams = any(m is not None and m.reads_float for m in layer_plan.values())
        self.hidden_f: list[Tensor] | None = list(self.hidden_q) if two_streams else None
        self._layer: nn.Module | None = None
        self._float_layer: nn.Module | None = None
        self._outs_f: list[Tensor] | None = None

    def units(self) -> Iterator[list[LayerJob]]:
        homes = [next(layer.parameters()).device for layer in self.blocks]
        prefetch = _LayerPrefetch(self.device)
        for b in tqdm(range(len(self.blocks)), desc=self.label, disable=not self.progress, leave=False):
            layer = self.blocks[b]
            prefetch.wait(layer)  # block b on the device (copied on the side stream while block b-1 was solved)
            if self.micro is None:
                self.micro = (
                    auto_micro_batch(layer, self.calls, self.device) if self.micro_batch is None else self.micro_batch
                )
                if self.micro > 1 and not batchable(self.calls):
                    raise LosslabError("micro_batch > 1 needs windows of one length with identical masks/positions")
            if b + 1 < len(self.blocks):
                prefetch.start(self.blocks[b + 1])
            jobs = {}
            for name in linear_targets(layer):
                full = f"{self.prefix}.{b}.{name}"
                jobs[name] = LayerJob(full, self.index[full], layer.get_submodule(name), self.layer_plan[full])
            active = [n for n, job in jobs.items() if job.method is not None]
            groups = [[n for n in g if n in active] for g in self.groups] if self.groups else [active]
            # GPFQ's float stream must see the float block also after the first group is quantized.
            multi = self.hidden_f is not None and len(groups) > 1
            self._layer, self._float_layer, self._outs_f = layer, copy.deepcopy(layer) if multi else layer, None
            for group in groups:
                if not group:
                    self._float_outputs()
                yield [jobs[n] for n in group]
            yield [job for job in jobs.values() if job.method is None]  # float rows, reported after the block's
            self._float_outputs()
            self._float_layer = None
            self.hidden_q = _run_layer(layer, self.calls, self.hidden_q, self.micro)
            self.hidden_f = self._outs_f
            layer.to(homes[b])
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _float_outputs(self) -> None:
        """The float stream's block outputs when no collect pass produced them (every linear of a group skipped)."""
        if self.hidden_f is not None and self._outs_f is None:
            _, _, self._outs_f = self._collect({})

    def _collect(
        self, methods: dict[str, QuantMethod]
    ) -> tuple[dict[str, LayerStats | None], dict[str, HessianStats], list[Tensor] | None]:
        assert self._layer is not None and self._float_layer is not None and self.micro is not None
        return _collect_stats(
            methods,
            self._layer,
            self._float_layer,
            self.calls,
            self.hidden_q,
            self.hidden_f,
            self.metrics,
            self.device,
            self.micro,
        )

    def collect(self, jobs: list[LayerJob]) -> dict[str, Collected]:
        relative = {job.name.removeprefix(self.prefix).split(".", 2)[2]: job for job in jobs}
        stats, hessians, outs = self._collect({n: job.method for n, job in relative.items()})
        self._outs_f = outs if outs is not None else self._outs_f
        return {
            job.name: Collected([stats[n]], [hessians[n].hessian.double() / 2] if n in hessians else None)
            for n, job in relative.items()
        }

    def float_weight(self, job: LayerJob) -> Tensor:
        return weight_matrix(job.module).to(torch.float32, copy=True)

    def weight_groups(self, weight: Tensor, job: LayerJob) -> list[Tensor]:
        return [weight]

    def write(self, job: LayerJob, q: Tensor) -> None:
        set_weight_matrix(job.module, q)

    def keep(self, wqs: list[WeightQuant]) -> list[WeightQuant] | None:
        return [_to_cpu(wq) for wq in wqs] if self.keep_codes else None


def quantize_decoder(
    model: nn.Module,
    method: QuantMethod,
    calib: Tensor,
    *,
    device: str | torch.device | None = None,
    skip: Iterable[str] = (),
    overrides: Mapping[str, QuantMethod] | None = None,
    seed: int = 0,
    metrics: bool = False,
    keep_codes: bool = True,
    progress: bool = True,
    calib_name: str | None = None,
    calib_seed: int | None = None,
    true_sequential: bool = False,
    sequential_groups: Sequence[Sequence[str]] | None = None,
    micro_batch: int | None = None,
    inplace: bool = False,
) -> QuantResult:
    """Quantize the linear layers of every decoder layer of a copy of ``model``, one layer at a time.

    The contract is the engine's (:func:`losslab.quant.quantize`): the model passed in is never modified and
    ``result.model`` is the quantized copy. ``inplace=True`` quantizes ``model`` itself instead, so a large LM is
    never held twice (``losslab lm quantize`` does this); ``result.model is model`` then.

    Args:
        model: a Hugging Face causal LM (OPT, Llama-style, GPT-2, GPT-NeoX); it stays where it is, only the
            current decoder layer visits ``device``.
        method: a per-layer config from :mod:`losslab.quant.methods` (``RTN``, ``GPTQ``, ``LDLQ``, ``GPFQ``,
            ``Identity16``).
        calib: calibration token windows ``(n, T)`` (int64).
        device: where layers are processed (default: the model's device).
        skip: fnmatch patterns on names relative to the model kept in float (``"*.fc2"``); a plain name relative
            to a decoder layer (``"fc2"``) means that linear in every layer (see :func:`plan_decoder`).
        overrides: ``{pattern: method}``, first match wins (``{"*.fc2": RTN(bits=8)}``): the engine's rule.
        seed: random parts (incoherence transforms, dither) of the i-th decoder linear (module order, skipped ones
            counted) use ``seed + 2i``, the driver's rule (:func:`losslab.quant.driver.layer_seed`).
        metrics: also gather X̃ᵀX̃ for RTN/GPFQ so every layer reports the proxy loss tr((W−Q)Σ(W−Q)ᵀ) with
            Σ = X̃ᵀX̃/n (n token rows of the partly quantized model); GPTQ/LDLQ always report it (Σ = H/2).
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
        micro_batch: windows forwarded at once; default: 1 on the CPU (bit-identical to one window at a time),
            on CUDA sized to free memory (:func:`auto_micro_batch`; the sums then run in another order).
        inplace: quantize ``model`` itself instead of a deep copy (saves one model's memory).

    Returns:
        ``QuantResult`` (``kind == "fake"``) with one ``LayerReport`` per linear (in processing order) and
        ``result.model`` the quantized model (``model`` itself with ``inplace=True``); ``result.calibration``
        holds ``windows``, ``seqlen``, ``seed``, ``name``,
        ``true_sequential`` and ``sequential_groups`` (the groups used, or ``None``).
    """
    if not isinstance(method, QuantMethod):
        raise LosslabError(f"method={method!r} is not a losslab.quant method config (RTN(...), GPTQ(...), ...)")
    if calib.dim() != 2 or calib.dtype != torch.long or calib.shape[0] == 0:
        raise LosslabError(f"calib must be a non-empty (n, T) int64 tensor of token windows, got {tuple(calib.shape)}")
    if micro_batch is not None and (
        isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1
    ):
        raise LosslabError(f"micro_batch={micro_batch!r} must be a positive integer (windows per forward) or None")
    decoder_parts(model)  # not a supported decoder: fail before copying it
    if not inplace:
        model = copy.deepcopy(model)
    parts = decoder_parts(model)
    prefix = next(n for n, m in model.named_modules() if m is parts.layers)
    layer_plan = plan_decoder(model, method, overrides, skip)
    relative = [list(linear_targets(layer)) for layer in parts.layers]
    always_skipped = {
        n for n in relative[0] if all(layer_plan.get(f"{prefix}.{i}.{n}", 0) is None for i in range(len(relative)))
    }
    plan = plan_sequential_groups(
        model, true_sequential=true_sequential, sequential_groups=sequential_groups, skip=always_skipped
    )
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    calls = capture_layer_inputs(model, calib, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base_bytes = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
    source = DecoderSource(
        parts.layers,
        prefix,
        layer_plan,
        plan,
        calls,
        dev,
        metrics=metrics,
        keep_codes=keep_codes,
        micro_batch=micro_batch,
        progress=progress,
        label=method.describe(),
    )
    reports, weights = drive(source, seed=seed)
    micro = source.micro
    model.train(was_training)
    calibration = {"windows": int(calib.shape[0]), "seqlen": int(calib.shape[1]), "seed": calib_seed}
    calibration.update(name=calib_name, true_sequential=bool(true_sequential), sequential_groups=plan)
    calibration["micro_batch"] = micro
    if dev.type == "cuda":  # peak device memory beyond what was allocated before: ≈ one layer + its activations
        calibration["peak_device_bytes"] = int(torch.cuda.max_memory_allocated(dev) - base_bytes)
    return QuantResult(
        model=model,
        layers=reports,
        weights=weights,
        method=method.describe(),
        overrides={p: m.describe() for p, m in (overrides or {}).items()},
        calibration=calibration,
        seed=seed,
        seconds=time.perf_counter() - start,
    )
