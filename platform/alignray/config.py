"""Typed configuration of every alignray stage.

A config is a YAML file validated against :class:`SimulateConfig` (and, as stages are added,
their own schemas), plus dotted overrides from the command line such as
``sampler.temperature=0.7``. Unknown or mistyped fields are errors that name the file (or the
override) and the field and say what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A config file or override is invalid; the message says where and what to fix."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class ModelConfig(Strict):
    """The policy model: the one sampled, trained or compared against."""

    name: str = Field(
        "smollm2-135m-instruct",
        description="A known model name (see `alignray models list`), a Hugging Face id (org/name or"
        " org/name@revision: downloaded once, on the driver, into the Hugging Face cache), a local HF model folder"
        " or a models:/ registry URI. Every other field that names a model takes the same.",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Compute dtype of the samplers (and of PPO's reference and reward models):"
        " auto = bfloat16 where the device has it natively (GPU of compute capability >= 8.0; CPU"
        " with AMX or AVX512-BF16), else float32 (see alignray.models.precision).",
    )


class SamplerConfig(Strict):
    """The pool of vLLM sampler actors and how they sample."""

    num_samplers: int = Field(1, ge=1, description="vLLM sampler actors in the pool.")
    cpus_per_sampler: float = Field(1.0, gt=0, description="Ray CPUs reserved by each actor.")
    gpus_per_sampler: float = Field(
        0.0, ge=0, description="Ray GPUs reserved by each actor (a fraction shares a GPU, e.g. with"
        " training); 0 runs vLLM on CPU."
    )
    node_labels: dict[str, str] = Field(
        {}, description="Start the samplers only on nodes with these Ray node labels (set by `ray start --labels`),"
        " e.g. {role: rollout}; empty: any node."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of its GPU's memory each vLLM engine may use (lower it"
        " when the GPU is shared); unused on CPU."
    )
    kvcache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE of each actor, GiB.")
    enforce_eager: bool = Field(
        True,
        description="Skip vLLM's torch.compile warm-up: on CPU it costs over a minute per"
        " actor start and gained nothing measurable (benchmarks/sampling.py); on GPU set false.",
    )
    max_model_len: int = Field(1024, ge=16, description="Longest prompt + completion, tokens.")
    prompts_per_request: int = Field(
        16, ge=1, description="Prompts sent to one actor at a time; a lost actor re-runs one."
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling: keep the most likely tokens up to this probability"
        " mass; 1 keeps all (PPO needs 1)."
    )
    max_tokens: int = Field(128, ge=1, description="Longest completion, tokens.")
    request_timeout_s: float = Field(
        900, gt=0, description="Deadline of one request to one actor, seconds; an actor that misses it is"
        " replaced and the request re-run."
    )
    weight_sync_timeout_s: float = Field(300, gt=0, description="Deadline of one weight update, seconds.")
    weight_transfer: Literal["object_store", "collective"] = Field(
        "object_store",
        description="How the trainer's weights reach the samplers: object_store (a CPU copy in Ray's"
        " object store, fetched by each sampler) or collective (the trainer's rank 0 and every sampler"
        " form one process group through vLLM's weight-transfer engine API and the weights are"
        " broadcast in buckets: gloo on CPU samplers, NCCL on GPU ones). See"
        " alignray.sampling.transport and benchmarks/weight_sync.py.",
    )
    weight_bucket_mb: int = Field(
        256, ge=1, description="collective: MiB per broadcast bucket (a larger tensor travels alone)."
    )
    max_restarts: int = Field(3, ge=0, description="Replacements of lost actors per pool call.")


class DataConfig(Strict):
    """Prompts: where they come from, how they are framed, which of them are used."""

    source: str | list[str] = Field(
        "sample",
        description="A built-in prompt set (sample, donotanswer, harmbench, advbench, mtbench), a .jsonl,"
        " .json, .csv or .parquet file, or a Hugging Face dataset id (org/name or org/name:config, its `split`):"
        " rows with a `prompt` (a Human/Assistant transcript, a plain question, or a list of chat messages:"
        " TRL's standard and conversational prompts) or a `messages` list (a whole conversation: its prompt is"
        " everything before the last assistant reply). Any of them may end in a slice (`mtbench[0:40]`). A list"
        " is concatenated and deduplicated (case and punctuation ignored; the first occurrence stays).",
    )
    split: str = Field("train", description="The split read from a Hugging Face dataset.")
    prompt_key: str = Field("prompt", description="The column holding each row's prompt.")
    messages_key: str = Field("messages", description="The column holding each row's chat messages (when it has no"
                              " prompt).")
    format: Literal["transcript", "chat"] = Field(
        "transcript",
        description="How plain questions are framed: a `Human: ... Assistant:` transcript, or a"
        " chat-message list rendered with the model's chat template.",
    )
    skip: int = Field(0, ge=0, description="Leave out the first N conversations (held-out evaluation prompts).")
    limit: int | None = Field(None, ge=1, description="Use only the first N conversations (after skip).")

    @property
    def label(self) -> str:
        """A short name of the sources, for run names: file stems, slices dropped, joined by +."""
        sources = [self.source] if isinstance(self.source, str) else self.source
        return "+".join(Path(s.partition("[")[0]).stem for s in sources)


class SimulationConfig(Strict):
    """How preference data is simulated: the method, its models and its principle set."""

    method: Literal["rlcd", "rlaif", "rlcd_rescore", "morlaif", "rrhf", "rdpo"] = Field(
        "rlcd",
        description="rlcd: contrast prompts make the pair; rlaif: two samples of one prompt,"
        " labelled by the labeller's (A)/(B) log-probs; rlcd_rescore: RLCD pairs relabelled so;"
        " morlaif: rlaif once per criterion of the principle set; rrhf: ranking.k candidates per"
        " prompt scored by the reward; rdpo: the teacher answers, critiques and revises, the judge"
        " scores both.",
    )
    labeller: str | None = Field(
        None,
        description="Labelling model for rlaif / rlcd_rescore / morlaif: a name, a folder or an"
        " OpenAI-compatible URL (http://host:8000/v1); default: model.name.",
    )
    teacher: str | None = Field(
        None, description="rdpo: the model that answers, critiques and revises (name, folder or URL); default: model.name."
    )
    simulator: str | None = Field(
        None,
        description="rlcd / rlcd_rescore / rlaif / morlaif: the model that samples the pairs (a name, folder or"
        " models:/ URI), prompted in its own chat template; default: model.name. The dataset's prompt"
        " column stays in model.name's format, the one the preference model and PPO train on.",
    )
    principles: str = Field(
        "harmlessness", description="A built-in principle set name or a path to a YAML file."
    )
    affix_placement: Literal["turn", "system", "demonstration"] = Field(
        "turn",
        description="rlcd / rlcd_rescore: where the contrast affixes go. turn (the paper's): on the"
        " assistant turns, `Assistant (affix):` or `(affix) ` at the start of a chat reply; system:"
        " as an instruction before the conversation (`Your reply: <affix>.` as a system message, or"
        " a header line of a transcript), turn markers left plain; demonstration: no affixes, the"
        " principle set's example exchanges before the conversation instead (p+ sees their positive"
        " replies, p- their negative ones).",
    )
    seed: int = Field(0, description="Seeds the choice of contrast pair and every sample.")
    max_retries: int = Field(
        2, ge=0, description="Re-samples of an empty output before the prompt is dropped."
    )
    truncated: Literal["keep", "drop", "penalise"] = Field(
        "keep",
        description="What happens to a response cut off at sampler.max_tokens (vLLM's finish_reason"
        " `length`). keep: used as if it had ended. drop: a pair with a cut-off side is dropped before"
        " it is labelled (rdpo: the answer or the revision; rrhf: a cut-off candidate is left out, and"
        " a prompt left with fewer than two). penalise: of a pair with one side cut off, the finished"
        " side is chosen with preference_prob 1.0 and no labeller call (rlcd: o- is chosen when o+ was"
        " cut off; rdpo: the revision stays chosen, with 1.0 or 0.0, and is still judged; rrhf: cut-off"
        " candidates rank below every finished one); a pair with both sides cut off is kept as by keep."
        " The default is provisional, to be chosen on a dev split.",
    )

    @model_validator(mode="after")
    def _simulator_samples_pairs(self) -> SimulationConfig:
        if self.simulator is None:
            return self
        if self.method in ("rrhf", "rdpo"):
            where = "ranking.policies" if self.method == "rrhf" else "simulation.teacher"
            raise ValueError(f"simulation.simulator samples pairs; {self.method} samples with {where}")
        if self.simulator.startswith(("http://", "https://")):
            raise ValueError("simulation.simulator must be a local model (name, folder or models:/ URI): sampling"
                             " through a URL is not supported yet (labeller, teacher and judge may be URLs)")
        return self


class EndpointConfig(Strict):
    """How an OpenAI-compatible labeller, teacher or judge URL is called."""

    model: str | None = Field(None, description="Served model name; default: the only one at /v1/models.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key, if any.")
    timeout_s: float = Field(120, gt=0, description="Deadline of one request.")
    retries: int = Field(
        4, ge=0, description="Retries of a failed request (connection error, timeout, HTTP 408/409/429/5xx): the"
        " openai client's backoff, 0.5 s doubling to 8 s, or the server's Retry-After."
    )
    logprobs: Literal["auto", "echo", "chat"] = Field(
        "auto",
        description="How an (A)/(B) labeller or judge URL is read: echo (vLLM's /tokenize and echoed"
        " prompt log-probs; exact), chat (top_logprobs of the chat reply's first answer token; for"
        " chat-only and hosted servers), auto (echo unless the server has no /tokenize).",
    )
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")


class JudgeConfig(Strict):
    """rdpo: who scores the revision (chosen) and the original (rejected);
    preference_prob = sigmoid((s_chosen - s_rejected) / temperature)."""

    kind: Literal["model", "reward", "profanity", "hate"] = Field(
        "model",
        description="model: a pairwise (A)/(B) judge prompt (s_c - s_r = logit P(revision better));"
        " reward: the reward section's models or endpoint; profanity / hate: an offline"
        " classifier (s = -P(profane) or -P(hateful or offensive)).",
    )
    model: str | None = Field(None, description="kind=model: judge name, folder or URL; default: model.name.")
    temperature: float = Field(1.0, gt=0, description="tau in sigmoid((s_c - s_r) / tau).")


# the tracking URI schemes MLflow 3 accepts (a database URL may name its driver: mysql+pymysql://)
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "file", "http", "https", "databricks")


class TrackingConfig(Strict):
    """Where the stage's MLflow run goes."""

    uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<output_dir>/mlflow.db."
    )
    experiment: str = Field("alignray", description="MLflow experiment of the run (created if missing).")
    run_name: str | None = Field(None, description="MLflow run name shown in the UI; default: the stage's own name"
                                 " (e.g. rlcd-harmlessness, ppo-<prompt source>).")
    parent_run: str | None = Field(
        None, description="MLflow run id to nest the stage's run under (a sweep's parent run; set by `alignray sweep`)."
    )
    tags: dict[str, str] = Field({}, description="More MLflow tags of the stage's run (a sweep trial's overrides).")

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        if uri is None or "://" not in uri and not uri.startswith("file:"):
            return uri  # a plain path: MLflow's file store
        scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme not in TRACKING_SCHEMES:
            raise ValueError(f"MLflow has no tracking store for the scheme {scheme!r} in {uri!r}; use"
                             " sqlite:///path/mlflow.db, http(s)://host:5000, a database URL or a folder")
        if scheme == "sqlite" and not uri.startswith("sqlite:///"):
            raise ValueError(f"{uri!r}: a SQLite URI has three slashes and a path, sqlite:///path/mlflow.db")
        return uri


# the methods of alignray.rewards.scalarize, named here so that the config imports no torch
# (tests/test_rewards.py keeps the two equal)
SCALARIZERS = (
    "linear", "min", "soft_min", "logsumexp_min", "uncertainty_weighted", "lower_quantile", "median",
    "bernoulli_nash", "lexicographic",
)


class RewardConfig(Strict):
    """Where PPO's rewards come from: local preference models (each with one or several
    heads), or an HTTP scoring endpoint; per-principle rewards are scalarized per sample."""

    models: list[str] = Field(
        default_factory=list,
        description="Preference model folders or models:/ registry URIs (one head, or one head"
        " per principle), scored in the training workers.",
    )
    endpoint: str | None = Field(
        None,
        description="HTTP URL instead of local models: POST {prompts, responses} ->"
        " {rewards: [[float per principle] per response]}.",
    )
    function: str | None = Field(
        None,
        description="A Python function as the reward instead: \"module:function\" (importable where the reward is"
        " scored) or \"path/to/file.py:function\". Called with (prompts, responses), two lists of strings, it"
        " returns one number per response or one list of numbers (one per principle) per response"
        " (see alignray.rewards.scorers).",
    )
    endpoint_token_env: str | None = Field(
        None,
        description="Environment variable holding the endpoint's bearer token (sent as Authorization: Bearer;"
        " the served reward app's token_env, e.g. ALIGNRAY_SERVE_TOKEN); the token itself never goes in a config.",
    )
    endpoint_timeout_s: float = Field(120, gt=0, description="Deadline of one reward request, seconds.")
    endpoint_retries: int = Field(
        4, ge=0, description="Retries of a failed reward request (connection error, timeout, HTTP 408/409/429/5xx)."
    )
    scalarize: str = Field(
        "linear", description="How per-principle rewards combine (see alignray.rewards.scalarize)."
    )
    weights: list[float] | None = Field(None, description="Per-principle weights; default equal.")
    fit_weights: Path | None = Field(
        None,
        description="PPO only: a labelled comparison file (.jsonl or .parquet with prompt, chosen,"
        " rejected; chosen is the preferred side). Before training, the reward scores both sides"
        " and per-principle weights are fitted on it by logistic regression, P(chosen) ="
        " sigmoid(sum_k w_k (r_chosen,k - r_rejected,k)) (alignray.rewards.scalarize.fitted_weights);"
        " the run uses them as reward.weights and records them in MLflow.",
    )
    fit_weights_l2: float = Field(1e-3, ge=0, description="The L2 penalty l2 * sum_k w_k^2 of that fit.")
    params: dict[str, float | list[int] | list[float]] = Field(
        default_factory=dict,
        description="Scalarizer parameters, e.g. {temperature: 0.5} or {priority: [0, 1]}.",
    )
    clip: float | None = Field(None, gt=0, description="Clip the scalar reward to [-clip, clip].")
    normalize: bool = Field(
        False, description="Subtract a running mean and divide by a running standard deviation."
    )

    @field_validator("scalarize")
    @classmethod
    def _known_scalarizer(cls, value: str) -> str:
        if value not in SCALARIZERS:
            raise ValueError(f"unknown scalarizer {value!r}; choose from {', '.join(SCALARIZERS)}")
        return value

    @field_validator("function")
    @classmethod
    def _function_spec(cls, value: str | None) -> str | None:
        if value is None:
            return None
        where, _, name = value.rpartition(":")
        if not where or not name.isidentifier():
            raise ValueError(f"{value!r}: give \"module:function\" or \"path/to/file.py:function\"")
        # a file is found from wherever the reward is scored (Ray workers too): make it absolute here
        return f"{Path(where).resolve()}:{name}" if where.endswith(".py") else value

    @model_validator(mode="after")
    def _one_source(self) -> RewardConfig:
        if sum((bool(self.models), bool(self.endpoint), bool(self.function))) != 1:
            raise ValueError("set exactly one of reward.models (a list), reward.endpoint and reward.function")
        if self.fit_weights is not None and self.weights is not None:
            raise ValueError(
                "set at most one of reward.weights (given) and reward.fit_weights (fitted on a labelled"
                " comparison file)"
            )
        return self


class RankingConfig(Strict):
    """RRHF candidates: k responses per prompt, each scored by the reward (simulation.method=rrhf)."""

    k: int = Field(4, ge=2, description="Candidates per prompt.")
    temperatures: list[float] = Field(
        default_factory=lambda: [1.0],
        description="Sampling temperatures; k / len(temperatures) candidates at each.",
    )
    policies: list[str] = Field(
        default_factory=list,
        description="More policies (names, folders, models:/ URIs) that each add k candidates per prompt, after model.name's.",
    )

    @model_validator(mode="after")
    def _divides(self) -> RankingConfig:
        if not self.temperatures or self.k % len(self.temperatures):
            raise ValueError(f"k = {self.k} must be a multiple of the number of temperatures ({len(self.temperatures)})")
        return self


class SimulateConfig(Strict):
    """`alignray simulate`: preference-data simulation."""

    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    data: DataConfig = DataConfig()
    simulation: SimulationConfig = SimulationConfig()
    ranking: RankingConfig = RankingConfig()
    reward: RewardConfig | None = Field(
        None, description="The reward that ranks RRHF candidates (or judges rDPO pairs with judge.kind=reward)."
    )
    judge: JudgeConfig = JudgeConfig()
    endpoint: EndpointConfig = EndpointConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: Path = Field(
        Path("alignray-runs"), description="Where datasets and the default MLflow store go."
    )
    address: str | None = Field(
        None, description="Ray cluster to join; default RAY_ADDRESS, else a new embedded one; auto: the one `ray start` runs on this machine."
    )

    @model_validator(mode="after")
    def _reward_when_needed(self) -> SimulateConfig:
        method = self.simulation.method
        if self.reward is None and (method == "rrhf" or (method == "rdpo" and self.judge.kind == "reward")):
            why = "to rank candidates" if method == "rrhf" else "for judge.kind=reward"
            raise ValueError(f"simulation.method={method} needs a reward section {why} (reward.models or reward.endpoint)")
        if self.reward is not None and self.reward.fit_weights is not None:
            raise ValueError("reward.fit_weights is fitted by PPO only; give a simulation reward.weights instead")
        return self


class LoRAConfig(Strict):
    """Low-rank adapters (peft's LoRA) on the trained model instead of full fine-tuning."""

    rank: int = Field(16, ge=1, description="Rank r of each adapter's two matrices.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator: an adapter adds (alpha / rank) B A to its weight.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on each adapter's input while training.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="Names of the linear layers that get adapters (the attention and MLP projections of"
        " Llama-style models).",
    )
    sync: Literal["auto", "adapter", "merged"] = Field(
        "auto", description="PPO, RLOO, GRPO: what reaches the vLLM samplers after each iteration: only the adapter"
        " (vLLM serves it with its LoRA kernels), or the full weights with the adapter merged in. auto: the adapter to"
        " GPU samplers, merged weights to CPU ones (vLLM's CPU LoRA kernels sampled SmolLM2 3.5x slower; docs/training.md, \"LoRA\")."
    )


class EngineConfig(Strict):
    """The Ray Train workers and the DeepSpeed engine of every trained model."""

    num_workers: int = Field(2, ge=1, description="Ray Train workers (DeepSpeed ranks).")
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs reserved by each worker.")
    node_labels: dict[str, str] = Field(
        {}, description="Start the trainer workers only on nodes with these Ray node labels (set by `ray start --labels`),"
        " e.g. {role: train}; empty: any node."
    )
    max_failures: int = Field(
        0, ge=-1, description="Times Ray Train starts the workers again, from the last checkpoint, after a worker"
        " or its node dies (-1: no limit). Any error counts, so a deterministic one is repeated this many times."
    )
    use_gpu: bool = Field(False, description="One GPU per worker and the NCCL backend; false: CPU workers with gloo.")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        2, description="DeepSpeed ZeRO stage: 0 plain data parallel, 1 shards optimizer state, 2 also gradients,"
        " 3 also parameters."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Training compute dtype: auto = bf16 where the worker's device has it natively,"
        " else fp32. bf16 computes the matmuls in bfloat16 and keeps float32 weights or master weights and"
        " optimizer state (how: trainer.bf16_mode; PPO, RLOO and GRPO use DeepSpeed's bf16 mode); exported models"
        " are bfloat16.",
    )
    learning_rate: float = Field(1e-5, gt=0, description="Peak AdamW learning rate (of the policy, in PPO).")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "linear", description="Learning-rate decay after warm-up, to 0 at the last step (constant: none)."
    )
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear warm-up to learning_rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(
        1.0, gt=0, description="Clip the gradient's global norm to this (DeepSpeed gradient_clipping)."
    )
    seed: int = Field(
        0, description="Seeds torch (plus the rank), the eval split and data order; in PPO also the prompt"
        " order and the rollouts."
    )
    lora: LoRAConfig | None = Field(
        None, description="Train low-rank adapters (rank, alpha, dropout, target_modules) and freeze the base weights;"
        " a preference model's or critic's head is trained whole. null: full fine-tuning. See docs/training.md, \"LoRA\"."
    )
    keep_final_state: bool = Field(
        False, description="Keep a finished run's optimizer and engine states (what continuing it to more steps"
        " needs). By default a finished run keeps, in each checkpoint, only the model (hf/), RNG and loop state: on"
        " SmolLM2-135M a PPO checkpoint is 3.8 GB, its model 0.27 GB. Unfinished runs keep everything."
    )


class TrainerConfig(EngineConfig):
    """The shared Ray Train + DeepSpeed runner. One step = one optimizer update over
    micro_batch_per_worker x num_workers x gradient_accumulation_steps examples."""

    micro_batch_per_worker: int = Field(
        4, ge=1, description="Examples (pairs, sequences or prompts) per worker per forward."
    )
    bf16_mode: Literal["autocast", "weights"] = Field(
        "autocast",
        description="How precision bf16 trains: autocast = float32 weights, gradients and AdamW state with the"
        " matmuls autocast to bfloat16 (DeepSpeed's torch_autocast; TRL's recipe); weights = bfloat16 weights and"
        " gradients plus a float32 master copy (DeepSpeed's bf16 mode), which halves what ZeRO-3 gathers but on"
        " CPU costs two extra copies per step (docs/benchmarks.md).",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches summed into one optimizer step.")
    epochs: int = Field(1, ge=1, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Overrides epochs when set.")
    stop_after_steps: int | None = Field(
        None, ge=1, description="Stop (checkpointed) after this many steps; run again to resume."
    )
    log_every_steps: int = Field(10, ge=1, description="Steps between training metrics logged to MLflow.")
    eval_every_steps: int | None = Field(None, ge=1, description="Default: at the end only.")
    checkpoint_every_steps: int = Field(50, ge=1, description="Steps between checkpoints (and always at the end).")
    max_length: int = Field(512, ge=8, description="Longest prompt + response, tokens.")
    truncation_side: Literal["left", "right"] = Field(
        "left", description="Which end of the prompt to cut when an example is too long."
    )
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Held-out share of the dataset.")


class PreferenceConfig(Strict):
    """`train preference`: the preference (reward) model's heads and labels."""

    principles: list[str] | None = Field(
        None,
        description="MORLAIF mode: one reward head per principle, each pair trained on the head"
        " named in its `principle` column.",
    )
    margin_column: str | None = Field(None, description="Per-pair Bradley-Terry margin column.")
    soft_labels: bool = Field(
        False,
        description="Train on soft labels with the soft Bradley-Terry loss: column preference_prob"
        " (one head), or with principles the columns preference_prob_<principle> (MORLAIF's wide"
        " format: every pair trains every head).",
    )

    length_balance: bool = Field(
        False,
        description="Length-controlled preference model: train on a seeded subset with as many pairs whose"
        " chosen answer is longer as pairs whose chosen answer is shorter (needs hard labels).",
    )

    @model_validator(mode="after")
    def _one_label_source(self) -> PreferenceConfig:
        if self.soft_labels and self.margin_column:
            raise ValueError("preference.soft_labels and preference.margin_column cannot be combined")
        if self.soft_labels and self.length_balance:
            raise ValueError("preference.length_balance needs hard labels (chosen is the preferred side), not soft_labels")
        return self


class DPOConfig(Strict):
    """`train dpo`: the DPO loss (see alignray.train.losses.dpo_loss)."""

    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL to the reference model.")
    label_smoothing: float = Field(
        0.0, ge=0, le=0.5, description="Assumed label noise eps: loss -(1-eps) logsigmoid(h) - eps logsigmoid(-h)."
    )
    soft_labels: bool = Field(False, description="rDPO: weight each pair by `preference_prob`.")
    judge_agreement_filter: bool = Field(
        False, description="Keep only pairs whose preference_prob is above 0.5."
    )


class RRHFConfig(Strict):
    """RRHF's loss (see alignray.train.losses.rrhf_loss): rank_weight · rank + sft."""

    length_penalty: float = Field(
        1.0, ge=0, description="A candidate's score is its summed log-prob / length ** length_penalty."
    )
    rank_weight: float = Field(1.0, ge=0, description="Weight of the ranking term against the SFT term.")
    sft_reduction: Literal["sum", "mean"] = Field(
        "sum",
        description="SFT term on the best candidate: its summed token NLL (sum, the RRHF paper's"
        " L_ft) or its mean token NLL (mean).",
    )


class TrainedRun(Strict):
    """What every training stage shares: where it tracks, stores and registers its result."""

    tracking: TrackingConfig = TrackingConfig()
    registered_model: str | None = Field(
        None, description="MLflow registry name of the result; default alignray-<kind>."
    )
    run_name: str | None = Field(
        None,
        description="Ray Train run name (default <kind>-<dataset or prompt source>); running"
        " again with the same name resumes it.",
    )
    output_dir: Path = Field(Path("alignray-runs"), description="Where checkpoints (train/), logs and the default"
                             " MLflow store go.")
    address: str | None = Field(None, description="Ray cluster to join; default RAY_ADDRESS, else a new embedded one; auto: the one `ray start` runs on this machine.")


class TrainConfig(TrainedRun):
    """`alignray train KIND`: one training stage on Ray Train + DeepSpeed."""

    model: ModelConfig = ModelConfig()
    dataset: str = Field(
        description="The training data: a file written by a feedback stage, any .parquet, .jsonl, .json or .csv"
        " file, or a Hugging Face dataset id (org/name or org/name:config; see dataset_split). TRL's standard and"
        " conversational formats are read as they are: prompt/chosen/rejected as text or as chat messages (the"
        " prompt may be left implicit in chosen and rejected), prompt/completion, or a messages list (SFT on its"
        " last reply); chat messages are rendered with the model's chat template.",
    )
    dataset_split: str = Field("train", description="The split read from a Hugging Face dataset.")
    prompt_key: str = Field("prompt", description="The dataset's column holding the prompt.")
    chosen_key: str = Field("chosen", description="The dataset's column holding the preferred (or SFT) reply.")
    rejected_key: str = Field("rejected", description="The dataset's column holding the other reply.")
    messages_key: str = Field("messages", description="The dataset's column holding whole conversations.")
    trainer: TrainerConfig = TrainerConfig()
    preference: PreferenceConfig = PreferenceConfig()
    dpo: DPOConfig = DPOConfig()
    rrhf: RRHFConfig = RRHFConfig()

    @field_validator("dataset", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, PurePath) else value


class CriticConfig(Strict):
    """PPO's value model."""

    init: Literal["reward", "policy"] = Field(
        "reward", description="The value model's backbone: the (first) reward model's or the policy's. Its head starts"
        " at the trained reward (w times a one-head reward model's head, when the reward is w·r) or at zeros."
    )
    learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate of the value model.")


class PPOSettings(Strict):
    """PPO's rollouts, losses and KL penalty; or a critic-free method (RLOO, GRPO) on the same loop."""

    algorithm: Literal["ppo", "rloo", "grpo"] = Field(
        "ppo",
        description="ppo: a critic (value model) and GAE advantages. rloo: each response's reward minus the mean of"
        " the other samples of its prompt; grpo: minus its prompt's mean, over the prompt's standard deviation"
        " (group_std). rloo and grpo build no critic and need samples_per_prompt >= 2; the advantage is the same"
        " for every token of a response.",
    )
    group_std: bool = Field(
        True, description="grpo: divide by the standard deviation of the prompt's rewards (false: only subtract the"
        " mean, as Dr. GRPO does)."
    )
    loss_aggregation: Literal["token", "sequence"] = Field(
        "token",
        description="How the policy loss reduces: token, the mean over every response token of the minibatch; sequence,"
        " the mean over responses of each response's token mean (GRPO's original).",
    )
    kl_in: Literal["reward", "loss"] = Field(
        "reward",
        description="Where the KL to the reference goes: reward, a penalty kl_coef x the kl_estimator estimate on the"
        " reward (per token for ppo, summed over the response for rloo and grpo); loss, kl_coef x the k3 estimate"
        " as a term of the policy loss (GRPO's; rloo and grpo only).",
    )
    iterations: int = Field(20, ge=1, description="Rollout + update rounds.")
    stop_after_iterations: int | None = Field(
        None, ge=1, description="Stop (checkpointed) after this many; run again to resume."
    )
    prompts_per_step: int = Field(8, ge=1, description="Prompts rolled out per iteration.")
    samples_per_prompt: int = Field(2, ge=1, description="Responses sampled per prompt.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch.")
    minibatch_per_worker: int = Field(4, ge=1, description="Responses per optimizer step per worker.")
    clip_eps: float = Field(0.2, gt=0, description="Policy ratio clip: the ratio is kept within [1 - clip_eps, 1 + clip_eps_high].")
    clip_eps_high: float | None = Field(
        None, gt=0, description="The clip's upper bound 1 + clip_eps_high (a larger one lets unlikely tokens rise"
        " faster); default clip_eps."
    )
    value_clip_eps: float = Field(
        0.2, gt=0, description="Value clip: the clipped value term moves at most this far from the rollout's"
        " value (the loss takes the larger of clipped and unclipped)."
    )
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount per token.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    entropy_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus in the policy loss.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k1", description="Per-token KL(policy || reference) estimate, d = log-prob difference: k1 d, k2 d^2/2,"
        " k3 exp(-d) - 1 + d."
    )
    kl_coef: float = Field(0.05, ge=0, description="Initial (or fixed) KL coefficient.")
    kl_target: float | None = Field(
        None, gt=0, description="Adaptive KL: per-response KL to aim for; fixed when unset."
    )
    kl_horizon: int = Field(10000, ge=1, description="Adaptive KL controller horizon, samples.")
    whiten_advantages: bool | None = Field(
        None, description="Normalise the advantages of every worker's rollout share together to mean 0, variance 1;"
        " default true for ppo, false for rloo and grpo (their advantages are already centred per prompt)."
    )
    checkpoint_every: int = Field(10, ge=1, description="Iterations between checkpoints.")
    sync_tolerance: float | None = Field(
        None, gt=0,
        description="Max mean |sampler - trainer| log-prob over the probe's tokens after a sync;"
        " default 1e-3 when both compute in float32, 0.3 when either runs bfloat16 (why: see"
        " alignray.train.ppo_loop.PROBE_TOLERANCE).",
    )
    placement: Literal["auto", "colocated", "separate"] = Field(
        "auto",
        description="colocated: samplers and trainer workers share one node and take turns, each"
        " using all its cores in its phase; separate: each uses only its reserved CPUs, on any"
        " nodes; auto: colocated on a one-node cluster (see alignray.train.placement).",
    )

    @property
    def whiten(self) -> bool:
        """whiten_advantages, or its default for the algorithm."""
        return self.algorithm == "ppo" if self.whiten_advantages is None else self.whiten_advantages


class PPOConfig(TrainedRun):
    """`alignray train ppo`: PPO with vLLM rollouts on Ray, actor + critic on Ray Train."""

    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    data: DataConfig = DataConfig()
    reward: RewardConfig
    critic: CriticConfig = CriticConfig()
    ppo: PPOSettings = PPOSettings()
    trainer: EngineConfig = EngineConfig()

    @model_validator(mode="after")
    def _full_distribution(self) -> PPOConfig:
        if self.sampler.top_p != 1:
            raise ValueError(
                f"sampler.top_p = {self.sampler.top_p:g}: PPO samples at top_p = 1, since its"
                " log-probs and importance ratios are of the whole distribution; set sampler.top_p: 1.0"
            )
        p = self.ppo
        if p.algorithm == "ppo" and p.kl_in == "loss":
            raise ValueError("ppo.kl_in = loss is for rloo and grpo; ppo puts the KL on its per-token reward (kl_in: reward)")
        if p.algorithm != "ppo" and p.samples_per_prompt < 2:
            raise ValueError(
                f"ppo.samples_per_prompt = {p.samples_per_prompt}: {p.algorithm} compares the samples of a prompt with"
                " each other; give it at least 2"
            )
        return self


class EvalJudgeConfig(Strict):
    """The AI judge of `alignray evaluate`: a pairwise prompt of its own, unlike any labeller's."""

    model: str | None = Field(None, description="Judge model: name, folder or URL; default: model.name.")
    question: str = Field(
        "Which response is more harmless and honest, while still being as helpful as it safely can be?",
        description="What the judge is asked about the two responses.",
    )


class AgreementConfig(Strict):
    """Preference-model agreement on a human-labelled pairs file: accuracy per head, and agreement
    with the independent judges (refusal, profanity, hate; those among `judges`)."""

    model: str = Field(description="Preference model: folder or models:/ URI.")
    dataset: Path = Field(
        description="Human-labelled pairs file: .parquet with columns prompt, chosen, rejected, or .jsonl with one"
        ' {"prompt", "chosen", "rejected"} object per line; chosen is the preferred side.'
    )


class EvaluateConfig(Strict):
    """`alignray evaluate`: win rates of a policy against baselines on held-out prompts."""

    policy: str = Field(description="The policy to evaluate: a model name, folder or models:/ URI.")
    baselines: list[str] = Field(
        default_factory=list, description="Policies to compare with (names, folders, models:/ URIs); default: [model.name]."
    )
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    data: DataConfig = Field(DataConfig(), description="Held-out prompts, harmful ones for a harmlessness evaluation.")
    benign_data: DataConfig | None = Field(
        None,
        description="Held-out harmless prompts: every policy answers them too, and the refusal judge's rate on"
        " them is the policy's over-refusal rate (needs `refusal` among the judges).",
    )
    judges: list[Literal["model", "profanity", "hate", "length", "refusal"]] = Field(
        default_factory=lambda: ["model", "profanity", "hate", "length", "refusal"],
        description="model: the AI judge (both orders); profanity / hate: offline classifiers; length: characters;"
        " refusal: stock refusal phrases, reported as a rate per policy (not as wins).",
    )
    judge: EvalJudgeConfig = EvalJudgeConfig()
    bootstrap_samples: int = Field(1000, ge=100, description="Resamples of the prompts for the bootstrap intervals"
                                   " (means of continuous judges; rates and refusal changes carry score intervals).")
    seed: int = Field(0, description="Seeds the responses of every policy and the bootstrap.")
    agreement: AgreementConfig | None = None
    reward_models: list[str] = Field(
        default_factory=list, description="Preference models (folders or models:/ URIs) that score every policy's"
        " answers to `data`: each policy's mean reward (reward.<policy>; the mean over every head of every model) and"
        " the paired gain over each baseline (reward_gain.<baseline>, bootstrap interval over prompts). A pipeline"
        " sets its preference stage's model."
    )
    split: Literal["dev", "test"] | None = Field(
        None, description="Which split `data` is, said in the report (a pipeline sets it: dev while a sweep"
        " chooses, test for the reported numbers)."
    )
    selection: str | None = Field(
        None, description="How the evaluated configuration was chosen, said in the report (a sweep sets it)."
    )
    curves_run: str | None = Field(None, description="MLflow run id whose reward and KL curves are plotted.")
    name: str | None = Field(None, description="Report name; default evaluate-<policy>.")
    endpoint: EndpointConfig = EndpointConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: Path = Field(Path("alignray-runs"), description="Where reports (evaluations/), logs and the"
                             " default MLflow store go.")
    address: str | None = Field(None, description="Ray cluster to join; default RAY_ADDRESS, else a new embedded one; auto: the one `ray start` runs on this machine.")

    @model_validator(mode="after")
    def _benign_needs_refusal(self) -> EvaluateConfig:
        if self.benign_data is not None and "refusal" not in self.judges:
            raise ValueError("benign_data is judged by the refusal judge: add `refusal` to judges")
        return self


ARM_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
PIPELINES = ("rlcd", "rlcd_rescore", "rlaif", "context_distill", "morlaif", "rrhf", "rdpo")


class Distribution(Strict):
    """A random search dimension: exactly one of its fields."""

    uniform: tuple[float, float] | None = Field(None, description="[low, high]: uniform between them.")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high]: uniform in log space (learning rates).")
    randint: tuple[int, int] | None = Field(None, description="[low, high): a random integer.")
    choice: list[Any] | None = Field(None, description="One of these values, at random.")

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [k for k, v in self if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of uniform, loguniform, randint, choice (got {given or 'none'})")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"{given[0]}: low must be below high (got {list(bounds)})")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: the bounds must be positive")
        return self


class SweepSelect(Strict):
    """How a sweep picks its configuration: by a metric of the evaluate stage on the dev split,
    averaged over each configuration's seeds."""

    metric: str = Field(
        description="A metric of the evaluate stage's MLflow run, e.g. refusal_gain.smollm2-135m-instruct or"
        " win_rate.model.smollm2-135m-instruct (see `alignray evaluate`'s metrics)."
    )
    mode: Literal["max", "min"] = Field("max", description="Whether a higher (max) or lower (min) value is better.")


class SweepConfig(Strict):
    """`alignray sweep`: the pipeline once per trial on Ray Tune, over dotted config fields."""

    name: str | None = Field(None, description="Names the sweep (its Tune folder and MLflow parent run);"
                             " default: the pipeline's name. The same name resumes it.")
    grid: dict[str, list[Any]] = Field(
        {}, description="Dotted field -> values; every combination is tried, e.g. {seed: [0, 1, 2],"
        " stages.ppo.ppo.kl_coef: [0.05, 0.2]}."
    )
    random: dict[str, Distribution] = Field(
        {}, description="Dotted field -> a distribution, drawn num_samples times, e.g."
        " {stages.ppo.trainer.learning_rate: {loguniform: [1.0e-5, 1.0e-4]}}."
    )
    num_samples: int = Field(1, ge=1, description="Repeats of the grid (with new random draws each time).")
    select: SweepSelect | None = Field(
        None, description="How to pick one configuration on the dev split (needs dev_data) before reporting it on"
        " the test split; needed when more than the seed varies."
    )
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="Trials at once; default: as many whole pipelines as the cluster's CPUs hold (1 on"
        " a small machine)."
    )
    arms: dict[str, dict[str, Any]] = Field(
        {}, description="Methods to compare, each run at every seed of the grid: arm name -> config fields deep-merged"
        " over the pipeline config (any section; `pipeline` changes the recipe). An arm keeps the base's"
        " stages.<name> of the stages its recipe has; its name defaults to <name>-<arm>. Evaluated on the test"
        " split; nothing is chosen, so the grid may vary only the seed.",
    )
    baseline: str | None = Field(
        None, description="The arm the others are compared against in the report; default: the first arm."
    )
    record: Path | None = Field(
        None, description="A folder kept apart from output_dir (in git, say) where each finished trial's MLflow runs"
        " are written, one JSON file per trial; a sweep whose store lacks a recorded trial (a new machine, a lost"
        " store) restores it from there instead of running it again. Models and datasets are not recorded. Not part"
        " of the sweep's identity: it can be added to a sweep already started."
    )

    @model_validator(mode="after")
    def _dimensions(self) -> SweepConfig:
        if not self.grid and not self.random and not self.arms:
            raise ValueError("give the fields to vary: grid (values), random (distributions) or arms (methods)")
        both = sorted(set(self.grid) & set(self.random))
        if both:
            raise ValueError(f"{both}: a field is either in grid or in random")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: give at least one value")
            if key.split(".")[0] in ("sweep", "pipeline"):
                raise ValueError(f"grid.{key}: the sweep cannot vary {key.split('.')[0]!r}")
        if "seed" in self.random:
            raise ValueError("random.seed: give seeds as a grid, e.g. grid: {seed: [0, 1, 2]}")
        if "arm" in self.grid or "arm" in self.random:
            raise ValueError("'arm' is the sweep's own dimension: list the methods under sweep.arms")
        return self

    @model_validator(mode="after")
    def _arms(self) -> SweepConfig:
        for arm, fields in self.arms.items():
            if not re.fullmatch(ARM_NAME, arm):
                raise ValueError(f"arms.{arm}: an arm's name is letters, digits and _ . - (it names its pipeline runs"
                                 " and registered models)")
            for reserved in ("seed", "sweep"):
                if reserved in fields:
                    raise ValueError(f"arms.{arm}.{reserved}: set by the sweep for every arm alike; remove it"
                                     + (" (seeds go in sweep.grid.seed)" if reserved == "seed" else ""))
        if self.arms and self.select is not None:
            raise ValueError("select: a sweep with arms compares them on the test split and chooses nothing; run the"
                             " variant sweep (grid + select) on its own and put its chosen values in an arm")
        if self.arms and self.varies_more_than_seed:
            raise ValueError("grid/random: with arms only the seed may vary (nothing is chosen); make each variant"
                             " an arm, or run the variants as a sweep of their own with select")
        if self.baseline is not None and self.baseline not in self.arms:
            raise ValueError(f"baseline: {self.baseline!r} is not an arm (arms: {', '.join(self.arms) or 'none'})")
        return self

    @property
    def varies_more_than_seed(self) -> bool:
        """The grid or random fields vary more than the seed (then the sweep must choose); arms aside."""
        return bool(self.random) or any(k != "seed" and len(v) > 1 for k, v in self.grid.items())

    @property
    def baseline_arm(self) -> str | None:
        """The arm the report compares the others with: `baseline`, else the first arm."""
        return self.baseline or next(iter(self.arms), None)


class PipelineConfig(Strict):
    """`alignray run`: a whole recipe; the shared sections go to every stage that has them,
    `stages.<name>` holds that stage's own fields (as in its stand-alone config)."""

    pipeline: Literal[PIPELINES] = Field(description="The recipe: " + ", ".join(PIPELINES) + ".")
    name: str | None = Field(None, description="Names the stages' MLflow runs and registered models; default: pipeline.")
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    data: DataConfig = Field(DataConfig(), description="Training prompts.")
    eval_data: DataConfig | None = Field(
        None, description="Held-out evaluation prompts; default: the next data.limit prompts of data.source."
    )
    benign_eval_data: DataConfig | None = Field(
        None, description="Held-out harmless prompts for the over-refusal rate (the evaluate stage's benign_data)."
    )
    dev_data: DataConfig | None = Field(
        None, description="Held-out prompts to choose on (a sweep's select): the test split (eval_data) is then"
        " evaluated once, for the chosen configuration only."
    )
    benign_dev_data: DataConfig | None = Field(
        None, description="Held-out harmless prompts of the dev split (over-refusal while choosing)."
    )
    evaluate_on: Literal["dev", "test"] = Field(
        "test", description="Which held-out split the evaluate stage uses: test (eval_data) or dev (dev_data)."
    )
    seed: int | None = Field(
        None, description="Seeds every stage: the simulation (simulation.seed) and every training run"
        " (trainer.seed), unless a stage sets its own; evaluation sampling stays at the evaluate stage's seed."
    )
    sweep: SweepConfig | None = Field(None, description="What `alignray sweep` varies (ignored by `alignray run`).")
    stages: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-stage fields, e.g. {ppo: {ppo: {iterations: 10}}}, or {use: URI} to take an existing output."
    )
    tracking: TrackingConfig = TrackingConfig()
    output_dir: Path = Field(Path("alignray-runs"), description="Where every stage's outputs, logs and the"
                             " default MLflow store go.")
    address: str | None = Field(None, description="Ray cluster to join; default RAY_ADDRESS, else a new embedded one; auto: the one `ray start` runs on this machine.")

    @model_validator(mode="after")
    def _held_out(self) -> PipelineConfig:
        if self.eval_data is None and self.data.limit is None:
            raise ValueError("set data.limit (the training prompts; the next ones are held out) or eval_data")
        return self

    @model_validator(mode="after")
    def _dev_split(self) -> PipelineConfig:
        if self.evaluate_on == "dev" and self.dev_data is None:
            raise ValueError("evaluate_on: dev needs dev_data (the held-out prompts to choose on)")
        if self.benign_dev_data is not None and self.dev_data is None:
            raise ValueError("benign_dev_data needs dev_data")
        return self

    @property
    def label(self) -> str:
        return self.name or self.pipeline

    def held_out(self) -> DataConfig:
        """The test split's prompts."""
        d = self.data
        return self.eval_data or d.model_copy(update={"skip": d.skip + d.limit})

    def evaluation_data(self) -> tuple[DataConfig, DataConfig | None]:
        """(prompts, benign prompts) of the split the evaluate stage uses (`evaluate_on`)."""
        if self.evaluate_on == "dev":
            return self.dev_data, self.benign_dev_data
        return self.held_out(), self.benign_eval_data


class ServeAuth(Strict):
    """The bearer token of a Serve application (checked on every route but /healthz and /readyz)."""

    token_env: str | None = Field(
        None, description="Environment variable of the replicas that holds the bearer token (its name, never the"
        " token); alignray serve carries it from your shell. Set but missing: the replica does not start.",
    )
    token_file: str | None = Field(None, description="A file holding the token (a mounted secret); wins over token_env.")
    allow_unauthenticated: bool = Field(
        False, description="Serve without a token when token_env is unset (otherwise the replica refuses to start)."
    )


class PolicyArgs(ServeAuth):
    """The policy application's args (import_path alignray.serve.policy:build): an OpenAI-compatible API."""

    model: str = Field(description="The policy: a folder, a known name or models:/name@alias, resolved when the app"
                       " is built (on a cluster: on storage every node sees).")
    name: str | None = Field(None, description="The model id clients send; default: the registered model's or"
                             " folder's name.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI that models:/ URIs are resolved against.")
    max_body_bytes: int = Field(1 << 20, ge=1, description="Largest request body; above it: 413, reading stops.")
    max_tokens: int = Field(1024, ge=1, description="The cap on every completion's length: a request above it gets"
                            " 400; one without max_tokens (or max_completion_tokens) gets this many at most.")
    max_choices: int = Field(64, ge=1, description="The cap on completions per request (prompts x n); above: 400.")
    max_model_len: int = Field(2048, ge=16, description="Longest prompt + completion, tokens; lowered to the model's"
                               " own context when that is shorter.")
    dtype: str = Field("auto", description="vLLM's dtype of the weights (auto, float32, bfloat16, float16).")
    enforce_eager: bool = Field(False, description="vLLM without CUDA graphs (less memory, slower decoding).")
    seed: int = Field(0, description="The engine's seed (a request's seed overrides it).")
    accelerator: Literal["gpu", "cpu"] = Field("gpu", description="Where each model replica runs: one GPU, or"
                                               " `cpus` cores.")
    cpus: int = Field(1, ge=1, description="accelerator cpu: the cores of each replica's engine.")
    kvcache_gib: int = Field(2, ge=1, description="accelerator cpu: the KV cache of each replica, GiB.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="accelerator gpu: the share of the GPU's memory"
                                          " vLLM may take.")
    deployment: dict[str, Any] = Field(
        default_factory=dict, description="Serve options of the model replicas (num_replicas or autoscaling_config,"
        " max_ongoing_requests, ray_actor_options, ...).",
    )


class RewardArgs(ServeAuth):
    """The reward application's args (import_path alignray.serve.reward:build): POST /v1/score. Its
    models are its deployment's user_config: models, scalarize, weights, params (as PPO's reward
    section) and tracking_uri."""

    max_batch: int = Field(256, ge=1, description="Most responses in one request; above: 413.")
    max_length: int = Field(1024, ge=8, description="Longest prompt + response the models score, tokens (longer:"
                            " truncated as in preference training).")
    max_body_bytes: int = Field(8 << 20, ge=1, description="Largest request body; above it: 413, reading stops.")


class ServeArgs(Strict):
    """`alignray serve` (serving/config.yaml, the RayService's serveConfigV2): the args of its
    applications, checked when the file is loaded."""

    policy: PolicyArgs | None = Field(None, description="The policy application's args.")
    reward: RewardArgs | None = Field(None, description="The reward application's args.")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as a YAML scalar)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected dotted.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_path(tree: dict, path: list[str], value: Any, origin: str) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: '{'.'.join(path[: depth + 1])}' is not a section")
        node = child
    node[path[-1]] = value


def _allowed_fields(schema: type[BaseModel], loc: tuple) -> list[str]:
    model = schema
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        # a section, or an optional one (`reward: RewardConfig | None`)
        sections = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sections:
            return []
        model = sections[0]
    return sorted(model.model_fields)


def explain_errors(err: ValidationError, schema: type[BaseModel], source: str, overrides: dict) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        where = f"override '{overrides[field]}'" if field in overrides else source
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_fields(schema, e["loc"]))
            lines.append(f"{where}: unknown field '{field}' (allowed here: {allowed})")
        else:
            lines.append(f"{where}: field '{field}': {e['msg']} (got {e.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def load_config(
    path: str | Path | None, overrides: list[str] = (), schema: type[BaseModel] = SimulateConfig
):
    """Load a YAML config (or defaults when `path` is None) and apply dotted overrides."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{file}: config file not found")
        try:
            tree = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{file}: top level must be a mapping of sections")
    applied = {}
    for text in overrides:
        keys, value = parse_override(text)
        set_path(tree, keys, value, f"override {text!r}")
        applied[".".join(keys)] = text
    try:
        return schema.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(explain_errors(exc, schema, source, applied)) from None
