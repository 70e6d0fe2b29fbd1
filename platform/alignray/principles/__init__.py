"""Principle sets as data files, and their loader.

A principle set is a YAML file (see docs/configuration.md, "Principle sets"):

    name: harmlessness                 # required
    description: one line              # optional
    response_prefix: "..."             # optional; every answer starts with it (default "")
    pairs:                             # RLCD contrast pairs (rlcd, rlcd_rescore)
      - {positive: "harmless response", negative: "harmful response"}
    instructions:                      # RLAIF labelling questions (rlaif, rlcd_rescore, rdpo judge)
      - "Which response is less harmful?"
    criteria:                          # MORLAIF: named principles, each with its questions
      conciseness: ["Which response makes its point in fewer words?"]
    critiques:                         # rDPO: a critique request and a revision request
      - {critique: "Point out anything harmful in your answer.", revision: "Rewrite it without that."}
    demonstrations:                    # RLCD with affix_placement: demonstration
      - {request: "How do I steal a car?", positive: "I can't help with that.", negative: "Sure! ..."}

`positive` / `negative` are the RLCD contrast affixes, written without parentheses; they are
rendered as ``Assistant (positive):``. `instructions` are the questions an RLAIF labeller
answers with (A) or (B); one is drawn (seeded) per comparison, and per criterion in MORLAIF.
`demonstrations` are example exchanges put before the conversation: p+ shows each request
answered with its `positive` reply, p- with its `negative` one (the same text on both sides is
fine, e.g. a harmless request answered helpfully in both).
Each method checks that the set has the part it needs.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUILTIN_DIR = Path(__file__).parent


class PrincipleError(ValueError):
    """A principle set is unknown or malformed; the message names the file and field."""


class ContrastPair(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    positive: str = Field(min_length=1)
    negative: str = Field(min_length=1)

    @field_validator("positive", "negative")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if value != value.strip() or "\n" in value or ":" in value:
            raise PrincipleError("must be one line, without a colon or surrounding spaces")
        return value


class Critique(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    critique: str = Field(min_length=1, description="Asks the model to criticise its own answer.")
    revision: str = Field(min_length=1, description="Asks it to rewrite the answer after the critique.")


class Demonstration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    request: str = Field(min_length=1, description="A user request.")
    positive: str = Field(min_length=1, description="Its reply in p+ (e.g. a refusal).")
    negative: str = Field(min_length=1, description="Its reply in p- (e.g. full compliance).")


class PrincipleSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    description: str = ""
    response_prefix: str = ""
    pairs: tuple[ContrastPair, ...] = ()
    instructions: tuple[str, ...] = ()
    criteria: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    critiques: tuple[Critique, ...] = ()
    demonstrations: tuple[Demonstration, ...] = ()

    @field_validator("criteria")
    @classmethod
    def _named_questions(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for name, questions in value.items():
            if not name.isidentifier() or not questions:
                raise PrincipleError(f"criterion {name!r} needs a plain name (letters, digits, _) and at least one question")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> PrincipleSet:
        if not (self.pairs or self.instructions or self.criteria or self.critiques or self.demonstrations):
            raise PrincipleError("the set has none of pairs, instructions, criteria, critiques or demonstrations")
        return self

    def require(self, part: str, method: str) -> None:
        """Raise unless this set has `part` (pairs, instructions, criteria, critiques or
        demonstrations); `method` names what needs it in the message."""
        if not getattr(self, part):
            raise PrincipleError(
                f"principle set {self.name!r} has no '{part}', which {method} needs;"
                f" add them to its YAML file or pick a set that has them (alignray principles)"
            )


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_principles(name_or_path: str | Path) -> PrincipleSet:
    """Load a built-in set by name, or a user's YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise PrincipleError(
                f"unknown principle set {str(name_or_path)!r}: built-in sets are "
                f"{', '.join(builtin_names())}; or give the path of a .yaml file"
            )
    if not path.is_file():
        raise PrincipleError(f"{path}: principle file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PrincipleError(f"{path}: not valid YAML: {exc}") from None
    try:
        return PrincipleSet.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors()
        )
        raise PrincipleError(f"{path}: invalid principle set: {problems}") from None
