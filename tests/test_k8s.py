"""Deployment files offline: the Dockerfile passes hadolint; every k8s/ manifest validates
strictly against the KubeRay v1.7.0 CRD schemas (Ray kinds) or Kubernetes' own schemas (core
kinds); embedded pipeline configs are valid; rayVersion equals the pinned Ray."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CRD_DIR = Path(os.environ.get("KUBERAY_CRD_DIR", ROOT.parent / "shared" / "kuberay-crds"))
RAY_KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}


def documents():
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in yaml.safe_load_all(path.read_text()):
                yield path.name, doc


def crd(plural):
    """A KubeRay CRD (about 1 MB of YAML), parsed by libyaml where PyYAML has it (4-6x faster)."""
    return yaml.load((CRD_DIR / f"ray.io_{plural}.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def strict(schema):
    """KubeRay's openAPIV3Schema made strict: no unknown fields where properties are listed,
    int-or-string fields typed as such."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("x-kubernetes-int-or-string"):
                node["anyOf"] = [{"type": "string"}, {"type": "integer"}]
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ray_versions_match_the_pinned_ray():
    import ray

    assert f"ARG RAY_VERSION={ray.__version__}" in (ROOT / "Dockerfile").read_text()
    versions = []
    for _, doc in documents():
        if doc["kind"] == "RayCluster":
            versions.append(doc["spec"]["rayVersion"])
        elif doc["kind"] == "RayJob":
            versions.append(doc["spec"]["rayClusterSpec"]["rayVersion"])
        elif doc["kind"] == "RayService":
            versions.append(doc["spec"]["rayClusterConfig"]["rayVersion"])
    assert versions and set(versions) == {ray.__version__}


needs_crds = pytest.mark.skipif(
    not CRD_DIR.is_dir(), reason=f"KubeRay CRDs not found at {CRD_DIR}; set KUBERAY_CRD_DIR to the folder holding"
    " ray.io_rayclusters.yaml, ray.io_rayjobs.yaml, ray.io_rayservices.yaml (KubeRay v1.7.0)")


@needs_crds
def test_ray_manifests_validate_against_the_kuberay_crds():
    import jsonschema

    schemas = {}
    for kind, plural in RAY_KINDS.items():
        [v1] = [v for v in crd(plural)["spec"]["versions"] if v["name"] == "v1"]
        schemas[kind] = strict(v1["schema"]["openAPIV3Schema"])
    checked = 0
    for name, doc in documents():
        if doc["kind"] in schemas:
            errors = [f"{'.'.join(map(str, e.path))}: {e.message}"
                      for e in jsonschema.Draft7Validator(schemas[doc["kind"]]).iter_errors(doc)]
            assert not errors, f"{name} ({doc['kind']}): {errors[:5]}"
            checked += 1
    assert checked >= 6  # the cluster, a job per pipeline, the service


@needs_crds
def test_strict_validation_rejects_unknown_fields():
    import jsonschema

    [v1] = [v for v in crd("rayclusters")["spec"]["versions"] if v["name"] == "v1"]
    [cluster] = [d for _, d in documents() if d["kind"] == "RayCluster"]
    bad = copy.deepcopy(cluster)
    bad["spec"]["headGroupSpec"]["rayStartParam"] = {}  # a typo
    assert list(jsonschema.Draft7Validator(strict(v1["schema"]["openAPIV3Schema"])).iter_errors(bad))


def test_core_manifests_validate_against_kubernetes_schemas():
    import kubernetes_validate

    checked = 0
    for name, doc in documents():
        if doc["kind"] not in RAY_KINDS:
            try:
                kubernetes_validate.validate(doc, "1.32", strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name} ({doc['kind']} {doc['metadata']['name']}): {exc.message}")
            checked += 1
    assert checked >= 5


def test_kustomization_lists_every_manifest_and_jobs_run_valid_pipelines():
    from alignray.config import PipelineConfig

    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    configs = {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == "ConfigMap"}
    jobs = [d for _, d in documents() if d["kind"] == "RayJob"]
    assert {j["metadata"]["name"].removeprefix("alignray-") for j in jobs} >= {"rlcd", "morlaif", "rrhf", "rdpo"}
    for job in jobs:
        pipeline = job["metadata"]["name"].removeprefix("alignray-")
        script, _, config_path = job["spec"]["entrypoint"].removeprefix("python ").partition(" --config ")
        assert (ROOT / script).is_file() and script == f"jobs/{pipeline}.py"
        [volume] = [v for v in job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
                    if "configMap" in v]
        text = configs[volume["configMap"]["name"]]["data"][Path(config_path).name]
        cfg = PipelineConfig.model_validate(yaml.safe_load(text))
        assert cfg.pipeline == pipeline and cfg.tracking.uri == "http://mlflow:5000"
        assert str(cfg.output_dir).startswith("/mnt/alignray")


def test_rayservice_embeds_serving_config_whose_apps_import_and_validate():
    import importlib

    from alignray.config import RewardConfig
    from alignray.serve.policy import PolicyArgs
    from alignray.serve.reward import build as reward_app
    from ray.serve.schema import ServeDeploySchema

    [service] = [d for _, d in documents() if d["kind"] == "RayService"]
    text = service["spec"]["serveConfigV2"]
    assert text == (ROOT / "serving" / "config.yaml").read_text(), "paste serving/config.yaml into k8s/rayservice.yaml"
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    policy, reward = schema.applications
    assert (policy.name, reward.name) == ("policy", "reward")
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
    # the policy's build resolves its model from the registry: its args are checked, it is not built here
    assert PolicyArgs.model_validate(policy.args).tracking_uri == "http://mlflow:5000" and not policy.deployments
    assert reward_app(reward.args) is not None
    [deployment] = reward.deployments
    RewardConfig.model_validate({k: v for k, v in deployment.user_config.items() if k != "tracking_uri"})
    assert deployment.user_config.get("tracking_uri") == "http://mlflow:5000"
    token_sources = [e["valueFrom"]["secretKeyRef"]["name"] for group in
                     [service["spec"]["rayClusterConfig"]["headGroupSpec"], *service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
                     for e in group["template"]["spec"]["containers"][0]["env"] if e["name"] == "ALIGNRAY_SERVE_TOKEN"]
    assert token_sources == ["alignray-serve-token"] * 2
