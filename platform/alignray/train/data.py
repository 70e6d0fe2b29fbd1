"""Training datasets: validated on the driver, tokenized once, split into train and eval.

Each kind reads one of the formats of `alignray.data.formats` (the output of a feedback stage),
checked on read, plus the label columns its config asks for:

| kind | format | label columns |
|---|---|---|
| preference | pairs | principle, a margin column or preference_prob[_<principle>], by `preference.*` |
| sft | sft | |
| dpo | pairs | preference_prob with `dpo.soft_labels` or `dpo.judge_agreement_filter` |
| rrhf | candidates | |

A response follows its prompt directly, after one space when neither side has whitespace at
the join, and ends with the tokenizer's EOS token. Examples longer than `max_length` are cut:
the prompt from `truncation_side` first, then the response's tail; they are counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alignray.config import TrainConfig
from alignray.data import tables
from alignray.data.formats import CANDIDATES, PAIRS, SFT, Format, Kind
from alignray.data.pairs import DatasetError
from alignray.models.tokens import Seq, Tokenize


@dataclass
class Example:
    seqs: list[Seq]  # sft: [chosen]; preference/dpo: [chosen, rejected]; rrhf: k candidates
    values: dict[str, float | list[float]] = field(default_factory=dict)  # labels per kind


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: must be a non-empty string")
    return value


def _pair(row: dict, where: str, tokenize: Tokenize) -> list[Seq]:
    prompt = _text(row["prompt"], f"{where} column 'prompt'")
    return [tokenize(prompt, _text(row[side], f"{where} column '{side}'")) for side in ("chosen", "rejected")]


def _sft_example(row: dict, where: str, cfg: TrainConfig, tokenize: Tokenize) -> Example:
    prompt = _text(row["prompt"], f"{where} column 'prompt'")
    return Example([tokenize(prompt, _text(row["chosen"], f"{where} column 'chosen'"))])


def _rrhf_example(row: dict, where: str, cfg: TrainConfig, tokenize: Tokenize) -> Example:
    prompt = _text(row["prompt"], f"{where} column 'prompt'")
    cands, rewards = row["candidates"], row["rewards"]
    if not isinstance(cands, list) or len(cands) < 2:
        raise DatasetError(f"{where} column 'candidates': RRHF needs at least 2 candidates per prompt")
    if not isinstance(rewards, list) or len(rewards) != len(cands):
        raise DatasetError(f"{where} column 'rewards': needs one reward per candidate ({len(cands)})")
    if any(r is None or not math.isfinite(r) for r in rewards):
        raise DatasetError(f"{where} column 'rewards': rewards must be finite numbers")
    if len(set(rewards)) == 1:
        raise DatasetError(
            f"{where} column 'rewards': all {len(rewards)} candidates have the same reward"
            f" ({rewards[0]}), so there is nothing to rank"
        )
    seqs = [tokenize(prompt, _text(c, f"{where} candidate {i}")) for i, c in enumerate(cands)]
    return Example(seqs, {"rewards": [float(r) for r in rewards]})


def _preference_example(row: dict, where: str, cfg: TrainConfig, tokenize: Tokenize) -> Example:
    values: dict = {}
    names = cfg.preference.principles
    if cfg.preference.soft_labels:
        values["probs"] = [_probability(row, c, where) for c in _preference_labels(cfg)]
    elif names:
        principle = row.get("principle")
        if principle not in names:
            raise DatasetError(f"{where} column 'principle': {principle!r} is not one of {names}")
        values["head"] = float(names.index(principle))
    if cfg.preference.margin_column:
        values["margin"] = float(row[cfg.preference.margin_column])
    return Example(_pair(row, where, tokenize), values)


def _dpo_example(row: dict, where: str, cfg: TrainConfig, tokenize: Tokenize) -> Example | None:
    seqs = _pair(row, where, tokenize)
    if not _dpo_labels(cfg):
        return Example(seqs)
    p = _probability(row, "preference_prob", where)
    if cfg.dpo.judge_agreement_filter and p <= 0.5:
        return None
    return Example(seqs, {"preference_prob": p})


def length_balanced(chosen: list[str], rejected: list[str], seed: int) -> np.ndarray:
    """A keep-mask over pairs with as many pairs whose `chosen` is the longer answer (in
    characters) as pairs whose `chosen` is the shorter one: the larger group is subsampled
    (seeded); pairs of equal length all stay. A preference model trained on the kept pairs
    cannot lower its loss by preferring the longer (or shorter) answer."""
    diff = np.array([len(c) - len(r) for c, r in zip(chosen, rejected)])
    longer, shorter = np.flatnonzero(diff > 0), np.flatnonzero(diff < 0)
    big, small = (longer, shorter) if len(longer) > len(shorter) else (shorter, longer)
    keep = np.ones(len(diff), bool)
    keep[np.random.default_rng(seed).choice(big, len(big) - len(small), replace=False)] = False
    return keep


def _probability(row: dict, column: str, where: str) -> float:
    p = row.get(column)
    if p is None or not isinstance(p, (int, float)) or math.isnan(p) or not 0 <= p <= 1:
        raise DatasetError(f"{where} column '{column}': {p!r} is not a probability in [0, 1]")
    return float(p)


def _preference_labels(cfg: TrainConfig) -> dict[str, Kind]:
    pc = cfg.preference
    if pc.soft_labels:
        names = [f"preference_prob_{n}" for n in pc.principles] if pc.principles else ["preference_prob"]
        return dict.fromkeys(names, Kind.NUMBER)
    return ({"principle": Kind.TEXT} if pc.principles else {}) | ({pc.margin_column: Kind.NUMBER} if pc.margin_column else {})


def _dpo_labels(cfg: TrainConfig) -> dict[str, Kind]:
    return {"preference_prob": Kind.NUMBER} if cfg.dpo.soft_labels or cfg.dpo.judge_agreement_filter else {}


@dataclass(frozen=True)
class Reader:
    """How one training kind reads a dataset: its format, the label columns (and their types) its
    config asks for beyond the format's required ones, and one row as an Example (None: filtered)."""
    format: Format
    labels: Callable[[TrainConfig], dict[str, Kind]]
    example: Callable[[dict, str, TrainConfig, Tokenize], Example | None]
    balances: bool = False  # honours preference.length_balance


READERS = {
    "preference": Reader(PAIRS, _preference_labels, _preference_example, balances=True),
    "sft": Reader(SFT, lambda cfg: {}, _sft_example),
    "dpo": Reader(PAIRS, _dpo_labels, _dpo_example),
    "rrhf": Reader(CANDIDATES, lambda cfg: {}, _rrhf_example),
}


@dataclass
class Prepared:
    train: list[Example]
    eval: list[Example]
    truncated: int  # sequences cut to max_length
    filtered: int  # pairs dropped by the judge-agreement filter or the length balance


def load(kind: str, cfg: TrainConfig, tokenizer) -> Prepared:
    """Read (TRL's formats turned into alignray's text columns), validate and tokenize
    `cfg.dataset` for `kind`, then split off the eval share."""
    path = cfg.dataset
    keys = {key: getattr(cfg, f"{key}_key") for key in ("prompt", "chosen", "rejected", "messages")}
    table = tables.as_text(tables.read(path, cfg.dataset_split, "dataset"), keys, chat_renderer(tokenizer, path), path)
    reader = READERS[kind]
    labels = reader.labels(cfg)
    reader.format.check(table.schema, str(path), labels, f" needed for {kind} training")
    if table.num_rows == 0:
        raise DatasetError(f"{path}: the dataset is empty")
    tokenize = Tokenize(tokenizer, cfg.trainer.max_length, cfg.trainer.truncation_side)
    rows = table.select(list(dict.fromkeys([*reader.format.required, *labels]))).to_pylist()
    keep = np.ones(len(rows), bool)
    if reader.balances and cfg.preference.length_balance:
        keep = length_balanced([str(r["chosen"]) for r in rows], [str(r["rejected"]) for r in rows], cfg.trainer.seed)
    examples, filtered = [], 0
    for i, row in enumerate(rows):
        ex = reader.example(row, f"{path}: row {i}", cfg, tokenize) if keep[i] else None
        if ex is None:
            filtered += 1
        else:
            examples.append(ex)
    order = np.random.default_rng(cfg.trainer.seed).permutation(len(examples))
    n_eval = int(len(examples) * cfg.trainer.eval_fraction)
    if len(examples) - n_eval < 1:
        raise DatasetError(f"{path}: no training examples left after filtering and the eval split")
    eval_ = [examples[i] for i in order[:n_eval]]
    train = [examples[i] for i in order[n_eval:]]
    return Prepared(train, eval_, tokenize.truncated, filtered)


def chat_renderer(tokenizer, where: str) -> tables.Render:
    """Chat messages as the model's chat template renders them (a conversational dataset's)."""
    def render(messages: list[dict], generation: bool) -> str:
        if not tokenizer.chat_template:
            raise DatasetError(f"{where}: holds chat messages, and the model's tokenizer has no chat template to render"
                               " them with; give a model that has one, or the prompts as text")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    return render


def load_tokenizer(model_path: Path):
    """The model's tokenizer, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.eos_token_id is None:
        raise DatasetError(f"{model_path}: the tokenizer has no EOS token to end responses with")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
