"""Training datasets in TRL's formats, from .json, .jsonl, .csv and .parquet files, with renamed
columns: each becomes alignray's text columns, and the training kinds read them."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from alignray.config import TrainConfig
from alignray.data.pairs import DatasetError
from alignray.train import data
from transformers import AutoTokenizer

USER = [{"role": "user", "content": "How do I stay safe online?"}]
GOOD, BAD = "Use strong passwords.", "Do not bother."


@pytest.fixture(scope="module")
def tok(tiny_model):
    return data.load_tokenizer(tiny_model)


def loaded(kind, tok, tiny_model, dataset, **fields):
    cfg = TrainConfig(dataset=str(dataset), model={"name": str(tiny_model)}, trainer={"eval_fraction": 0.0}, **fields)
    return data.load(kind, cfg, tok).train


def text_of(tok, example):
    """The first sequence (the chosen or SFT reply after its prompt) as text."""
    return tok.decode(example.seqs[0].ids)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_conversational_preferences_with_explicit_and_implicit_prompts(tok, tiny_model, tmp_path):
    rendered = tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    explicit = write_jsonl(tmp_path / "explicit.jsonl", [
        {"prompt": USER, "chosen": [{"role": "assistant", "content": GOOD}],
         "rejected": [{"role": "assistant", "content": BAD}], "score": 1.0}] * 4)
    implicit = tmp_path / "implicit.json"
    implicit.write_text(json.dumps([{"chosen": USER + [{"role": "assistant", "content": GOOD}],
                                     "rejected": USER + [{"role": "assistant", "content": BAD}]}] * 4))
    keys = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "messages": "messages"}
    render = data.chat_renderer(tok, "x")
    for path in (explicit, implicit):
        table = data.tables.as_text(data.tables.read(str(path), "train", "dataset"), keys, render, str(path))
        row = table.to_pylist()[0]
        assert (row["prompt"], row["chosen"], row["rejected"]) == (rendered, GOOD, BAD)
    assert data.tables.as_text(data.tables.read(str(explicit), "train", "dataset"), keys, render, "x").column("score")
    assert len(loaded("dpo", tok, tiny_model, explicit)) == 4 and len(loaded("preference", tok, tiny_model, implicit)) == 4


def test_standard_formats_csv_prompt_completion_and_renamed_columns(tok, tiny_model, tmp_path):
    csv = tmp_path / "sft.csv"
    csv.write_text('prompt,completion\n"Human: hi\n\nAssistant:"," Hello there."\n' * 3)
    [first, *_] = loaded("sft", tok, tiny_model, csv)
    assert text_of(tok, first).startswith("Human: hi\n\nAssistant: Hello there.")

    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{"question": "Human: q\n\nAssistant:", "good": " yes", "bad": " no"}] * 3)
    assert len(loaded("dpo", tok, tiny_model, renamed, prompt_key="question", chosen_key="good", rejected_key="bad")) == 3
    with pytest.raises(DatasetError, match=r"row 0: no 'prompt', .* \(columns: question, good, bad\); name yours with"):
        loaded("dpo", tok, tiny_model, renamed)

    shared = write_jsonl(tmp_path / "shared.jsonl", [{"chosen": "Human: q\n\nAssistant: yes", "rejected": "Human: q\n\nAssistant: no"}])
    table = data.tables.as_text(data.tables.read(str(shared), "train", "dataset"),
                                {k: k for k in ("prompt", "chosen", "rejected", "messages")}, data.chat_renderer(tok, "x"), "x")
    assert table.to_pylist() == [{"prompt": "Human: q\n\nAssistant: ", "chosen": "yes", "rejected": "no"}]


def test_sft_on_whole_conversations_and_alignray_files_as_they_are(tok, tiny_model, tmp_path):
    conversation = [{"role": "system", "content": "Be brief."}, *USER, {"role": "assistant", "content": GOOD}]
    parquet = tmp_path / "messages.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": conversation}] * 3), parquet)
    [first, *_] = loaded("sft", tok, tiny_model, parquet)
    assert text_of(tok, first).startswith(tok.apply_chat_template(conversation[:2], tokenize=False, add_generation_prompt=True) + GOOD)

    ours = tmp_path / "preferences.parquet"
    frame = pa.Table.from_pylist([{"prompt": "Human: q\n\nAssistant:", "chosen": " a", "rejected": " b", "preference_prob": 0.9}])
    pq.write_table(frame, ours)
    keys = {k: k for k in ("prompt", "chosen", "rejected", "messages")}
    assert data.tables.as_text(pq.read_table(ours), keys, data.chat_renderer(tok, "x"), "x").equals(pq.read_table(ours))


@pytest.mark.parametrize("row,message", [
    ({"messages": USER}, "row 0: 'messages' must end with an assistant reply after the prompt"),
    ({"prompt": USER, "chosen": "x", "rejected": [{"role": "assistant"}]}, "row 0: 'rejected' must be a non-empty list of"),
    ({"chosen": [*USER, {"role": "assistant", "content": "a"}], "rejected": [{"role": "user", "content": "other"},
      {"role": "assistant", "content": "b"}]}, "must be the same conversation up to their last message"),
    ({"chosen": "abc", "rejected": "xyz"}, "must start with the same prompt text"),
])
def test_malformed_rows_are_named(tok, tiny_model, tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DatasetError, match=message):
        loaded("dpo", tok, tiny_model, path)


def test_unknown_sources_and_a_model_without_a_chat_template(tok, tiny_model, tmp_path):
    with pytest.raises(DatasetError, match="pairs.txt. is neither a .json / .jsonl / .csv / .parquet file nor a Hugging Face"):
        loaded("dpo", tok, tiny_model, tmp_path / "pairs.txt")
    with pytest.raises(DatasetError, match="pairs.jsonl: dataset not found"):
        loaded("dpo", tok, tiny_model, tmp_path / "pairs.jsonl")
    plain = AutoTokenizer.from_pretrained(tiny_model)
    plain.chat_template = None
    path = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": USER, "chosen": GOOD, "rejected": BAD}])
    with pytest.raises(DatasetError, match="no chat template to render them"):
        data.load("dpo", TrainConfig(dataset=str(path), model={"name": str(tiny_model)}), plain)
