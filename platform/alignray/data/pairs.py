"""Labelled comparison files: Parquet, or JSONL with one {"prompt", "chosen", "rejected"} object
per line; `chosen` is the preferred side. `alignray evaluate` measures a preference model's
agreement on one (agreement.dataset); PPO can fit its per-principle reward weights on one
(reward.fit_weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

FIELDS = ("prompt", "chosen", "rejected")


class DatasetError(ValueError):
    """A dataset file (training data, labelled pairs) is unusable; the message names the file,
    row and column."""


def _jsonl(path: Path) -> pd.DataFrame:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{path}:{lineno}: expected an object with {', '.join(FIELDS)}")
            bad = [k for k in FIELDS if not isinstance(record.get(k), str)]
            if bad:
                raise DatasetError(f"{path}:{lineno}: {', '.join(bad)} missing or not a string")
            rows.append({k: record[k] for k in FIELDS})
    return pd.DataFrame(rows, columns=list(FIELDS))


def load_pairs(path: Path, field: str) -> pd.DataFrame:
    """A labelled pairs file (.parquet or .jsonl) as a prompt/chosen/rejected frame; `field` is
    the config field that named it, for the error messages."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {field} not found")
    if path.suffix == ".jsonl":
        rows = _jsonl(path)
    elif path.suffix == ".parquet":
        table = pq.read_table(path)
        missing = [c for c in FIELDS if c not in table.column_names]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing} for {field} (has: {', '.join(table.column_names)})")
        rows = table.select(list(FIELDS)).to_pandas()
    else:
        raise DatasetError(f"{path}: {field} must be a .parquet or .jsonl file of prompt, chosen, rejected")
    if rows.empty:
        raise DatasetError(f"{path}: no pairs")
    return rows
