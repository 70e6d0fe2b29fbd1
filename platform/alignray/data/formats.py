"""The dataset formats, typed once: what each feedback method writes and each training kind reads.

| format | written by | read by | required columns | optional columns |
|---|---|---|---|---|
| pairs | simulation.method=rlcd | preference, dpo | prompt, chosen, rejected (text) | see below |
| labelled pairs | rlaif, rlcd_rescore, morlaif | preference, dpo | pairs' + preference_prob | see below |
| revisions | rdpo | dpo | pairs' + preference_prob, judge_score_difference, critique | see below |
| sft | (pairs) | sft | prompt, chosen (text) | |
| candidates | rrhf | rrhf | prompt, candidates (list of text), rewards (list of numbers) | truncated (list of booleans) |

A pair's optional columns: preference_prob and preference_prob_<principle> (number: P(chosen is
better)), principle, instruction and critique (text), chosen_truncated and rejected_truncated
(boolean: the response was cut off at sampler.max_tokens; datasets written before they existed
lack them), and a margin column (number) named by the training config. Other columns
(provenance: method, source, model, seed, ...) pass unchecked.
A feedback stage checks its frame before the (atomic) write; training checks the file on read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import pyarrow as pa

from alignray.data.pairs import DatasetError


def _text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _flag(t: pa.DataType) -> bool:
    return pa.types.is_boolean(t)


def _list_of(item: Callable[[pa.DataType], bool]) -> Callable[[pa.DataType], bool]:
    return lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t)) and item(t.value_type)


class Kind(Enum):
    TEXT = ("text", _text)
    NUMBER = ("number", _number)
    TEXTS = ("list of text", _list_of(_text))
    NUMBERS = ("list of numbers", _list_of(_number))
    FLAG = ("boolean", _flag)
    FLAGS = ("list of booleans", _list_of(_flag))

    def __init__(self, label: str, fits: Callable[[pa.DataType], bool]):
        self.label, self.fits = label, fits


@dataclass(frozen=True)
class Format:
    name: str
    file: str  # the file a feedback stage writes it to
    required: dict[str, Kind]
    optional: dict[str, Kind] = field(default_factory=dict)
    prefixed: dict[str, Kind] = field(default_factory=dict)  # columns named <prefix><anything>

    def kind(self, column: str) -> Kind | None:
        """The type `column` must have, or None when the format does not type it."""
        typed = {**self.optional, **self.required}
        if column in typed:
            return typed[column]
        return next((k for prefix, k in self.prefixed.items() if column.startswith(prefix)), None)

    def check(self, schema: pa.Schema, where: str, extra: dict[str, Kind] | None = None, purpose: str = "") -> None:
        """Raise DatasetError naming `where` and the column when a required column (the format's, or
        one of `extra`: e.g. the label columns a training config asks for) is missing, or a column
        the format or `extra` types has another type. An optional column may be all nulls."""
        extra = extra or {}
        missing = [c for c in dict.fromkeys([*self.required, *extra]) if c not in schema.names]
        if missing:
            raise DatasetError(f"{where}: missing column(s) {missing}{purpose or f' of the {self.name} format'}"
                               f" (has: {', '.join(schema.names)})")
        for column in schema.names:
            kind, dtype = extra.get(column) or self.kind(column), schema.field(column).type
            optional_nulls = pa.types.is_null(dtype) and column not in self.required and column not in extra
            if kind is not None and not kind.fits(dtype) and not optional_nulls:
                raise DatasetError(f"{where}: column {column!r} must be {kind.label}, not {dtype}")

    def extended(self, name: str, **required: Kind) -> Format:
        return Format(name, self.file, {**self.required, **required}, self.optional, self.prefixed)


_PAIR_OPTIONAL = {"preference_prob": Kind.NUMBER, "principle": Kind.TEXT, "instruction": Kind.TEXT, "critique": Kind.TEXT,
                "judge_score_difference": Kind.NUMBER, "chosen_truncated": Kind.FLAG, "rejected_truncated": Kind.FLAG}
PAIRS = Format("pairs", "preferences.parquet", {"prompt": Kind.TEXT, "chosen": Kind.TEXT, "rejected": Kind.TEXT},
               _PAIR_OPTIONAL, {"preference_prob_": Kind.NUMBER})
LABELLED_PAIRS = PAIRS.extended("labelled pairs", preference_prob=Kind.NUMBER)
REVISIONS = LABELLED_PAIRS.extended("revisions", judge_score_difference=Kind.NUMBER, critique=Kind.TEXT)
SFT = Format("sft", "preferences.parquet", {"prompt": Kind.TEXT, "chosen": Kind.TEXT})
CANDIDATES = Format("candidates", "candidates.parquet",
                    {"prompt": Kind.TEXT, "candidates": Kind.TEXTS, "rewards": Kind.NUMBERS}, {"truncated": Kind.FLAGS})
