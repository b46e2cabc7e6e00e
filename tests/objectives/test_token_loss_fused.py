"""The fused token-loss formulation (one expression per chunk, compiled on CUDA) equals the chunked one."""

from __future__ import annotations

import pytest
import torch

from losslab.objectives.token import TokenLossSpec, token_loss

SPECS = [
    TokenLossSpec("ce"),
    TokenLossSpec("root", k=5.0, m=5.0),
    TokenLossSpec("root_convex", k=2.0, max_log_weight=0.5),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_equals_chunked(spec: TokenLossSpec, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(41, 13, generator=gen, dtype=torch.float64)).to(dtype)
    logits[5] += 60.0  # a confident row: p_y near 0 or 1
    target = torch.randint(0, 13, (41,), generator=gen)
    target[[2, 9, 40]] = -100
    results = []
    for fused in (False, True):
        z = logits.clone().requires_grad_()
        loss = token_loss(z, target, spec, workspace_mib=4 * 13 * 6 / 2**20, fused=fused)  # 6-row chunks
        (2.5 * loss).backward()
        results.append((loss.detach(), z.grad))
    (l0, g0), (l1, g1) = results
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(l1, l0, **tol)
    torch.testing.assert_close(g1, g0, **tol)
    assert bool((g1[[2, 9, 40]] == 0).all())
