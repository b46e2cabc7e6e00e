"""Causal language models: rooted-loss finetuning, sequential layer-wise quantization, perplexity (specs/llm.md).

    from losslab.lm import TokenLossSpec, causal_lm_loss, quantize_decoder, perplexity
    loss = causal_lm_loss(model(ids).logits, ids, TokenLossSpec("root", k=5, m=5))
    result = quantize_decoder(model, GPTQ(bits=4), calib_windows)       # a quantized copy (inplace=True: no copy)
    perplexity(model, eval_windows(test_ids, 2048)).ppl                 # exp(mean token CE)

Heavy pieces (finetuning in the plain training loop, the CLI) live in :mod:`losslab.lm.finetune` and
:mod:`losslab.cli.lm`.
"""

from losslab.lm.data import calibration_windows, eval_windows, load_calibration, load_corpus, tokenize_text
from losslab.lm.packing import load_packed_lm, save_packed_lm
from losslab.lm.perplexity import PerplexityResult, perplexity
from losslab.lm.quantize import capture_layer_inputs, quantize_decoder
from losslab.objectives.token import TokenLossSpec, causal_lm_loss, shift_labels, token_loss

__all__ = [
    "PerplexityResult",
    "TokenLossSpec",
    "calibration_windows",
    "capture_layer_inputs",
    "causal_lm_loss",
    "eval_windows",
    "load_calibration",
    "load_corpus",
    "load_packed_lm",
    "perplexity",
    "quantize_decoder",
    "save_packed_lm",
    "shift_labels",
    "token_loss",
    "tokenize_text",
]
