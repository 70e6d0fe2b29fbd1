"""PostgreSQL's backup and restore as k8s/base/backup.yaml and k8s/restore/job.yaml run them (their
scripts and env), against a real PostgreSQL started here with the databases the manifests create.
Only what needs a cluster is swapped: the Service name for a local socket, the Secret for a test
value, the shared mount for a temporary folder."""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from k8s_manifests import needs_kubectl, of_kind, pod_specs, render

PG_BIN = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
              if shutil.which("pg_config") else "/nonexistent")
# PostgreSQL refuses to run as root: the server runs as the postgres user then.
AS_SERVER = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] if os.geteuid() == 0 else []
pytestmark = [
    pytest.mark.slow,
    needs_kubectl,
    pytest.mark.skipif(not (PG_BIN / "initdb").exists(), reason="needs PostgreSQL's server programs (pg_config --bindir)"),
    pytest.mark.skipif(bool(AS_SERVER) and not (shutil.which("setpriv") and "postgres" in {u.pw_name for u in pwd.getpwall()}),
                       reason="as root, needs setpriv and a postgres user to run PostgreSQL's server as"),
]


def manifest(overlay: str, kind: str) -> tuple[str, dict[str, str], str]:
    """(script, env, shared mount path) of the overlay's pod of this kind."""
    [doc] = of_kind(render(overlay), kind)
    [(_, pod)] = pod_specs(doc)
    [container] = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    [mount] = container["volumeMounts"]
    return container["args"][0], env, mount["mountPath"]


@pytest.fixture
def postgres():
    """A local PostgreSQL holding the databases k8s/base/postgres.yaml creates; its libpq env."""
    server = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))  # a short socket path, outside root's pytest folder
    data, socket = server / "data", server
    if AS_SERVER:
        shutil.chown(server, "postgres")
    base = render("base")
    [statefulset] = of_kind(base, "StatefulSet")
    server_env = {e["name"]: e.get("value") for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    [init] = [d for d in of_kind(base, "ConfigMap") if d["metadata"]["name"] == "postgres-init"]
    subprocess.run([*AS_SERVER, PG_BIN / "initdb", "-D", data, "-U", server_env["POSTGRES_USER"], "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*AS_SERVER, PG_BIN / "pg_ctl", "-D", data, "-w", "-l", server / "log", "start", "-o",
                    f"-k {socket} -c listen_addresses=''"], check=True, capture_output=True)
    env = {**os.environ, "PGHOST": str(socket), "PGUSER": server_env["POSTGRES_USER"], "PGPASSWORD": "test"}
    try:
        subprocess.run(["createdb", server_env["POSTGRES_DB"]], env=env, check=True)
        for sql in init["data"].values():  # what the image runs from /docker-entrypoint-initdb.d
            subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-d", server_env["POSTGRES_DB"], "-c", sql], env=env, check=True)
        yield env
    finally:
        subprocess.run([*AS_SERVER, PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(server, ignore_errors=True)


def sql(env: dict, database: str, statement: str) -> str:
    done = subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-At", "-d", database, "-c", statement], env=env,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def run(script: str, env: dict, mount: str, shared: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script.replace(mount, str(shared))], env=env, capture_output=True, text=True,
                          timeout=120)


def test_backup_then_restore_brings_back_every_database(postgres, tmp_path):
    databases = ("mlflow", "mlflow_auth")
    for db in databases:
        sql(postgres, db, "CREATE TABLE t (v text); INSERT INTO t VALUES ('backed up')")
    backup, backup_env, mount = manifest("base", "CronJob")
    restore, restore_env, restore_mount = manifest("restore", "Job")
    assert restore_mount == mount
    shared = tmp_path / "shared"
    folder = shared / "backups" / "postgres"
    folder.mkdir(parents=True)
    stale = folder / "mlflow-20000101T000000Z.dump"
    stale.write_text("")
    old = time.time() - (int(backup_env["KEEP_DAYS"]) + 1) * 86400
    os.utime(stale, (old, old))

    done = run(backup, {**postgres, **backup_env, "PGHOST": postgres["PGHOST"]}, mount, shared)
    assert done.returncode == 0, done.stderr
    dumps = sorted(p.name for p in folder.iterdir())
    assert len(dumps) == 2 and [d.split("-")[0] for d in dumps] == ["mlflow", "mlflow_auth"], dumps  # the stale one went

    for db in databases:  # what happens after the backup, then is undone by the restore
        sql(postgres, db, "INSERT INTO t VALUES ('lost'); CREATE TABLE later (v text)")
    sql(postgres, "mlflow_auth", "DROP TABLE t")
    done = run(restore, {**postgres, **restore_env, "PGHOST": postgres["PGHOST"]}, mount, shared)
    assert done.returncode == 0, done.stderr
    for db in databases:
        assert sql(postgres, db, "SELECT v FROM t") == "backed up"


def test_a_failed_restore_changes_nothing(postgres, tmp_path):
    backup, backup_env, mount = manifest("base", "CronJob")
    restore, restore_env, _ = manifest("restore", "Job")
    sql(postgres, "mlflow", "CREATE TABLE t (v text); INSERT INTO t VALUES ('backed up')")
    shared = tmp_path / "shared"
    assert run(backup, {**postgres, **backup_env, "PGHOST": postgres["PGHOST"]}, mount, shared).returncode == 0
    sql(postgres, "mlflow", "INSERT INTO t VALUES ('after the backup')")
    [dump] = (shared / "backups" / "postgres").glob("mlflow-*.dump")
    dump.write_bytes(dump.read_bytes()[:-10])  # its table's data cut short: pg_restore fails after dropping the table
    done = run(restore, {**postgres, **restore_env, "PGHOST": postgres["PGHOST"]}, mount, shared)
    assert done.returncode != 0
    assert sql(postgres, "mlflow", "SELECT v FROM t ORDER BY v") == "after the backup\nbacked up"
