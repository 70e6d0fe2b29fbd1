"""Where output goes. alignray's own messages (loggers under `alignray`) go to the terminal; with
`quiet()` (every `alignray` command unless `--log-level debug`) other libraries' log records,
Python warnings and the Ray workers' output go to a log file under `<output_dir>/logs/` instead.
Standard library only: every layer may use it.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

# Settings the libraries read when they are imported or start: no MLflow console handler,
# transformers and huggingface_hub without progress bars or notices.
LIBRARY_ENV = {
    "MLFLOW_CONFIGURE_LOGGING": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's older reporter, which prints nothing at verbose=0 (a sweep prints its own lines)
}
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that print while their library is being imported, before `adopt` can reach them
IMPORT_TIME = ("DeepSpeed",)  # "Setting accelerator to CPU ..." on a machine without a GPU


class _Console(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record arrives, so redirections (and pytest's
    capture) see alignray's messages."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _ToRoot(logging.Filter):
    """Hands a record to the root logger's handlers (the log file) instead of its logger's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        logging.getLogger().handle(record)
        return False


_state: dict = {"quiet": False, "buffer": None, "path": None, "file": None}
_TO_ROOT = _ToRoot()


def get(name: str) -> logging.Logger:
    """The logger of an alignray module; its INFO and above reach the terminal."""
    top = logging.getLogger("alignray")
    if not any(isinstance(h, _Console) for h in top.handlers):
        top.addHandler(_Console())
        top.setLevel(logging.INFO)
    return logging.getLogger(name)


def quiet() -> bool:
    """True once `setup` has sent other libraries' output to a file."""
    return _state["quiet"]


def setup(level: str = "info") -> None:
    """Called first by the CLI. `info`: keep the libraries' records and warnings (in memory until
    `log_to` names the file); `debug`: everything on the terminal, as the libraries print it."""
    get("alignray")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h is _state["buffer"] or h is _state["file"]]:
        root.removeHandler(handler)
        handler.close()
    _state.update(quiet=level != "debug", buffer=None, path=None, file=None)
    for name in IMPORT_TIME:
        if level == "debug":
            logging.getLogger(name).removeFilter(_TO_ROOT)
        else:
            logging.getLogger(name).addFilter(_TO_ROOT)
    ours = logging.getLogger("alignray")
    ours.propagate = level != "debug"  # to the log file; in debug the root handler would print it twice
    if level == "debug":
        logging.basicConfig(level=logging.DEBUG, format=_FORMAT, force=True)
        ours.setLevel(logging.DEBUG)
        return
    for key, value in LIBRARY_ENV.items():
        os.environ.setdefault(key, value)
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    root.addHandler(buffer)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    _state["buffer"] = buffer
    adopt()


def log_to(folder: Path, command: str) -> Path | None:
    """Name the log file, `<folder>/<command>-<time>.log`, and return it (None when not quiet).
    It is created by `open_file` when the command starts its work, so a command that stops on
    bad input leaves nothing behind."""
    if not _state["quiet"]:
        return None
    if _state["path"] is None:
        _state["path"] = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    return _state["path"]


def open_file() -> None:
    """Create the file `log_to` named and write into it what was kept so far, then all that follows."""
    if _state["file"] is not None or _state["path"] is None:
        adopt()
        return
    path = _state["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    buffer, root = _state["buffer"], logging.getLogger()
    buffer.setTarget(handler)
    buffer.flush()
    root.removeHandler(buffer)
    buffer.close()
    root.addHandler(handler)
    _state.update(buffer=None, file=handler)
    adopt()
    get("alignray").info("log: %s (Ray workers: %s; --log-level debug shows both here)", path, path.parent / "ray")


def folder() -> Path | None:
    """The folder of the open log file, if any."""
    return _state["path"].parent if _state["file"] is not None else None


def adopt() -> None:
    """When quiet, send every logger outside alignray (those created so far) to the root logger,
    i.e. to the log file: libraries such as Ray and DeepSpeed give theirs a terminal handler
    and stop propagation. Call again after importing such a library."""
    if not _state["quiet"]:
        return
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name == "alignray" or name.startswith("alignray."):
            continue
        for handler in list(logger.handlers):
            if type(handler) is not logging.FileHandler:
                logger.removeHandler(handler)
        logger.propagate = True
