"""What the Serve applications share: the bearer token, the guard in front of their routes, error
text, model sources."""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "request_too_large", 503: "service_unavailable"}


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


def has_token(app: str, request: Request) -> bool:
    """Whether `request` carries the bearer token of `app` (for the open routes' details)."""
    settings = _GUARDS.get(app)
    return settings is not None and authorized(settings["token"], request.headers.get("authorization"))


def error_reply(status: int, message: str) -> JSONResponse:
    """An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}`."""
    kind = ERROR_TYPES.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


def json_errors(api: FastAPI) -> None:
    """`api`'s HTTP errors and invalid bodies answered with `error_reply`; an invalid body's
    problems are named, its input is not repeated (FastAPI's and Ray's handlers repeat it)."""

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_reply(exc.status_code, str(exc.detail))

    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_reply(400, validation_problems(exc.errors()))

    api.add_exception_handler(HTTPException, http_error)
    api.add_exception_handler(RequestValidationError, invalid_body)


class Guard:
    """ASGI middleware in front of an application's routes (all but `open_paths`, matched exactly
    below the application's route prefix): the bearer token is checked before the body is read
    or validated, and a body is refused with 413 as soon as the bytes received pass `limit`,
    whatever Content-Length says (chunked bodies too).
    The settings are looked up per request under `app` (`set_guard`), in this module: Serve may
    pickle an app and its deployment class by value, and a copy of a settings object made at
    deploy time would not be the one the replica fills in."""

    def __init__(self, app, name: str, open_paths: tuple[str, ...] = ("/healthz", "/readyz")):
        self.app, self.name, self.open_paths = app, name, open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].removeprefix(scope.get("root_path", "")) in self.open_paths:
            return await self.app(scope, receive, send)
        settings = _GUARDS.get(self.name)
        if settings is None:  # fail closed
            return await error_reply(503, "this replica is not configured yet")(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not authorized(settings["token"], headers.get("authorization")):
            return await error_reply(401, "missing or wrong bearer token")(scope, receive, send)
        limit, received, refused = settings["limit"], 0, False
        if int(headers.get("content-length") or 0) > limit:
            return await error_reply(413, f"request body above {limit} bytes")(scope, receive, send)

        async def counted():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await error_reply(413, f"request body above {limit} bytes")(scope, receive, send)
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
