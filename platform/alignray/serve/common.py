"""What the Serve applications share: the bearer token, the guard in front of their routes, error
text, model sources."""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path


def read_token(token_env: str | None, token_file: str | None, allow_unauthenticated: bool = False) -> str | None:
    """The bearer token from a mounted secret file, else from the replica's environment variable
    `token_env`. A configured token that is missing stops the replica from starting, unless
    `allow_unauthenticated`; with neither configured there is none (logged as a warning)."""
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"token_file {token_file} is empty")
        return token
    token = os.environ.get(token_env) or None if token_env else None
    if token is None and token_env and not allow_unauthenticated:
        raise ValueError(
            f"token_env {token_env} is configured but not set in the replica's environment: set it in the"
            " application's runtime_env env_vars (alignray serve copies it from your shell) or the pod's env,"
            " or mount it and give token_file; allow_unauthenticated: true serves without a token")
    if token is None:
        where = f"{token_env} is not set (allow_unauthenticated)" if token_env else "no token_env or token_file"
        logging.getLogger("ray.serve").warning("authentication is off: %s", where)
    return token


def authorized(token: str | None, authorization: str | None) -> bool:
    """`Authorization: Bearer <token>` (the scheme in any case), compared in constant time."""
    if token is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


_GUARDS: dict[str, dict] = {}  # per application, in this replica's process: {"token", "limit"}


def set_guard(app: str, token: str | None, limit: int) -> None:
    """The token and body limit `Guard(app=...)` enforces in this replica (called by its __init__)."""
    _GUARDS[app] = {"token": token, "limit": limit}


class Guard:
    """ASGI middleware in front of an application's routes (all but `open_paths`): the bearer
    token is checked before the body is read or validated, and a body is refused with 413 as
    soon as the bytes received pass `limit`, whatever Content-Length says (chunked bodies too).
    The settings are looked up per request under `app` (`set_guard`), in this module: Serve may
    pickle an app and its deployment class by value, and a copy of a settings object made at
    deploy time would not be the one the replica fills in."""

    def __init__(self, app, name: str, reply, open_paths: tuple[str, ...] = ("/healthz", "/readyz")):
        self.app, self.name, self.reply, self.open_paths = app, name, reply, open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].endswith(self.open_paths):
            return await self.app(scope, receive, send)
        settings = _GUARDS.get(self.name)
        if settings is None:  # fail closed
            return await self.reply(503, "this replica is not configured yet")(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not authorized(settings["token"], headers.get("authorization")):
            return await self.reply(401, "missing or wrong bearer token")(scope, receive, send)
        limit, received, refused = settings["limit"], 0, False
        if int(headers.get("content-length") or 0) > limit:
            return await self.reply(413, f"request body above {limit} bytes")(scope, receive, send)

        async def counted():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await self.reply(413, f"request body above {limit} bytes")(scope, receive, send)
                    return {"type": "http.disconnect"}  # the route stops reading; its reply is dropped
            return message

        async def unless_refused(message):
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)


def validation_problems(errors: list[dict]) -> str:
    """A request body's validation errors as `field: problem; ...`, without echoing the input."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)


def use_tracking(uri: str | None) -> None:
    """Point models:/ URIs at `uri` (the in-cluster MLflow server)."""
    if uri:
        import mlflow

        mlflow.set_tracking_uri(uri)
