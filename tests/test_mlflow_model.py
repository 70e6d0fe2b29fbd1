"""Registered models are MLflow transformers models: MLflow's own loader generates and classifies
with them, and alignray's `models:/` resolution gets their Hugging Face folders, as it still does
for versions registered as plain folders before."""

import shutil

import mlflow
import mlflow.transformers
import pytest
import torch
from alignray.models import mlflow_model
from alignray.models import lora
from alignray.models.registry import resolve
from mlflow.tracking import MlflowClient
from test_lora_parts import adapted
from transformers import AutoModelForSequenceClassification, AutoTokenizer

pytestmark = pytest.mark.slow  # writes and loads models through a real MLflow store (~10 s each)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (a new SQLite store takes seconds to set up)."""
    folder = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ALIGNRAY_DOWNLOADS", raising=False)
        patch.setenv("ALIGNRAY_CACHE", str(folder / "cache"))
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        mlflow.set_experiment("models")
        yield MlflowClient()


def register(folder, name, base=None, value=0.5):
    with mlflow.start_run():
        return mlflow_model.register(folder, name, value, "eval_loss", False, base=base)


def test_a_policy_loads_in_mlflow_and_resolves_in_alignray(tiny_model, store):
    assert register(tiny_model, "policy") == (1, True)
    info = mlflow.models.get_model_info("models:/policy/1")
    assert info.flavors["transformers"]["task"] == "text-generation" and info.signature is not None
    generate = mlflow.transformers.load_model("models:/policy@champion")
    text = generate("Human: Hello?\n\nAssistant:", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("Human: Hello?\n\nAssistant:") and len(text) > len("Human: Hello?\n\nAssistant:")
    folder = resolve("models:/policy/1")
    assert folder.name == "model" and (folder / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()


def test_a_preference_model_loads_as_a_text_classifier(tiny_model, store, tmp_path):
    folder = tmp_path / "preference"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = 0
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    register(folder, "preference")
    assert mlflow.models.get_model_info("models:/preference/1").flavors["transformers"]["task"] == "text-classification"
    [scored] = mlflow.transformers.load_model("models:/preference/1")("Human: Hi\n\nAssistant: Hello!", function_to_apply="none")
    expected = model.eval()(**AutoTokenizer.from_pretrained(tiny_model)("Human: Hi\n\nAssistant: Hello!", return_tensors="pt")).logits
    assert scored["score"] == pytest.approx(expected.item(), abs=1e-4)


def test_a_lora_policy_loads_on_its_base_and_resolves_to_its_merged_model(tiny_model, store, tmp_path):
    folder, model = tmp_path / "adapter", adapted(tiny_model)
    lora.save(model, str(folder), None)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    register(folder, "lora-policy", base=tiny_model)
    loaded = mlflow.transformers.load_model("models:/lora-policy/1", return_type="components")
    ids = AutoTokenizer.from_pretrained(tiny_model)("Human: Is it?\n\nAssistant:", return_tensors="pt")
    with torch.no_grad():
        want = model(**ids).logits
        assert torch.allclose(loaded["model"](**ids).logits, want, atol=1e-5)  # the base plus the adapter
    merged = resolve("models:/lora-policy/1")  # alignray's adapter folder inside, merged on its base
    assert lora.is_adapter_folder(merged) is False and (merged / "config.json").is_file()


def test_versions_registered_as_plain_folders_still_resolve(tiny_model, store, tmp_path):
    """What register_model wrote before the MLflow form: the folder as the run's `model` artifact."""
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tiny_model), artifact_path="model")
    store.create_registered_model("old")
    store.create_model_version("old", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    folder = resolve("models:/old/1")
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    shutil.rmtree(folder)


def test_mlflow_models_serve_answers_over_http(tiny_model, store):
    """`mlflow models serve` of a registered policy, in this environment: real HTTP to /invocations."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import requests
    from conftest import free_port

    register(tiny_model, "served")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/served/1", "--env-manager",
                               "local", "--host", "127.0.0.1", "--port", str(port)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                               json={"inputs": ["Human: Hello?\n\nAssistant:"]})
        assert answer.ok, answer.text
        [text] = answer.json()["predictions"]
        assert isinstance(text, str) and text
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
