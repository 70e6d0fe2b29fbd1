"""The PPO loop each Ray Train worker runs (also RLOO and GRPO, `ppo.algorithm`: no critic).

Every worker holds the actor and, for PPO, the critic (DeepSpeed engines), the frozen reference
policy and the local reward models, and works on its share of each rollout batch; the vLLM samplers
are separate Ray actors (the pool) that rank 0 drives. One iteration: rank 0 rolls out and
broadcasts the batch; each rank turns its share into experience (rewards, reference and old
log-probs, values, GAE advantages) and takes `ppo_epochs` passes of minibatch updates (DeepSpeed
averages the gradients over ranks; both steps are in :mod:`alignray.train.ppo_steps`); then the
new policy weights go to every sampler, verified on a probe sequence. Each phase (rollout,
scoring, training, sync) is timed and logged as time_<phase>. A checkpoint holds both engines (with optimizers and schedulers), the KL
controller, the reward normaliser, the diversity watch, the RNG and the iteration (which fixes
the prompt position).

Each iteration also logs the diversity figures of its rollouts (one answer per prompt), against
the first iteration's; the first time they look collapsed (`alignray.rewards.diversity.collapse`)
rank 0 warns once: on the driver's terminal and log (through the Progress actor) and as the
MLflow tag `alignray.diversity_warning`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from torch import Tensor

from alignray.config import PPOConfig
from alignray.data.conversation import TURN_STOP, clean_output
from alignray.models import lora
from alignray.models.precision import resolve_dtype, torch_dtype
from alignray.sampling.types import Probe, SamplingSpec
from alignray.train.engines import (
    Phases,
    engine,
    hf_state_dict,
    log_metrics,
    peak_rss_gib,
    restore_checkpoint,
    save_checkpoint,
)
from alignray.train.ppo_parts import (
    DiversityWatch,
    KLController,
    Packed,
    RunningMoments,
    critic_model,
    pack,
    token_logps,
)
from alignray.train.ppo_steps import Rollouts, experience, iteration_metrics, update

PROBE_TEXT = (
    " I am glad to help. Here is a short and careful answer: first, check what you need; then take"
    " one small step at a time, and ask again if anything is unclear."
)
# The mean |sampler - trainer| log-prob over the probe's tokens that a correct sync may show, by
# the dtypes in play. float32: the same weights in different kernels agree to ~1e-5 (measured
# on SmolLM2-135M: at most 7e-5 on any token). bfloat16 keeps 8 significant bits and vLLM's
# kernels round differently from transformers': measured on SmolLM2-135M with identical bf16
# weights, the mean difference is 0.05-0.14 (single tokens up to 0.9), about what a 1% random
# change of every weight gives (0.13-0.19), while a 5% change gives 0.54-0.62. So in bf16 the
# check catches weights that were not loaded, went to the wrong tensors or are far behind, not
# a sampler one small step stale (whose bf16 weights barely differ anyway).
PROBE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.3}


def probe_tolerance(cfg: PPOConfig, sampler_dtype: str) -> float:
    """ppo.sync_tolerance, or the loosest bound of the dtypes in play."""
    if cfg.ppo.sync_tolerance is not None:
        return cfg.ppo.sync_tolerance
    return max(PROBE_TOLERANCE[resolve_dtype(cfg.trainer.precision)], PROBE_TOLERANCE[sampler_dtype])


def prompt_indices(iteration: int, per_step: int, n: int, seed: int) -> list[int]:
    """The prompts of an iteration: a fresh seeded shuffle of all n prompts per epoch."""
    out, orders = [], {}
    for g in range(iteration * per_step, (iteration + 1) * per_step):
        epoch, k = divmod(g, n)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(orders[epoch][k]))
    return out


def rollout(pool, tokenizer, prompts: list[str], cfg: PPOConfig, iteration: int) -> Rollouts:
    """Sample at top_p = 1 (PPOConfig enforces it), stopping where the model starts the user's
    next turn. The reward sees the reply cleaned as simulation cleans it; the trained tokens are
    all the sampled ones, the stop marker's included (the policy's end-of-turn action, sampled
    with its log-probs)."""
    p, s = cfg.ppo, cfg.sampler
    spec = SamplingSpec(
        n=p.samples_per_prompt, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, stop=TURN_STOP,
        seed=cfg.trainer.seed * 1_000_003 + iteration * p.prompts_per_step * p.samples_per_prompt, logprobs=0,
    )
    out = Rollouts([], [], [], [], [])
    for prompt, completions in zip(prompts, pool.generate(prompts, spec), strict=True):
        ids = tokenizer(prompt).input_ids
        for c in completions:
            out.prompts.append(prompt)
            out.responses.append(clean_output(c.text))
            out.prompt_ids.append(ids)
            out.response_ids.append(list(c.token_ids))
            out.sampler_logps.append(list(c.logprobs))
    return out


class _Trainer:
    """The actor, critic (ppo; None for rloo and grpo) and reference of one worker, and the weight
    sync from the actor to the samplers."""

    def __init__(self, lc: dict, cfg: PPOConfig, world: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t, p = cfg.trainer, cfg.ppo
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(lc["policy_path"])
        self.pad_id = lc["pad_id"]
        self.tolerance = probe_tolerance(cfg, lc["sampler_dtype"])
        actor = AutoModelForCausalLM.from_pretrained(lc["policy_path"], dtype=torch.float32)
        self.reference = None  # with LoRA: the actor with its adapters disabled
        if t.lora is None:  # the reference computes as the actor does: KL starts at 0
            self.reference = AutoModelForCausalLM.from_pretrained(lc["policy_path"], dtype=torch_dtype(t.precision))
            self.reference.eval().requires_grad_(False)
        else:
            actor = lora.wrap(actor, t.lora, lc["base_ref"])
        # whether the actor drops out in training (then an update's log-probs are not the old ones)
        self.dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in actor.modules()) or bool(
            getattr(lora.unwrap(actor).config, "attention_dropout", 0.0))
        share = p.prompts_per_step * p.samples_per_prompt // world
        updates = p.iterations * p.ppo_epochs * (share // p.minibatch_per_worker)
        self.actor = engine(actor, t, t.learning_rate, updates, p.minibatch_per_worker)
        self.engines = {"actor": self.actor}  # the actor first: it is the checkpoint's hf/
        self.critic = None
        if p.algorithm == "ppo":
            critic = critic_model(lc["critic_path"], self.pad_id, lc["critic_head_scale"])
            if t.lora is not None:
                critic = lora.wrap(critic, t.lora, lc["critic_path"])
            self.critic = self.engines["critic"] = engine(critic, t, cfg.critic.learning_rate, updates,
                                                          p.minibatch_per_worker)

    def reference_logps(self, batch: Packed, temperature: float) -> Tensor:
        """The reference policy's log-probs at `temperature`: the initial policy's, or the actor's
        without its adapters."""
        if self.reference is not None:
            return token_logps(self.reference, batch, temperature, raw=False, entropy=False)[0]
        with self.actor.module.disable_adapter():
            return token_logps(self.actor, batch, temperature, raw=False, entropy=False)[0]

    def probe(self, prompt: str) -> Probe:
        """The trainer's raw log-probs of a fixed text after `prompt` (every rank calls it)."""
        ids = self.tokenizer(prompt).input_ids
        cont = self.tokenizer(PROBE_TEXT, add_special_tokens=False).input_ids
        self.actor.eval()  # as the sampler computes: no dropout
        with torch.no_grad():
            _, raw, _ = token_logps(self.actor, pack([ids], [cont], self.pad_id), 1.0, entropy=False)
        return Probe(prompt, PROBE_TEXT, tuple(raw[0].tolist()), self.tolerance)

    def sync(self, pool, probe_prompt: str) -> float | None:
        """Push the actor's weights to every sampler (waking them first) and verify them; rank
        0 (the one holding the pool) returns the largest probe log-prob difference."""
        state, adapter = hf_state_dict(self.actor, self.cfg.trainer.zero_stage), self.cfg.trainer.lora
        probe = self.probe(probe_prompt)
        if pool is None:
            return None
        pool.wake_up()
        if adapter is None:
            pool.update_weights(state, probe)
        elif lora.sends_adapter(adapter, self.cfg.sampler.gpus_per_sampler):
            pool.update_adapter(lora.adapter_tensors(state), probe)
        else:
            pool.update_weights(lora.merged_state_dict(state, lora.scaling(adapter)), probe)
        return pool.last_probe_diff


def warn_collapse(client, lc: dict, iteration: int, reasons: list[str]) -> None:
    """Rank 0, once per run: the rollouts look degenerate. To the driver (the Progress actor,
    which shows it on the terminal) and the MLflow run's tag alignray.diversity_warning."""
    text = (f"PPO iteration {iteration}: the rollouts look degenerate against the first iteration's (the starting"
            f" policy's): {'; '.join(reasons)}. Reward hacking? Stop the run (Ctrl-C) if the answers are no longer"
            " answers: it resumes from its last checkpoint")
    client.set_tag(lc["run_id"], "alignray.diversity_warning", text)
    ray.get(lc["progress"].warn.remote("diversity", text))  # delivered before the run can end


def _samplers_stale(pool, iteration: int) -> bool:
    """Whether the samplers may hold other weights than the actor's, on every rank (rank 0 asks):
    after a resume (they started from the initial policy), and after a restart of the workers
    that found no checkpoint (Ray Train may not have recorded one reported just before a worker
    died): the samplers kept the weights of the lost iterations. Their own weights_version says so."""
    flag = [False]
    if pool is not None:
        flag[0] = iteration > 0 or any(h.get("weights_version") for h in pool.health() if h["alive"])
    dist.broadcast_object_list(flag, src=0)
    return flag[0]


def ppo_loop(lc: dict) -> None:
    import mlflow

    from alignray.rewards.scorers import reward_source

    cfg = PPOConfig.model_validate(lc["config"])
    t, p = cfg.trainer, cfg.ppo
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed + rank)
    prompts = ray.get(lc["prompts"])
    # colocated: the node's cores (alignray.train.placement), at most the cores this process may use
    torch.set_num_threads(min(lc["threads"], len(os.sched_getaffinity(0))))
    scorer = reward_source(cfg.reward, cfg.sampler.max_model_len, torch_dtype(t.precision),
                           [Path(f) for f in lc["reward_paths"]], lc["reward_labels"])
    tr = _Trainer(lc, cfg, world)
    state = restore_checkpoint(tr.engines, p.iterations)
    iteration = state.get("step", 0)
    kl_ctl = KLController(**state["kl"]) if state else KLController(p.kl_coef, p.kl_target, p.kl_horizon)
    norm = RunningMoments(**state.get("reward_norm", {}))
    watch = DiversityWatch(**state.get("diversity", {}))
    pool = lc["pool"] if rank == 0 else None
    if _samplers_stale(pool, iteration):
        tr.sync(pool, prompts[0])
    client = mlflow.MlflowClient(lc["tracking_uri"]) if rank == 0 else None
    nodes = [None] * world
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    if rank == 0:
        client.set_tag(lc["run_id"], "placement.trainer_nodes", ",".join(sorted(set(nodes))))
    stop = min(p.iterations, p.stop_after_iterations or p.iterations)
    mine = list(range(rank, p.prompts_per_step * p.samples_per_prompt, world))
    while iteration < stop:
        phase = Phases()
        with phase("rollout"):
            box = [None]
            if rank == 0:
                chosen = [prompts[i] for i in prompt_indices(iteration, p.prompts_per_step, len(prompts), t.seed)]
                box[0] = rollout(pool, tr.tokenizer, chosen, cfg, iteration)
                pool.sleep()  # frees the GPU for training when colocated on GPUs; else a no-op
            dist.broadcast_object_list(box, src=0)
            ro: Rollouts = box[0]
        with phase("scoring"):
            exp = experience(tr, scorer, ro, mine, cfg, kl_ctl.coef, norm, iteration)
        with phase("training"):
            losses = update(tr, cfg, exp, kl_ctl.coef, iteration)
        with phase("sync"):
            probe_diff = tr.sync(pool, prompts[0])
        iteration += 1
        logged = iteration_metrics(exp, losses, kl_ctl, scorer.principles, phase.seconds)
        logged["time_iteration"] = phase.total()
        logged["trainer_peak_rss_gib"] = peak_rss_gib()  # per worker process: the model copies, optimizer state, activations
        # one answer per prompt: several samples of one prompt may rightly agree as the policy sharpens
        figures, collapsed = watch.observe(ro.responses[:: p.samples_per_prompt])
        logged |= figures
        if rank == 0:
            logged |= {"sync_probe_diff": probe_diff, "sampler_restarts": pool.restarts, "rollout_samples": len(ro.prompts)}
            log_metrics(client, lc["run_id"], logged, iteration)
            if collapsed:
                warn_collapse(client, lc, iteration, collapsed)
            lc["progress"].update.remote(iteration, logged["reward"])
        if iteration % p.checkpoint_every == 0 or iteration == stop:
            state = {"step": iteration, "final": iteration == p.iterations, "prompt_position": iteration * p.prompts_per_step,
                     "kl": kl_ctl.state(), "reward_norm": norm.state(), "diversity": watch.state()}
            save_checkpoint(tr.engines, t, tr.tokenizer, state, logged)
