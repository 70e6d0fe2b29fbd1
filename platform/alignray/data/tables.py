"""Training datasets in the forms a TRL user has them: alignray's own files, and TRL's standard and
conversational formats (explicit or implicit prompt, prompt-completion, whole conversations) in
any file or Hugging Face dataset that `alignray.data.hub` reads, columns renamed by the config's
`*_key` fields. Each becomes alignray's text columns: `prompt` (a conversation rendered in the
model's chat template, ready for the reply), `chosen`, `rejected` (the reply's text); the training
kind's format then checks the table (alignray.data.formats).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from alignray.data import hub
from alignray.data.pairs import DatasetError

Render = Callable[[list[dict], bool], str]  # (messages, add_generation_prompt) -> text
TEXT_COLUMNS = ("prompt", "chosen", "rejected", "messages")


def read(source: str, split: str, field: str) -> pa.Table:
    """The table of a .parquet file (read as it is), a .jsonl, .json or .csv file, or a Hugging
    Face dataset id's `split`."""
    path = Path(source)
    if path.suffix == ".parquet" and path.is_file():
        try:
            return pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DatasetError(f"{path}: not a readable Parquet file: {exc}") from None
    if path.suffix in hub.BUILDERS and path.is_file() or hub.is_dataset_id(source):
        return hub.load(source, split, field, DatasetError).with_format("arrow")[:]
    if path.suffix in hub.BUILDERS:
        raise DatasetError(f"{path}: dataset not found")
    raise DatasetError(f"{field} {source!r} is neither a {' / '.join(hub.BUILDERS)} file nor a Hugging Face dataset"
                       " id (org/name or org/name:config)")


def as_text(table: pa.Table, keys: dict[str, str], render: Render, where: str) -> pa.Table:
    """`table` with its columns named as `keys` says (canonical name -> the table's) and TRL's
    formats turned into text columns; alignray's own tables come back as they are."""
    renamed = {mine: canonical for canonical, mine in keys.items() if mine != canonical and mine in table.column_names}
    table = table.rename_columns([renamed.get(c, c) for c in table.column_names])
    if "chosen" not in table.column_names and "completion" in table.column_names:  # TRL's prompt-completion
        table = table.rename_columns(["chosen" if c == "completion" else c for c in table.column_names])
    listed = [c for c in TEXT_COLUMNS if c in table.column_names and _is_list(table.schema.field(c).type)]
    if not listed and "prompt" in table.column_names:
        return table
    return pa.Table.from_pylist([_row(r, render, f"{where}: row {i}") for i, r in enumerate(table.to_pylist())])


def _is_list(dtype: pa.DataType) -> bool:
    return pa.types.is_list(dtype) or pa.types.is_large_list(dtype)


def _row(row: dict, render: Render, where: str) -> dict:
    out = {k: v for k, v in row.items() if k not in TEXT_COLUMNS}
    prompt, chosen, rejected, messages = (row.get(c) for c in TEXT_COLUMNS)
    if prompt is None and messages is not None:  # a whole conversation: its last reply is the answer
        *before, last = _messages(messages, "messages", where)
        if last["role"] != "assistant" or not before:
            raise DatasetError(f"{where}: 'messages' must end with an assistant reply after the prompt")
        return out | {"prompt": render(before, True), "chosen": last["content"]}
    if prompt is None:  # TRL's implicit prompt: what chosen and rejected share
        prompt, chosen, rejected = _split_shared(chosen, rejected, render, where, list(row))
    elif isinstance(prompt, list):
        prompt = render(_messages(prompt, "prompt", where), True)
    return out | {"prompt": prompt, "chosen": _reply(chosen, "chosen", where)} \
        | ({"rejected": _reply(rejected, "rejected", where)} if "rejected" in row else {})


def _split_shared(chosen, rejected, render: Render, where: str, row_columns: list[str]) -> tuple[str, object, object]:
    if chosen is None or rejected is None:
        raise DatasetError(f"{where}: no 'prompt', and no 'chosen' and 'rejected' to take it from, nor a 'messages' list"
                           f" (columns: {', '.join(row_columns)}); name yours with prompt_key, chosen_key, rejected_key"
                           " or messages_key")
    if isinstance(chosen, list):
        chosen, rejected = _messages(chosen, "chosen", where), _messages(rejected, "rejected", where)
        if chosen[:-1] != rejected[:-1] or len(chosen) < 2:
            raise DatasetError(f"{where}: with no 'prompt', 'chosen' and 'rejected' must be the same conversation up to"
                               " their last message")
        return render(chosen[:-1], True), chosen[-1:], rejected[-1:]
    shared = os.path.commonprefix([chosen, rejected])
    if not shared:
        raise DatasetError(f"{where}: with no 'prompt', 'chosen' and 'rejected' must start with the same prompt text")
    return shared, chosen[len(shared):], rejected[len(shared):]


def _messages(value: object, column: str, where: str) -> list[dict]:
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value):
        raise DatasetError(f"{where}: {column!r} must be a non-empty list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _reply(value: object, column: str, where: str) -> object:
    """A reply's text: a string as it is, a list of messages as their contents."""
    if not isinstance(value, list):
        return value
    return "".join(m["content"] for m in _messages(value, column, where))
