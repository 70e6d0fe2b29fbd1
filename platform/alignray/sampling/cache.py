"""Answered sampler requests kept on disk, so that an interrupted stage resumes: run again with
the same model and requests, it reads them back instead of sampling again (with per-request
seeds a sampler's answer is a function of its request, so the result is the same as a run
that was never interrupted). One JSON line per request, appended as each one finishes; a line
cut short by a kill is ignored."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from alignray.sampling.types import Completion, Score


def model_identity(model_path: str) -> str:
    """A digest of the model folder's files: names, sizes, and their first and last MiB. Not
    the path, so a models:/ URI downloaded again to a new folder is still the same model."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_path).iterdir() if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}:".encode())
        with path.open("rb") as fh:
            digest.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _tuples(record: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}


class RequestCache:
    def __init__(self, path: Path, identity: str):
        self.path, self.identity = path, identity
        self.entries: dict[str, list] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed run
                    continue
                self.entries[record["key"]] = record["results"]

    def key(self, method: str, columns: Sequence[Sequence]) -> str:
        text = json.dumps([self.identity, method, [[_plain(v) for v in column] for column in columns]], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, method: str, key: str) -> list | None:
        """The answers stored under `key` (see `key`), as `method` returns them."""
        found = self.entries.get(key)
        if found is None:
            return None
        if method == "generate":
            return [[Completion(**_tuples(c)) for c in completions] for completions in found]
        return [Score(**_tuples(s)) for s in found]

    def put(self, key: str, results: list) -> None:
        plain = [[_plain(c) for c in r] if isinstance(r, list) else _plain(r) for r in results]
        self.entries[key] = plain
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps({"key": key, "results": plain}) + "\n")
