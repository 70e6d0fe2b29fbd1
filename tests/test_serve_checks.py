"""`alignray serve` stops with one line (exit 2) before anything is deployed: a token variable the
config requires is unset, a server it needs does not answer, the --write path cannot be written.
Run as a user runs it (a subprocess); every command also names a closed --address, so a
check that is missing fails on that instead of starting a local Ray."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def alignray_serve(*args: str, token: str | None = "t0ken") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ALIGNRAY_SERVE_TOKEN", "RAY_ADDRESS")}
    if token:
        env["ALIGNRAY_SERVE_TOKEN"] = token
    command = [sys.executable, "-m", "alignray.cli", "serve", "--cpu", "--policy", "models:/p@champion", *args]
    return subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("alignray: error:")]
    return line


def test_serve_stops_before_deploying_when_a_token_variable_is_unset():
    closed = f"127.0.0.1:{free_port()}"
    line = one_line_error(alignray_serve("--address", closed, token=None))
    assert "ALIGNRAY_SERVE_TOKEN (the policy application's args.token_env)" in line
    assert "(the reward application's args.token_env)" in line and "allow_unauthenticated" in line


def test_serve_names_an_unreachable_tracking_server_and_ray_cluster():
    closed = f"127.0.0.1:{free_port()}"
    line = one_line_error(alignray_serve("--tracking-uri", f"http://{closed}", "--address", closed))
    assert f"the policy application's tracking_uri http://{closed} (for its models:/ URIs): cannot connect" in line
    line = one_line_error(alignray_serve("--policy", str(ROOT), "--reward", str(ROOT), "--address", closed))
    assert f"the Ray cluster at {closed}: cannot connect to {closed}" in line  # folders: MLflow is not needed


def test_serve_names_an_unwritable_write_path(tmp_path):
    (tmp_path / "file").write_text("")
    line = one_line_error(alignray_serve("--write", str(tmp_path / "file" / "serve.yaml")))
    assert f"--write {tmp_path / 'file' / 'serve.yaml'}: cannot write it (Not a directory)" in line


def test_the_applications_args_are_checked_when_the_config_is_loaded(tmp_path):
    import yaml
    from alignray.config import ConfigError
    from alignray.serve.deploy import load

    cfg = yaml.safe_load((ROOT / "serving" / "config.yaml").read_text())
    cfg["applications"][0]["args"]["max_tokens"] = 0
    cfg["applications"][1]["args"]["max_batchh"] = 8
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as error:
        load(tmp_path / "serve.yaml")
    message = str(error.value)
    assert f"{tmp_path / 'serve.yaml'} (applications[].args): field 'policy.max_tokens': Input should be greater" in message
    assert "unknown field 'reward.max_batchh' (allowed here: allow_unauthenticated, max_batch," in message


def test_a_policy_app_with_a_missing_model_fails_before_vllm_is_imported(tmp_path):
    """Serve builds an application in a new process and tries a failing build four times: the
    model is looked up before the seconds-long imports of Ray Serve LLM and vLLM."""
    missing = tmp_path / "no-model"
    code = ("import sys\nfrom alignray.serve.policy import build\ntry:\n    build({'model': %r})\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
            "print(sorted(m for m in ('vllm', 'ray.serve.llm', 'alignray.serve.policy_app') if m in sys.modules))") % str(missing)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    error, imported = done.stdout.strip().splitlines()
    assert str(missing) in error and imported == "[]", done.stdout + done.stderr[-2000:]
