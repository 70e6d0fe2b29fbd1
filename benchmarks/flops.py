"""What the benchmarks share: the machine's measured matmul peak of a dtype, and the FLOPs a model's matmuls do.

MFU = achieved FLOP/s / peak, with the peak of the dtype the run computes in, measured in the same run: these CPUs
(AMX, AVX512-BF16) multiply bfloat16 ~5x faster than float32, so a bf16 run against the fp32 peak would read >100%.
"""

from __future__ import annotations

import time

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def peak_flops(dtype: str = "fp32", seconds: float = 2.0, n: int = 2048) -> float:
    """FLOP/s of torch.mm on n x n matrices of `dtype` with torch's current threads (best of one ~2 s run)."""
    a, b = torch.randn(n, n, dtype=DTYPES[dtype]), torch.randn(n, n, dtype=DTYPES[dtype])
    out = torch.empty(n, n, dtype=DTYPES[dtype])
    torch.mm(a, b, out=out)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b, out=out)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def linear_params(model: torch.nn.Module) -> int:
    """Weights of every nn.Linear: the matmul parameters (a token's forward costs 2 FLOPs each)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters(False))
