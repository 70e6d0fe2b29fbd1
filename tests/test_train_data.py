"""Training datasets: validation that names file, row and column; pad tokens; truncation."""

import math

import pandas as pd
import pytest
from alignray.cli import main
from alignray.config import TrainConfig, load_config
from alignray.train.data import DatasetError, load, load_tokenizer
from transformers import AutoTokenizer

P = "Human: Hi?\n\nAssistant:"


def cfg_for(path, *extra):
    return load_config(None, [f"dataset={path}", "trainer.eval_fraction=0.25", *extra], TrainConfig)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)


def write(tmp_path, rows):
    path = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize(
    "kind,rows,extra,message",
    [
        ("preference", [{"prompt": P, "chosen": "a"}], [], "missing column(s) ['rejected']"),
        ("dpo", [{"prompt": P, "chosen": "a", "rejected": "b", "preference_prob": 1.5}], ["dpo.soft_labels=true"],
         "row 0 column 'preference_prob': 1.5 is not a probability"),
        ("dpo", [{"prompt": P, "chosen": "a", "rejected": "b", "preference_prob": math.nan}], ["dpo.soft_labels=true"],
         "row 0 column 'preference_prob': None is not a probability"),  # NaN is stored as null
        ("dpo", [{"prompt": P, "chosen": "a", "rejected": "b"}], ["dpo.judge_agreement_filter=true"],
         "missing column(s) ['preference_prob']"),
        ("preference", [{"prompt": P, "chosen": "a", "rejected": "b", "preference_prob_kind": 0.7}],
         ["preference.principles=[kind, brief]", "preference.soft_labels=true"], "missing column(s) ['preference_prob_brief']"),
        ("preference", [{"prompt": P, "chosen": "a", "rejected": "b", "preference_prob": -0.2}],
         ["preference.soft_labels=true"], "row 0 column 'preference_prob': -0.2 is not a probability"),
        ("rrhf", [{"prompt": P, "candidates": ["only one"], "rewards": [1.0]}], [], "at least 2 candidates"),
        ("rrhf", [{"prompt": P, "candidates": ["a", "b"], "rewards": [0.5, 0.5]}], [],
         "all 2 candidates have the same reward (0.5), so there is nothing to rank"),
        ("sft", [{"prompt": P, "chosen": "  "}], [], "row 0 column 'chosen': must be a non-empty string"),
        ("preference", [{"prompt": P, "chosen": "a", "rejected": "b", "principle": "x"}],
         ["preference.principles=[kind]"], "row 0 column 'principle': 'x' is not one of ['kind']"),
    ],
)
def test_bad_datasets_are_named(tmp_path, tokenizer, kind, rows, extra, message):
    path = write(tmp_path, rows)
    with pytest.raises(DatasetError) as err:
        load(kind, cfg_for(path, *extra), tokenizer)
    assert str(path) in str(err.value) and message in str(err.value)


def test_empty_and_missing_dataset(tmp_path, tokenizer):
    path = tmp_path / "e.parquet"
    pd.DataFrame({"prompt": [], "chosen": []}).astype(str).to_parquet(path)
    with pytest.raises(DatasetError, match="the dataset is empty"):
        load("sft", cfg_for(path), tokenizer)
    with pytest.raises(DatasetError, match="dataset not found"):
        load("sft", cfg_for(tmp_path / "none.parquet"), tokenizer)


def test_judge_filter_truncation_and_split(tmp_path, tokenizer):
    rows = [{"prompt": P, "chosen": "yes", "rejected": "no", "preference_prob": p} for p in (0.9, 0.2, 0.7, 0.5, 1.0)]
    rows.append({"prompt": "Human: " + "very long question " * 80 + "\n\nAssistant:", "chosen": "ok", "rejected": "no",
                 "preference_prob": 0.8})
    prepared = load("dpo", cfg_for(write(tmp_path, rows), "dpo.judge_agreement_filter=true", "trainer.max_length=64"), tokenizer)
    assert prepared.filtered == 2 and len(prepared.train) + len(prepared.eval) == 4
    assert prepared.truncated == 2  # the long example's chosen and rejected sequences
    for ex in prepared.train + prepared.eval:
        for seq in ex.seqs:
            assert len(seq.ids) <= 64 and seq.response[-1] == tokenizer.eos_token_id
    long = [ex for ex in prepared.train + prepared.eval if len(ex.seqs[0].ids) == 64]
    assert len(long) == 1 and tokenizer.decode(long[0].seqs[0].prompt).endswith("\n\nAssistant:")  # left cut


def test_tokenizer_without_pad_token_gets_eos(tiny_model, tmp_path):
    folder = tmp_path / "nopad"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.pad_token = None
    tok.save_pretrained(folder)
    (folder / "config.json").write_text((tiny_model / "config.json").read_text())
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    fixed = load_tokenizer(folder)
    assert fixed.pad_token == fixed.eos_token


def test_cli_train_bad_input_writes_nothing(tmp_path, tiny_model, capsys):
    path = write(tmp_path, [{"prompt": P, "chosen": "a"}])
    out = tmp_path / "runs"
    assert main(["train", "preference", f"dataset={path}", f"model.name={tiny_model}", f"output_dir={out}"]) == 2
    assert "missing column(s) ['rejected']" in capsys.readouterr().err and not out.exists()
    assert main(["train", "dpo", f"model.name={tiny_model}"]) == 2
    assert "field 'dataset': Field required" in capsys.readouterr().err


def test_length_balance_keeps_as_many_longer_as_shorter_chosen(tmp_path, tokenizer):
    from alignray.train.data import length_balanced

    chosen = ["a long answer"] * 7 + ["no"] * 3 + ["same"] * 2
    rejected = ["short"] * 7 + ["a longer one"] * 3 + ["four"] * 2
    keep = length_balanced(chosen, rejected, seed=0)
    assert keep[7:].all() and keep[:7].sum() == 3  # the 3 shorter and 2 equal stay; 3 of the 7 longer
    assert [length_balanced(chosen, rejected, seed=s)[:7].sum() for s in range(5)] == [3] * 5
    rows = [{"prompt": P, "chosen": c, "rejected": r} for c, r in zip(chosen, rejected)]
    prepared = load("preference", cfg_for(write(tmp_path, rows), "preference.length_balance=true"), tokenizer)
    assert prepared.filtered == 4 and len(prepared.train) + len(prepared.eval) == 8
    with pytest.raises(ValueError, match="length_balance needs hard labels"):
        cfg_for(write(tmp_path, rows), "preference.length_balance=true", "preference.soft_labels=true")


def test_length_buckets_trade_padding_against_forward_passes():
    from alignray.models.tokens import length_buckets

    # one batch: 4 x 100 + 64 = 464 slots; the three short apart: 3 x 10 + 64 + 100 + 64 = 258
    assert length_buckets([10, 100, 10, 10], overhead=64) == [[0, 2, 3], [1]]
    assert length_buckets([54, 50, 52], overhead=64) == [[1, 2, 0]]  # splitting saves < 64 slots
    assert length_buckets([5, 40, 80], overhead=0) == [[0], [1], [2]]  # free passes: no padding at all
    groups = length_buckets([17, 3, 90, 44, 45, 91, 2, 60], overhead=32)
    assert sorted(i for g in groups for i in g) == list(range(8))


def test_bucketed_forward_passes_give_what_one_padded_batch_gives(tiny_model):
    import torch
    from alignray.models.tokens import Seq, pad
    from alignray.train.batch import response_logps
    from alignray.train.losses import sequence_logps
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    seqs = [Seq([1, 5, 6], [7] * n) for n in (2, 60, 3, 58, 1, 4)]  # two buckets at the default overhead
    with torch.no_grad():
        logps, counts = response_logps(model, seqs, pad_id=0)
        batch = pad(seqs, 0)
        ref, ref_counts = sequence_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                         batch["labels"])
    assert counts.tolist() == ref_counts.tolist() == [2, 60, 3, 58, 1, 4]
    assert torch.allclose(logps, ref, atol=1e-4)
