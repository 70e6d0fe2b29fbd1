"""The k8s/ manifests as an operator applies them (helpers of the test_k8s*.py files): the
overlays rendered by kustomize, every pod template, each Ray cluster's nodes, and each RayJob's
pipeline rendered by the pipeline code into its stages' configs."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
RAY_KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
PIPELINES = ("rlcd", "morlaif", "rrhf", "rdpo")
# The order of docs/deployment.md, "Kubernetes (KubeRay)": volumes (or a storage class example), base, jobs,
# serving; restore only when restoring a backup.
STORAGE_CLASSES = ("aws-efs", "gke-filestore", "azure-files")
OVERLAYS = ("volumes", *(f"storage-classes/{c}" for c in STORAGE_CLASSES), "base", *(f"jobs/{p}" for p in PIPELINES),
            "cluster", "serving", "restore")
KUBECTL = shutil.which("kubectl")
# The tests that render overlays skip without kubectl on a workstation, and fail under CI (CI=true),
# where a skipped check must not pass for a green run.
needs_kubectl = pytest.mark.skipif(KUBECTL is None and os.environ.get("CI", "").lower() not in ("1", "true"),
                                   reason="needs kubectl on PATH (renders the kustomize overlays offline)")


def files() -> list[tuple[str, dict]]:
    """(path under k8s/, document) of every manifest file, kustomizations aside."""
    return [(str(path.relative_to(K8S)), doc) for path in sorted(K8S.rglob("*.yaml"))
            if path.name != "kustomization.yaml" for doc in yaml.safe_load_all(path.read_text())]


@functools.cache
def render(overlay: str, k8s: Path = K8S) -> tuple[dict, ...]:
    """`kubectl kustomize k8s/<overlay>`: what `kubectl apply -k` would send (of a copy of k8s/
    when given)."""
    assert KUBECTL, "kubectl not found on PATH: the k8s tests render the overlays with `kubectl kustomize`"
    done = subprocess.run([KUBECTL, "kustomize", str(k8s / overlay)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize k8s/{overlay}: {done.stderr}"
    return tuple(yaml.safe_load_all(done.stdout))


def of_kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def ray_cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"]}[doc["kind"]](doc["spec"])


def groups(doc: dict) -> list[dict]:
    spec = ray_cluster_spec(doc)
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod a document creates."""
    name = f"{doc['kind']} {doc['metadata']['name']}"
    if doc["kind"] in RAY_KINDS:
        pods = [(f"{name} {g.get('groupName', 'head')}", g["template"]["spec"]) for g in groups(doc)]
        if doc["kind"] == "RayJob":  # KubeRay's submitter pod (K8sJobMode) is made from this template
            pods.append((f"{name} submitter", doc["spec"].get("submitterPodTemplate", {}).get("spec", {"containers": []})))
        return pods
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return [(name, doc["spec"]["template"]["spec"])]
    if doc["kind"] == "CronJob":
        return [(name, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])]
    return []


def containers(doc: dict) -> list[tuple[str, dict, dict]]:
    """(where, container, its pod spec) of every container a document creates, KubeRay's
    autoscaler sidecar in the head pod included (its securityContext is autoscalerOptions')."""
    out = [(f"{where} container {c['name']}", c, pod) for where, pod in pod_specs(doc)
           for c in pod.get("initContainers", []) + pod["containers"]]
    if doc["kind"] in RAY_KINDS and ray_cluster_spec(doc).get("enableInTreeAutoscaling"):
        sidecar = {"name": "autoscaler", "securityContext": ray_cluster_spec(doc).get("autoscalerOptions", {}).get("securityContext", {})}
        out.append((f"{doc['kind']} {doc['metadata']['name']} head container autoscaler", sidecar, pod_specs(doc)[0][1]))
    return out


def ray_containers(doc: dict) -> list[tuple[str, dict, dict]]:
    """(where, container, its pod spec) of the Ray containers of the head and worker groups."""
    return [(f"{doc['kind']} {doc['metadata']['name']} {g.get('groupName', 'head')} container {c['name']}", c,
             g["template"]["spec"]) for g in groups(doc) for c in g["template"]["spec"]["containers"]]


@dataclass(frozen=True)
class Node:
    group: str
    count: int
    cpus: float
    gpus: int


def _quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def nodes(doc: dict) -> list[Node]:
    """The Ray nodes a cluster spec starts: CPUs from rayStartParams num-cpus (else the
    container's CPU request, as KubeRay sets it), GPUs from nvidia.com/gpu."""
    out = []
    for g in groups(doc):
        params = g.get("rayStartParams", {})
        [container] = [c for c in g["template"]["spec"]["containers"] if c["name"].startswith("ray-")]
        requests = container.get("resources", {}).get("requests", {})
        cpus = _quantity(params.get("num-cpus", requests.get("cpu", 0)))
        gpus = int(params.get("num-gpus", requests.get("nvidia.com/gpu", 0)))
        out.append(Node(g.get("groupName", "head"), g.get("replicas", 1), cpus, gpus))
    return out


def job_pipeline(job: dict, docs, overrides: dict | None = None) -> "PipelineConfig":  # noqa: F821
    """The pipeline config a RayJob runs: the ConfigMap file its entrypoint's --config names
    (with `overrides`, {dotted key: value}, applied)."""
    from alignray.config import PipelineConfig

    config_path = job["spec"]["entrypoint"].partition(" --config ")[2]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    [mount] = [m for m in head["containers"][0]["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")]
    [volume] = [v for v in head["volumes"] if v["name"] == mount["name"]]
    [config_map] = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"]]
    tree = yaml.safe_load(config_map["data"][Path(config_path).name])
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return PipelineConfig.model_validate(tree)


def jobs() -> list[tuple[str, dict, "PipelineConfig"]]:  # noqa: F821
    """(pipeline, RayJob, its pipeline config) of each jobs/<pipeline> overlay."""
    out = []
    for pipeline in PIPELINES:
        docs = render(f"jobs/{pipeline}")
        [job] = of_kind(docs, "RayJob")
        out.append((pipeline, job, job_pipeline(job, docs)))
    return out
