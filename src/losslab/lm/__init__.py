"""Causal language models: rooted-loss finetuning, sequential layer-wise quantization, perplexity (specs/llm.md).

    from losslab.lm import TokenLossSpec, causal_lm_loss, quantize_decoder, perplexity
    loss = causal_lm_loss(model(ids).logits, ids, TokenLossSpec("root", k=5, m=5))
    result = quantize_decoder(model, GPTQ(bits=4), calib_windows)       # a quantized copy (inplace=True: no copy)
    perplexity(model, eval_windows(test_ids, 2048)).ppl                 # exp(mean token CE)

Finetuning runs causal-LM training as a task of the plain loop (:mod:`losslab.lm.finetune`, config in
:mod:`losslab.lm.config`); the CLI is :mod:`losslab.cli.lm`. Importing the package loads no torch: its names load
on first use.
"""

from losslab.lazy import lazy_exports

_WHERE = {
    **dict.fromkeys(("calibration_windows", "eval_windows", "load_calibration", "load_corpus", "tokenize_text"),
                    "losslab.lm.data"),
    **dict.fromkeys(("load_packed_lm", "save_packed_lm"), "losslab.lm.packing"),
    **dict.fromkeys(("PerplexityResult", "perplexity"), "losslab.lm.perplexity"),
    **dict.fromkeys(("capture_layer_inputs", "quantize_decoder"), "losslab.lm.quantize"),
    **dict.fromkeys(("TokenLossSpec", "causal_lm_loss", "shift_labels", "token_loss"), "losslab.objectives.token"),
}  # fmt: skip
__getattr__ = lazy_exports(__name__, _WHERE)

__all__ = sorted(_WHERE)
