"""The k8s/ overlays as an operator applies them (rendered by `kubectl kustomize`): one step at
a time, storage every Ray pod can mount, pods at the "restricted" Pod Security level, the paths
the driver hands to actors on the shared volume, authenticated Ray and MLflow, bounded jobs,
pinned images, and served model names that the jobs register."""

import re
import shutil

from k8s_manifests import (
    K8S,
    OVERLAYS,
    PIPELINES,
    RAY_KINDS,
    ROOT,
    STORAGE_CLASSES,
    containers,
    files,
    jobs,
    needs_kubectl,
    of_kind,
    pod_specs,
    render,
    ray_cluster_spec,
    ray_containers,
)

pytestmark = needs_kubectl

# Provisioners whose volumes can be mounted read-write by many nodes.
RWX_PROVISIONERS = {"efs.csi.aws.com", "filestore.csi.storage.gke.io", "file.csi.azure.com", "nfs.csi.k8s.io",
                    "cephfs.csi.ceph.com"}


def every_doc():
    return [(overlay, d) for overlay in OVERLAYS for d in render(overlay)]


def test_overlays_apply_one_step_at_a_time():
    kinds = {overlay: {d["kind"] for d in render(overlay)} for overlay in OVERLAYS}
    assert not kinds["base"] & set(RAY_KINDS), "k8s/base holds no Ray cluster: it is applied before any GPU is asked for"
    assert kinds["volumes"] == {"Namespace", "PersistentVolumeClaim"}
    assert {"StatefulSet", "Deployment", "Service", "CronJob"} <= kinds["base"]
    for cloud in STORAGE_CLASSES:
        assert kinds[f"storage-classes/{cloud}"] == kinds["volumes"] | {"StorageClass"}
    assert kinds["restore"] == {"Job"}
    for overlay in (o for o in OVERLAYS if o.startswith("jobs/")):
        assert len(of_kind(render(overlay), "RayJob")) == 1 and kinds[overlay] == {"RayJob", "ConfigMap"}, overlay
    assert kinds["serving"] == {"RayService"} and kinds["cluster"] == {"RayCluster"}
    for overlay in OVERLAYS:
        assert {d["metadata"].get("namespace") for d in render(overlay)
                if d["kind"] not in ("Namespace", "StorageClass")} <= {"alignray"}, overlay
    assert not (K8S / "kustomization.yaml").exists(), "no k8s/kustomization.yaml: applying everything at once asks for every GPU"


def test_every_manifest_file_is_in_an_overlay():
    rendered = {(d["kind"], d["metadata"]["name"]) for _, d in every_doc()}
    for path, doc in files():
        assert (doc["kind"], doc["metadata"]["name"]) in rendered, f"k8s/{path}: {doc['kind']} is in no overlay"


def test_shared_volume_asks_a_class_that_offers_read_write_many():
    [claim] = [d for d in render("volumes") if d["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in d["spec"]["accessModes"]]
    name = claim["spec"].get("storageClassName")
    assert name, ("k8s/volumes/shared.yaml: a ReadWriteMany claim without storageClassName gets the default class,"
                  " which on EKS, GKE and AKS cannot give it (the pods stay Pending); name a class")
    for cloud in STORAGE_CLASSES:
        [cls] = of_kind(render(f"storage-classes/{cloud}"), "StorageClass")
        assert cls["metadata"]["name"] == name and cls["provisioner"] in RWX_PROVISIONERS, cloud


def test_a_routine_delete_deletes_no_data():
    """`kubectl delete -k` of any overlay but volumes (or a storage class example) removes only
    what it renders: neither the namespace (with everything in it) nor a claim. Every claim a pod
    mounts is in volumes, PostgreSQL's StatefulSet keeps its claim, and the example storage
    classes keep a deleted claim's volume."""
    kept = {d["metadata"]["name"] for d in of_kind(render("volumes"), "PersistentVolumeClaim")}
    for overlay, doc in every_doc():
        if overlay == "volumes" or overlay.startswith("storage-classes/"):
            continue
        assert doc["kind"] not in ("Namespace", "PersistentVolumeClaim"), (
            f"k8s/{overlay}: `kubectl delete -k` would delete {doc['kind']} {doc['metadata']['name']}; move it to k8s/volumes")
        for where, pod in pod_specs(doc):
            for volume in pod.get("volumes", []):
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                assert claim is None or claim in kept, f"k8s/{overlay} {where}: claim {claim} is not in k8s/volumes"
    [postgres] = of_kind(render("base"), "StatefulSet")
    assert postgres["spec"].get("persistentVolumeClaimRetentionPolicy", {}).get("whenDeleted", "Retain") == "Retain"
    for cloud in STORAGE_CLASSES:
        [cls] = of_kind(render(f"storage-classes/{cloud}"), "StorageClass")
        assert cls.get("reclaimPolicy") == "Retain", f"k8s/storage-classes/{cloud}: set reclaimPolicy: Retain"


def test_postgres_is_backed_up_to_the_shared_volume_and_restored_from_it():
    """The backup CronJob dumps every database PostgreSQL holds to a folder on a kept claim, and
    the restore Job reads that folder (tests/test_k8s_backup.py runs both against PostgreSQL)."""
    base = render("base")
    [postgres] = of_kind(base, "StatefulSet")
    [init] = [d for d in of_kind(base, "ConfigMap") if d["metadata"]["name"] == "postgres-init"]
    databases = {_env(postgres["spec"]["template"]["spec"]["containers"][0])["POSTGRES_DB"],
                 *re.findall(r"CREATE DATABASE (\w+);", "".join(init["data"].values()))}
    [backup] = of_kind(base, "CronJob")
    [restore] = of_kind(render("restore"), "Job")
    folders = []
    for doc in (backup, restore):
        [(_, pod)] = pod_specs(doc)
        [container] = pod["containers"]
        script = container["args"][0]
        assert ("pg_dump" if doc is backup else "pg_restore") in script
        assert re.search(r"for db in ([\w ]+);", script)[1].split() == sorted(databases), f"{doc['kind']}: every database"
        [mount] = container["volumeMounts"]
        assert {"persistentVolumeClaim": {"claimName": "alignray-shared"}, "name": mount["name"]} in pod["volumes"]
        folder = re.search(r"dir=(\S+)", script)[1]
        assert folder.startswith(mount["mountPath"] + "/")
        folders.append(folder)
        assert _env(container)["PGHOST"] == "postgres" and _env(container)["PGPASSWORD"]["secretKeyRef"]["name"] == "alignray-postgres"
    assert folders[0] == folders[1]


def test_pods_give_their_volumes_group_ownership_once():
    """A pod with a volume claim writes to it as group fsGroup; fsGroupChangePolicy OnRootMismatch
    changes the ownership only when the volume's root is not already the pod's group, instead of
    walking every file at every start (a shared volume holds millions). docs/deployment.md: the one-time
    ownership step for shares whose driver ignores fsGroup."""
    checked = 0
    for overlay, doc in every_doc():
        for where, pod in pod_specs(doc):
            if doc["spec"].get("volumeClaimTemplates") or any("persistentVolumeClaim" in v for v in pod.get("volumes", [])):
                psc = pod.get("securityContext", {})
                assert psc.get("fsGroup") and psc.get("fsGroupChangePolicy") == "OnRootMismatch", (
                    f"k8s/{overlay} {where}: set securityContext fsGroup and fsGroupChangePolicy: OnRootMismatch")
                checked += 1
    assert checked >= 16  # MLflow, PostgreSQL, the backup, the restore, the Ray heads and workers


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(container: dict, pod: dict) -> list[str]:
    """What keeps a container from the "restricted" Pod Security Standard (Kubernetes docs,
    "Pod Security Standards"), pod-level settings counting where the standard allows them."""
    sc, psc = container.get("securityContext", {}), pod.get("securityContext", {})
    problems = []
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("securityContext.allowPrivilegeEscalation must be false")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        problems.append("securityContext.capabilities.drop must include ALL")
    if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
        problems.append("securityContext.capabilities.add may only hold NET_BIND_SERVICE")
    if sc.get("privileged"):
        problems.append("securityContext.privileged must not be true")
    if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
        problems.append("runAsNonRoot must be true (container or pod securityContext)")
    if 0 in (sc.get("runAsUser"), psc.get("runAsUser")):
        problems.append("runAsUser must not be 0")
    if sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("seccompProfile.type must be RuntimeDefault or Localhost (container or pod securityContext)")
    if any(p.get("hostPort") for p in container.get("ports", [])):
        problems.append("ports must not set hostPort")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"pod {key} must not be true")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {kinds} is not allowed")
    return problems


def test_every_container_meets_the_restricted_pod_security_standard():
    checked = 0
    for overlay, doc in every_doc():
        for where, container, pod in containers(doc):
            problems = restricted_violations(container, pod)
            assert not problems, f"k8s/{overlay} {where}: {'; '.join(problems)}"
            checked += 1
    assert checked >= 18  # ray head, workers, the jobs' submitters, the autoscaler sidecars, MLflow, PostgreSQL
    [namespace] = of_kind(render("volumes"), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_restricted_check_catches_a_root_container():
    pod = {"securityContext": {"runAsNonRoot": True}, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    problems = restricted_violations({"name": "c", "securityContext": {"runAsUser": 0}}, pod)
    assert len(problems) == 5  # escalation, capabilities, runAsUser 0, seccomp, hostPath


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_driver_and_actors_see_the_same_cache_and_downloads_on_the_shared_volume():
    """The driver runs on the head, its actors on the workers (and Serve builds the policy's app
    on one node, its replicas run on others): the prepared model (ALIGNRAY_CACHE) and registry
    downloads (ALIGNRAY_DOWNLOADS) must be on a volume every Ray pod mounts, at the same path."""
    for overlay in [o for o in OVERLAYS if o.startswith("jobs/")] + ["cluster", "serving"]:
        [doc] = [d for d in render(overlay) if d["kind"] in RAY_KINDS]
        seen = set()
        for where, container, pod in ray_containers(doc):
            shared = {v["name"] for v in pod.get("volumes", []) if v.get("persistentVolumeClaim", {}).get("claimName") == "alignray-shared"}
            mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in shared]
            env = _env(container)
            for var in ("ALIGNRAY_CACHE", "ALIGNRAY_DOWNLOADS"):
                assert isinstance(env.get(var), str) and any(env[var].startswith(m + "/") for m in mounts), (
                    f"k8s/{overlay} {where}: set {var} to a folder under the alignray-shared mount {mounts}")
                seen.add((var, env[var]))
        assert len(seen) == 2, f"k8s/{overlay}: every pod needs the same ALIGNRAY_CACHE and ALIGNRAY_DOWNLOADS: {seen}"


def test_ray_clusters_require_a_token_and_mlflow_a_user():
    [mlflow] = [d for d in render("base") if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    [(_, server, _)] = containers(mlflow)
    assert "--app-name basic-auth" in " ".join(server["args"]), "k8s/base/mlflow.yaml: run mlflow server --app-name basic-auth"
    admin = _env(server)["MLFLOW_AUTH_ADMIN_PASSWORD"]["secretKeyRef"]["name"]
    for overlay, doc in every_doc():
        if doc["kind"] in RAY_KINDS:
            assert ray_cluster_spec(doc).get("authOptions", {}).get("mode") == "token", (
                f"k8s/{overlay}: set authOptions.mode: token (else anyone in the cluster submits jobs)")
            for where, container, _ in ray_containers(doc):
                env = _env(container)
                for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                    assert env.get(var, {}).get("secretKeyRef", {}).get("name") == admin, f"k8s/{overlay} {where}: {var}"


def test_every_ray_pod_of_the_jobs_and_the_service_reads_the_serve_token_from_its_secret():
    """The service's replicas need the token; a job's PPO workers (not only its driver) call the
    served reward app with it (`reward.endpoint_token_env: ALIGNRAY_SERVE_TOKEN`). Optional in the
    jobs, which run without the secret when they use no served app."""
    for overlay in (*(f"jobs/{p}" for p in PIPELINES), "serving"):
        for doc in render(overlay):
            if doc["kind"] not in ("RayJob", "RayService"):
                continue
            for where, container, _ in ray_containers(doc):
                ref = _env(container).get("ALIGNRAY_SERVE_TOKEN", {}).get("secretKeyRef", {})
                assert (ref.get("name"), ref.get("key")) == ("alignray-serve-token", "token"), f"k8s/{overlay} {where}"
                assert ref.get("optional", False) == (doc["kind"] == "RayJob"), f"k8s/{overlay} {where}: optional"


def test_jobs_end_and_free_their_gpus():
    for pipeline, job, _ in jobs():
        spec = job["spec"]
        assert 0 < spec.get("activeDeadlineSeconds", 0) <= 24 * 3600, f"k8s/jobs/{pipeline}: set activeDeadlineSeconds"
        assert 0 < spec.get("preRunningDeadlineSeconds", 0) <= 3600, (
            f"k8s/jobs/{pipeline}: set preRunningDeadlineSeconds, else pods that cannot start wait out activeDeadlineSeconds")
        assert spec["shutdownAfterJobFinishes"] and spec["ttlSecondsAfterFinished"] <= 300, (
            f"k8s/jobs/{pipeline}: its GPUs idle ttlSecondsAfterFinished={spec['ttlSecondsAfterFinished']} s after the job")
    [cluster] = of_kind(render("cluster"), "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] and all(g["minReplicas"] == 0 for g in cluster["spec"]["workerGroupSpecs"])


def test_one_component_sets_the_shape_of_every_gpu_worker(tmp_path):
    """k8s/components/gpu-worker sets the CPUs, memory and GPUs of every Ray overlay's workers: a
    copy of k8s/ with another shape there renders that shape everywhere."""
    ray_overlays = [o for o in OVERLAYS if any(d["kind"] in RAY_KINDS for d in render(o))]
    component = K8S / "components" / "gpu-worker" / "kustomization.yaml"
    shape = 'cpu: "8", memory: 48Gi, nvidia.com/gpu: "1"'
    assert component.read_text().count(shape) == 6  # requests and limits, one patch per kind
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / component.relative_to(K8S)).write_text(component.read_text().replace(shape, 'cpu: "6", memory: 30Gi, nvidia.com/gpu: "2"'))
    for k8s, want in ((K8S, {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"}),
                      (copy, {"cpu": "6", "memory": "30Gi", "nvidia.com/gpu": "2"})):
        for overlay in ray_overlays:
            [doc] = [d for d in render(overlay, k8s) if d["kind"] in RAY_KINDS]
            for group in ray_cluster_spec(doc)["workerGroupSpecs"]:
                [container] = group["template"]["spec"]["containers"]
                assert container.get("resources") == {"requests": want, "limits": want}, f"k8s/{overlay} {group['groupName']}"
    assert len(ray_overlays) == len(PIPELINES) + 2  # the jobs, the cluster, the service


def test_images_are_pinned_to_a_version_or_digest():
    for overlay, doc in every_doc():
        for where, container, _ in containers(doc):
            image = container.get("image")
            if image is None:  # the autoscaler sidecar runs the head's image
                continue
            name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "")
            assert "@sha256:" in image or (name and re.search(r"\d+\.\d+", tag)), (
                f"k8s/{overlay} {where}: image {image} moves; pin a versioned tag or a digest in"
                " k8s/components/release (kustomize images:)")


def test_mlflow_and_the_job_submitters_run_the_cpu_image():
    """Neither needs CUDA, vLLM's GPU build or a GPU node: the CPU image is far smaller to pull."""
    import yaml

    release = yaml.safe_load((K8S / "components" / "release" / "kustomization.yaml").read_text())
    [cpu] = [i for i in release["images"] if i["name"] == "alignray-cpu"]
    cpu_image = f"{cpu['newName']}@{cpu['digest']}" if "digest" in cpu else f"{cpu['newName']}:{cpu['newTag']}"
    [mlflow] = [d for d in render("base") if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    pods = pod_specs(mlflow)
    pods += [(where, pod) for _, job, _ in jobs() for where, pod in pod_specs(job) if where.endswith(" submitter")]
    assert len(pods) == 1 + len(PIPELINES)
    for where, pod in pods:
        assert [c["image"] for c in pod["containers"]] == [cpu_image], f"{where}: run the alignray-cpu image"


def test_every_ray_pod_has_a_memory_backed_dev_shm():
    """Ray's object store lives in /dev/shm, which a container gets at 64 MiB unless a memory
    emptyDir is mounted there (Ray falls back to a slower disk folder); vLLM and NCCL use it too."""
    for overlay, doc in every_doc():
        if doc["kind"] in RAY_KINDS:
            for where, container, pod in ray_containers(doc):
                memory = {v["name"] for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"}
                assert any(m["mountPath"] == "/dev/shm" and m["name"] in memory for m in container.get("volumeMounts", [])), (
                    f"k8s/{overlay} {where}: mount an emptyDir with medium: Memory at /dev/shm")


def test_jobs_run_their_pipelines_and_track_to_the_in_cluster_mlflow():
    dockerfile = (ROOT / "Dockerfile").read_text()
    [workdir] = set(re.findall(r"^WORKDIR (\S+)$", dockerfile, re.M))
    assert re.search(r"^COPY \S+ jobs \./jobs$", dockerfile, re.M)
    for pipeline, job, cfg in jobs():
        script = job["spec"]["entrypoint"].removeprefix("python ").partition(" --config ")[0]
        # absolute: the job's working folder on the head is Ray's choice, not the image's WORKDIR
        assert script == f"{workdir}/jobs/{pipeline}.py" and (ROOT / "jobs" / f"{pipeline}.py").is_file(), script
        assert cfg.pipeline == pipeline and cfg.tracking.uri == "http://mlflow:5000"
        assert str(cfg.output_dir).startswith("/mnt/alignray/")


def test_served_models_are_the_models_the_jobs_register():
    """RayService asks for models:/<name>@champion; a RayJob's pipeline registers
    <pipeline name>-<stage> (rendered by the pipeline code)."""
    import yaml
    from alignray.models.registry import model_name
    from alignray.pipelines.run import stage_configs

    registered = {config.registered_model for _, _, cfg in jobs() for _, config in stage_configs(cfg)
                  if getattr(config, "registered_model", None)}
    [service] = of_kind(render("serving"), "RayService")
    apps = {app["name"]: app for app in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]}
    served = [apps["policy"]["args"]["model"], *apps["reward"]["deployments"][0]["user_config"]["models"]]
    assert len(served) == 2
    for ref in served:
        assert model_name(ref) in registered, (
            f"k8s/serving serves {ref}, which no job registers (they register {sorted(registered)}):"
            " edit serving/config.yaml and paste it into k8s/serving/rayservice.yaml")


def test_pod_templates_are_found_for_each_kind():
    # guards the helpers above: every workload kind we ship has its pods found
    kinds = {d["kind"] for _, d in every_doc() if pod_specs(d)}
    assert kinds == {"Deployment", "StatefulSet", "CronJob", "Job", *RAY_KINDS}
