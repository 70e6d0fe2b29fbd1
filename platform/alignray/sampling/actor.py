"""A Ray actor that owns one vLLM engine.

Created by :class:`alignray.sampling.pool.SamplerPool`; vLLM's environment (KV-cache size,
in-process engine) comes from the actor's runtime_env (see :mod:`alignray.cluster`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence

import torch

from alignray.sampling.types import Completion, SamplingSpec, Score


def _expected_shapes(model_path: str) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """(every state-dict name the model accepts -> shape, the names its checkpoint holds)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    stored = set()
    for file in sorted(os.listdir(model_path)):
        if file.endswith(".safetensors"):
            with safe_open(os.path.join(model_path, file), framework="pt") as fh:
                stored.update(fh.keys())
    return shapes, stored


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def vllm_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds adapters of `rank`."""
    fits = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fits:
        raise ValueError(f"LoRA rank {rank}: vLLM serves adapters of rank at most {VLLM_LORA_RANKS[-1]}")
    return fits[0]


class SamplerActor:
    def __init__(
        self, model_path: str, dtype: str, max_model_len: int, enforce_eager: bool, seed: int,
        gpu_memory_utilization: float = 0.9, sleep_mode: bool = False, threads: int | None = None,
        transfer_backend: str | None = None, lora: dict | None = None,
    ):
        """`transfer_backend`: the vLLM weight-transfer engine for collective updates (`gloo`, ours,
        registered here; `nccl`), or None to load only state dicts (`update_weights`). `lora`: an
        adapter_config.json (peft's) whose adapters `update_adapter` loads, and every request
        then uses; None: no adapters."""
        from vllm import LLM
        from vllm.config.weight_transfer import WeightTransferConfig

        from alignray.models.precision import resolve_dtype

        if transfer_backend == "gloo":  # registers the engine; the in-process worker builds it
            import alignray.sampling.gloo_engine  # noqa: F401
        if threads:  # before the engine starts (vLLM's CPU worker then locks the thread count)
            torch.set_num_threads(min(threads, len(os.sched_getaffinity(0))))
        self.model_path = model_path
        self.dtype = resolve_dtype(dtype)  # `auto` is this actor's device's answer
        self.llm = LLM(
            model=model_path,
            dtype=self.dtype,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            distributed_executor_backend="uni",
            enable_sleep_mode=sleep_mode,
            weight_transfer_config=WeightTransferConfig(backend=transfer_backend) if transfer_backend else None,
            **({"enable_lora": True, "max_lora_rank": vllm_lora_rank(lora["r"]), "max_loras": 1} if lora else {}),
        )
        self.lora_config, self.lora = lora, None  # the adapter requests use (a vLLM LoRARequest), once loaded
        self.tokenizer = self.llm.get_tokenizer()
        self.shapes, self.stored = _expected_shapes(model_path)
        self.weights_version = 0

    def generate(
        self, prompts: Sequence[str], specs: Sequence[SamplingSpec]
    ) -> list[list[Completion]]:
        outs = self.llm.generate(list(prompts), [s.to_vllm() for s in specs], use_tqdm=False, lora_request=self.lora)
        return [
            [
                Completion(
                    text=c.text,
                    token_ids=tuple(c.token_ids),
                    cumulative_logprob=c.cumulative_logprob,
                    logprobs=None
                    if c.logprobs is None
                    else tuple(step[t].logprob for step, t in zip(c.logprobs, c.token_ids)),
                    finish_reason=c.finish_reason,
                )
                for c in out.outputs
            ]
            for out in outs
        ]

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[Score]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests, splits = [], []
        for prompt, cont in zip(prompts, continuations, strict=True):
            p_ids = self.tokenizer(prompt).input_ids
            c_ids = self.tokenizer(cont, add_special_tokens=False).input_ids
            if not p_ids:
                raise ValueError("score() needs a non-empty prompt")
            requests.append(TokensPrompt(prompt_token_ids=p_ids + c_ids))
            splits.append((len(p_ids), c_ids))
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora)
        scores = []
        for out, (start, c_ids) in zip(outs, splits):
            lps = tuple(out.prompt_logprobs[start + j][t].logprob for j, t in enumerate(c_ids))
            scores.append(Score(token_ids=tuple(c_ids), token_logprobs=lps))
        return scores

    def check_weights(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Raise ValueError unless tensors of these names and shapes make a full state dict."""
        unknown = sorted(set(shapes) - set(self.shapes))
        missing = sorted(self.stored - set(shapes))
        wrong = [
            f"{k}: {tuple(v)} (expected {self.shapes[k]})"
            for k, v in shapes.items()
            if k in self.shapes and tuple(v) != self.shapes[k]
        ]
        problems = []
        if unknown:
            problems.append(f"unknown tensors {unknown[:5]}")
        if missing:
            problems.append(f"missing tensors {missing[:5]}")
        if wrong:
            problems.append(f"wrong shapes {wrong[:5]}")
        if problems:
            raise ValueError(
                f"weights do not fit {self.model_path}: " + "; ".join(problems)
            )

    def update_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> int:
        """Load a full HF-format state dict in place; return the new weights version."""
        self.check_weights({k: tuple(v.shape) for k, v in state_dict.items()})
        self.llm.collective_rpc(
            "reload_weights",
            kwargs={"weights_iterator": iter(state_dict.items()), "is_checkpoint_format": True},
        )
        self.llm.reset_prefix_cache()
        self.weights_version = version
        return version

    def update_adapter(self, tensors: Mapping[str, torch.Tensor], version: int) -> int:
        """Load a LoRA adapter's tensors (peft's names) as the one every request uses from now on,
        in place of the last; return the new weights version. Raises ValueError when vLLM
        rejects the adapter (names, shapes or rank), keeping the last one."""
        import json
        import shutil
        import tempfile

        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        if self.lora_config is None:
            raise ValueError("this sampler was started without LoRA (SamplerPool(lora=...)): it takes full weights only")
        folder = tempfile.mkdtemp(prefix=f"alignray-adapter-v{version}-")
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, "adapter_model.safetensors"))
        with open(os.path.join(folder, "adapter_config.json"), "w") as fh:
            json.dump(self.lora_config, fh)
        request = LoRARequest(f"policy-v{version}", version, folder)
        try:
            self.llm.llm_engine.add_lora(request)
        except Exception as exc:  # vLLM's own errors: the adapter does not fit this model or engine
            shutil.rmtree(folder, ignore_errors=True)
            raise ValueError(f"the adapter does not fit {self.model_path}: {exc}") from None
        previous, self.lora = self.lora, request
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)
        self.llm.reset_prefix_cache()
        self.weights_version = version
        return version

    def load_model(self, model_path: str) -> None:
        """Load another checkpoint of this model's architecture (the pool checked that config
        and tokenizer match) from its safetensors files; it becomes weights version 0."""
        from safetensors import safe_open

        files = sorted(os.path.join(model_path, f) for f in os.listdir(model_path) if f.endswith(".safetensors"))
        shapes, stored = _expected_shapes(model_path)
        if shapes != self.shapes or stored != self.stored:
            raise ValueError(f"{model_path} does not have the tensors of {self.model_path}")

        def tensors():
            for file in files:
                with safe_open(file, framework="pt") as fh:
                    for name in fh.keys():
                        yield name, fh.get_tensor(name)

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors(), "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.model_path, self.weights_version = model_path, 0

    # A collective update (alignray.sampling.transport): vLLM's weight-transfer engine calls.
    def join_transfer(self, init_info: dict) -> None:
        """Join the sender's group; returns once every member has joined."""
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def leave_transfer(self) -> None:
        self.llm.shutdown_weight_transfer_engine()

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def receive_weights(self, update_info: dict) -> None:
        """Receive the broadcast of every tensor `update_info` lists and load it."""
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, version: int) -> None:
        self.llm.finish_weight_update()
        self.llm.reset_prefix_cache()
        self.weights_version = version

    def sleep(self) -> None:
        """Offload the weights to CPU and free the KV cache (GPU only; vLLM's sleep level 1)."""
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        self.llm.wake_up()

    def health(self) -> dict:
        import ray

        return {
            "model": self.model_path,
            "weights_version": self.weights_version,
            "dtype": self.dtype,
            "threads": torch.get_num_threads(),
            "pid": os.getpid(),
            "node": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
        }
