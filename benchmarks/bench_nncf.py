"""NNCF's ``compress_weights`` against losslab's ``--budget`` at equal stored bits, on the tiny offline OPT.

NNCF (``pip install nncf``; never a losslab dependency: install it in a separate environment that sees losslab's
torch) mixes INT4 and INT8 per layer under ``ratio`` (the share of weights at INT4), ranked by its data-aware
sensitivity on the calibration windows. This script trains the tiny OPT of ``lm quantize``'s offline path (the
recipe of ``bench_budget.py``: 200 AdamW steps on the synthetic corpus), compresses it with NNCF at each ratio
(INT4_ASYM per channel, INT8_ASYM for the rest; embeddings ignored, as losslab keeps them in float), counts NNCF's
stored bits over the decoder linears (the layers losslab quantizes; codes + fp16 scale + zero point per row,
losslab's convention) and runs losslab's budget at that B with widths {4, 8} (NNCF's choices) and {2, 3, 4, 8},
RTN and GPTQ. Test perplexity on the synthetic corpus::

    PYTHONPATH=src /tmp/nncfenv/bin/python benchmarks/bench_nncf.py

Without NNCF the script says so and stops (exit 0).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from losslab.compress.budget import BudgetOptions
from losslab.compress.lm_budget import LmBudgetJob, quantize_lm_budget
from losslab.lm.data import calibration_windows, eval_windows, tokenize_text
from losslab.lm.offline import byte_tokenizer, synthetic_corpus, tiny_opt
from losslab.lm.perplexity import perplexity
from losslab.quant.methods import GPTQ, RTN, QuantMethod

SCALE_BITS = 16


def trained_opt(steps: int) -> tuple[nn.Module, dict[str, Tensor]]:
    """The tiny OPT after ``steps`` AdamW steps on 8 × 64-token blocks of the synthetic corpus (seed 0)."""
    tok, corpus = byte_tokenizer(), synthetic_corpus(seed=0)
    ids = {k: tokenize_text(tok, v) for k, v in corpus.items()}
    torch.manual_seed(0)
    model = tiny_opt(seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, ids["train"].numel() - 64, (8,), generator=gen)
        batch = torch.stack([ids["train"][s : s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), ids


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linears inside the decoder blocks (what ``lm quantize`` quantizes)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}


def nncf_widths(compressed: nn.Module, names: list[str]) -> dict[str, int]:
    """Per decoder linear, NNCF's chosen width (4 or 8), read from the decompressor hooked on its weight."""
    widths = {}
    for name in names:
        key = name.replace(".", ":") + ":weight__"
        hooks = [type(m).__name__ for n, m in compressed.named_modules() if key in n]
        if not hooks:
            raise RuntimeError(f"NNCF left {name} uncompressed")
        widths[name] = 4 if any("INT4" in h for h in hooks) else 8
    return widths


def stored_bits(linears: dict[str, nn.Linear], widths: dict[str, int]) -> float:
    """Bits per weight: b per code plus, per row, an fp16 scale and a b-bit zero point (asymmetric per channel)."""
    total = sum(m.weight.numel() * widths[n] + m.weight.shape[0] * (SCALE_BITS + widths[n]) for n, m in linears.items())
    return total / sum(m.weight.numel() for m in linears.values())


def losslab_budget(
    model: nn.Module, calib: Tensor, test: Tensor, method: QuantMethod, budget: float, choices: list[int], tmp: Path
) -> dict[str, Any]:
    """losslab's budgeted plan at ``budget`` bits per weight: stored bits, perplexity, CPU seconds."""
    job = LmBudgetJob(model, "tiny-opt", calib, tmp / f"{method.name}-{budget}-{len(choices)}.json", eval_windows=test)
    start = time.process_time()
    report = quantize_lm_budget(job, method, BudgetOptions([budget], choices), echo=lambda *_: None)
    (entry,) = report["results"]
    return {"bpw": entry["stored_bits_per_weight"], "ppl": entry["metrics"]["ppl"], "s": time.process_time() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    args = parser.parse_args()
    try:
        import nncf
    except ImportError as err:
        print(f"nncf skipped: it does not import here ({err}); pip install nncf in a separate environment")
        return
    torch.set_num_threads(1)
    model, ids = trained_opt(args.steps)
    calib, test = calibration_windows(ids["train"], 16, 64, seed=0), eval_windows(ids["test"], 64)
    linears = decoder_linears(model)
    print(f"nncf {nncf.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"float perplexity {perplexity(model, test).ppl:.4f}; {len(linears)} decoder linears")
    header = f"{'ratio':>5}  {'NNCF bpw':>8} {'NNCF ppl':>9} {'s':>5}"
    print(f"{header} | losslab at the same B: method, widths, bpw, ppl, s")
    dataset = nncf.Dataset([{"input_ids": row[None]} for row in calib])
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in args.ratios:
            start = time.process_time()
            compressed = nncf.compress_weights(
                copy.deepcopy(model),
                mode=nncf.CompressWeightsMode.INT4_ASYM,
                ratio=ratio,
                group_size=-1,
                dataset=dataset,
                ignored_scope=nncf.IgnoredScope(patterns=[".*embed.*"]),  # losslab keeps embeddings in float too
            )
            seconds = time.process_time() - start
            widths = nncf_widths(compressed, list(linears))
            hooks = [n for n, _ in compressed.named_modules() if "post_hooks." in n]
            hooked = {n.split("post_hooks.")[1].split(":weight")[0] for n in hooks}
            extra = sorted(h for h in hooked if h.replace(":", ".") not in linears)
            if extra:
                print(f"NNCF also compressed {extra} (counted in its perplexity, not in its bits per weight)")
            bpw = stored_bits(linears, widths)
            with torch.no_grad():
                ppl = perplexity(compressed, test).ppl
            ours = []
            for method in (RTN(bits=4), GPTQ(bits=4)):
                for choices in ([4, 8], [2, 3, 4, 8]):
                    r = losslab_budget(model, calib, test, method, round(bpw, 4), choices, Path(tmp))
                    label = f"{method.name} {','.join(map(str, choices))}"
                    ours.append(f"{label}: {r['bpw']:.3f}, {r['ppl']:.4f}, {r['s']:.1f}")
            print(f"{ratio:>5.2f}  {bpw:>8.3f} {ppl:>9.4f} {seconds:>5.1f} | " + "; ".join(ours), flush=True)


if __name__ == "__main__":
    main()
