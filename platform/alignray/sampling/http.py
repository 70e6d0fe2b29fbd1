"""alignray's one HTTP stack: the `openai` client, for the OpenAI routes (the labeller, teacher
and judge endpoints) and, through its generic `post`, for the routes it has no call for (an
alignray reward endpoint's ``/score``, vLLM's ``/tokenize``). Its retries are the policy: a
connection error, a timeout or HTTP 408, 409, 429 or 5xx is retried; the wait is the server's
``Retry-After`` when it sends one (up to a minute), else 0.5 s doubling to at most 8 s, less up
to 25% jitter. `failure` words what is left when the retries are used up."""

from __future__ import annotations

import openai


def retryable(status: int) -> bool:
    """The statuses the client retries (it also retries connection errors and timeouts)."""
    return status in (408, 409, 429) or status >= 500


def client(base_url: str, timeout_s: float, retries: int, api_key: str | None = None) -> openai.OpenAI:
    """An `openai` client that sends `Authorization: Bearer <api_key>` (a placeholder without one)."""
    return openai.OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=retries)


def failure(exc: openai.APIError, what: str, retries: int) -> tuple[str, int | None]:
    """The message and HTTP status (None: no answer) of the request `what` (e.g. "POST <url>")
    that failed for good with `exc`: the server's answer, or the retries used up and the last error."""
    if isinstance(exc, openai.APIStatusError):
        last = f"HTTP {exc.status_code}: {str(exc)[:300]}"
        if not retryable(exc.status_code):
            return f"{what} answered {last}", exc.status_code
        return f"{what} failed {retries + 1} times (last: {last}); is the endpoint up?", exc.status_code
    return f"{what} failed {retries + 1} times (last: {exc}); is the endpoint up?", None
