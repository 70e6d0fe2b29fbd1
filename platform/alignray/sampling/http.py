"""alignray's one retry policy for HTTP calls, the same as the `openai` client's (which the
labeller, teacher and judge endpoints go through): a connection error, a timeout or HTTP 408,
409, 429 or 5xx is retried; the wait is the server's ``Retry-After`` when it sends one (up to
two minutes), else 0.5 s doubling to at most 8 s, less up to 25% jitter.

`JsonClient` applies it on one pooled connection per host, for the routes the `openai` client
has no call for (an alignray reward endpoint's ``/score``)."""

from __future__ import annotations

import email.utils
import random
import time

import httpx

INITIAL_WAIT_S, MAX_WAIT_S, MAX_RETRY_AFTER_S = 0.5, 8.0, 120.0


def retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asks to wait (``Retry-After``: seconds or an HTTP date), if any."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if email.utils.parsedate_tz(value) else None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    return seconds if 0 <= seconds <= MAX_RETRY_AFTER_S else None


def wait_s(attempt: int, headers: httpx.Headers | None) -> float:
    """The wait before retry number `attempt` (1 for the first retry)."""
    asked = retry_after(headers) if headers is not None else None
    if asked is not None:
        return asked
    return min(INITIAL_WAIT_S * 2 ** (attempt - 1), MAX_WAIT_S) * (1 - 0.25 * random.random())


class HttpError(RuntimeError):
    """A request failed for good; the message names the URL and the last error."""


class JsonClient:
    """POSTs JSON and reads JSON back, retrying as the module docstring says."""

    def __init__(self, timeout_s: float, retries: int, headers: dict[str, str] | None = None):
        self.retries = retries
        self.client = httpx.Client(timeout=timeout_s, headers=headers)

    def post(self, url: str, body: dict) -> object:
        last = None
        for attempt in range(self.retries + 1):
            try:
                reply = self.client.post(url, json=body)
            except httpx.TransportError as exc:  # connection refused or reset, timeouts
                last, headers = f"{type(exc).__name__}: {exc}", None
            else:
                if reply.status_code == 200:
                    try:
                        return reply.json()
                    except ValueError:
                        raise HttpError(f"POST {url} answered something that is not JSON: {reply.text[:200]!r}") from None
                last, headers = f"HTTP {reply.status_code}: {reply.text[:200]}", reply.headers
                if not retryable(reply.status_code):
                    raise HttpError(f"POST {url} answered {last}")
            if attempt < self.retries:
                time.sleep(wait_s(attempt + 1, headers))
        raise HttpError(f"POST {url} failed {self.retries + 1} times (last: {last}); is the server up?")

    def close(self) -> None:
        self.client.close()
