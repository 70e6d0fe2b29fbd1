"""Shared fixtures: a tiny random Llama on disk and one real local Ray cluster per session; and
the guard of the fast tier (`-m "not slow"`): a test that uses `ray_cluster` must be marked slow,
and a test not marked slow fails if it starts Ray."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `datasets` keeps what it reads from json / csv files and Hub datasets: here, not in ~/.cache
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), f"alignray-tests-datasets-{os.getuid()}"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's preemption watcher (an actor per run, polling for drained nodes) has nothing to watch
# here: no test drains a node. Off, the suite spends ~70 CPU-seconds less on starting it.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from alignray.models.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


# Modules that each start a Ray Serve instance: they run one after another, on one worker.
SHARED_WORKER = {"test_serve": "serve", "test_chat_labeller": "serve"}
# The groups that take minutes, longest first (measured; see docs/getting-started.md): handed out before the
# others so that the two workers finish together.
LONGEST_FIRST = ["test_ppo", "test_rloo", "test_lora", "serve", "test_pipelines", "test_sweep", "test_simulate_e2e", "test_job_submit",
                 "test_train", "test_multinode", "test_recovery", "test_sampler", "test_k8s_shared_paths"]


def group(path: str) -> str:
    """The worker group of the test module at `path`: its own, or a shared one."""
    stem = Path(path).stem
    return SHARED_WORKER.get(stem, stem)


def pytest_xdist_make_scheduler(config, log):
    """Under `pytest -n N` (make test) a group's tests run on one worker, in file order, so its
    module fixtures are made once; each worker has its own session fixtures and Ray. (xdist's own
    `--dist loadgroup` marks do not reach pytest 9's node ids, so the grouping is done here.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group(nodeid.split("::", 1)[0])

    config.option.loadscopereorder = False  # the order of pytest_collection_modifyitems below
    return ByGroup(config, log)


def pytest_collection_modifyitems(config, items):
    """Every test that uses `ray_cluster` (itself or through another fixture) is marked slow;
    the longest groups come first (a stable sort: file order within a group)."""
    unmarked = [i.nodeid for i in items if "ray_cluster" in getattr(i, "fixturenames", ()) and not i.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError("these tests use the ray_cluster fixture but are not marked slow"
                                " (@pytest.mark.slow): " + ", ".join(unmarked))
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(group(str(item.path)), len(rank)))


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # not imported: not running
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def _fast_tests_start_no_ray(request):
    """A test of the fast tier that starts Ray (directly or through the code it calls) fails."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    before = _ray_running()
    yield
    if not before and _ray_running():
        sys.modules["ray"].shutdown()  # the session's `ray_cluster` starts its own later
        pytest.fail(f"{request.node.nodeid} started Ray but is not marked slow (@pytest.mark.slow)")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # "local": a new cluster, never one another test left running (test_multinode's Cluster registers itself
    # as the machine's current one, which a bare ray.init() would join)
    ray.init(address="local", num_cpus=4, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def sampler_cfg():
    from alignray.config import SamplerConfig

    return SamplerConfig(
        num_samplers=1, cpus_per_sampler=1, enforce_eager=True, max_model_len=256,
        prompts_per_request=4, max_tokens=16, request_timeout_s=300, weight_sync_timeout_s=120,
    )


def make_pattern_reward_model(path, policy, tokens, seed=0, steps=300):
    """A real tiny preference model (Llama sequence classifier) trained in-process to score a
    response by the share of its tokens that are in `tokens` (correlation ~0.99 on held-out
    samples): a reward whose optimum is known."""
    import random

    import torch
    from alignray.config import DataConfig
    from alignray.data.sources import load_conversations
    from alignray.io import atomic_dir
    from alignray.models.tokens import Tokenize, pad
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(policy)
    config = AutoConfig.from_pretrained(policy)
    config.num_labels, config.pad_token_id = 1, tok.pad_token_id
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = LlamaForSequenceClassification(config)
    tokenize = Tokenize(tok, 256, "left")
    vocab = [i for i in range(len(tok)) if i not in set(tok.all_special_ids)]
    target = set(tokens)
    prompts = [c.transcript for c in load_conversations(DataConfig(source="sample"))]
    prompts += [f"Human: Question number {i}, please?\n\nAssistant:" for i in range(50)]

    def example():
        density = rng.random()
        ids = [rng.choice(tokens) if rng.random() < density else rng.choice(vocab) for _ in range(rng.randint(1, 16))]
        seq = tokenize(rng.choice(prompts), tok.decode(ids))
        response = seq.response[:-1]  # without the EOS Tokenize appends
        return seq, sum(t in target for t in response) / max(1, len(response))

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = [example() for _ in range(32)]
        padded = pad([s for s, _ in batch], tok.pad_token_id)
        pred = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits[:, 0]
        loss = ((pred - torch.tensor([y for _, y in batch])) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return path


def word_tokens(policy, count=None, skip=0):
    """Ids of the policy's word tokens (3+ letters; 129 of the tiny model's 512), or `count`
    of them after the first `skip`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy)
    words = [i for i in range(len(tok)) if tok.decode([i]).strip().isalpha() and len(tok.decode([i]).strip()) >= 3]
    return words[skip:][:count]


@pytest.fixture(scope="session")
def pattern_reward(tiny_model, tmp_path_factory):
    """(reward model folder, its preferred token ids)."""
    tokens = word_tokens(tiny_model)
    return make_pattern_reward_model(tmp_path_factory.mktemp("rewards") / "likes-words", tiny_model, tokens), tokens


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hub_cache(cache: Path, repo_id: str, files: Path, revision: str = "main", kind: str = "models") -> Path:
    """Put the folder `files` into the Hugging Face cache folder `cache` as the repository `repo_id`
    (`kind`: models or datasets) at `revision`, laid out as a download leaves it (blobs named by
    their hash, a snapshot of links to them, the revision's ref); returns the snapshot folder."""
    import hashlib

    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in sorted(p for p in files.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / f.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def with_dropout(model: Path, folder: Path) -> Path:
    """A copy of `model` whose config turns attention dropout on (0.1)."""
    shutil.copytree(model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["attention_dropout"] = 0.1
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def train_workers() -> list:
    """This test session's Ray Train worker processes (descendants of this process: the
    ray_cluster fixture's raylet started them)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.cmdline() and p.cmdline()[0].startswith("ray::RayTrainWorker"):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def when(ready, act, timeout: float = 600) -> threading.Thread:
    """Run act() once ready() holds (polled), in a thread."""
    def wait():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                act()
                return
            time.sleep(0.2)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def logged_metrics(out: Path, experiment: str, run_name: str, key: str) -> list:
    """Every value of `key` logged in the run named run_name of the MLflow store in `out` (as
    alignray's local store keeps it: out/mlflow.db), in logging order; [] before the run exists."""
    from mlflow.tracking import MlflowClient

    if not (out / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], f"tags.mlflow.runName = '{run_name}'") if found else []
    return sorted(client.get_metric_history(runs[0].info.run_id, key), key=lambda m: m.timestamp) if runs else []


def last_per_step(out: Path, experiment: str, run_name: str, key: str) -> dict[int, float]:
    """step -> the last value of `key` logged at that step (steps re-run after a restart are logged twice)."""
    return {m.step: m.value for m in logged_metrics(out, experiment, run_name, key)}
