"""Cost of the checkpoint checksum: :func:`losslab.serialization.content_digest` against ``torch.save`` of the same
state dict, measured in the same run (``PYTHONPATH=src python benchmarks/bench_checksum.py [MiB]``).

Every dict :func:`losslab.io.save_torch_atomic` writes is hashed once on save and once on load; the ratio says
what that adds to a save.
"""

from __future__ import annotations

import io
import sys
import time

import torch

from losslab.serialization import content_digest


def best_of(fn: object, repeats: int = 3) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main(mib: int = 100) -> None:
    state = {f"w{i}": torch.randn(256, 1024) for i in range(mib)}  # 1 MiB each, float32
    digest = best_of(lambda: content_digest(state))
    save = best_of(lambda: torch.save(state, io.BytesIO()))
    print(f"{mib} MiB state dict, {torch.get_num_threads()} torch thread(s)")
    print(f"content_digest {digest:.3f} s ({mib / digest:.0f} MiB/s); torch.save to memory {save:.3f} s")
    print(f"digest / save = {digest / save:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
