"""PPO (driver side): validate the inputs, start the sampler pool, run the actor/critic workers
(:mod:`alignray.train.ppo_loop`) under a progress bar, and register the policy in MLflow.

A run is identified by its name (`run_name`, default `ppo-<prompt source>`): running the same
name again continues from its last checkpoint and keeps logging to the same MLflow run.

With reward.fit_weights, the driver first fits the per-principle weights on that labelled file
(the reward scores both sides of every pair, here on the driver, before any worker or sampler
starts) and the run trains with them as reward.weights; they are recorded in MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import ray

from alignray import cluster, logs, tracking
from alignray.config import PPOConfig
from alignray.data.pairs import load_pairs
from alignray.data.sources import load_conversations
from alignray.models import lora
from alignray.models.precision import torch_dtype
from alignray.models.registry import ModelError, local_folder, model_name, portable_ref, resolve
from alignray.rewards.scalarize import fitted_weights
from alignray.rewards.scorers import endpoint_token, load_function, reward_source
from alignray.sampling.clients import chat_renderer
from alignray.sampling.pool import SamplerPool
from alignray.train import data, placement
from alignray.train.launch import Launch, TrainingError, TrainResult
from alignray.train.ppo_loop import ppo_loop
from alignray.train.ppo_parts import critic_head_scale, one_head_reward_model

log = logs.get(__name__)


def _check_shapes(cfg: PPOConfig) -> None:
    p, t = cfg.ppo, cfg.trainer
    n = p.prompts_per_step * p.samples_per_prompt
    if n % (t.num_workers * p.minibatch_per_worker):
        raise TrainingError(
            f"ppo.prompts_per_step x ppo.samples_per_prompt = {n} responses per iteration must be a"
            f" multiple of trainer.num_workers x ppo.minibatch_per_worker ="
            f" {t.num_workers * p.minibatch_per_worker}"
        )
    if cfg.ppo.algorithm == "ppo" and cfg.critic.init == "reward" and not cfg.reward.models:
        raise TrainingError("critic.init=reward needs local reward.models; with reward.endpoint or reward.function use"
                            " critic.init=policy")


def _reward_folder(ref: str) -> Path:
    """A local preference-model folder for a folder path or a models:/ URI."""
    folder = local_folder(ref)
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"reward model {ref!r}: {folder} is not a Hugging Face model folder (no config.json)")
    archs = json.loads(config.read_text()).get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelError(
            f"reward model {ref!r}: not a preference model (architectures: {archs or 'none'});"
            " train one with `alignray train preference`"
        )
    return folder


FITTED = "fitted_weights.json"


def _use_fitted_weights(cfg: PPOConfig, rewards: list[Path], run: mlflow.ActiveRun) -> PPOConfig:
    """reward.fit_weights: the config whose reward.weights are fitted on that file, scored as the
    workers score (same models, labels, max_length and dtype; or the endpoint), recorded in the
    active run as params reward.fitted_weight.<principle> and the artifact fitted_weights.json.
    A resumed run reuses the weights it recorded, so its reward does not change."""
    r = cfg.reward
    if any(a.path == FITTED for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)):
        record, how = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{FITTED}"), "recorded in this run"
    else:
        rows = load_pairs(r.fit_weights, "reward.fit_weights")
        scorer = reward_source(r, cfg.sampler.max_model_len, torch_dtype(cfg.trainer.precision), rewards,
                               [model_name(ref) for ref in r.models])
        w = fitted_weights(scorer, list(rows["prompt"]), list(rows["chosen"]), list(rows["rejected"]), r.fit_weights_l2)
        names = scorer.principles or [f"principle_{k}" for k in range(len(w))]
        record, how = {"weights": dict(zip(names, w, strict=True)), "pairs": len(rows), "l2": r.fit_weights_l2,
                       "file": str(r.fit_weights)}, f"fitted on {len(rows)} pairs of {r.fit_weights}"
        mlflow.log_params({f"reward.fitted_weight.{name}": f"{v:.6g}" for name, v in record["weights"].items()})
        mlflow.log_dict(record, FITTED)
    log.info("reward weights %s: %s", how, "  ".join(f"{k} {v:+.4f}" for k, v in record["weights"].items()))
    update = {"weights": list(record["weights"].values()), "fit_weights": None}  # workers get plain weights
    return cfg.model_copy(update={"reward": r.model_copy(update=update)})


def _prompts(cfg: PPOConfig, policy: Path) -> list[str]:
    convs = load_conversations(cfg.data)
    render = chat_renderer(policy) if any(c.messages is not None for c in convs) else None
    return [c.transcript if c.messages is None else render(c.message_dicts()) for c in convs]


def fit(cfg: PPOConfig, rollout_pool: type = SamplerPool) -> TrainResult:
    """Run (or resume) PPO. `rollout_pool` is the class that rolls out: SamplerPool, or any
    class with its constructor (including `lora=`) and its generate / update_weights / sleep / wake_up /
    health / dtype / restarts / last_probe_diff, and update_adapter under trainer.lora.sync = adapter
    (benchmarks/ppo_iteration.py plugs in transformers `generate`)."""
    _check_shapes(cfg)
    if cfg.reward.endpoint:
        endpoint_token(cfg.reward)  # an unset token variable stops the run here, before anything starts
    if cfg.reward.function:
        load_function(cfg.reward.function)  # so does a function that cannot be imported
    policy = resolve(cfg.model.name)
    tokenizer = data.load_tokenizer(policy)
    prompts = _prompts(cfg, policy)
    launch = Launch(cfg, "ppo", cfg.run_name or f"ppo-{cfg.data.label}", policy)

    cluster.connect(cfg.address)
    t, s = cfg.trainer, cfg.sampler
    where = placement.plan(cfg.ppo.placement, t, s)
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg.tracking, cfg.output_dir))  # for models:/ URIs
    rewards = [_reward_folder(ref) for ref in cfg.reward.models]
    critic = rewards[0] if cfg.critic.init == "reward" else policy
    base_ref = portable_ref(cfg.model.name)  # what a LoRA adapter names as its base
    with launch.tracked("initial policy") as active:
        mlflow.log_metrics({"prompts": len(prompts), "total_iterations": cfg.ppo.iterations})
        tracking.log_prompts(prompts, cfg.data.label, "prompts")
        for ref in cfg.reward.models:
            tracking.log_model_input(ref, "reward model")
        if cfg.reward.fit_weights is not None:
            cfg = _use_fitted_weights(cfg, rewards, active)
        head_scale = 0.0
        if cfg.ppo.algorithm == "ppo":
            one_head = cfg.critic.init == "reward" and len(rewards) == 1 and one_head_reward_model(str(critic))
            head_scale = critic_head_scale(cfg.reward, one_head)
            mlflow.set_tag("critic.head_start", f"the reward head x {head_scale:g}" if head_scale else "zeros")
        mlflow.set_tags({"placement": "colocated" if where.colocated else "separate",
                         "sampler_threads": where.sampler_threads, "trainer_threads": where.trainer_threads})
        adapters = lora.sends_adapter(t.lora, s.gpus_per_sampler)  # the samplers then serve the policy's adapter
        with rollout_pool(policy, s, dtype=cfg.model.dtype, seed=t.seed, threads=where.sampler_threads,
                          node_id=where.node_id, sleep_mode=where.sleep_samplers,
                          lora=lora.policy_adapter_config(t.lora, base_ref) if adapters else None) as pool:
            mlflow.set_tag("placement.sampler_nodes", ",".join(sorted({h["node_id"] for h in pool.health() if h["alive"]})))
            loop_config = {
                "config": cfg.model_dump(mode="json"),
                "policy_path": str(policy),
                "base_ref": base_ref,
                "critic_path": str(critic),
                "critic_head_scale": head_scale,
                "reward_paths": [str(r) for r in rewards],
                "reward_labels": [model_name(ref) for ref in cfg.reward.models],
                "pad_id": tokenizer.pad_token_id,
                "prompts": ray.put(prompts),
                "pool": pool,
                "sampler_dtype": pool.dtype,
                "threads": where.trainer_threads,
            }
            result = launch.workers(ppo_loop, loop_config, cfg.ppo.iterations, "ppo", "reward", where.worker_resources)
        return launch.result(result, cfg.registered_model or "alignray-ppo", "reward", True)
