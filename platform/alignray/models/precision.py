"""Which floating-point type a model computes in.

`auto` (the default everywhere) is bfloat16 where the device runs it natively, float32
elsewhere:
- a GPU of compute capability 8.0 or newer (Ampere, Hopper, ...);
- a CPU with AMX (`amx_bf16`) or AVX512-BF16 (`avx512_bf16`) in /proc/cpuinfo. On such a CPU
  a 2048x2048 matmul runs at ~1,660 GFLOP/s in bfloat16 and ~300 in float32 (2 threads).

The answer is the device's where the model runs: a sampler actor or a training worker resolves
`auto` itself, so a cluster with different nodes does the right thing on each.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has native bfloat16 matmuls (AMX or AVX512-BF16); False where this
    cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(f in flags for f in CPU_BF16_FLAGS)


def device_has_bf16() -> bool:
    """Native bfloat16 on this process's device: its GPU if it sees one, else its CPU."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_capability() >= (8, 0)
    return cpu_has_bf16()


def resolve_dtype(setting: str) -> str:
    """'float32' or 'bfloat16' for a setting of auto / float32 / fp32 / bfloat16 / bf16."""
    if setting == "auto":
        return "bfloat16" if device_has_bf16() else "float32"
    if setting not in NAMES:
        raise ValueError(f"unknown dtype {setting!r}: choose auto, float32 (fp32) or bfloat16 (bf16)")
    return NAMES[setting]


def torch_dtype(setting: str) -> torch.dtype:
    return getattr(torch, resolve_dtype(setting))
