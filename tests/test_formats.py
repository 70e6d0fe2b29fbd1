"""The dataset formats: a frame that breaks its format is refused before the write (nothing is
written), and a file that breaks it is refused on read, naming the file and the column."""

import pandas as pd
import pyarrow as pa
import pytest
from alignray.config import TrainConfig, load_config
from alignray.data.formats import CANDIDATES, LABELLED_PAIRS, PAIRS, REVISIONS, SFT
from alignray.data.pairs import DatasetError
from alignray.feedback.methods import METHODS
from alignray.feedback.simulate import write_dataset
from alignray.train.data import READERS, load, load_tokenizer

P = "Human: Hi?\n\nAssistant:"
PAIR = {"prompt": P, "chosen": "yes", "rejected": "no"}


@pytest.mark.parametrize("fmt,row,message", [
    (PAIRS, {"prompt": P, "chosen": "yes"}, "missing column(s) ['rejected'] of the pairs format"),
    (LABELLED_PAIRS, PAIR, "missing column(s) ['preference_prob'] of the labelled pairs format"),
    (PAIRS, {**PAIR, "preference_prob": "high"}, "column 'preference_prob' must be number, not"),
    (PAIRS, {**PAIR, "preference_prob_kind": "0.7"}, "column 'preference_prob_kind' must be number"),
    (REVISIONS, {**PAIR, "preference_prob": 0.6, "judge_score_difference": 0.4, "critique": 3},
     "column 'critique' must be text, not int64"),
    (CANDIDATES, {"prompt": P, "candidates": ["a", "b"], "rewards": ["1", "2"]},
     "column 'rewards' must be list of numbers"),
    (CANDIDATES, {"prompt": P, "candidates": "a b", "rewards": [1.0, 2.0]}, "column 'candidates' must be list of text"),
    (PAIRS, {**PAIR, "chosen_truncated": "no"}, "column 'chosen_truncated' must be boolean, not"),
    (CANDIDATES, {"prompt": P, "candidates": ["a"], "rewards": [1.0], "truncated": [1]}, "column 'truncated' must be list of booleans"),
])
def test_a_frame_that_breaks_its_format_is_not_written(tmp_path, fmt, row, message):
    target = tmp_path / "datasets" / fmt.file
    with pytest.raises(DatasetError) as err:
        write_dataset(pd.DataFrame([row]), fmt, target)
    assert str(target) in str(err.value) and message in str(err.value)
    assert not target.parent.exists() or not any(target.parent.iterdir())


def test_rows_as_the_methods_write_them_fit_their_formats():
    cut = {"chosen_truncated": False, "rejected_truncated": True}
    rows = {
        "rlcd": {**PAIR, **cut, "positive_affix": "kind", "negative_affix": "rude", "pair_index": 0, "method": "rlcd"},
        "rlaif": {**PAIR, **cut, "preference_prob": 0.8, "instruction": "Which is kinder?", "positive_affix": None},
        "rlcd_rescore": {**PAIR, **cut, "preference_prob": 1.0, "instruction": None, "agrees_with_rlcd": True},
        "morlaif": {**PAIR, **cut, "preference_prob": 0.6, "preference_prob_honesty": 0.4, "instructions": "{}"},
        "rrhf": {"prompt": P, "candidates": ["a", "b"], "rewards": [0.1, 0.2], "truncated": [False, True],
                 "policies": ["p", "p"]},
        "rdpo": {**PAIR, **cut, "preference_prob": 0.7, "judge_score_difference": 0.8, "critique": "too short"},
    }
    assert set(rows) == set(METHODS)
    for method, row in rows.items():
        METHODS[method].format.check(pa.Table.from_pandas(pd.DataFrame([row])).schema, method)
    assert {kind: r.format for kind, r in READERS.items()} == {
        "preference": PAIRS, "sft": SFT, "dpo": PAIRS, "rrhf": CANDIDATES}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)


@pytest.mark.parametrize("kind,row,extra,message", [
    ("dpo", {**PAIR, "preference_prob": "0.9"}, ["dpo.soft_labels=true"],
     "column 'preference_prob' must be number, not"),
    ("sft", {"prompt": P, "chosen": 7}, [], "column 'chosen' must be text, not int64"),
    ("rrhf", {"prompt": P, "candidates": ["a", "b"], "rewards": ["1", "2"]}, [], "column 'rewards' must be list of numbers"),
    ("preference", {**PAIR, "margin": "big"}, ["preference.margin_column=margin"], "column 'margin' must be number"),
    ("preference", {**PAIR, "principle": 1}, ["preference.principles=[kind]"], "column 'principle' must be text"),
])
def test_a_file_that_breaks_its_format_is_refused_on_read(tmp_path, tokenizer, kind, row, extra, message):
    path = tmp_path / "d.parquet"
    pd.DataFrame([row] * 4).to_parquet(path)
    cfg = load_config(None, [f"dataset={path}", *extra], TrainConfig)
    with pytest.raises(DatasetError) as err:
        load(kind, cfg, tokenizer)
    assert str(path) in str(err.value) and message in str(err.value)
