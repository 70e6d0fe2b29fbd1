"""Named and local models: the real SmolLM2 conversion, the tiny factory and folder checks."""

import json

import pytest
import torch
from alignray.models import registry
from alignray.models.registry import ModelError, check_causal_lm, local_folder, model_name, resolve
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.mark.slow  # converts the 135M-parameter GGUF and runs both models
def test_prepare_smollm2_matches_the_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNRAY_CACHE", str(tmp_path))
    folder = registry.prepare("smollm2-135m-instruct", quiet=True)
    assert folder == tmp_path / "models" / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not [p for p in tmp_path.joinpath("models").iterdir() if p.name.startswith(".")]
    assert registry.prepare("smollm2-135m-instruct", quiet=True) == folder  # idempotent
    assert resolve("smollm2-135m-instruct") == folder

    gguf = registry._gguf_path(registry.KNOWN["smollm2-135m-instruct"])
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ours = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(ref(ids).logits, ours(ids).logits, atol=1e-5)


def test_tiny_model_is_a_causal_lm_with_chat_template(tiny_model):
    assert check_causal_lm(tiny_model) == tiny_model
    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "Human: Ünïcode ✓ works?\n\nAssistant:"
    assert tok.decode(tok(text).input_ids) == text
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).startswith("<|im_start|>user")
    config = AutoModelForCausalLM.from_pretrained(tiny_model).config
    assert config.hidden_size // config.num_attention_heads >= 32


def test_bad_model_names_and_folders(tmp_path):
    with pytest.raises(ModelError, match="neither a known model"):
        resolve("smollm3")
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ModelError, match="not a causal language model"):
        resolve(str(tmp_path))


def test_models_uris_and_folders(tmp_path, monkeypatch):
    import mlflow

    assert model_name("models:/pm@champion") == model_name("models:/pm/3") == model_name(str(tmp_path / "pm")) == "pm"
    monkeypatch.chdir(tmp_path)
    assert local_folder("pm") == tmp_path / "pm"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ModelError, match="'models:/pm/3': not found in the MLflow registry"):
        local_folder("models:/pm/3")


def test_two_processes_preparing_one_model_wait_for_each_other(tmp_path, monkeypatch):
    """Two pytest workers (or jobs on one node) asking for the same known model: one writes it,
    the other waits for the lock and uses that folder; nothing half-written is left."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("ALIGNRAY_CACHE", str(tmp_path))
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: registry.prepare("tiny-random-llama", quiet=True), range(2)))
    assert folders[0] == folders[1] == tmp_path / "models" / "tiny-random-llama"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny-random-llama"]
    assert (folders[0] / "model.safetensors").is_file()


def test_hub_ids_resolve_offline_from_the_cache(tiny_model, tmp_path, monkeypatch):
    """A Hugging Face id is read from the Hub's cache with the Hub off (conftest sets
    HF_HUB_OFFLINE=1), as `org/name` and at a revision; what is not cached is a clear error."""
    from conftest import hub_cache

    monkeypatch.setenv("ALIGNRAY_DOWNLOADS", str(tmp_path / "downloads"))  # the Hub cache is downloads/hub
    snapshot = hub_cache(tmp_path / "downloads" / "hub", "alignray-test/tiny-llama", tiny_model)
    assert resolve("alignray-test/tiny-llama") == snapshot
    assert resolve("alignray-test/tiny-llama@main") == snapshot
    assert model_name("alignray-test/tiny-llama@main") == "tiny-llama"
    assert registry.portable_ref("alignray-test/tiny-llama") == "alignray-test/tiny-llama"

    with pytest.raises(ModelError, match=r"'alignray-test/absent' \(no such folder here; read as a Hugging Face id\):"
                       r" not in the Hugging Face cache .*downloads/hub and the Hub is off \(HF_HUB_OFFLINE=1\)"):
        resolve("alignray-test/absent")
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        resolve("alignray-test/tiny-llama@v2")  # a revision the cache does not hold

    weightless = tmp_path / "weightless"
    weightless.mkdir()
    for f in tiny_model.glob("*.json"):
        (weightless / f.name).write_bytes(f.read_bytes())
    hub_cache(tmp_path / "downloads" / "hub", "alignray-test/weightless", weightless)
    with pytest.raises(ModelError, match="has no safetensors weights"):
        resolve("alignray-test/weightless")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not registry.is_hub_id("org/name")  # an existing folder wins over a Hub id
    assert registry.is_hub_id("org/other") and not registry.is_hub_id("runs/models/ppo")


def test_models_prepare_downloads_nothing_offline_and_prints_the_cached_folder(tiny_model, tmp_path):
    """`alignray models prepare ID` in a fresh process whose HF_HOME holds the model, Hub off."""
    import os
    import subprocess
    import sys

    from conftest import hub_cache

    snapshot = hub_cache(tmp_path / "hf" / "hub", "alignray-test/tiny-llama", tiny_model)
    env = {k: v for k, v in os.environ.items() if k not in ("ALIGNRAY_DOWNLOADS", "HF_HUB_CACHE")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}

    def prepare(ref):
        return subprocess.run([sys.executable, "-m", "alignray.cli", "models", "prepare", ref], env=env,
                              capture_output=True, text=True, timeout=120)

    done = prepare("alignray-test/tiny-llama")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(snapshot)
    missing = prepare("alignray-test/other")
    assert missing.returncode == 2
    assert f"not in the Hugging Face cache {tmp_path / 'hf' / 'hub'} and the Hub is off" in missing.stderr
