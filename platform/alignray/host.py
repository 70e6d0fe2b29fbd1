"""The machine's CPU, as /proc/cpuinfo names it: its model and whether it has native bfloat16.

Standard library only, so that anything may name the host it runs on (benchmarks print it beside
their numbers; tracking tags each run with it) without importing torch.
"""

from __future__ import annotations

import functools
from pathlib import Path

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpu(cpuinfo: Path) -> tuple[str, list[str]] | None:
    """(model name, flags) of the first processor in /proc/cpuinfo; None where it cannot be read."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return None

    def field(name: str) -> str:
        return next((line.split(":", 1)[1] for line in lines if line.startswith(name)), "")

    return field("model name").strip() or "?", field("flags").split()


@functools.cache
def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has native bfloat16 matmuls (AMX or AVX512-BF16); False where this
    cannot be read (not Linux)."""
    cpu = _cpu(cpuinfo)
    return cpu is not None and any(f in cpu[1] for f in CPU_BF16_FLAGS)


def cpu_summary(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and its bfloat16 support, for printing beside a benchmark's numbers
    and tagging a run."""
    cpu = _cpu(cpuinfo)
    if cpu is None:
        return "CPU unknown (no /proc/cpuinfo)"
    native = [f for f in CPU_BF16_FLAGS if f in cpu[1]]
    return f"{cpu[0]}; bfloat16: {'native (' + ', '.join(native) + ')' if native else 'emulated (no AMX, no AVX512-BF16)'}"
