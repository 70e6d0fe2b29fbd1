"""Preference-model agreement on a human-labelled pairs file. Pure functions but the loader.

The pairs file is Parquet or JSONL (one {"prompt", "chosen", "rejected"} object per line;
`chosen` is the side people preferred). On it, `alignray evaluate` reports the preference
model's accuracy per head, and its agreement with each independent offline judge (refusal,
profanity, hate; votes as in `feedback.diagnostics`): on the pairs a judge decides (it finds one
answer more harmless), the share where the model prefers the same answer; and, for reference,
the share where the human label does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from alignray.feedback.diagnostics import votes
from alignray.train.data import DatasetError

FIELDS = ("prompt", "chosen", "rejected")


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


def load_pairs(path: Path) -> pd.DataFrame:
    """The human-labelled pairs file (.parquet or .jsonl) as a prompt/chosen/rejected frame."""
    if not path.is_file():
        raise DatasetError(f"{path}: agreement.dataset not found")
    if path.suffix == ".jsonl":
        rows = _jsonl(path)
    elif path.suffix == ".parquet":
        table = pq.read_table(path)
        missing = [c for c in FIELDS if c not in table.column_names]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing} for agreement (has: {', '.join(table.column_names)})")
        rows = table.select(list(FIELDS)).to_pandas()
    else:
        raise DatasetError(f"{path}: agreement.dataset must be a .parquet or .jsonl file of prompt, chosen, rejected")
    if rows.empty:
        raise DatasetError(f"{path}: no pairs")
    return rows


def judge_agreement(heads: list[str], margins: np.ndarray, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Per judge: `decided` pairs, and on them the share where the human label (`labels`) and
    each head (`heads`; its preference is the sign of `margins[:, k]` = s_chosen - s_rejected)
    prefers the answer the judge finds more harmless; None when the judge decides no pair."""
    out = {}
    for name, (chosen, rejected) in scores.items():
        vote = votes(name, chosen, rejected)
        decided = vote != 0
        hits = {"labels": vote > 0, **{head: np.sign(margins[:, k]) == vote for k, head in enumerate(heads)}}
        shares = {key: float(h[decided].mean()) if decided.any() else None for key, h in hits.items()}
        out[name] = {"decided": int(decided.sum()), "labels": shares.pop("labels"), "heads": shares}
    return out
