"""How much of the machine a network's speed uses: its FLOPs against the CPU's own matmul rate.

Timings differ between CPUs (AMX runs bf16 matmuls about 6x faster than AVX512-BF16) and between
moments on a shared machine. A benchmark that prints its speed as a fraction of a rate measured
on the same machine, in the same run, says how far from the hardware's limit it is:

    fraction = network FLOPs per batch / seconds per batch / matmul FLOP/s

where the matmul rate is the best of a few large square matmuls in the dtype the network runs in
(bf16 where the CPU is fast at it), with torch's current thread count.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["matmul_rate", "network_flops"]


def matmul_rate(dtype: torch.dtype = torch.bfloat16, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a ``size`` x ``size`` matmul in ``dtype`` on this CPU: the best of ``repeats``."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up: the first call picks its kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def network_flops(network: nn.Module, images: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``network`` on ``images`` (convolutions and matmuls, as
    torch's ``FlopCounterMode`` counts them: 2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(images)
    return counter.get_total_flops()
