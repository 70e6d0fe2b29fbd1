"""Shared fixtures: a tiny random Llama on disk and one real local Ray cluster per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from alignray.models.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def sampler_cfg():
    from alignray.config import SamplerConfig

    return SamplerConfig(
        num_samplers=1, cpus_per_sampler=1, enforce_eager=True, max_model_len=256,
        prompts_per_request=4, max_tokens=16, request_timeout_s=300, weight_sync_timeout_s=120,
    )
