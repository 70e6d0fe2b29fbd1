"""rDPO's per-pair soft labels: each pair's own `preference_prob` steers training, which a
constant label smoothing (the same value for every pair) cannot do. In-process, on the tiny
model: the dataset goes through the real loader and the real DPO method's loss."""

import pandas as pd
import pytest
import torch
from alignray.config import TrainConfig, load_config
from alignray.models.tokens import Tokenize
from alignray.train import data
from alignray.train.batch import response_logps
from alignray.train.dpo import DPOMethod
from transformers import AutoModelForCausalLM

DOUBTED = "Here is a kind and careful answer."  # the judge says this `chosen` is the worse answer
TRUSTED = "Sure, I am happy to help with that."
REJECTED = "Go away, nobody cares."


def rows():
    out = []
    for i in range(16):
        chosen = DOUBTED if i % 4 == 0 else TRUSTED
        prob = 0.1 if chosen == DOUBTED else 0.9
        out.append({"prompt": f"Human: Question {i}?\n\nAssistant:", "chosen": chosen, "rejected": REJECTED,
                    "preference_prob": prob})
    return out


def trained_shift(tiny_model, path, *overrides) -> dict[str, float]:
    """Train 25 full-batch steps; return how much each `chosen` answer gained on the rejected one
    (change in summed log-prob on a fresh prompt, minus the rejected answer's change)."""
    cfg = load_config(None, [f"dataset={path}", f"model.name={tiny_model}", "trainer.eval_fraction=0",
                             "dpo.beta=0.5", *overrides], TrainConfig)
    tok = data.load_tokenizer(tiny_model)
    examples = data.load("dpo", cfg, tok).train
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    method = DPOMethod(cfg, tok.pad_token_id)
    tokenize = Tokenize(tok, 128, "left")
    probe = [tokenize("Human: Question 99?\n\nAssistant:", text) for text in (DOUBTED, TRUSTED, REJECTED)]

    def probe_logps():
        with torch.no_grad():
            return response_logps(model, probe, tok.pad_token_id)[0]

    with torch.no_grad():  # what DPOMethod.prepare gathers across workers, on one process
        for ex in examples:
            ex.values["ref"] = response_logps(model, ex.seqs, tok.pad_token_id)[0].tolist()
    before = probe_logps()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        loss, _ = method.loss(model, examples)
        opt.zero_grad()
        loss.backward()
        opt.step()
    shift = probe_logps() - before
    return {"doubted": (shift[0] - shift[2]).item(), "trusted": (shift[1] - shift[2]).item()}


def test_loader_keeps_each_pairs_probability(tiny_model, tmp_path):
    path = tmp_path / "pairs.parquet"
    pd.DataFrame(rows()).to_parquet(path)
    cfg = load_config(None, [f"dataset={path}", f"model.name={tiny_model}", "trainer.eval_fraction=0",
                             "dpo.soft_labels=true"], TrainConfig)
    examples = data.load("dpo", cfg, data.load_tokenizer(tiny_model)).train
    assert sorted(ex.values["preference_prob"] for ex in examples) == [0.1] * 4 + [0.9] * 12


@pytest.mark.slow  # trains the tiny model three times, 25 steps each (over a minute on 2 cores)
def test_per_pair_labels_train_differently_from_constant_smoothing(tiny_model, tmp_path):
    path = tmp_path / "pairs.parquet"
    pd.DataFrame(rows()).to_parquet(path)
    soft = trained_shift(tiny_model, path, "dpo.soft_labels=true")
    # per pair: the doubted answer falls below the rejected one, the trusted one rises above it
    assert soft["doubted"] < -1.0 < 1.0 < soft["trusted"], soft
    # labels ignored (plain DPO): the doubted answer rises like any chosen one
    assert trained_shift(tiny_model, path)["doubted"] > 1.0
    # one label for every pair, their mean p = 0.7 (label smoothing 0.3): far less apart
    constant = trained_shift(tiny_model, path, "dpo.label_smoothing=0.3")
    assert constant["doubted"] > soft["doubted"] + 3.0, (constant, soft)
