"""Which floating-point type a model computes in.

`auto` (the default everywhere) is bfloat16 where the device runs it natively, float32
elsewhere:
- a GPU of compute capability 8.0 or newer (Ampere, Hopper, ...);
- a CPU with AMX (`amx_bf16`) or AVX512-BF16 (`avx512_bf16`) in /proc/cpuinfo. On such a CPU
  a 2048x2048 matmul runs at ~1,660 GFLOP/s in bfloat16 and ~300 in float32 (2 threads).

The answer is the device's where the model runs: a sampler actor or a training worker resolves
`auto` itself, so a cluster with different nodes does the right thing on each. A bfloat16 set
explicitly on a CPU without those instructions runs emulated: the process warns once, with the
slowdown it measured on a matmul.
"""

from __future__ import annotations

import functools
import time

import torch

from alignray import logs
from alignray.host import CPU_BF16_FLAGS, cpu_has_bf16

log = logs.get(__name__)

NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def device_has_bf16() -> bool:
    """Native bfloat16 on this process's device: its GPU if it sees one, else its CPU."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_capability() >= (8, 0)
    return cpu_has_bf16()


def matmul_seconds(dtype: torch.dtype, size: int = 512, repeats: int = 5) -> float:
    """The best of `repeats` timings of one size x size matmul in `dtype` on this process's threads."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tick)
    return best


@functools.cache
def warn_emulated_bf16() -> str:
    """Once per process: bfloat16 was asked for on a CPU without native bfloat16. Logs (and
    returns) the warning with the slowdown against float32 measured here."""
    slower = matmul_seconds(torch.bfloat16) / matmul_seconds(torch.float32)
    text = (f"bfloat16 was set explicitly, but this CPU has neither AMX nor AVX512-BF16 (no {' or '.join(CPU_BF16_FLAGS)}"
            f" in /proc/cpuinfo): PyTorch emulates it, and a 512x512 matmul ran {slower:.1f}x slower than in float32"
            " here. Set the dtype to auto (float32 on this CPU) or fp32.")
    log.warning("%s", text)
    return text


def resolve_dtype(setting: str) -> str:
    """'float32' or 'bfloat16' for a setting of auto / float32 / fp32 / bfloat16 / bf16."""
    if setting == "auto":
        return "bfloat16" if device_has_bf16() else "float32"
    if setting not in NAMES:
        raise ValueError(f"unknown dtype {setting!r}: choose auto, float32 (fp32) or bfloat16 (bf16)")
    if NAMES[setting] == "bfloat16" and not device_has_bf16() and not torch.cuda.is_available():
        warn_emulated_bf16()
    return NAMES[setting]


def torch_dtype(setting: str) -> torch.dtype:
    return getattr(torch, resolve_dtype(setting))
