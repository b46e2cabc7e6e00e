"""How the layer-wise engine reaches each layer's input: the segment walk and the prefix walk (spec §8).

The engine quantizes layers in registration order; layer i's statistics need its input in the float network
("f" stream) and/or in the network whose layers < i are already quantized ("q" stream), for every calibration
batch. Two walks produce those inputs with bit-identical values:

- ``prefix`` (the original walk): for each layer and batch, run the whole network from the input with a forward
  pre-hook that records the layer's input and aborts (:func:`capture_input`). About L/2 full forward passes per
  batch and stream for L layers; it caches nothing.
- ``segments`` (default): each module that holds quantizable layers is traced with :mod:`torch.fx`, every
  submodule call kept as one node, and the graph is replayed node by node on all batches at once, keeping each
  live intermediate value (per batch and stream) until its last use. A Conv2d/Linear node hands its input to the
  engine, which quantizes the layer before the walk computes the node's output. Submodules are recursed into the
  same way. A module that cannot be traced, or whose traced graph does not reproduce the module exactly (outputs
  and in-place effects on its inputs compared with ``torch.equal`` on the first non-empty calibration batch), is
  *opaque*: its layers are captured with the prefix walk's hook-and-abort, but starting from the module's cached
  input and running only that module (on copies of the input), and its output is then computed once. An opaque
  root model is exactly the prefix walk. Cost: about one forward pass per batch and stream plus, per opaque
  module with k layers, about k/2 passes through that module.

Equivalence. Layer i's input depends only on the layers called before it. The segment walk quantizes a layer at
its first call, so it reproduces the prefix walk exactly when the first-call order of the quantized layers is
their registration order; :func:`plan_walk` records that order on the first batch (with the float model) and
falls back to the prefix walk otherwise (also when analysing the model raises). Modules that are replayed but
hold no layer still to be quantized are called directly, so their own code always runs.

Memory trade-off: the segment walk holds, per calibration batch and stream, every intermediate value that a
later node still needs (for a chain one activation; inside a residual block the block input plus the branch), on
the engine's device, like the decoder-layer driver of GPTQ; ``Walker.peak_bytes`` reports the peak (calibration
batches themselves excluded). The prefix walk holds nothing but costs O(L) times more forward passes::

    plan = plan_walk(model, names, planned, batches[0], "segments")   # plan.kind: "segments" or "prefix"
    walker = Walker(plan, {"f": float_model, "q": quant_model}, batches, streams=("q",))
    inputs = walker.reach("layer1.0.conv1")        # advances the walk to that layer's first call
    for x_f, x_q in inputs([0, 1], want_f=False, want_q=True): ...
    walker.close()
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_flatten, tree_map

from losslab.errors import LosslabError

WALKS = ("segments", "prefix")
STREAMS = ("f", "q")

Args = tuple[tuple[Any, ...], dict[str, Any]]
Provider = Callable[[Sequence[int], bool, bool], Iterator[tuple[Tensor | None, Tensor | None]]]


class _StopForward(Exception):
    """Raised by the capture hook to abort the forward pass once the target layer's input is seen."""


def capture_input(model: nn.Module, layer: nn.Module, /, *args: Any, **kwargs: Any) -> Tensor:
    """The input that ``layer`` receives when ``model(*args, **kwargs)`` runs (the rest of the forward is skipped).

    The hook is registered after any existing pre-hooks of ``layer``, so it sees their result.
    """
    store: list[Tensor] = []

    def hook(module: nn.Module, hook_args: tuple[Any, ...]) -> None:
        store.append(hook_args[0].detach())
        raise _StopForward

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not store:
        raise LosslabError(f"layer {type(layer).__name__} was never called in the forward pass; skip it")
    return store[0]


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d | nn.Linear)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _EveryCallIsLeaf(fx.Tracer):
    """Records every submodule call as one ``call_module`` node (only the traced module's own code is inlined)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def trace_module(module: nn.Module) -> fx.Graph | None:
    """The module's forward as an fx graph whose submodule calls are nodes, or None if it cannot be traced.

    Refused (None): tracing raises (data-dependent control flow, unregistered modules, ...), ``forward`` takes
    ``*args``/``**kwargs``, or tracing had to attach tensor constants to the module (those are removed again).
    """
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    before = set(vars(module))
    try:
        graph = _EveryCallIsLeaf().trace(module)
    except Exception:  # any tracing failure makes the module opaque
        graph = None
    added = set(vars(module)) - before
    for key in added:
        delattr(module, key)
    return None if added else graph


def _fetch(module: nn.Module, target: str) -> Any:
    owner, _, attr = target.rpartition(".")
    return getattr(module.get_submodule(owner), attr)


def _bind(graph: fx.Graph, module: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[Any, Any]:
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return {n: bound.arguments[n.target] for n in graph.nodes if n.op == "placeholder"}


def _node_args(node: fx.Node, env: Mapping[fx.Node, Any]) -> Args:
    return fx.node.map_arg(node.args, env.__getitem__), fx.node.map_arg(node.kwargs, env.__getitem__)  # type: ignore[return-value]


def _eval(node: fx.Node, module: nn.Module, env: Mapping[fx.Node, Any]) -> Any:
    """One non-module node, exactly as :class:`torch.fx.Interpreter` runs it."""
    if node.op == "get_attr":
        return _fetch(module, str(node.target))
    args, kwargs = _node_args(node, env)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    self_obj, *rest = args
    return getattr(self_obj, str(node.target))(*rest, **kwargs)


def _drop_after(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the values whose last use it is (unused values are dropped right after they are made)."""
    last: dict[fx.Node, fx.Node] = {n: n for n in graph.nodes}
    for node in graph.nodes:
        for used in node.all_input_nodes:
            last[used] = node
    drop: dict[fx.Node, list[fx.Node]] = {}
    for value, node in last.items():
        drop.setdefault(node, []).append(value)
    return drop


def _clone(tree: Any) -> Any:
    return tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, tree)


def _same(a: Any, b: Any) -> bool:
    """Bitwise equality of two pytrees (tensors by ``torch.equal`` plus dtype, other leaves by ``==``)."""
    leaves_a, spec_a = tree_flatten(a)
    leaves_b, spec_b = tree_flatten(b)
    if spec_a != spec_b:
        return False
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, Tensor) or isinstance(y, Tensor):
            if not (isinstance(x, Tensor) and isinstance(y, Tensor) and x.dtype == y.dtype and torch.equal(x, y)):
                return False
        elif x is not y and not bool(x == y):
            return False
    return True


def _restore(tree: Any, pristine: Any) -> None:
    for t, p in zip(tree_flatten(tree)[0], tree_flatten(pristine)[0]):
        if isinstance(t, Tensor):
            t.copy_(p)


@dataclass
class WalkPlan:
    """How to walk one model: traced graphs per module name, and where each layer is first called.

    ``owner[layer]`` is the name of the call node (a layer node, or an opaque module, ``""`` = the root) during
    which the layer is first called; ``order`` lists the layers by first call. ``kind`` is ``"segments"`` or
    ``"prefix"`` and ``reason`` says why the prefix walk was used.
    """

    kind: str
    graphs: dict[str, fx.Graph] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    reason: str = ""

    @classmethod
    def prefix(cls, names: Sequence[str], reason: str) -> WalkPlan:
        """The original walk: the root is opaque and owns every layer, in registration order."""
        return cls("prefix", {}, dict.fromkeys(names, ""), list(names), reason)


class _Analyser:
    """One forward pass of the float model on one batch that traces, verifies and records first calls."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.plan = WalkPlan("segments")
        self.failed: set[str] = set()  # modules whose graph did not reproduce them on some call: always opaque
        self.current: str | None = None  # owner recorded for layer calls; None while a reference run is made
        self.handles = [
            model.get_submodule(name).register_forward_pre_hook(self._hook(name), prepend=True) for name in names
        ]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.current is not None and name not in self.plan.owner:
                self.plan.owner[name] = self.current
                self.plan.order.append(name)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def visit(self, name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``module(*args, **kwargs)``, replayed from its graph if that reproduces it, else called as a whole."""
        if name not in self.failed and not _is_layer(module) and any(_is_layer(m) for m in module.modules()):
            graph = trace_module(module)
            if graph is not None:
                ok, out = self._try_graph(name, module, graph, args, kwargs)
                if ok:
                    self.plan.graphs[name] = graph
                    return out
        previous, self.current = self.current, name
        try:
            return module(*args, **kwargs)
        finally:
            self.current = previous

    def _try_graph(
        self, name: str, module: nn.Module, graph: fx.Graph, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bool, Any]:
        pristine, reference_in = _clone((args, kwargs)), _clone((args, kwargs))
        previous, self.current = self.current, None
        try:
            reference = module(*reference_in[0], **reference_in[1])
        finally:
            self.current = previous
        mark = len(self.plan.order)
        try:
            env = _bind(graph, module, args, kwargs)
            for node in graph.nodes:
                if node.op == "call_module":
                    a, k = _node_args(node, env)
                    env[node] = self.visit(_join(name, str(node.target)), module.get_submodule(str(node.target)), a, k)
                elif node.op == "output":
                    out = fx.node.map_arg(node.args[0], env.__getitem__)
                elif node.op != "placeholder":
                    env[node] = _eval(node, module, env)
            if _same(out, reference) and _same((args, kwargs), reference_in):
                return True, out
        except Exception:  # a graph that fails to replay: opaque
            pass
        self.failed.add(name)
        self.plan.graphs.pop(name, None)
        for layer in self.plan.order[mark:]:
            del self.plan.owner[layer]
        del self.plan.order[mark:]
        _restore((args, kwargs), pristine)
        return False, None


def plan_walk(
    model: nn.Module, names: Sequence[str], planned: Sequence[str], batch: Tensor, walk: str = "segments"
) -> WalkPlan:
    """Analyse ``model`` (float, eval) on one batch and return the walk plan (see module doc).

    ``names``: every Conv2d/Linear in registration order; ``planned``: those to be quantized. Falls back to the
    prefix walk when ``walk == "prefix"``, when the analysis raises, or when the first-call order of the planned
    layers is not their registration order (or one is never called).
    """
    if walk == "prefix":
        return WalkPlan.prefix(names, "requested")
    analyser = _Analyser(model, names)
    try:
        with torch.no_grad():
            analyser.visit("", model, (batch,), {})
    except Exception as err:  # the prefix walk reports the error
        return WalkPlan.prefix(names, f"analysis failed: {type(err).__name__}: {err}")
    finally:
        analyser.close()
    plan = analyser.plan
    wanted = set(planned)
    if [n for n in plan.order if n in wanted] != list(planned):
        return WalkPlan.prefix(names, "layers are not first called in registration order (or never called)")
    if "" not in plan.graphs:
        return WalkPlan.prefix(names, "the model's forward cannot be replayed from a traced graph")
    for layer, owner in plan.owner.items():
        parts = owner.split(".")
        ancestors = ["", *(".".join(parts[:i]) for i in range(1, len(parts)))]
        if owner in plan.graphs or any(a not in plan.graphs for a in ancestors):
            return WalkPlan.prefix(names, f"layer {layer!r} is first called inside {owner!r}, which is replayed")
    return plan


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory where the walk's cache lives: the CUDA device's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return None


def estimate_cache_bytes(model: nn.Module, batch: Tensor, n_batches: int, n_streams: int) -> int:
    """A generous estimate of the segment walk's peak cache: 3 × the largest module output seen on ``batch``
    (a residual block keeps its input and branch alive) × ``n_batches`` × ``n_streams``."""
    largest = 0

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal largest
        for t in tree_flatten(output)[0]:
            if isinstance(t, Tensor):
                largest = max(largest, t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return 3 * largest * max(n_batches, 1) * max(n_streams, 1)


def guard_memory(plan: WalkPlan, estimate: int, free: int | None, names: Sequence[str]) -> WalkPlan:
    """``plan``, or the prefix walk (which caches nothing) when the estimated cache exceeds half of ``free``."""
    if plan.kind != "segments" or free is None or estimate <= free // 2:
        return plan
    return WalkPlan.prefix(
        names,
        f"the segment walk's cache (estimated {estimate / 2**20:.0f} MiB) would exceed half the free memory "
        f"({free / 2**20:.0f} MiB); the prefix walk caches nothing (fewer or smaller calibration batches allow it)",
    )


Streams = dict[str, list[Args]]


class Walker:
    """Advances a walk layer by layer over ``batches`` for the active ``streams`` (``"f"``, ``"q"``).

    ``roots`` maps each stream to its model (same architecture): the float model and the model being quantized.
    :meth:`reach` runs the walk until the given layer's first call and returns a provider of its inputs; the
    caller quantizes the layer in place before the next :meth:`reach`. ``skipped`` layers (kept in float) are
    passed without being asked for.
    """

    def __init__(
        self,
        plan: WalkPlan,
        roots: Mapping[str, nn.Module],
        batches: Sequence[Tensor],
        streams: Sequence[str],
        skipped: Iterable[str] = (),
    ) -> None:
        self.plan, self.roots, self.streams = plan, roots, tuple(streams)
        self.skipped = set(skipped)
        self.done: set[str] = set()
        self.peak_bytes = 0
        self._envs: list[dict[str, list[dict[Any, Any]]]] = []
        self._batch_storages = {b.untyped_storage().data_ptr() for b in batches}
        self._gen = self._process("", {s: [((b,), {}) for b in batches] for s in self.streams})

    def reach(self, layer: str) -> Provider:
        """Advance to ``layer``'s first call; layers passed on the way must be ones the caller leaves as they are."""
        with torch.no_grad():
            for name, provider in self._gen:
                if name == layer:
                    return provider
                if name not in self.skipped:
                    raise LosslabError(f"walk order: reached {name!r} while waiting for {layer!r}")
        raise LosslabError(f"layer {layer!r} was never called in the forward pass; skip it")

    def close(self) -> None:
        """Stop the walk (the rest of the forward pass is not needed) and free the cache."""
        self._gen.close()
        self._envs.clear()

    def _pending(self, name: str) -> list[str]:
        return [n for n in self.plan.order if self.plan.owner[n] == name and n not in self.done]

    def _subtree_pending(self, name: str) -> bool:
        prefix = f"{name}."
        return any(
            n not in self.done and (not name or self.plan.owner[n] == name or self.plan.owner[n].startswith(prefix))
            for n in self.plan.order
        )

    def _process(self, name: str, inputs: Streams) -> Generator[tuple[str, Provider], None, Streams]:
        """Run module ``name`` on ``inputs`` (per stream, per batch), yielding at each first layer call."""
        modules = {s: self.roots[s].get_submodule(name) for s in self.streams}
        graph = self.plan.graphs.get(name)
        if graph is not None and self._subtree_pending(name):
            return (yield from self._interpret(name, graph, modules, inputs))
        for layer in self._pending(name):
            self.done.add(layer)
            yield layer, self._provider(name, layer, inputs)
        outputs = {s: [modules[s](*a, **k) for a, k in inputs[s]] for s in self.streams}
        self._measure(inputs, outputs)
        inputs.clear()
        return outputs

    def _provider(self, name: str, layer: str, inputs: Streams) -> Provider:
        def provide(batch_ids: Sequence[int], want_f: bool, want_q: bool) -> Iterator[tuple[Tensor | None, ...]]:
            wanted = {"f": want_f, "q": want_q}
            for b in batch_ids:
                yield tuple(self._capture(name, layer, s, inputs[s][b]) if wanted[s] else None for s in STREAMS)

        return provide  # type: ignore[return-value]

    def _capture(self, name: str, layer: str, stream: str, args: Args) -> Tensor:
        if stream not in self.streams:
            raise LosslabError(f"walk: stream {stream!r} was not requested when the walk started")
        root = self.roots[stream]
        module, target = root.get_submodule(name), root.get_submodule(layer)
        # the cached inputs are copied unless nothing can touch them before the hook: the call is the layer's own and
        # no other pre-hook runs first (the caller only reads the captured input)
        hooks = target._forward_pre_hooks or nn.modules.module._global_forward_pre_hooks
        untouched = module is target and not hooks
        a, k = args if untouched else _clone(args)
        with torch.no_grad():
            return capture_input(module, target, *a, **k)

    def _interpret(
        self, name: str, graph: fx.Graph, modules: Mapping[str, nn.Module], inputs: Streams
    ) -> Generator[tuple[str, Provider], None, Streams]:
        envs = {s: [_bind(graph, modules[s], a, k) for a, k in inputs[s]] for s in self.streams}
        inputs.clear()  # only the environments keep the inputs, so they are freed at their last use
        drop = _drop_after(graph)
        self._envs.append(envs)
        try:
            for node in graph.nodes:
                if node.op == "call_module":
                    args = {s: [_node_args(node, env) for env in envs[s]] for s in self.streams}
                    self._drop(envs, drop.get(node, []))  # the callee owns its inputs now (and clears them)
                    outs = yield from self._process(_join(name, str(node.target)), args)
                    for s in self.streams:
                        for env, out in zip(envs[s], outs[s]):
                            env[node] = out
                elif node.op == "output":
                    result = {s: [fx.node.map_arg(node.args[0], env.__getitem__) for env in envs[s]] for s in envs}
                elif node.op != "placeholder":
                    for s in self.streams:
                        for env in envs[s]:
                            env[node] = _eval(node, modules[s], env)
                self._measure()
                self._drop(envs, drop.get(node, []))
        finally:
            self._envs.pop()
        return result

    def _drop(self, envs: Mapping[str, list[dict[Any, Any]]], values: Sequence[fx.Node]) -> None:
        for value in values:
            for stream_envs in envs.values():
                for env in stream_envs:
                    env.pop(value, None)

    def _measure(self, *extra: Any) -> None:
        """Update ``peak_bytes``: distinct tensor storages held by the environments (and ``extra``: a call's
        inputs and outputs), calibration batches excluded."""
        values = [list(env.values()) for envs in self._envs for stream_envs in envs.values() for env in stream_envs]
        storages: dict[int, int] = {}
        for t in tree_flatten([values, list(extra)])[0]:
            if isinstance(t, Tensor):
                s = t.untyped_storage()
                storages[s.data_ptr()] = s.nbytes()
        for ptr in self._batch_storages:
            storages.pop(ptr, None)
        self.peak_bytes = max(self.peak_bytes, sum(storages.values()))
