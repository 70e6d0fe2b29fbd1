"""`alignray serve`: serving/config.yaml adapted to where it runs, then `serve run`.

The file is written for GPU workers and an in-cluster MLflow (it is what the RayService
embeds); `adapt` changes only what a command line names: models, address, CPU-only replicas."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from alignray import logs
from alignray.config import ConfigError, ServeArgs, explain_errors

log = logs.get(__name__)

APPS = {"policy": "alignray.serve.policy:build", "reward": "alignray.serve.reward:build"}


def load(path: Path) -> dict:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    if not path.is_file():
        raise ConfigError(f"{path}: no such Serve config (the repository's is serving/config.yaml)")
    cfg = yaml.safe_load(path.read_text())
    try:
        ServeDeploySchema.model_validate(cfg)
    except ValidationError as exc:
        raise ConfigError(f"{path}: not a valid Serve config: {exc}") from None
    args = {name: app.get("args", {}) for app in cfg["applications"] for name, target in APPS.items()
            if app["import_path"] == target}
    try:
        ServeArgs.model_validate(args)  # the applications' args, as their build() reads them
    except ValidationError as exc:
        raise ConfigError(explain_errors(exc, ServeArgs, f"{path} (applications[].args)", {})) from None
    return cfg


def _app(cfg: dict, name: str) -> dict:
    for app in cfg["applications"]:
        if app["import_path"] == APPS[name]:
            return app
    raise ConfigError(f"the Serve config has no {name} application (import_path {APPS[name]})")


def adapt(cfg: dict, *, policy: str | None = None, rewards: list[str] | None = None, cpu: bool = False,
          host: str | None = None, port: int | None = None, tracking_uri: str | None = None) -> dict:
    """A copy of the Serve config `cfg` with the given models, HTTP address and tracking URI;
    `cpu` makes every replica CPU-only (one CPU, one replica; the policy float32, eager)."""
    cfg = copy.deepcopy(cfg)
    http = cfg.setdefault("http_options", {})
    http.update({k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    if policy:
        _app(cfg, "policy")["args"]["model"] = policy
    if rewards:
        _app(cfg, "reward")["deployments"][0]["user_config"]["models"] = list(rewards)
    for app in cfg["applications"]:
        for deployment in app.get("deployments", []):
            if tracking_uri is not None and "user_config" in deployment:
                deployment["user_config"]["tracking_uri"] = tracking_uri
            if cpu:
                deployment["ray_actor_options"] = {**deployment.get("ray_actor_options", {}), "num_cpus": 1, "num_gpus": 0}
                deployment.pop("autoscaling_config", None)
                deployment["num_replicas"] = 1
    if any(app["import_path"] == APPS["policy"] for app in cfg["applications"]):
        args = _app(cfg, "policy").setdefault("args", {})
        if tracking_uri is not None:
            args["tracking_uri"] = tracking_uri
        if cpu:
            args.update(accelerator="cpu", cpus=1, dtype="float32", enforce_eager=True,
                        deployment={**args.get("deployment", {}), "num_replicas": 1})
            args["deployment"].pop("autoscaling_config", None)
    return cfg


def carry_tokens(cfg: dict, environ: dict) -> dict:
    """A copy of `cfg` whose applications get their `token_env` variable from `environ` (the
    shell that runs `alignray serve`) in their runtime_env, so the replicas see it."""
    cfg = copy.deepcopy(cfg)
    for app in cfg["applications"]:
        name = app.get("args", {}).get("token_env")
        if name and environ.get(name):
            app.setdefault("runtime_env", {}).setdefault("env_vars", {})[name] = environ[name]
    return cfg


def missing_tokens(cfg: dict, environ: dict) -> list[str]:
    """The `token_env` variables that applications of `cfg` require (no token_file, not
    allow_unauthenticated) and `environ` does not set: their replicas would not start."""
    missing = []
    for app in cfg["applications"]:
        args = app.get("args", {})
        name = args.get("token_env")
        if name and not environ.get(name) and not args.get("token_file") and not args.get("allow_unauthenticated"):
            missing.append(f"{name} (the {app['name']} application's args.token_env)")
    return missing


def servers(cfg: dict, address: str | None) -> list[tuple[str, str]]:
    """What `serve run` of `cfg` connects to before anything answers, as (what, host:port): the
    MLflow servers (http tracking URIs) of the applications that serve models:/ URIs, and the Ray
    cluster at `address`."""
    needed = []
    for app in cfg["applications"]:
        if app["import_path"] == APPS["policy"]:
            models, uri = [app["args"]["model"]], app["args"].get("tracking_uri")
        elif app["import_path"] == APPS["reward"]:
            user = (app.get("deployments") or [{}])[0].get("user_config", {})
            models, uri = user.get("models", []), user.get("tracking_uri")
        else:
            continue
        parts = urlsplit(uri or "")
        if any(str(m).startswith("models:/") for m in models) and parts.scheme in ("http", "https"):
            port = parts.port or (443 if parts.scheme == "https" else 80)
            needed.append((f"the {app['name']} application's tracking_uri {uri} (for its models:/ URIs)",
                           f"{parts.hostname}:{port}"))
    if address and address not in ("auto", "local"):
        needed.append((f"the Ray cluster at {address}", address.removeprefix("ray://")))
    return needed


def unreachable(host_port: str, timeout_s: float = 5.0) -> str | None:
    """Why a TCP connection to `host:port` fails, or None when it opens."""
    host, _, port = host_port.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def check(cfg: dict, address: str | None, environ: dict) -> None:
    """Stop before anything is deployed when a required token variable is unset or a server
    `serve run` needs does not answer."""
    missing = missing_tokens(cfg, environ)
    if missing:
        raise ConfigError(f"not set in this shell: {', '.join(missing)}; export it (the replicas' bearer token), or"
                          " set allow_unauthenticated: true in the application's args to serve without one")
    for what, host_port in servers(cfg, address or environ.get("RAY_ADDRESS")):
        why = unreachable(host_port)
        if why:
            raise ConfigError(f"{what}: cannot connect to {host_port} ({why}); is it running and reachable from here?")


def run(cfg: dict, address: str | None, write: Path | None) -> int:  # returns only with `write`
    """Write the adapted config to `write` (without secrets), or check it and run it with `serve
    run` (blocks, streams logs) with the token variables of this shell carried to the replicas."""
    if write is not None:
        try:
            write.write_text(yaml.safe_dump(cfg, sort_keys=False))
        except OSError as exc:
            raise ConfigError(f"--write {write}: cannot write it ({exc.strerror or exc})") from None
        log.info("wrote %s; deploy it with: serve deploy %s  (or serve run %s); the replicas need the token"
                 " variable (token_env) in their own environment", write, write, write)
        return 0
    check(cfg, address, dict(os.environ))
    fd, name = tempfile.mkstemp(prefix="alignray-serve-", suffix=".yaml")  # mode 0600: it may hold the token
    path = Path(name)
    with os.fdopen(fd, "w") as f:
        f.write(yaml.safe_dump(carry_tokens(cfg, dict(os.environ)), sort_keys=False))
    serve = shutil.which("serve", path=str(Path(sys.executable).parent)) or "serve"
    command = [serve, "run", str(path), *(["--address", address] if address else [])]
    log.info("config %s\n$ %s", path, " ".join(command))
    os.execvp(serve, command)  # replaces this process
