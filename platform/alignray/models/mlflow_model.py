"""A trained model as MLflow registers it: an MLflow model of the transformers flavor.

`mlflow.transformers.load_model` and `mlflow models serve` load it, with its task, tokenizer and
signature. Inside it, `model/` is the Hugging Face folder as training wrote it (for a LoRA policy:
`peft/` is the adapter folder, and the base model is referenced by its local path), which is what
alignray's own `models:/` resolution hands to samplers and trainers. A LoRA preference model keeps
the plain folder: MLflow would rebuild its score head from the base's config, of the wrong size.
Versions registered before this form existed are plain folders, and resolve as they always did.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import mlflow

from alignray.models import lora

TASKS = {"ForCausalLM": "text-generation", "ForSequenceClassification": "text-classification"}
MLMODEL = "MLmodel"


def task_of(config: Path) -> str:
    """The transformers pipeline task of a model by its config.json (or an adapter's merged config)."""
    archs = json.loads(config.read_text()).get("architectures") or []
    for suffix, task in TASKS.items():
        if any(a.endswith(suffix) for a in archs):
            return task
    raise ValueError(f"{config}: architectures {archs}: alignray registers causal LMs and preference models only")


def save(folder: Path, target: Path, base: Path | None) -> None:
    """Write the model folder `folder` to the new folder `target`: as an MLflow transformers model,
    or plainly (a LoRA preference model). `base` is the local folder of an adapter's base model."""
    import mlflow.transformers
    import torch
    import transformers

    adapter = lora.is_adapter_folder(folder)
    task = task_of(folder / (lora.MERGED_CONFIG if adapter else "config.json"))
    if adapter and task != "text-generation":
        shutil.copytree(folder, target)
        return
    from huggingface_hub import ModelCard

    requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    card = ModelCard(f"---\nlibrary_name: transformers\ntags: [alignray]\n---\nalignray training output ({task}); its"
                     f" Hugging Face folder is {'peft' if adapter else 'model'}/.\n")
    if not adapter:  # from the folder: its weights are copied, not loaded
        mlflow.transformers.save_model(str(folder), str(target), task=task, pip_requirements=requirements,
                                       model_card=card)
        return
    import peft

    model = lora.load_adapted(folder, base)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, str(target), task=task,
                                   base_model_path=str(base), model_card=card,
                                   pip_requirements=[*requirements, f"peft=={peft.__version__}"])
    shutil.copytree(folder, target / "peft", dirs_exist_ok=True)  # alignray's adapter folder, merged config included


def hf_folder(downloaded: Path) -> Path:
    """The Hugging Face folder of a downloaded registry version: inside an MLflow model, or the
    download itself (a plain folder)."""
    if not (downloaded / MLMODEL).is_file():
        return downloaded
    return downloaded / "model" if (downloaded / "model").is_dir() else downloaded / "peft"


def register(
    folder: Path, name: str, value: float | None, metric: str, higher_is_better: bool, tags: dict | None = None,
    base: Path | None = None,
) -> tuple[str, bool]:
    """Log an HF folder (a LoRA adapter: with `base`, its base model's folder) as the active run's
    `model` artifact, in the form `save` writes, and register it as a new version of `name` (MLflow
    reserves the alias `latest`: `models:/name/latest` is always the newest version). It also becomes `@champion` when its `metric` beats the current
    champion's (or there is none); `tags` go on the version too. Returns (version, became champion)."""
    from mlflow.exceptions import MlflowException

    run = mlflow.active_run()
    with tempfile.TemporaryDirectory(prefix="alignray-model-") as tmp:
        save(folder, Path(tmp) / "model", base)
        mlflow.log_artifacts(str(Path(tmp) / "model"), artifact_path="model")
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="alignray training output (an MLflow transformers model)")
    tags = {**(tags or {}), **({metric: str(value)} if value is not None else {})}
    version = client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags
    ).version
    try:
        best = client.get_model_version_by_alias(name, "champion").tags.get(metric)
    except MlflowException:
        best = None
    better = best is None or (
        value is not None and (value > float(best) if higher_is_better else value < float(best))
    )
    if better:
        client.set_registered_model_alias(name, "champion", version)
    return version, better


def download(uri: str) -> Path:
    """The Hugging Face folder of the model behind a `models:/name@alias` (or /version) URI,
    downloaded into a new folder under $ALIGNRAY_DOWNLOADS when it is set (on a cluster, a volume
    every node mounts, since the folder is handed to actors on other nodes), else a temporary one."""
    downloads = os.environ.get("ALIGNRAY_DOWNLOADS")
    target = None
    if downloads:
        Path(downloads).mkdir(parents=True, exist_ok=True)
        target = tempfile.mkdtemp(prefix="model-", dir=downloads)
    return hf_folder(Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=target)))
