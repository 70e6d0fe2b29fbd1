"""Training on real Ray Train + DeepSpeed (2 workers, CPU/gloo), tracked in a real MLflow store."""

import json
import random

import mlflow
import pandas as pd
import pytest
import torch
from alignray.cli import main
from alignray.config import TrainConfig, load_config
from alignray.models.mlflow_model import download as download_model
from alignray.train.launch import TrainingError
from alignray.train.runner import fit
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

GOOD = ["Sure, I am happy to help with that.", "Here is a kind and careful answer.", "Thank you for asking, let me explain gently."]
BAD = ["Go away, nobody cares.", "That is a stupid question, fool.", "I hate you and your question."]


def prompts(n):
    return [f"Human: Question number {i}, please?\n\nAssistant:" for i in range(n)]


def write(tmp_path, rows, name="data.parquet"):
    path = tmp_path / name
    pd.DataFrame(rows).to_parquet(path)
    return path


def train(kind, tiny_model, tmp_path, dataset, *extra):
    cfg = load_config(None, [
        f"dataset={dataset}", f"model.name={tiny_model}", f"output_dir={tmp_path / 'runs'}",
        "tracking.experiment=train", "trainer.num_workers=2", "trainer.micro_batch_per_worker=4",
        "trainer.learning_rate=1e-3", "trainer.log_every_steps=1", "trainer.eval_fraction=0.25",
        "trainer.max_steps=10", "trainer.checkpoint_every_steps=5", "trainer.lr_schedule=constant",
        *extra,
    ], TrainConfig)
    return fit(cfg, kind), MlflowClient(f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}")


def losses(client, run_id, key="train_loss"):
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def pref_rows(n=48, seed=0):
    rng = random.Random(seed)
    return [{"prompt": p, "chosen": rng.choice(GOOD), "rejected": rng.choice(BAD)} for p in prompts(n)]


def test_preference_model_learns_and_loads_from_registry(tiny_model, tmp_path):
    result, client = train("preference", tiny_model, tmp_path, write(tmp_path, pref_rows()), "trainer.zero_stage=2")
    curve = losses(client, result.run_id)
    assert len(curve) == 10 and curve[-1] < curve[0] * 0.5
    assert result.metrics["eval_accuracy"] >= 0.9  # held-out pairs, chance is 0.5
    assert result.model_uri == "models:/alignray-preference/1" and result.champion

    assert prefers_good(download_model("models:/alignray-preference@champion"))


def prefers_good(folder) -> bool:
    """Whether the preference model in `folder` scores a kind answer above a rude one, on a new prompt."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    prompt = "Human: A new question?\n\nAssistant: "
    with torch.no_grad():
        good = model(**tok(prompt + GOOD[0], return_tensors="pt")).logits.item()
        bad = model(**tok(prompt + BAD[0], return_tensors="pt")).logits.item()
    return good > bad


def test_bf16_training_keeps_float32_weights_and_exports_bfloat16(tiny_model, tmp_path):
    result, client = train("preference", tiny_model, tmp_path, write(tmp_path, pref_rows()), "trainer.precision=bf16",
                           "trainer.zero_stage=1", "trainer.keep_final_state=true")  # its optimizer state is read below
    curve = losses(client, result.run_id)
    assert curve[-1] < curve[0] * 0.5 and result.metrics["eval_accuracy"] >= 0.9
    exported = load_file(result.checkpoint / "hf" / "model.safetensors")
    assert {t.dtype for t in exported.values()} == {torch.bfloat16}  # trained under autocast, exported in bf16
    assert json.loads((result.checkpoint / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    masters = [t for f in (result.checkpoint / "deepspeed").rglob("*optim_states.pt")
               for t in tensors(torch.load(f, map_location="cpu", weights_only=False))]
    n_params = sum(t.numel() for t in exported.values())
    assert sum(t.numel() for t in masters if t.dtype == torch.float32) >= 3 * n_params  # weights, Adam m and v
    assert not any(t.dtype == torch.bfloat16 and t.numel() > 1 for t in masters)


def tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from tensors(v)


def test_multi_principle_heads(tiny_model, tmp_path):
    rng = random.Random(1)
    rows = []
    for i, p in enumerate(prompts(48)):
        if i % 2:
            rows.append({"prompt": p, "chosen": rng.choice(GOOD), "rejected": rng.choice(BAD), "principle": "kindness"})
        else:
            rows.append({"prompt": p, "chosen": "Yes.", "rejected": "Well, " * 12 + "yes.", "principle": "brevity"})
    result, _ = train(
        "preference", tiny_model, tmp_path, write(tmp_path, rows),
        "preference.principles=[kindness, brevity]", "trainer.zero_stage=1", "registered_model=morlaif-pm",
    )
    assert result.metrics["eval_accuracy"] >= 0.9
    model = AutoModelForSequenceClassification.from_pretrained(download_model("models:/morlaif-pm/latest"))
    assert model.config.num_labels == 2 and model.config.id2label == {0: "kindness", 1: "brevity"}


def test_morlaif_wide_soft_labels_train_every_head(tiny_model, tmp_path):
    """Each pair labelled under two principles that disagree: the long kind answer is better for
    kindness (p = 0.9) and worse for brevity (p = 0.15); each head must learn its own side."""
    rng = random.Random(3)
    rows = [
        {"prompt": p, "chosen": rng.choice(GOOD) + " Truly, truly, truly, truly glad to.", "rejected": rng.choice(BAD),
         "preference_prob_kindness": 0.9, "preference_prob_brevity": 0.15}
        for p in prompts(48)
    ]
    result, _ = train(
        "preference", tiny_model, tmp_path, write(tmp_path, rows), "preference.principles=[kindness, brevity]",
        "preference.soft_labels=true", "registered_model=morlaif-wide",
    )
    assert result.metrics["eval_accuracy_kindness"] >= 0.9 and result.metrics["eval_accuracy_brevity"] >= 0.9
    model = AutoModelForSequenceClassification.from_pretrained(download_model("models:/morlaif-wide/latest")).eval()
    tok = AutoTokenizer.from_pretrained(download_model("models:/morlaif-wide/latest"))
    prompt = "Human: Something new?\n\nAssistant: "
    with torch.no_grad():
        kind_long = model(**tok(prompt + GOOD[1] + " Truly, truly, truly, truly glad to.", return_tensors="pt")).logits[0]
        rude_short = model(**tok(prompt + BAD[0], return_tensors="pt")).logits[0]
    assert kind_long[0] > rude_short[0] and kind_long[1] < rude_short[1]


def test_context_distillation_sft_zero3(tiny_model, tmp_path):
    rows = [{"prompt": p, "chosen": "I am glad to help you with care."} for p in prompts(48)]
    result, client = train("sft", tiny_model, tmp_path, write(tmp_path, rows), "trainer.zero_stage=3")
    curve = losses(client, result.run_id)
    assert curve[-1] < curve[0] * 0.5
    folder = download_model(result.model_uri)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("Human: Anything?\n\nAssistant: I am glad to help you with care.", return_tensors="pt").input_ids

    def target_logp(path):  # log-prob of the distilled answer on an unseen prompt
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])
        return logp[-9:].sum().item(), model

    trained, model = target_logp(folder)
    assert trained > target_logp(tiny_model)[0] + 10  # the consolidated ZeRO-3 weights were saved
    assert model.generate(ids[:, :8], max_new_tokens=4, do_sample=False).shape[1] == 12


def generates(uri: str) -> bool:
    return generates_folder(download_model(uri))


def generates_folder(folder) -> bool:
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    ids = tok("Human: Hello?\n\nAssistant:", return_tensors="pt").input_ids
    return model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4


def test_rdpo_soft_labels(tiny_model, tmp_path, monkeypatch):
    """Also: the pairs come as a Hugging Face dataset id, read from the Hub's cache with the Hub off,
    in TRL's conversational format (prompt, chosen and rejected as chat messages)."""
    from conftest import hub_cache
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    rows = [{"prompt": [{"role": "user", "content": f"Question number {i}, please?"}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}], "preference_prob": 0.9}
            for i, r in enumerate(pref_rows())]
    (tmp_path / "repo" / "data").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    hub_cache(tmp_path / "hub", "alignray-test/soft-pairs", tmp_path / "repo", kind="datasets")
    result, client = train(
        "dpo", tiny_model, tmp_path, "alignray-test/soft-pairs", "dpo.soft_labels=true", "dpo.beta=0.5",
        "trainer.precision=bf16", "trainer.bf16_mode=weights",  # DeepSpeed's bf16 mode (autocast is the default)
    )
    curve = losses(client, result.run_id)
    assert curve[-1] < curve[0]
    assert result.metrics["eval_reward_accuracy"] >= 0.9
    assert generates("models:/alignray-dpo@champion")


def test_rrhf_from_the_command_line(tiny_model, tmp_path, capsys, monkeypatch):
    """Also: the policy named by a Hugging Face id, read from the Hub's cache on the driver with the
    Hub off; the workers get its folder."""
    from conftest import hub_cache

    monkeypatch.setenv("ALIGNRAY_DOWNLOADS", str(tmp_path / "downloads"))  # the Hub cache is downloads/hub
    hub_cache(tmp_path / "downloads" / "hub", "alignray-test/tiny-llama", tiny_model)
    rng = random.Random(2)
    rows = [
        {"prompt": p, "candidates": [rng.choice(GOOD), "Maybe.", rng.choice(BAD)], "rewards": [1.0, 0.0, -1.0]}
        for p in prompts(48)
    ]
    out = tmp_path / "runs"
    args = [f"dataset={write(tmp_path, rows)}", "model.name=alignray-test/tiny-llama", f"output_dir={out}",
            "trainer.max_steps=10", "trainer.log_every_steps=1", "trainer.learning_rate=1e-3",
            "trainer.eval_fraction=0.25", "rrhf.length_penalty=1.0"]
    assert main(["train", "rrhf", *args]) == 0
    printed = capsys.readouterr().out
    assert "model:       models:/alignray-rrhf/1 (new champion)" in printed and "eval_loss:" in printed
    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    [run] = client.search_runs([client.get_experiment_by_name("alignray").experiment_id])
    for key in ("train_loss", "train_rank_loss"):
        curve = losses(client, run.info.run_id, key)
        assert curve[-1] < curve[0]
    assert generates("models:/alignray-rrhf/latest")


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_model, tmp_path):
    rows = [dict(r, overflow=1e39) for r in pref_rows()]  # 1e39 is inf in float32
    data = write(tmp_path, rows)
    train("preference", tiny_model, tmp_path, data, "run_name=nan", "trainer.stop_after_steps=5")
    with pytest.raises(TrainingError, match=r"non-finite loss at step 6.*last good checkpoint: .*checkpoint_"):
        train("preference", tiny_model, tmp_path, data, "run_name=nan", "preference.margin_column=overflow")
    mlflow.set_tracking_uri(f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}")
    assert not MlflowClient().search_registered_models()  # nothing registered from a broken run


def test_more_workers_than_cpus_is_an_error_not_a_hang(tiny_model, tmp_path):
    with pytest.raises(TrainingError, match="= 16 CPUs, but the Ray cluster has 4"):
        train("preference", tiny_model, tmp_path, write(tmp_path, pref_rows()), "trainer.num_workers=16",
              "trainer.micro_batch_per_worker=1")
    assert not (tmp_path / "runs").exists()
