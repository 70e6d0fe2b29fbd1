"""Place what k8s/ overlays ask Ray for on a local Ray cluster of the nodes their manifests start:
`python tests/k8s_placement.py jobs/rlcd serving ... [--set OVERLAY:DOTTED=YAML]`.

The cluster (ray.cluster_utils.Cluster, real raylets on this machine) has the manifest's head
(its CPUs: 0) and each worker group's replicas with their CPUs and logical GPUs (Ray accepts
num_gpus without a GPU). Each RayJob stage's requests come from the pipeline code (its stage
configs; a PPO stage's placement from alignray.train.placement.plan on this cluster), the
RayService's from its serve config; each is placed as a placement group: the samplers and serve
replicas spread (as Ray's default scheduling may spread them), the trainer workers packed (as
Ray Train does), in the order the stage starts them. A shape not placed within DEADLINE_S exits
1 naming what waits and what the nodes have. Runs in its own process: it starts and stops its
own cluster, whatever Ray the calling test session has."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import ray
import yaml
from k8s_manifests import RAY_KINDS, job_pipeline, nodes, render
from ray.cluster_utils import Cluster
from ray.util.placement_group import NODE_ID_LABEL_KEY, placement_group, remove_placement_group

DEADLINE_S = 10  # a shape that fits is placed in well under a second on these idle local nodes


@dataclass(frozen=True)
class Ask:
    what: str  # the config fields it comes from
    bundles: list[dict]
    strategy: str  # SPREAD (samplers, replicas) or PACK (Ray Train's workers)
    labels: dict  # node labels each bundle needs


def _pool(s, node_id: str | None) -> Ask:
    labels = dict(s.node_labels) | ({NODE_ID_LABEL_KEY: node_id} if node_id else {})
    return Ask(f"sampler.num_samplers={s.num_samplers} x (sampler.cpus_per_sampler={s.cpus_per_sampler:g} CPU,"
               f" sampler.gpus_per_sampler={s.gpus_per_sampler:g} GPU)",
               [{"CPU": s.cpus_per_sampler, "GPU": s.gpus_per_sampler}] * s.num_samplers, "SPREAD", labels)


def _workers(t, extra: dict | None) -> Ask:
    bundle = {"CPU": t.cpus_per_worker} | ({"GPU": 1} if t.use_gpu else {})
    bundle |= {k: v for k, v in (extra or {}).items() if not k.startswith("node:")}  # node: pins; same IP here
    return Ask(f"trainer.num_workers={t.num_workers} x {bundle}", [bundle] * t.num_workers, "PACK", dict(t.node_labels))


def stage_asks(kind: str, config) -> list[Ask]:
    """What a stage of this kind asks Ray for, in the order it starts them."""
    if kind in ("simulate", "evaluate"):
        return [_pool(config.sampler, None)]
    if kind != "ppo":
        return [_workers(config.trainer, None)]
    from alignray.train import placement

    where = placement.plan(config.ppo.placement, config.trainer, config.sampler)
    return [_pool(config.sampler, where.node_id), _workers(config.trainer, where.worker_resources)]


def serve_asks(service: dict) -> list[Ask]:
    asks = []
    for app in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]:
        # the policy's model replicas are ray.serve.llm's LLMServer: on GPU, one bundle of its replica
        # actor (1 CPU) merged with the engine's one GPU; the other apps list their deployments
        deployments = [{"name": "LLMServer", **app["args"].get("deployment", {}),
                        "ray_actor_options": {"num_cpus": 1, "num_gpus": 1}}] if "model" in app.get("args", {}) else app["deployments"]
        for d in deployments:
            options = d.get("ray_actor_options", {})
            count = d.get("autoscaling_config", {}).get("min_replicas", d.get("num_replicas", 1))
            bundle = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0)}
            asks.append(Ask(f"{app['name']}/{d['name']}: {count} replicas x {bundle}", [bundle] * count, "SPREAD", {}))
    return asks


def place(where: str, ask: Ask) -> object:
    bundles = [{k: v for k, v in b.items() if v} for b in ask.bundles]
    group = placement_group(bundles, strategy=ask.strategy, bundle_label_selector=[ask.labels] * len(bundles) if ask.labels else None)
    if not group.wait(timeout_seconds=DEADLINE_S):
        free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
        have = [f"{n['Resources'].get('CPU', 0):g} CPU {n['Resources'].get('GPU', 0):g} GPU" for n in ray.nodes() if n["Alive"]]
        sys.exit(f"{where}: cannot place {ask.what} within {DEADLINE_S} s (placement {ask.strategy}); free now"
                 f" {free} in total, on nodes of {have}")
    print(f"placed {where}: {ask.what}", flush=True)
    return group


def shapes(overlay: str, overrides: dict[str, object]) -> tuple[list, list[tuple[str, list[Ask]]]]:
    """The overlay's Ray nodes and its steps: [(where, the asks held at once)] (each stage's
    asks are computed on the live cluster, so PPO's placement sees its nodes)."""
    docs = render(overlay)
    [doc] = [d for d in docs if d["kind"] in RAY_KINDS]
    if doc["kind"] == "RayService":
        return nodes(doc), [(f"k8s/{overlay}", lambda: serve_asks(doc))]
    from alignray.pipelines.run import stage_configs

    cfg = job_pipeline(doc, docs, overrides)
    return nodes(doc), [(f"k8s/{overlay} stage {s.name} ({s.kind})", lambda s=s, c=c: stage_asks(s.kind, c))
                        for s, c in stage_configs(cfg)]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("overlays", nargs="+")
    parser.add_argument("--set", action="append", default=[], help="OVERLAY:dotted.key=YAML, a pipeline config change")
    args = parser.parse_args(argv)
    overrides: dict[str, dict] = {}
    for item in args.set:
        overlay, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        overrides.setdefault(overlay, {})[key] = yaml.safe_load(value)
    planned = [(overlay, *shapes(overlay, overrides.get(overlay, {}))) for overlay in args.overlays]
    for layout in dict.fromkeys(tuple(layout) for _, layout, _ in planned):  # one cluster per node layout
        with cluster_of(layout):
            for overlay, _, steps in (p for p in planned if tuple(p[1]) == layout):
                print(f"k8s/{overlay}: nodes {list(layout)}", flush=True)
                for where, asks in steps:
                    held = [place(where, ask) for ask in asks()]
                    for group in held:
                        remove_placement_group(group)


@contextmanager
def cluster_of(layout):
    """A local Ray cluster of these nodes, the driver connected on its head."""
    head, *workers = layout
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": head.cpus, "num_gpus": head.gpus, "object_store_memory": 100 << 20, "include_dashboard": False})
    try:
        for group in workers:
            for _ in range(group.count):
                cluster.add_node(num_cpus=group.cpus, num_gpus=group.gpus, object_store_memory=100 << 20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        yield
    finally:
        ray.shutdown()
        cluster.shutdown()

if __name__ == "__main__":
    main(sys.argv[1:])
