"""The standard LM perplexity protocol (GPTQ lineage, llm.md §5): exp of the mean token cross entropy.

The test text is tokenized once, cut into non-overlapping windows of ``seqlen`` tokens (tail dropped), each
window is scored alone, and ppl = exp(mean over windows of the window's mean CE over its ``seqlen − 1``
predictions). Always cross entropy, whatever loss trained the model::

    windows = eval_windows(tokenize_text(tok, load_corpus("wikitext2", "test")), seqlen=2048)
    result = perplexity(model, windows, protocol=protocol_name("wikitext2", 2048))
    print(result.describe())      # "27.65 (token perplexity = exp(mean CE) on wikitext-2-raw-v1 test ...)"
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from losslab.errors import LosslabError
from losslab.objectives.token import TokenLossSpec, causal_lm_loss

_CE = TokenLossSpec(kind="ce")


@dataclass(frozen=True)
class PerplexityResult:
    """``ppl`` = exp(``mean_ce``) in nats per token over ``windows`` windows of ``seqlen`` tokens."""

    ppl: float
    mean_ce: float
    windows: int
    seqlen: int
    protocol: str

    def describe(self) -> str:
        """``"<ppl> (<protocol>; <n> windows)"``, the line the CLI prints."""
        return f"perplexity {self.ppl:.4f} ({self.protocol}; {self.windows} windows)"


@torch.no_grad()
def window_ce(
    model: nn.Module, windows: Tensor, device: torch.device | str | None = None, progress: bool = False
) -> Tensor:
    """Mean next-token cross entropy of each window ``(n, T)`` → ``(n,)`` float64, windows scored one by one."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    values = []
    for window in tqdm(windows, desc="perplexity", disable=not progress, leave=False):
        ids = window.view(1, -1).to(dev)
        logits = model(input_ids=ids, use_cache=False).logits
        values.append(float(causal_lm_loss(logits, ids, _CE)))
    return torch.tensor(values, dtype=torch.float64)


def perplexity(
    model: nn.Module,
    windows: Tensor,
    *,
    protocol: str = "token perplexity = exp(mean CE)",
    device: torch.device | str | None = None,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity of ``model`` on token ``windows`` ``(n, T)``: exp(mean over windows of the window mean CE).

    TF32 matmuls are switched off for the evaluation (the protocol's fp16/fp32 numerics), and restored.
    """
    was_training = model.training
    model.eval()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ce = window_ce(model, windows, device, progress)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        model.train(was_training)
    mean_ce = float(ce.mean())
    if not math.isfinite(mean_ce):
        raise LosslabError(
            f"the model's mean cross-entropy on these {int(windows.shape[0])} windows is {mean_ce} (its weights or "
            "logits are NaN/Inf), so a perplexity would mean nothing; check or re-create the model"
        )
    return PerplexityResult(math.exp(mean_ce), mean_ce, int(windows.shape[0]), int(windows.shape[1]), protocol)
