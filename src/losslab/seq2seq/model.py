"""Transformer encoder-decoder for translation (Vaswani et al. 2017, fairseq's layout) with separate q/k/v/out
projections, so :mod:`losslab.layers.factorize` and the per-head attention FD/SI (:mod:`losslab.layers.attention`)
apply to it unchanged.

Why our own thin module instead of ``nn.Transformer``: ``nn.MultiheadAttention`` keeps Q/K/V in one raw
``in_proj_weight`` parameter and calls a fused functional kernel, so its projections cannot be replaced by
factorized layers; here every projection is an ``nn.Linear`` and attention itself is PyTorch's
``scaled_dot_product_attention`` (flash/memory-efficient kernels on GPUs)::

    cfg = ModelConfig.preset("transformer_iwslt_de_en", vocab_size=10000)
    model = Seq2SeqTransformer(cfg)
    fnl_factorize(model, rank_scale=0.5)     # FNL: FFN, embeddings, output (heads: ModelConfig.attention_dim)
    logits = model(src, tgt_in)              # src (B, S), tgt_in (B, T) token ids, PAD = 0 -> (B, T, V)
    memory, src_pad = model.encode(src)      # decoding: model.decode(prefix, ...) or model.decode_step(...)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab.errors import ConfigError, check_range, unknown_name_error
from losslab.layers.lowrank import LowRankEmbedding, LowRankLinear, matrix_rank_for_scale
from losslab.seq2seq.config import PRESETS
from losslab.seq2seq.tokenizer import PAD


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and layout of the encoder-decoder.

    ``normalize_before`` False is fairseq's post-norm default. ``attention_dim`` is the q/k/v width H·d_h (default
    d_model; FNL's ``--rank-scale s`` makes it int(s·d/H)·H). The FNL seed's ``transformer_small`` layout is
    ``learned_positions`` (one table per side), untied embeddings (``tie_embeddings`` False: encoder, decoder and
    an output Linear with bias), projections without bias (``bias`` False), no √d embedding scale and its init
    (``init="fnl"``: U(−0.1, 0.1) Linears, N(0, 0.1) embeddings); the fairseq layout is the default.
    """

    vocab_size: int
    d_model: int = 512
    heads: int = 4
    ffn_dim: int = 1024
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.3
    normalize_before: bool = False
    max_positions: int = 1024
    attention_dim: int | None = None
    learned_positions: bool = False
    tie_embeddings: bool = True
    bias: bool = True
    embed_scale: bool = True
    init: Literal["xavier", "fnl"] = "xavier"

    def __post_init__(self) -> None:
        for key in ("vocab_size", "d_model", "heads", "ffn_dim", "encoder_layers", "decoder_layers", "max_positions"):
            check_range(key, getattr(self, key), low=1)
        check_range("dropout", self.dropout, low=0.0, high=1.0, high_inclusive=False)
        if self.d_model % self.heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by heads={self.heads}; change one of them")
        if self.attention_dim is not None:
            check_range("attention_dim", self.attention_dim, low=self.heads)
            if self.attention_dim % self.heads:
                raise ConfigError(f"attention_dim={self.attention_dim} is not divisible by heads={self.heads}")
        if self.init not in ("xavier", "fnl"):
            raise ConfigError(f"init={self.init!r} is not allowed; choose one of: xavier, fnl")

    @property
    def inner_dim(self) -> int:
        """Width H·d_h of the query/key/value projections."""
        return self.attention_dim or self.d_model

    @classmethod
    def preset(cls, arch: str, vocab_size: int, **overrides: int | float | bool) -> ModelConfig:
        if arch not in PRESETS:
            raise unknown_name_error("seq2seq arch", arch, PRESETS)
        return replace(cls(vocab_size=vocab_size, **PRESETS[arch]), **overrides)

    def to_dict(self) -> dict[str, int | float | bool]:
        return asdict(self)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linears and ``num_heads``.

    q/k/v map d_model to ``inner`` = H·d_h (default d_model) and ``out_proj`` maps it back."""

    def __init__(
        self, d_model: int, num_heads: int, dropout: float, inner: int | None = None, bias: bool = True
    ) -> None:
        super().__init__()
        inner = inner or d_model
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj, self.k_proj = nn.Linear(d_model, inner, bias=bias), nn.Linear(d_model, inner, bias=bias)
        self.v_proj, self.out_proj = nn.Linear(d_model, inner, bias=bias), nn.Linear(inner, d_model, bias=bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, H, T, d_h)

    def keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Projected keys and values (B, H, S, d_h) of memory (B, S, d)."""
        return self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, keep: Tensor | None = None, causal: bool = False) -> Tensor:
        """x (B, T, d) attends over projected keys/values (B, H, S, d_h); ``keep`` (B, 1, 1, S) marks real keys."""
        q = self._heads(self.q_proj(x))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, T, d)

    def forward(self, x: Tensor, memory: Tensor, keep: Tensor | None = None, causal: bool = False) -> Tensor:
        """x (B, T, d) attends over memory (B, S, d)."""
        return self.attend(x, *self.keys_values(memory), keep, causal)


class _Layer(nn.Module):
    """Encoder layer (self-attention, FFN) or decoder layer (causal self-attention, cross-attention, FFN)."""

    def __init__(self, cfg: ModelConfig, cross: bool) -> None:
        super().__init__()
        d, inner, bias = cfg.d_model, cfg.inner_dim, cfg.bias
        self.self_attn = MultiHeadAttention(d, cfg.heads, cfg.dropout, inner, bias)
        self.cross_attn = MultiHeadAttention(d, cfg.heads, cfg.dropout, inner, bias) if cross else None
        self.fc1, self.fc2 = nn.Linear(d, cfg.ffn_dim, bias=bias), nn.Linear(cfg.ffn_dim, d, bias=bias)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3 if cross else 2))
        self.pre, self.p = cfg.normalize_before, cfg.dropout

    def _sub(self, x: Tensor, i: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """Residual sub-block ``i`` around ``fn``: pre-norm x + fn(LN(x)) or post-norm LN(x + fn(x))."""
        h = fn(self.norms[i](x) if self.pre else x)
        x = x + F.dropout(h, self.p, self.training)
        return x if self.pre else self.norms[i](x)

    def forward(self, x: Tensor, self_keep: Tensor | None, memory: Tensor | None, mem_keep: Tensor | None) -> Tensor:
        causal = self.cross_attn is not None
        x = self._sub(x, 0, lambda h: self.self_attn(h, h, self_keep, causal=causal))
        if self.cross_attn is not None:
            x = self._sub(x, 1, lambda h: self.cross_attn(h, memory, mem_keep))
        return self._sub(x, len(self.norms) - 1, lambda h: self.fc2(F.relu(self.fc1(h))))

    def step(self, x: Tensor, cache: dict[str, Tensor], mem_keep: Tensor) -> Tensor:
        """Decoder layer on the newest position x (B, 1, d). ``cache``: cross-attention keys/values ``mk``/``mv``
        and the self-attention keys/values ``k``/``v`` (B, H, t, d_h) of the earlier positions, extended in place."""

        def self_part(h: Tensor) -> Tensor:
            k, v = self.self_attn.keys_values(h)
            cache["k"] = torch.cat([cache["k"], k], 2) if "k" in cache else k
            cache["v"] = torch.cat([cache["v"], v], 2) if "v" in cache else v
            return self.self_attn.attend(h, cache["k"], cache["v"])  # the newest query sees every earlier key

        x = self._sub(x, 0, self_part)
        x = self._sub(x, 1, lambda h: self.cross_attn.attend(h, cache["mk"], cache["mv"], mem_keep))
        return self._sub(x, 2, lambda h: self.fc2(F.relu(self.fc1(h))))


def sinusoidal_positions(n: int, d: int) -> Tensor:
    """(n, d) sinusoidal position table (fairseq's layout: sines in the first half, cosines in the second)."""
    half = d // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(n, dtype=torch.float64)[:, None] * freq[None, :]
    table = torch.cat([angles.sin(), angles.cos()], 1)
    return F.pad(table, (0, d - 2 * half)).float()


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder over one joint vocabulary.

    Tied (fairseq layout): one embedding for source, target and the output projection, sinusoidal positions.
    Untied (``tie_embeddings`` False, the FNL seed's layout): ``embed`` (source), ``tgt_embed`` and an ``output``
    Linear with bias. With ``learned_positions`` each side has a position table (``src_positions``,
    ``tgt_positions``) of ``max_positions`` rows.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        std = 0.1 if cfg.init == "fnl" else cfg.d_model**-0.5
        self.embed = _embedding(cfg.vocab_size, cfg.d_model, std, PAD)
        self.tgt_embed = None if cfg.tie_embeddings else _embedding(cfg.vocab_size, cfg.d_model, std, PAD)
        if cfg.learned_positions:
            self.src_positions = _embedding(cfg.max_positions, cfg.d_model, std, None)
            self.tgt_positions = _embedding(cfg.max_positions, cfg.d_model, std, None)
        else:
            table = sinusoidal_positions(cfg.max_positions, cfg.d_model)
            self.register_buffer("positions", table, persistent=False)
        self.encoder = nn.ModuleList(_Layer(cfg, cross=False) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(_Layer(cfg, cross=True) for _ in range(cfg.decoder_layers))
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if cfg.normalize_before else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if cfg.normalize_before else nn.Identity()
        # the output projection: tied to ``embed`` (None after fnl_factorize), or its own Linear with a bias
        self.output: nn.Module | None = nn.Linear(cfg.d_model, cfg.vocab_size, bias=not cfg.tie_embeddings)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _init_linear(m, cfg.init)
        if cfg.tie_embeddings:
            self.output.weight = self.embed.weight

    def _embed(self, tokens: Tensor, side: str, start: int = 0) -> Tensor:
        """Token plus position embeddings of ``tokens`` (B, T) at positions start..start+T−1, with dropout."""
        table = self.embed if side == "src" or self.tgt_embed is None else self.tgt_embed
        x = table(tokens)
        if self.cfg.embed_scale:
            x = x * math.sqrt(self.cfg.d_model)
        span = slice(start, start + tokens.shape[1])
        if self.cfg.learned_positions:
            positions = self.src_positions if side == "src" else self.tgt_positions
            x = x + positions(torch.arange(span.start, span.stop, device=tokens.device))
        else:
            x = x + self.positions[span]
        return F.dropout(x, self.cfg.dropout, self.training)

    def logits(self, h: Tensor) -> Tensor:
        """Output projection of decoder states h (…, d): the output Linear, or the tied table (low-rank after
        :func:`fnl_factorize`: h·V·Uᵀ, never the vocab×d product)."""
        if self.output is not None:
            return self.output(h)
        table = self.embed
        if isinstance(table, LowRankEmbedding):
            return F.linear(F.linear(h, table.inner_v().T), table.U)
        return F.linear(h, table.weight)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> memory (B, S, d) and the key mask (B, 1, 1, S), True on real tokens."""
        keep = (src != PAD)[:, None, None, :]
        x = self._embed(src, "src")
        for layer in self.encoder:
            x = layer(x, keep, None, None)
        return self.encoder_norm(x), keep

    def decode(self, tgt_in: Tensor, memory: Tensor, mem_keep: Tensor) -> Tensor:
        """tgt_in (B, T) starting with BOS -> logits (B, T, V) (causal; no cache)."""
        x = self._embed(tgt_in, "tgt")
        for layer in self.decoder:
            x = layer(x, None, memory, mem_keep)
        return self.logits(self.decoder_norm(x))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, keep = self.encode(src)
        return self.decode(tgt_in, memory, keep)

    def start_cache(self, memory: Tensor) -> list[dict[str, Tensor]]:
        """Per decoder layer: the cross-attention keys/values of memory (B, S, d), projected once."""
        return [dict(zip(("mk", "mv"), layer.cross_attn.keys_values(memory))) for layer in self.decoder]

    def decode_step(self, token: Tensor, t: int, cache: list[dict[str, Tensor]], mem_keep: Tensor) -> Tensor:
        """Logits (B, V) of position t+1 given token (B,) at position t; extends ``cache`` (incremental decoding,
        equal to ``decode(prefix)[:, t]``)."""
        x = self._embed(token[:, None], "tgt", start=t)
        for layer, layer_cache in zip(self.decoder, cache):
            x = layer.step(x, layer_cache, mem_keep)
        return self.logits(self.decoder_norm(x))[:, 0]

    @staticmethod
    def reorder_cache(cache: list[dict[str, Tensor]], index: Tensor) -> None:
        """Keep the self-attention cache rows ``index`` (B·K,) after a beam step (cross-attention rows stay:
        beams only move within their own sentence, whose memory rows are equal)."""
        for layer_cache in cache:
            layer_cache["k"], layer_cache["v"] = layer_cache["k"][index], layer_cache["v"][index]


def _embedding(rows: int, dim: int, std: float, padding_idx: int | None) -> nn.Embedding:
    """An embedding table drawn from N(0, std²), its padding row zero."""
    table = nn.Embedding(rows, dim, padding_idx=padding_idx)
    nn.init.normal_(table.weight, 0.0, std)
    if padding_idx is not None:
        with torch.no_grad():
            table.weight[padding_idx].zero_()
    return table


def _init_linear(layer: nn.Linear, init: str) -> None:
    """fairseq: Xavier-uniform weights, zero biases; FNL seed: U(−0.1, 0.1) weights and biases."""
    if init == "fnl":
        nn.init.uniform_(layer.weight, -0.1, 0.1)
        if layer.bias is not None:
            nn.init.uniform_(layer.bias, -0.1, 0.1)
        return
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def fnl_factorized_names(model: Seq2SeqTransformer) -> list[str]:
    """The layers FNL's ``--rank-scale`` factorizes: every FFN fc1/fc2, the token embeddings, learned position
    tables and an untied output projection (the seed's ``patch_transformer``); attention stays dense."""
    names = [f"{side}.{i}.{fc}" for side in ("encoder", "decoder") for i in range(len(getattr(model, side)))
             for fc in ("fc1", "fc2")]  # fmt: skip
    names += ["embed"] + ([] if model.tgt_embed is None else ["tgt_embed"])
    if model.cfg.learned_positions:
        names += ["src_positions", "tgt_positions"]
    if not model.cfg.tie_embeddings:
        names.append("output")
    return names


def fnl_factorize(model: Seq2SeqTransformer, rank_scale: float, spectral: bool = True) -> int:
    """Replace :func:`fnl_factorized_names` by low-rank layers of rank max(round(s·min(m, n)), 1), in place.

    The seed's ``FactorizedLinear``/``FactorizedEmbedding`` (rank int(round(s·min(m, n)))), for 0 < s < 1 only;
    with tied embeddings the output projection reads the factorized table (:meth:`Seq2SeqTransformer.logits`).
    ``spectral``: SI from the dense weights; otherwise losslab's factor-Kaiming init. The attention width is a
    construction-time size (:func:`losslab.seq2seq.config.fnl_attention_dim`). Returns the number of layers replaced.
    """
    check_range("rank_scale", rank_scale, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    names = fnl_factorized_names(model)
    for name in names:
        dense = model.get_submodule(name)
        rank = matrix_rank_for_scale(rank_scale, *dense.weight.shape)
        kind = LowRankEmbedding if isinstance(dense, nn.Embedding) else LowRankLinear
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, kind.from_dense(dense, rank, spectral=spectral))
    if model.cfg.tie_embeddings:
        model.output = None
    return len(names)
