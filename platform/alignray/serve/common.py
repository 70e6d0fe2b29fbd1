"""What the Serve applications share: the bearer token, the body-size guard, model sources."""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

from fastapi import HTTPException, Request


def read_token(token_env: str | None, token_file: str | None) -> str | None:
    """The bearer token from a mounted secret file, else from an environment variable; None
    (no authentication, logged as a warning) when neither is configured or the variable is unset."""
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"token_file {token_file} is empty")
        return token
    token = os.environ.get(token_env) or None if token_env else None
    if token is None:
        where = f"the environment variable {token_env} is not set" if token_env else "no token_env or token_file"
        logging.getLogger("ray.serve").warning("authentication is off: %s", where)
    return token


def authorize(token: str | None, authorization: str | None) -> None:
    """401 unless `Authorization: Bearer <token>` matches (compared in constant time)."""
    if token is None:
        return
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not authorization or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong bearer token")


def check_size(request: Request, limit: int) -> None:
    if int(request.headers.get("content-length") or 0) > limit:
        raise HTTPException(status_code=413, detail=f"request body above {limit} bytes")


def use_tracking(uri: str | None) -> None:
    """Point models:/ URIs at `uri` (the in-cluster MLflow server)."""
    if uri:
        import mlflow

        mlflow.set_tracking_uri(uri)
