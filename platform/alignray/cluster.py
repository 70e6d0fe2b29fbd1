"""Connect to Ray, and the runtime environment of the actors that host vLLM."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from alignray import logs


def connect(address: str | None = None) -> None:
    """Join `address` (or RAY_ADDRESS; "auto": the cluster `ray start` runs on this machine);
    with neither, start a new embedded local cluster, never one that happens to run here (Ray's
    own default joins the one started last, e.g. another user's or test's), whose workers run at
    normal priority (RAY_worker_niceness=0 unless set): Ray's default, niceness 15, lets any
    other process on the machine take the cores from sampling and training."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault("RAY_worker_niceness", "0")
    logs.open_file()  # the command's work starts here; Ray's start-up notices go to the file
    context = ray.init(address=address or "local", log_to_driver=not logs.quiet(), configure_logging=False)
    if logs.quiet() and address is None and logs.folder() is not None:
        _link(logs.folder() / "ray", Path(context.address_info["session_dir"]) / "logs")


def _link(link: Path, target: Path) -> None:
    """Point `link` at `target`, replacing an older link in one step."""
    fresh = link.with_name(f".{link.name}.{os.getpid()}")
    fresh.unlink(missing_ok=True)
    fresh.symlink_to(target, target_is_directory=True)
    os.replace(fresh, link)


def sampler_runtime_env(kvcache_gib: int) -> dict:
    """vLLM's settings for one sampler actor: an in-process engine (starts in seconds on CPU)
    and the CPU KV-cache size; a few vLLM variables set on the driver pass through."""
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(kvcache_gib),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    for key in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_LOGGING_LEVEL", "HF_HUB_OFFLINE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return {"env_vars": env}
