"""`auto` precision: bfloat16 where the CPU (or GPU) has it natively, float32 elsewhere."""

import pytest
import torch
from alignray import host
from alignray.models import precision


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\n")
    return path


@pytest.mark.parametrize(("flags", "native"), [("avx512f amx_bf16 amx_tile", True), ("avx512f avx512_bf16", True),
                                               ("avx512f avx512_vnni", False), ("", False)])
def test_cpu_bf16_comes_from_the_cpu_flags(tmp_path, flags, native):
    assert host.cpu_has_bf16.__wrapped__(cpuinfo(tmp_path, flags)) is native


def test_unreadable_cpuinfo_means_float32(tmp_path):
    assert host.cpu_has_bf16.__wrapped__(tmp_path / "missing") is False


def test_auto_follows_this_machine_and_names_are_normalised():
    assert precision.resolve_dtype("auto") == ("bfloat16" if precision.device_has_bf16() else "float32")
    assert precision.resolve_dtype("fp32") == precision.resolve_dtype("float32") == "float32"
    assert precision.torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        precision.resolve_dtype("half")


def test_an_explicit_bfloat16_without_native_support_warns_once_with_a_measured_slowdown(monkeypatch, caplog):
    monkeypatch.setattr(precision, "device_has_bf16", lambda: False)  # as on an AVX2-only host
    precision.warn_emulated_bf16.cache_clear()
    with caplog.at_level("WARNING", logger=precision.log.name):
        assert precision.resolve_dtype("bf16") == precision.resolve_dtype("bfloat16") == "bfloat16"
        assert precision.resolve_dtype("auto") == "float32"  # auto never warns
    [warning] = [r.getMessage() for r in caplog.records]
    assert "neither AMX nor AVX512-BF16" in warning and "Set the dtype to auto" in warning
    slower = float(warning.split("matmul ran ")[1].split("x slower")[0])
    assert slower > 0  # measured on this host: its own bfloat16 against its own float32
    precision.warn_emulated_bf16.cache_clear()


def test_benchmarks_name_the_cpu_and_its_bfloat16(tmp_path):
    assert host.cpu_summary(cpuinfo(tmp_path, "avx512_bf16")) == "Some CPU; bfloat16: native (avx512_bf16)"
    assert host.cpu_summary(cpuinfo(tmp_path, "")) == "Some CPU; bfloat16: emulated (no AMX, no AVX512-BF16)"


def test_bf16_modes_reach_deepspeed_and_ppo_keeps_bf16_weights():
    from alignray.config import EngineConfig, TrainerConfig
    from alignray.train.engines import deepspeed_config, weights_dtype

    def mode(t):
        c = deepspeed_config(t, 4)
        return c["bf16"]["enabled"], c["torch_autocast"]["enabled"], weights_dtype(t)

    assert mode(TrainerConfig(precision="bf16")) == (False, True, torch.float32)  # the default: autocast
    assert mode(TrainerConfig(precision="bf16", bf16_mode="weights")) == (True, False, torch.bfloat16)
    assert mode(TrainerConfig(precision="fp32")) == (False, False, torch.float32)
    assert mode(EngineConfig(precision="bf16")) == (True, False, torch.bfloat16)  # PPO's, RLOO's and GRPO's engines


def test_a_frozen_base_stays_in_the_compute_dtype_under_autocast():
    from alignray.config import TrainerConfig
    from alignray.train.engines import to_training_dtypes

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    model[0].requires_grad_(False)  # as LoRA freezes a base layer
    to_training_dtypes(model, TrainerConfig(precision="bf16"))
    assert (model[0].weight.dtype, model[1].weight.dtype) == (torch.bfloat16, torch.float32)
    to_training_dtypes(model, TrainerConfig(precision="bf16", bf16_mode="weights"))
    assert (model[0].weight.dtype, model[1].weight.dtype) == (torch.bfloat16, torch.bfloat16)
