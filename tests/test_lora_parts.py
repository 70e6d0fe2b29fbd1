"""LoRA's pure parts against peft itself, on the tiny model: the merged state dict the samplers
get, the adapter tensors they load, an adapter folder turned back into a full model (a policy
and a 3-head preference model) and the `alignray models merge` command."""

import json

import pytest
import torch
from alignray.cli import main
from alignray.config import LoRAConfig
from alignray.models import lora
from alignray.models.registry import ModelError, local_folder, merge_export
from alignray.sampling.actor import vllm_lora_rank
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

CFG = LoRAConfig(rank=4, alpha=12.0)
TEXT = "Human: Is this a question?\n\nAssistant: It is, and here is an answer."


def adapted(tiny_model, heads: int | None = None, seed: int = 0):
    """The tiny model with adapters whose B matrices (and head) are random: they change the outputs."""
    if heads is None:
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=heads, dtype=torch.float32)
        model.config.pad_token_id = 0
        model.config.id2label = {k: f"principle_{k}" for k in range(heads)}
        model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model = lora.wrap(model, CFG, str(tiny_model))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def outputs(model, tiny_model):
    ids = AutoTokenizer.from_pretrained(tiny_model)(TEXT, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


@pytest.mark.parametrize("heads", [None, 3])
def test_the_merged_state_dict_is_peft_s_merge(tiny_model, heads):
    model = adapted(tiny_model, heads)
    got = lora.merged_state_dict(model.state_dict(), lora.scaling(CFG))
    want = model.merge_and_unload().state_dict()
    assert sorted(got) == sorted(want)
    assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-6


def test_adapter_tensors_are_what_peft_saves(tiny_model, tmp_path):
    model = adapted(tiny_model)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    mine = lora.adapter_tensors(model.state_dict())
    assert sorted(mine) == sorted(saved) and len(mine) == 2 * 7 * 2  # A and B, 7 projections, 2 layers
    assert all(torch.equal(mine[k], saved[k]) for k in saved)
    config = json.loads(json.dumps(lora.policy_adapter_config(CFG, "base")))  # written as adapter_config.json
    assert config["r"] == 4 and sorted(config["target_modules"]) == sorted(CFG.target_modules)
    named = lora.wrap(AutoModelForCausalLM.from_pretrained(tiny_model), CFG, "models:/the-base/2")
    named.save_pretrained(tmp_path / "named")
    assert lora.base_ref(tmp_path / "named") == "models:/the-base/2"  # as the config named it, not the local folder


@pytest.mark.parametrize("heads", [None, 3])
def test_an_adapter_folder_loads_as_its_full_model(tiny_model, tmp_path, monkeypatch, heads):
    monkeypatch.setenv("ALIGNRAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ALIGNRAY_DOWNLOADS", raising=False)
    model = adapted(tiny_model, heads)
    folder = tmp_path / "adapter"
    lora.save(model, str(folder), None)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    assert lora.is_adapter_folder(folder) and lora.base_ref(folder) == str(tiny_model)
    merged = local_folder(str(folder))
    auto = AutoModelForCausalLM if heads is None else AutoModelForSequenceClassification
    full = auto.from_pretrained(merged, dtype=torch.float32).eval()
    assert torch.allclose(outputs(full, merged), outputs(model, tiny_model), atol=1e-5)
    if heads:
        assert full.config.num_labels == 3 and full.config.id2label[2] == "principle_2"
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    assert local_folder(str(folder)) == merged and (merged / "model.safetensors").stat().st_mtime_ns == stamp  # once


def test_models_merge_writes_the_full_model_and_refuses_a_full_one(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGNRAY_CACHE", str(tmp_path / "cache"))
    model = adapted(tiny_model)
    lora.save(model, str(tmp_path / "adapter"), None)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "adapter")
    assert main(["models", "merge", str(tmp_path / "adapter"), "--output", str(tmp_path / "full")]) == 0
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    assert torch.allclose(outputs(full, tmp_path / "full"), outputs(model, tiny_model), atol=1e-5)
    with pytest.raises(ModelError, match="exists"):
        merge_export(str(tmp_path / "adapter"), tmp_path / "full")
    with pytest.raises(ModelError, match="not a LoRA adapter"):
        merge_export(str(tiny_model), tmp_path / "other")


def test_an_adapter_whose_base_is_gone_says_so(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNRAY_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "adapter"
    lora.save(adapted(tiny_model), str(folder), None)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ModelError, match="its base model .*gone"):
        local_folder(str(folder))


def test_auto_sends_the_adapter_to_gpu_samplers_and_merged_weights_to_cpu_ones():
    assert not lora.sends_adapter(None, 1.0)
    assert [lora.sends_adapter(LoRAConfig(sync=sync), gpus) for sync in ("auto", "adapter", "merged")
            for gpus in (0.0, 1.0)] == [False, True, True, True, False, False]


def test_vllm_lora_ranks():
    assert [vllm_lora_rank(r) for r in (1, 2, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]
    with pytest.raises(ValueError, match="at most 512"):
        vllm_lora_rank(513)
