"""Where PPO's samplers and trainer workers run, and how many threads each computes with.

- `separate`: samplers and trainer workers each use the CPUs Ray reserves for them
  (`sampler.cpus_per_sampler`, `trainer.cpus_per_worker`) and nothing more; they may run on
  any nodes. On a 2-core machine: one core samples while the other trains, and each idles half
  the time, since the loop never samples and trains at once.
- `colocated`: samplers and trainer workers share one node and take turns. Ray still reserves
  `cpus_per_sampler` per sampler and `cpus_per_worker` per worker on that node (so nothing
  waits for resources another part holds: the pool is placed first and the workers need only
  what is left, checked before anything starts), but every process computes with the node's
  cores: samplers with cores / num_samplers threads during the rollout, trainer workers with
  cores / num_workers threads while scoring and training. This is safe because the loop's
  phases never overlap: rank 0 waits for the rollout before anyone scores, and the samplers
  idle (an in-process vLLM engine only computes inside `generate`) until the next rollout.
  On GPU the samplers reserve `sampler.gpus_per_sampler` and each trainer worker the rest of
  a GPU, and vLLM sleeps between rollouts (weights offloaded, KV cache freed; woken before
  each weight sync), as OpenRLHF's and verl's colocated engines do. The GPU path is written
  but untested here: this machine has no GPU.
- `auto` (default): colocated on a single-node cluster, separate on more nodes or when
  `sampler.node_labels` or `trainer.node_labels` name where each part goes.

`sampler.node_labels` / `trainer.node_labels` (Ray node labels, `ray start --labels`) restrict
each part to matching nodes; colocated, the shared node must match both.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from alignray.config import EngineConfig, SamplerConfig
from alignray.train.launch import TrainingError, check_cpus


@dataclass(frozen=True)
class Placement:
    colocated: bool
    sampler_threads: int
    trainer_threads: int
    node_id: str | None = None  # colocated: the node of every sampler and trainer worker
    worker_resources: dict | None = None  # extra Ray resources of each trainer worker

    @property
    def sleep_samplers(self) -> bool:
        """vLLM sleeps between rollouts (frees GPU memory for training): colocated on GPUs."""
        return self.colocated and bool(self.worker_resources and "GPU" in self.worker_resources)


def _nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]


def _labelled(node: dict, *selectors: dict[str, str]) -> bool:
    return all(node.get("Labels", {}).get(k) == v for sel in selectors for k, v in sel.items())


def plan(mode: str, t: EngineConfig, s: SamplerConfig) -> Placement:
    """Decide the placement; raises TrainingError when it cannot fit (Ray would wait forever)."""
    live = _nodes()
    if mode == "auto":
        mode = "colocated" if len(live) == 1 and not (s.node_labels or t.node_labels) else "separate"
    if mode == "separate":
        check_cpus({
            "trainer.num_workers x trainer.cpus_per_worker": t.num_workers * t.cpus_per_worker,
            "sampler.num_samplers x sampler.cpus_per_sampler": s.num_samplers * s.cpus_per_sampler,
        })
        return Placement(False, max(1, int(s.cpus_per_sampler)), max(1, int(t.cpus_per_worker)))
    nodes = [n for n in live if _labelled(n, s.node_labels, t.node_labels)]
    if not nodes:
        raise TrainingError(f"ppo.placement=colocated needs one node with the labels of sampler.node_labels"
                            f" {s.node_labels} and trainer.node_labels {t.node_labels}; no live node has them")
    need = t.num_workers * t.cpus_per_worker + s.num_samplers * s.cpus_per_sampler
    here = ray.get_runtime_context().get_node_id()
    fits = sorted((n for n in nodes if n["Resources"]["CPU"] >= need), key=lambda n: n["NodeID"] != here)
    if not fits:
        largest = max((n["Resources"]["CPU"] for n in nodes), default=0)
        raise TrainingError(
            f"ppo.placement=colocated puts trainer.num_workers x trainer.cpus_per_worker ="
            f" {t.num_workers * t.cpus_per_worker:g} and sampler.num_samplers x sampler.cpus_per_sampler ="
            f" {s.num_samplers * s.cpus_per_sampler:g} CPUs on one node, but the largest node has {largest:g};"
            " lower them or set ppo.placement=separate"
        )
    node = fits[0]
    cores = int(node["Resources"]["CPU"])
    resources = {f"node:{node['NodeManagerAddress']}": 0.001}  # pins each worker to that node
    if t.use_gpu and 0 < s.gpus_per_sampler < 1:
        resources["GPU"] = 1 - s.gpus_per_sampler  # the rest of the GPU a sampler shares
    return Placement(True, max(1, cores // s.num_samplers), max(1, cores // t.num_workers), node["NodeID"], resources)
