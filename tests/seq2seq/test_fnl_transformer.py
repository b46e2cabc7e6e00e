"""FNL's Transformer as the seed defines it (microsoft/fnl_paper, Transformer-PyTorch): the ``transformer_small``
sizes, what ``--rank-scale s`` factorizes and shrinks, parameter counts against the seed's own definitions, the
layouts' incremental decoding, and the seed's fairseq flags."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from losslab.cli import cli
from losslab.errors import ConfigError
from losslab.layers.attention import attention_modules
from losslab.layers.lowrank import LowRankEmbedding, LowRankLinear
from losslab.seq2seq.config import TranslateConfig, fairseq_overrides
from losslab.seq2seq.model import ModelConfig, Seq2SeqTransformer, fnl_factorize
from losslab.seq2seq.tokenizer import PAD
from losslab.seq2seq.train import build_model


def seed_parameter_count(v_src: int, v_tgt: int, s: float, d: int = 256, f: int = 1024, h: int = 4, layers: int = 2,
                         positions: int = 1024) -> int:  # fmt: skip
    """Parameters of the seed's ``transformer_small`` after ``patch_transformer`` at rank scale s, from its code:

    - ``MultiheadAttention``: ``_query``, ``_key`` (d→k), ``_value`` (d→k), ``output_perform`` (k→d), no bias,
      k = int(s·d/H)·H when s else d: 4·d·k per attention.
    - ``FeedForwardNetwork``: ``fc1`` (d→f), ``fc2`` (f→d), no bias.
    - ``FactorizedLinear``/``FactorizedEmbedding`` of an m×n weight (0 < s < 1 only): U (m×r) + VT (r×n) with
      r = int(round(s·min(m, n))); the bias (``out_embed`` has one, V_tgt entries) is kept.
    - ``Embedding`` tables: tokens V×d, learned positions ``max_positions`` = 1024 rows, per side.
    - ``LayerNormalization``: gamma and beta (2d): two per encoder layer, three per decoder layer, one ``out_norm``
      per side.
    - the decoder's ``out_embed`` = ``Linear(d, V_tgt)`` with bias (untied).
    """
    factorized = 0.0 < s < 1.0
    k = int(s * d / h) * h if s else d

    def matrix(m: int, n: int) -> int:
        return round(s * min(m, n)) * (m + n) if factorized else m * n  # int(round(·)) in the seed

    attention, ffn, norm = 4 * d * k, matrix(f, d) + matrix(d, f), 2 * d
    encoder = matrix(v_src, d) + matrix(positions, d) + layers * (attention + ffn + 2 * norm) + norm
    decoder = matrix(v_tgt, d) + matrix(positions, d) + layers * (2 * attention + ffn + 3 * norm) + norm
    return encoder + decoder + matrix(v_tgt, d) + v_tgt


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_transformer_small_is_the_seeds_sizes() -> None:
    cfg = ModelConfig.preset("transformer_small", vocab_size=100)
    assert (cfg.d_model, cfg.ffn_dim, cfg.heads, cfg.encoder_layers, cfg.decoder_layers) == (256, 1024, 4, 2, 2)
    assert cfg.normalize_before and cfg.learned_positions and not cfg.tie_embeddings and not cfg.bias
    assert cfg.max_positions == 1024 and not cfg.embed_scale and cfg.init == "fnl"


@pytest.mark.parametrize("vocab", [8848, 10000])  # 8848: the seed's IWSLT14 target dictionary size
@pytest.mark.parametrize("s", [None, 1.0, 0.5, 0.25, 0.1])
def test_parameter_count_equals_the_seeds(vocab: int, s: float | None) -> None:
    fnl = s is not None and s < 1
    model = build_model(TranslateConfig(arch="transformer_small", rank_scale=s, spectral=fnl), vocab)
    assert n_params(model) == seed_parameter_count(vocab, vocab, s or 0.0)


def test_rank_scale_factorizes_what_the_seed_factorizes() -> None:
    s, d, heads, vocab = 0.5, 256, 4, 1000
    model = build_model(TranslateConfig(arch="transformer_small", rank_scale=s), vocab)
    head = int(s * d / heads)  # 32
    for _, attn in attention_modules(model):  # heads shrink; attention stays dense
        assert attn.q_proj.out_features == heads * head and attn.out_proj.in_features == heads * head
        assert attn.q_proj.bias is None
    lowrank = {n: m for n, m in model.named_modules() if isinstance(m, (LowRankLinear, LowRankEmbedding))}
    ffn = {f"{side}.{i}.{fc}" for side in ("encoder", "decoder") for i in range(2) for fc in ("fc1", "fc2")}
    assert set(lowrank) == ffn | {"embed", "tgt_embed", "src_positions", "tgt_positions", "output"}
    assert all(m.rank == round(s * d) for m in lowrank.values())


def test_ffn_rank_scale_keeps_the_ffn_only_variant() -> None:
    model = build_model(TranslateConfig(arch="transformer_small", ffn_rank_scale=0.5), 1000)
    lowrank = {n for n, m in model.named_modules() if isinstance(m, (LowRankLinear, LowRankEmbedding))}
    assert lowrank == {f"{side}.{i}.{fc}" for side in ("encoder", "decoder") for i in range(2) for fc in ("fc1", "fc2")}
    assert all(a.q_proj.out_features == 256 for _, a in attention_modules(model))
    with pytest.raises(ConfigError, match=r"rank_scale .* or ffn_rank_scale"):
        TranslateConfig.build(dict(rank_scale=0.5, ffn_rank_scale=0.5))


def _tiny(**layout: object) -> ModelConfig:
    return ModelConfig(vocab_size=30, d_model=16, heads=2, ffn_dim=24, encoder_layers=1, decoder_layers=2,
                       dropout=0.0, max_positions=32, **layout)  # fmt: skip


@pytest.mark.parametrize(
    "layout",
    [
        dict(normalize_before=True, learned_positions=True, tie_embeddings=False, bias=False, embed_scale=False,
             init="fnl", attention_dim=8),
        dict(attention_dim=8),  # tied embeddings: the output reads the factorized table
    ],
)  # fmt: skip
def test_fnl_model_decodes_incrementally_and_spectral_init_keeps_the_function(layout: dict) -> None:
    torch.manual_seed(0)
    dense = Seq2SeqTransformer(_tiny(**layout)).double().eval()
    src, tgt = torch.randint(4, 30, (3, 6)), torch.randint(4, 30, (3, 5))
    src[1, 4:] = PAD
    reference = dense(src, tgt)
    model = Seq2SeqTransformer(_tiny(**layout)).double().eval()
    model.load_state_dict(dense.state_dict())
    fnl_factorize(model, rank_scale=0.99, spectral=True)  # rank round(0.99·16) = 16: full rank, same function
    torch.testing.assert_close(model(src, tgt), reference, atol=1e-9, rtol=1e-9)
    memory, keep = model.encode(src)
    cache = model.start_cache(memory)
    steps = torch.stack([model.decode_step(tgt[:, t], t, cache, keep) for t in range(5)], 1)
    torch.testing.assert_close(steps, model.decode(tgt, memory, keep), atol=1e-10, rtol=1e-10)
    if layout.get("tie_embeddings", True):
        assert model.output is None
        table = model.embed.weight_matrix()
        h = torch.randn(2, 16, dtype=torch.float64)
        torch.testing.assert_close(model.logits(h), h @ table.T)


def test_seed_fairseq_flags_are_mapped_or_refused() -> None:
    assert fairseq_overrides({"criterion": "label_smoothed_cross_entropy"}) == {"loss": "ce"}
    assert fairseq_overrides({"criterion": "cross_entropy"}) == {"loss": "ce", "label_smoothing": 0.0}
    assert fairseq_overrides({"lr_scheduler": "inverse_sqrt", "momentum": "0.99", "distributed_world_size": "1",
                              "no_epoch_checkpoints": True}) == {}  # fmt: skip
    for given, fix in [({"criterion": "adaptive_loss"}, "--loss root"), ({"momentum": "0.9"}, "momentum 0.99"),
                       ({"lr_scheduler": "fixed"}, "inverse_sqrt"), ({"save_dir": "ckpt"}, "--out-dir")]:  # fmt: skip
        with pytest.raises(ConfigError, match=fix):
            fairseq_overrides(given)


def test_shipped_fnl_config_is_the_seeds_recipe() -> None:
    from losslab.cli.translate import _config

    cfg = _config("fnl_iwslt14", {})
    assert cfg.arch == "transformer_small" and cfg.rank_scale == 0.5 and cfg.normalize_before is None
    schedule = (cfg.optimizer, cfg.lr, cfg.warmup_init_lr, cfg.warmup_updates, cfg.max_updates)
    assert schedule == ("nag", 0.25, 0.25, 4000, 100000)
    assert (cfg.gradient_clip, cfg.dropout, cfg.max_tokens, cfg.label_smoothing) == (0.1, 0.2, 4000, 0.1)


@pytest.mark.slow
def test_demo_fnl_option_prints_both_parameter_counts(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["translate", "demo", "--out-dir", str(tmp_path / "d"), "--epochs", "1",
                                      "--rank-scale", "0.5", "--accelerator", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    dense = build_model(TranslateConfig(arch="toy", normalize_before=True), 160)
    fnl = build_model(TranslateConfig(arch="toy", normalize_before=True, rank_scale=0.5), 160)
    assert f"FNL rank scale 0.5: {n_params(fnl):,} parameters (dense {n_params(dense):,}" in result.output
