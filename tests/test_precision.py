"""`auto` precision: bfloat16 where the CPU (or GPU) has it natively, float32 elsewhere."""

import pytest
import torch
from alignray.models import precision


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\n")
    return path


@pytest.mark.parametrize(("flags", "native"), [("avx512f amx_bf16 amx_tile", True), ("avx512f avx512_bf16", True),
                                               ("avx512f avx512_vnni", False), ("", False)])
def test_cpu_bf16_comes_from_the_cpu_flags(tmp_path, flags, native):
    assert precision.cpu_has_bf16.__wrapped__(cpuinfo(tmp_path, flags)) is native


def test_unreadable_cpuinfo_means_float32(tmp_path):
    assert precision.cpu_has_bf16.__wrapped__(tmp_path / "missing") is False


def test_auto_follows_this_machine_and_names_are_normalised():
    assert precision.resolve_dtype("auto") == ("bfloat16" if precision.device_has_bf16() else "float32")
    assert precision.resolve_dtype("fp32") == precision.resolve_dtype("float32") == "float32"
    assert precision.torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        precision.resolve_dtype("half")
