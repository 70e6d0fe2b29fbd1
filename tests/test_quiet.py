"""Quiet by default: a command shows alignray's own lines; other libraries' records, Python
warnings and Ray workers' output go to a log file under output_dir/logs (`--log-level debug`
shows them)."""

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from alignray import logs

from test_simulate_e2e import TRANSCRIPTS, overrides, write_prompts

# Lines other libraries print when nothing catches them (Ray's worker prefix, Python warnings,
# logging formats of Ray/MLflow/vLLM/DeepSpeed, tqdm bars of the model loaders).
FOREIGN = re.compile(r"pid=|Warning|WARNING|INFO|Token authentication|checkpoint shards|\[W\d{4}")


@pytest.fixture
def root_restored():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logging.captureWarnings(False)  # undo an earlier in-process CLI run's capture
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    logging.captureWarnings(False)
    logging.getLogger("alignray").propagate = True
    logs._state.update(quiet=False, buffer=None, path=None, file=None)


def chatty_library(name: str) -> logging.Logger:
    """A logger set up the way Ray and DeepSpeed set theirs: own terminal handler, no propagation."""
    logger = logging.getLogger(name)
    logger.addHandler(logging.StreamHandler(sys.stderr))
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


@pytest.mark.usefixtures("root_restored")
def test_quiet_sends_library_records_and_warnings_to_the_file_and_keeps_alignray_on_the_terminal(tmp_path, capfd):
    early = chatty_library("chatty.early")
    logs.setup("info")
    early.warning("library notice before the file is known")
    warnings.warn("a library's FutureWarning", FutureWarning, stacklevel=1)
    path = logs.log_to(tmp_path / "logs", "simulate")
    assert not path.parent.exists()  # created when the work starts (cluster.connect)
    late = chatty_library("chatty.late")
    logs.open_file()
    late.info("library notice after the file is open")
    logs.get("alignray.test").info("alignray's own progress")
    out, err = capfd.readouterr()
    assert out == "" and err == f"log: {path} (Ray workers: {path.parent / 'ray'}; --log-level debug shows both here)\n" \
        "alignray's own progress\n"
    assert path.parent == tmp_path / "logs" and path.name.startswith("simulate-")
    text = path.read_text()
    for line in ("library notice before the file is known", "a library's FutureWarning",
                 "library notice after the file is open", "alignray's own progress"):
        assert line in text, line
    assert logs.log_to(tmp_path / "other", "simulate") == path and logs.folder() == path.parent  # one per command


@pytest.mark.usefixtures("root_restored")
def test_debug_leaves_the_libraries_on_the_terminal(tmp_path, capfd):
    library = chatty_library("chatty.debug")
    logs.setup("debug")
    assert logs.log_to(tmp_path / "logs", "run") is None
    logs.open_file()
    assert not (tmp_path / "logs").exists()
    library.warning("library notice")
    logs.get("alignray.test").debug("alignray detail")
    err = capfd.readouterr().err
    assert "library notice" in err and err.count("alignray detail") == 1


@pytest.mark.parametrize("level", ["info", "debug"])
def test_what_deepspeed_prints_while_it_is_imported_goes_to_the_file(level, tmp_path):
    """DeepSpeed logs "Setting accelerator to CPU" to stdout while it is being imported (on a machine
    without a GPU), through a handler of its own, before `adopt` can reach its logger."""
    script = ("import sys; from pathlib import Path; from alignray import logs; logs.setup(sys.argv[1]);"
              " logs.log_to(Path(sys.argv[2]), 'x'); logs.open_file(); import deepspeed")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    done = subprocess.run([sys.executable, "-c", script, level, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    if level == "debug":
        assert "Setting accelerator to CPU" in done.stdout  # what the quiet mode has to catch
        return
    assert done.stdout == "" and not FOREIGN.search(done.stderr), done.stdout + done.stderr
    [path] = tmp_path.glob("x-*.log")
    assert "Setting accelerator to CPU" in path.read_text()


@pytest.mark.slow
def test_a_real_simulate_prints_only_alignray_lines_and_logs_the_rest(tiny_model, tmp_path):
    """`alignray simulate` as a user runs it: its own Ray cluster, vLLM samplers, MLflow."""
    prompts = write_prompts(tmp_path, TRANSCRIPTS)
    out = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    alignray = Path(sys.executable).with_name("alignray")
    done = subprocess.run([alignray, "simulate", *overrides(tiny_model, out, f"data.source={prompts}")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in (done.stdout + done.stderr).replace("\r", "\n").splitlines() if line.strip()]
    foreign = [line for line in lines if FOREIGN.search(line)]
    assert not foreign, "\n".join(foreign)
    [log] = (out / "logs").glob("simulate-*.log")
    assert f"log: {log}" in done.stderr
    text = log.read_text()
    assert "Token authentication" in text and "mlflow" in text  # Ray's and MLflow's notices, kept
    workers = out / "logs" / "ray"
    assert workers.is_symlink()
    assert any("vllm" in p.read_text(errors="replace").lower() for p in workers.glob("worker-*"))


@pytest.mark.parametrize("problem", ["file", "system"])
def test_an_unusable_output_dir_is_a_one_line_error_before_any_work(tmp_path, capsys, problem):
    from alignray.cli import main

    if problem == "file":
        (tmp_path / "runs").write_text("not a folder")
        target = tmp_path / "runs" / "sub"
    else:
        target = Path("/proc/alignray-runs")  # no user, root included, may create folders there
    assert main(["simulate", "model.name=tiny-random-llama", f"output_dir={target}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"output_dir: {target} cannot be used" in err, err


@pytest.mark.parametrize("uri, expected", [
    ("foo://host/x", "no tracking store for the scheme 'foo'"),
    ("sqlite://runs/mlflow.db", "three slashes"),
    ("sqlite:////proc/runs/mlflow.db", "tracking.uri: /proc/runs cannot be used"),
])
def test_a_bad_tracking_uri_is_a_one_line_error_before_any_work(tmp_path, capsys, uri, expected):
    from alignray.cli import main

    assert main(["simulate", "model.name=tiny-random-llama", f"output_dir={tmp_path / 'runs'}",
                 f"tracking.uri={uri}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and expected in err, err  # config errors: a heading, then the field
    assert not (tmp_path / "runs").exists()
