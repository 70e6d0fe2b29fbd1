"""Where the Serve applications' bearer token comes from, and how `alignray serve` carries it
from the user's shell to the replicas (the HTTP checks are in test_serve.py)."""

import pytest
import yaml
from alignray.serve.common import read_token
from alignray.serve.deploy import carry_tokens

CONFIG = {"applications": [{"name": "policy", "args": {"token_env": "ALIGNRAY_TEST_TOKEN"}},
                           {"name": "other", "args": {}}]}


def test_a_configured_token_that_is_missing_stops_the_replica(monkeypatch):
    monkeypatch.delenv("ALIGNRAY_TEST_TOKEN", raising=False)
    with pytest.raises(ValueError, match="token_env ALIGNRAY_TEST_TOKEN is configured but not set"):
        read_token("ALIGNRAY_TEST_TOKEN", None)
    assert read_token("ALIGNRAY_TEST_TOKEN", None, allow_unauthenticated=True) is None
    assert read_token(None, None) is None  # nothing configured: no authentication (a warning)
    monkeypatch.setenv("ALIGNRAY_TEST_TOKEN", "abc")
    assert read_token("ALIGNRAY_TEST_TOKEN", None) == "abc"


def test_a_token_file_wins_and_must_not_be_empty(tmp_path):
    (tmp_path / "t").write_text("from-file\n")
    assert read_token("ALIGNRAY_TEST_TOKEN", str(tmp_path / "t")) == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_token(None, str(tmp_path / "empty"))


def test_alignray_serve_carries_the_shell_token_into_the_runtime_env_and_writes_no_secret(tmp_path, monkeypatch):
    carried = carry_tokens(CONFIG, {"ALIGNRAY_TEST_TOKEN": "abc", "HOME": "/root"})
    assert carried["applications"][0]["runtime_env"] == {"env_vars": {"ALIGNRAY_TEST_TOKEN": "abc"}}
    assert "runtime_env" not in carried["applications"][1] and "runtime_env" not in CONFIG["applications"][0]
    assert carry_tokens(CONFIG, {}) == CONFIG

    from alignray.serve.deploy import run

    monkeypatch.setenv("ALIGNRAY_TEST_TOKEN", "abc")
    assert run(CONFIG, None, tmp_path / "out.yaml") == 0
    assert "abc" not in (tmp_path / "out.yaml").read_text()
    assert yaml.safe_load((tmp_path / "out.yaml").read_text()) == CONFIG
