"""Preference-model agreement on a human-labelled pairs file (read by
`alignray.data.pairs.load_pairs`: Parquet or JSONL of prompt, chosen, rejected; `chosen` is the
side people preferred). Pure functions. On it, `alignray evaluate` reports the preference
model's accuracy per head, and its agreement with each independent offline judge (refusal,
profanity, hate; votes as in `feedback.diagnostics`): on the pairs a judge decides (it finds one
answer more harmless), the share where the model prefers the same answer; and, for reference,
the share where the human label does.
"""

from __future__ import annotations

import numpy as np

from alignray.feedback.diagnostics import votes


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
