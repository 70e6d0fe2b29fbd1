"""LoRA adapters (peft) on trained models, and turning an adapter back into a full model.

A run with `trainer.lora` trains adapters on a frozen base. Its checkpoint's `hf/` folder, the
one registered in MLflow, holds the adapter in peft's format (adapter_config.json, whose
`base_model_name_or_path` names the base as the config named it: a known model, a models:/ URI
or a folder), the tokenizer and MERGED_CONFIG, the config of the full model the adapter makes
(a preference model's heads and labels). `merged_folder` rebuilds that full model once, when a
stage, a sampler or a server asks for the adapter (:func:`alignray.models.registry.local_folder`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from typing import TYPE_CHECKING

from alignray.config import LoRAConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

MERGED_CONFIG = "merged_config.json"  # the full model's config.json, beside the adapter
ADAPTER_CONFIG = "adapter_config.json"
HEAD = "score"  # a sequence-classification model's head: trained whole, not through an adapter


def _peft_config(cfg: LoRAConfig, head: bool, base_ref: str | None = None):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
        task_type="SEQ_CLS" if head else "CAUSAL_LM", modules_to_save=[HEAD] if head else None,
        base_model_name_or_path=base_ref,
    )


def wrap(model: nn.Module, cfg: LoRAConfig, base_ref: str) -> nn.Module:
    """`model` with adapters on cfg.target_modules and every other weight frozen; a preference
    model's or critic's head (`score`) is trained whole. The adapter names `base_ref` as its base."""
    from peft import get_peft_model

    adapted = get_peft_model(model, _peft_config(cfg, hasattr(model, HEAD)))
    adapted.peft_config["default"].base_model_name_or_path = base_ref  # peft sets the folder the model came from
    return adapted


def sends_adapter(cfg: LoRAConfig | None, gpus_per_sampler: float) -> bool:
    """Whether a LoRA policy's samplers get only its adapter after each iteration (else merged weights)."""
    return cfg is not None and (cfg.sync == "adapter" or (cfg.sync == "auto" and gpus_per_sampler > 0))


def policy_adapter_config(cfg: LoRAConfig, base_ref: str) -> dict:
    """A causal LM's adapter_config.json, as `wrap` configures its adapters."""
    config = _peft_config(cfg, False, base_ref).to_dict()
    return json.loads(json.dumps(config, default=sorted))  # peft keeps target_modules as a set


def adapter_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's tensors of an adapted model's live state dict, named as peft saves them
    (adapter `default` dropped): what a sampler loads as a LoRA adapter."""
    return {k.replace(".default.", "."): v for k, v in state.items() if ".lora_A.default." in k or ".lora_B.default." in k}


def is_adapted(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a peft wrapper (its adapters in place), or the model itself."""
    return model.get_base_model() if is_adapted(model) else model


def save(model: nn.Module, folder: str, state_dict: dict | None, dtype: torch.dtype | None = None) -> None:
    """Save a model as a Hugging Face folder: an adapted one as its adapter plus MERGED_CONFIG;
    with `dtype`, its floating-point weights cast to it and its config saying so."""
    if dtype is not None:
        state = model.state_dict() if state_dict is None else state_dict
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    named = {} if dtype is None else {"dtype": str(dtype).removeprefix("torch.")}
    if is_adapted(model):
        full = unwrap(model)
        config = full.config.to_dict() | {"architectures": [type(full).__name__]} | named  # as save_pretrained would
        Path(folder, MERGED_CONFIG).write_text(json.dumps(config, indent=2))
    elif named:
        path = Path(folder, "config.json")
        path.write_text(json.dumps(json.loads(path.read_text()) | named, indent=2))


def merged_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """The full model's state dict (Hugging Face names) from an adapted model's live state dict
    (peft names, adapter `default`): W + scaling * B @ A for every adapted layer, in W's dtype,
    computed in float32; a whole-trained module's copy in place of the original."""
    prefix, out = "base_model.model.", {}
    for name, tensor in state.items():
        name = name.removeprefix(prefix)
        if ".lora_A." in name or ".lora_B." in name or ".original_module." in name:
            continue
        if ".modules_to_save.default." in name:
            out[name.replace(".modules_to_save.default.", ".")] = tensor
        elif ".base_layer." in name:
            layer = name.split(".base_layer.")[0]
            if name.endswith(".base_layer.weight"):
                a, b = state[f"{prefix}{layer}.lora_A.default.weight"], state[f"{prefix}{layer}.lora_B.default.weight"]
                tensor = (tensor.float() + scaling * (b.float() @ a.float())).to(tensor.dtype)
            out[name.replace(".base_layer.", ".")] = tensor
        else:
            out[name] = tensor
    return out


def scaling(cfg: LoRAConfig) -> float:
    return cfg.alpha / cfg.rank


def is_adapter_folder(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def base_ref(folder: Path) -> str | None:
    return json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")


def merged_folder(adapter: Path, base: Path, cache: Path) -> Path:
    """The full model of an adapter folder on the base folder `base`, written once under
    `cache` (keyed by the adapter's files and the base's path) and reused after."""
    from alignray.io import atomic_dir, file_lock

    digest = hashlib.sha256(str(base.resolve()).encode())
    for name in sorted(os.listdir(adapter)):
        if (adapter / name).is_file():
            digest.update(name.encode() + (adapter / name).read_bytes())
    target = cache / "merged" / digest.hexdigest()[:16]
    if (target / "config.json").is_file():
        return target
    with file_lock(cache / "locks" / f"merged-{target.name}.lock"):
        if not (target / "config.json").is_file():
            with atomic_dir(target) as tmp:
                _merge(adapter, base, Path(tmp))
    return target


def load_adapted(adapter: Path, base: Path):
    """The peft model of an adapter folder on the base folder `base`, in float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(adapter / MERGED_CONFIG)
    archs = config.architectures or []
    auto = AutoModelForSequenceClassification if any(a.endswith("ForSequenceClassification") for a in archs) \
        else AutoModelForCausalLM
    return PeftModel.from_pretrained(auto.from_pretrained(base, config=config, dtype=torch.float32), adapter)


def _merge(adapter: Path, base: Path, out: Path) -> None:
    load_adapted(adapter, base).merge_and_unload().save_pretrained(out, safe_serialization=True)
    for name in os.listdir(adapter):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")) or name in ("vocab.json", "merges.txt"):
            shutil.copy2(adapter / name, out / name)
