"""Transformer encoder-decoder for translation (Vaswani et al. 2017, fairseq's layout) with separate q/k/v/out
projections, so :mod:`losslab.layers.factorize` and the per-head attention FD/SI (:mod:`losslab.layers.attention`)
apply to it unchanged.

Why our own thin module instead of ``nn.Transformer``: ``nn.MultiheadAttention`` keeps Q/K/V in one raw
``in_proj_weight`` parameter and calls a fused functional kernel, so its projections cannot be replaced by
factorized layers; here every projection is an ``nn.Linear`` and attention itself is PyTorch's
``scaled_dot_product_attention`` (flash/memory-efficient kernels on GPUs)::

    cfg = ModelConfig.preset("transformer_iwslt_de_en", vocab_size=10000)
    model = Seq2SeqTransformer(cfg)
    logits = model(src, tgt_in)              # src (B, S), tgt_in (B, T) token ids, PAD = 0 -> (B, T, V)
    memory, src_pad = model.encode(src)      # decoding: model.decode(prefix, ...) or model.decode_step(...)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab.errors import ConfigError, check_range, unknown_name_error
from losslab.seq2seq.config import PRESETS
from losslab.seq2seq.tokenizer import PAD


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the encoder-decoder; ``normalize_before`` False is fairseq's post-norm default."""

    vocab_size: int
    d_model: int = 512
    heads: int = 4
    ffn_dim: int = 1024
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.3
    normalize_before: bool = False
    max_positions: int = 1024

    def __post_init__(self) -> None:
        for key in ("vocab_size", "d_model", "heads", "ffn_dim", "encoder_layers", "decoder_layers", "max_positions"):
            check_range(key, getattr(self, key), low=1)
        check_range("dropout", self.dropout, low=0.0, high=1.0, high_inclusive=False)
        if self.d_model % self.heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by heads={self.heads}; change one of them")

    @classmethod
    def preset(cls, arch: str, vocab_size: int, **overrides: int | float | bool) -> ModelConfig:
        if arch not in PRESETS:
            raise unknown_name_error("seq2seq arch", arch, PRESETS)
        return replace(cls(vocab_size=vocab_size, **PRESETS[arch]), **overrides)

    def to_dict(self) -> dict[str, int | float | bool]:
        return asdict(self)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linears and ``num_heads``."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

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
        d = cfg.d_model
        self.self_attn = MultiHeadAttention(d, cfg.heads, cfg.dropout)
        self.cross_attn = MultiHeadAttention(d, cfg.heads, cfg.dropout) if cross else None
        self.fc1, self.fc2 = nn.Linear(d, cfg.ffn_dim), nn.Linear(cfg.ffn_dim, d)
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
    """Encoder-decoder with one embedding shared by source, target and the output projection (joint vocab)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, 0.0, cfg.d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        self.register_buffer("positions", sinusoidal_positions(cfg.max_positions, cfg.d_model), persistent=False)
        self.encoder = nn.ModuleList(_Layer(cfg, cross=False) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(_Layer(cfg, cross=True) for _ in range(cfg.decoder_layers))
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if cfg.normalize_before else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if cfg.normalize_before else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)  # last Linear: factorize's classifier
        self.output.weight = self.embed.weight  # tied

    def _embed(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model) + self.positions[: tokens.shape[1]]
        return F.dropout(x, self.cfg.dropout, self.training)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> memory (B, S, d) and the key mask (B, 1, 1, S), True on real tokens."""
        keep = (src != PAD)[:, None, None, :]
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, keep, None, None)
        return self.encoder_norm(x), keep

    def decode(self, tgt_in: Tensor, memory: Tensor, mem_keep: Tensor) -> Tensor:
        """tgt_in (B, T) starting with BOS -> logits (B, T, V) (causal; no cache)."""
        x = self._embed(tgt_in)
        for layer in self.decoder:
            x = layer(x, None, memory, mem_keep)
        return self.output(self.decoder_norm(x))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, keep = self.encode(src)
        return self.decode(tgt_in, memory, keep)

    def start_cache(self, memory: Tensor) -> list[dict[str, Tensor]]:
        """Per decoder layer: the cross-attention keys/values of memory (B, S, d), projected once."""
        return [dict(zip(("mk", "mv"), layer.cross_attn.keys_values(memory))) for layer in self.decoder]

    def decode_step(self, token: Tensor, t: int, cache: list[dict[str, Tensor]], mem_keep: Tensor) -> Tensor:
        """Logits (B, V) of position t+1 given token (B,) at position t; extends ``cache`` (incremental decoding,
        equal to ``decode(prefix)[:, t]``)."""
        x = self.embed(token[:, None]) * math.sqrt(self.cfg.d_model) + self.positions[t : t + 1]
        x = F.dropout(x, self.cfg.dropout, self.training)
        for layer, layer_cache in zip(self.decoder, cache):
            x = layer.step(x, layer_cache, mem_keep)
        return self.output(self.decoder_norm(x))[:, 0]

    @staticmethod
    def reorder_cache(cache: list[dict[str, Tensor]], index: Tensor) -> None:
        """Keep the self-attention cache rows ``index`` (B·K,) after a beam step (cross-attention rows stay:
        beams only move within their own sentence, whose memory rows are equal)."""
        for layer_cache in cache:
            layer_cache["k"], layer_cache["v"] = layer_cache["k"][index], layer_cache["v"][index]
