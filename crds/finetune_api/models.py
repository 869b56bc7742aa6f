"""The API, defined once: typed spec and status models for both kinds.

The trainer parses specs with these models, the operator validates and
defaults with them, and `finetune_api.crd` generates the CRD YAML from them.
Field descriptions become `kubectl explain` text; `x-kubernetes-validations`
entries (CEL) carry the cross-field rules into the apiserver, and the same
rules are enforced here as pydantic validators so local runs agree.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from finetune_api.task_metrics import objective_error, reported_metrics

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class ApiModel(BaseModel):
    """Base: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def dump(self) -> dict[str, Any]:
        """The wire form: camelCase, without unset optional (None) fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# json_schema_extra key for value-validation branches that go into the CRD as `anyOf`
# verbatim (pydantic's own anyOf means a union of types, which crd.py unwraps).
STRUCTURAL_ANY_OF = "x-finetune-any-of"


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """json_schema_extra carrying CEL rules (rule, message) into the CRD."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


# A Kubernetes resource quantity ("4", "500m", "16Gi") or a plain integer.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"


def _quantity(value: Any) -> int | str:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if ok or (isinstance(value, str) and re.fullmatch(QUANTITY_PATTERN, value)):
        return value
    raise ValueError("must be a Kubernetes quantity such as 4, 500m or 16Gi")


Quantity = Annotated[
    int | str,
    PlainValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY_PATTERN}],
            "x-kubernetes-int-or-string": True,
        }
    ),
]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


# --------------------------------------------------------------------------- enums


class Task(StrEnum):
    classification = "classification"
    causal_lm = "causal-lm"
    masked_lm = "masked-lm"


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Phase(StrEnum):
    pending = "Pending"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"
    suspended = "Suspended"


# --------------------------------------------------------------------------- FineTuneJob spec


# URIs a source can be read from (storage.py): object stores through fsspec, and hf://
SOURCE_URI_PATTERN = r"^[a-z][a-z0-9+.-]*://.+"


class ModelSource(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "(has(self.name) ? 1 : 0) + (has(self.path) ? 1 : 0) + (has(self.uri) ? 1 : 0)"
                " == 1",
                "exactly one of model.name, model.path or model.uri must be set",
            ),
        )
    )

    name: str | None = Field(
        None, min_length=1, description="Hugging Face hub id, e.g. bert-base-uncased."
    )
    path: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="A local or mounted (PVC) model directory. With resources.nodes > 1 it "
        "must lie under a spec.volumes mountPath (or /cache/huggingface with spec.cache).",
    )
    uri: str | None = Field(
        None,
        max_length=1024,
        pattern=SOURCE_URI_PATTERN,
        description="A model directory in object storage or on a hub, read through fsspec: "
        "s3://bucket/prefix, gs://..., az://..., hf://org/model (hf://org/model@revision). "
        "Downloaded once into the trainer's cache (HF_HOME/finetune-sources) and reused "
        "while the remote files are unchanged; credentials come from spec.secrets "
        "(AWS_ACCESS_KEY_ID, HF_TOKEN, ...) and are checked before training.",
    )
    revision: str = Field("main", min_length=1, description="Hub revision (branch, tag or commit).")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if sum(v is not None for v in (self.name, self.path, self.uri)) != 1:
            raise ValueError("exactly one of model.name, model.path or model.uri must be set")
        return self


class DataSource(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "(has(self.path) ? 1 : 0) + (has(self.hub) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
                "exactly one of path, hub or uri must be set",
            ),
        )
    )

    path: str | None = Field(
        None,
        min_length=1,
        description="A csv, tsv, jsonl/json or parquet file (format from the extension). "
        "Relative paths resolve against the spec file's directory.",
    )
    hub: str | None = Field(None, min_length=1, description="A hub dataset id, e.g. glue.")
    uri: str | None = Field(
        None,
        max_length=1024,
        pattern=SOURCE_URI_PATTERN,
        description="A data file in object storage or on a hub, read through fsspec "
        "(format from the extension): s3://bucket/train.jsonl, gs://..., az://..., "
        "hf://datasets/org/name/train.jsonl. Downloaded into the trainer's cache and "
        "reused while unchanged; credentials from spec.secrets, checked before training.",
    )
    config: str | None = Field(None, description="Hub dataset configuration, e.g. sst2.")
    split: str = Field("train", min_length=1, description="Hub dataset split.")

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if sum(v is not None for v in (self.path, self.hub, self.uri)) != 1:
            raise ValueError("exactly one of path, hub or uri must be set")
        return self


class DataFormat(StrEnum):
    """How rows are laid out; every chat form is mapped to one internal form (messages)."""

    text = "text"
    messages = "messages"
    prompt_completion = "prompt-completion"
    alpaca = "alpaca"
    sharegpt = "sharegpt"


CHAT_FORMATS = (
    DataFormat.messages,
    DataFormat.prompt_completion,
    DataFormat.alpaca,
    DataFormat.sharegpt,
)


class Dataset(ApiModel):
    train: DataSource = Field(description="Training data.")
    format: DataFormat = Field(
        DataFormat.text,
        description="text: textColumn; messages: a `messages` list of {role, content} "
        "(optional `tools`); prompt-completion: `prompt`/`completion`; alpaca: "
        "`instruction`/`input`/`output`; sharegpt: `conversations` of {from, value}. The "
        "chat forms are causal-lm only and rendered with the model's chat template.",
    )
    eval: DataSource | None = Field(
        None, description="Evaluation data; when absent, evalFraction of train is held out."
    )
    text_column: str = Field("text", min_length=1, description="Column holding the input text.")
    label_column: str = Field(
        "label",
        min_length=1,
        description="Classification label column: ints, or strings (mapped to ids, map saved).",
    )
    target_column: str | None = Field(
        None,
        description="causal-lm: optional reference column in the eval set, scored with BLEU "
        "against generations from textColumn prompts.",
    )
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="Held-out share of train used when eval is absent."
    )
    max_samples: int | None = Field(
        None, ge=1, description="Use at most this many training rows (handy for smoke runs)."
    )
    max_eval_samples: int | None = Field(None, ge=1, description="Use at most this many eval rows.")


AUTO = "auto"


def _batch_size(value: Any) -> int | str:
    if value == AUTO:
        return AUTO
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096:
        return value
    raise ValueError("must be an integer from 1 to 4096, or auto")


BatchSize = Annotated[
    int | str,
    PlainValidator(_batch_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 4096},
                {"type": "string", "pattern": "^auto$", "maxLength": 4},
            ],
            "x-kubernetes-int-or-string": True,
        }
    ),
]


class Hyperparameters(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.batchSize) || type(self.batchSize) == string"
                " || (self.batchSize >= 1 && self.batchSize <= 4096)",
                "batchSize must be an integer from 1 to 4096, or auto",
            )
        )
    )

    learning_rate: float = Field(5.0e-5, gt=0, le=1, description="Peak learning rate.")
    epochs: float = Field(3, gt=0, le=1000, description="Training epochs (may be fractional).")
    batch_size: BatchSize = Field(
        16,
        description="Per-device batch size, or auto: the largest that fits, keeping the "
        "effective batch (batchSize x gradientAccumulationSteps; auto: 16 x "
        "gradientAccumulationSteps) and halving on out-of-memory.",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps used for warm-up.")
    max_length: int = Field(
        128, ge=8, le=32768, description="Truncation length; batches pad only to their longest."
    )
    max_steps: int = Field(-1, ge=-1, description="Stop after this many steps; -1 = use epochs.")
    seed: int = Field(42, ge=0)
    precision: Precision = Field(
        Precision.auto, description="auto = bf16/fp16 on GPUs that support it, fp32 on CPU."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement."
    )
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N steps; default: once per epoch."
    )
    logging_steps: int = Field(10, ge=1, description="Report training loss every N steps.")
    gradient_checkpointing: bool | None = Field(
        None,
        description="Recompute activations in the backward pass (less memory, ~30% slower); "
        "default: on for causal-lm with LoRA on a GPU, off elsewhere.",
    )
    packing: bool | None = Field(
        None,
        description="causal-lm: pack a batch's rows into one, padding-free, attention kept "
        "within each row; default: on where the model uses flash attention.",
    )


class Lora(ApiModel):
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None,
        max_length=64,
        description="Module names to adapt; null = a sensible default per architecture.",
    )
    merge: bool = Field(False, description="Also save the adapter merged into the base model.")
    quantize_base: Literal["nf4", "fp4", "int8"] | None = Field(
        None,
        description="QLoRA: load the frozen base model quantised by bitsandbytes and train "
        "the adapters on it; the adapter alone is saved.",
    )


class Method(ApiModel):
    type: Literal["sft", "dpo", "orpo"] = Field(
        "sft",
        description="sft: supervised fine-tuning; dpo / orpo: preference tuning (TRL) on "
        "`prompt`/`chosen`/`rejected` rows (text or messages), causal-lm only.",
    )
    beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="dpo: KL strength to the reference; orpo: the odds-ratio weight (lambda).",
    )


class Quantization(ApiModel):
    mode: Literal["qat"] = Field(
        "qat", description="qat = quantization-aware training ending in an int8 model."
    )


class Mlm(ApiModel):
    mask_probability: float = Field(0.15, gt=0, lt=1)


class Distillation(ApiModel):
    """Knowledge distillation (Hinton et al.): spec.model is the student."""

    teacher: ModelSource = Field(
        description="A fine-tuned classifier with the same labels: a model directory, a "
        "finished run's directory (its run.json is read), or a hub id."
    )
    temperature: float = Field(
        2.0, gt=0, le=100, description="Softens both distributions in the soft-target loss."
    )
    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of the soft-target (KL * T^2) loss; 1 - alpha weighs the "
        "cross-entropy on the labels.",
    )


class Pruning(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.schedule) || self.method != 'heads' || self.schedule == 'one-shot'",
                "pruning.method heads is one-shot (after training): use schedule one-shot",
            ),
        )
    )

    sparsity: float = Field(
        0.5,
        ge=0,
        le=0.95,
        description="magnitude: share of the transformer blocks' weights set to zero; "
        "heads: share of the attention heads removed.",
    )
    method: Literal["magnitude", "heads"] = Field(
        "magnitude",
        description="magnitude = global unstructured L1 pruning of the blocks' Linear "
        "weights; heads = attention heads removed (a smaller model on disk).",
    )
    schedule: Literal["one-shot", "gradual"] | None = Field(
        None,
        description="one-shot = prune once after training; gradual = raise sparsity on a "
        "cubic schedule during training. Default: gradual for magnitude, one-shot for heads.",
    )

    @model_validator(mode="after")
    def _heads_one_shot(self) -> Pruning:
        if self.method == "heads" and self.schedule == "gradual":
            raise ValueError(
                "pruning.method heads is one-shot (after training): use schedule one-shot"
            )
        return self

    @property
    def effective_schedule(self) -> str:
        return self.schedule or ("gradual" if self.method == "magnitude" else "one-shot")


class Output(ApiModel):
    path: str | None = Field(
        None, description="Artifact directory; default /output in a pod, ./runs/NAME locally."
    )
    pvc: str | None = Field(
        None,
        pattern=DNS_LABEL,
        description="PersistentVolumeClaim mounted at output.path in the pod (else an emptyDir).",
    )
    uri: str | None = Field(
        None,
        max_length=1024,
        description="Where the finished run's artifacts are uploaded (s3://bucket/prefix, "
        "gs://..., a path): every file of the output directory, then "
        "finetune-complete.json last; status.artifacts then holds these URIs. Credentials "
        "come from spec.secrets (AWS_ACCESS_KEY_ID, ...); they are checked before training.",
    )
    hub_repo: str | None = Field(
        None,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Push the trained model (or LoRA adapter) and a model card built from "
        "the run's records (metrics, data, base model, hyperparameters) to this hub "
        "repository (org/name), created when missing. The token is env HF_TOKEN (through "
        "spec.secrets), the hub HF_ENDPOINT (default huggingface.co); both are checked "
        "before training. status.artifacts.hubRepo holds the repository's URL.",
    )
    hub_private: bool | None = Field(
        None,
        description="Create the hub repository private (default public; an existing one "
        "keeps its own visibility).",
    )
    hub_revision: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]*$",
        description="Push to this branch of hubRepo (created from main when missing); "
        "default main.",
    )


DEFAULT_GRACE_SECONDS = (
    120  # pod terminationGracePeriodSeconds without checkpoint.gracePeriodSeconds
)
DEFAULT_KEEP = 2


class Checkpoint(ApiModel):
    uri: str | None = Field(
        None,
        max_length=1024,
        description="Where checkpoints outlive the pod: a path (a PVC under spec.volumes, "
        "a local folder) or an object-store URI (s3://bucket/prefix, gs://..., any fsspec "
        "scheme installed in the image). A checkpoint is complete only once its marker "
        "(written last, by rank 0) is there; a restarted run of the same spec resumes from "
        "the newest complete one. Absent: checkpoints stay in the output directory.",
    )
    interval_seconds: int | None = Field(
        None,
        ge=1,
        description="Save a checkpoint at least this often (seconds of training); default "
        "600 (FINETUNE_CHECKPOINT_SECONDS), plus every epoch.",
    )
    keep: int = Field(
        DEFAULT_KEEP, ge=1, le=100, description="How many complete checkpoints uri keeps."
    )
    grace_period_seconds: int | None = Field(
        None,
        ge=1,
        le=86400,
        description="The trainer pod's terminationGracePeriodSeconds: time from SIGTERM "
        f"(eviction, preemption, deletion) to SIGKILL, in which the trainer saves a "
        f"checkpoint of its last completed step; default {DEFAULT_GRACE_SECONDS}.",
    )


class Budget(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "has(self.maxCost) || has(self.maxGpuHours) || has(self.maxDurationSeconds)",
                "a budget needs at least one of maxCost, maxGpuHours, maxDurationSeconds",
            )
        )
    )

    max_cost: float | None = Field(
        None,
        gt=0,
        description="Stop at this cost: GPU-hours x the operator's price per GPU-hour "
        "(chart cost.gpuHourPrice; FINETUNE_GPU_HOUR_PRICE locally), priced as status cost.",
    )
    max_gpu_hours: float | None = Field(
        None, gt=0, description="Stop at this many GPU-hours of training (GPUs x hours)."
    )
    max_duration_seconds: int | None = Field(
        None,
        ge=1,
        description="Stop after this many seconds of training wall time (summed over "
        "resumes; works on CPU nodes too).",
    )

    @model_validator(mode="after")
    def _one_limit(self) -> Budget:
        if (
            self.max_cost is None
            and self.max_gpu_hours is None
            and self.max_duration_seconds is None
        ):
            raise ValueError(
                "a budget needs at least one of maxCost, maxGpuHours, maxDurationSeconds"
            )
        return self


class Toleration(ApiModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


MAX_NODES = 64  # pods of one multi-node run; beyond this, use a dedicated launcher (JobSet)


class Resources(ApiModel):
    gpus: int = Field(
        1,
        ge=0,
        le=16,
        description="nvidia.com/gpu requested by each trainer pod (one worker process per GPU).",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=MAX_NODES,
        description="Trainer pods (torchrun nodes); gpus is per pod, so the world size is "
        "nodes x max(gpus, 1). With nodes > 1 every pod must read the same model: "
        "model.path must lie under a mountPath of spec.volumes (a PVC, ReadOnlyMany or "
        "ReadWriteMany) or under /cache/huggingface with spec.cache set, and a hub "
        "model.name needs spec.cache (enforced by the apiserver; `finetune run` starts "
        "the nodes as processes on one machine, where every path is reachable).",
    )
    cpu: Quantity = Field("4", description="CPU request (and limit).")
    memory: Quantity = Field("16Gi", description="Memory request (and limit).")
    # Bounded: the spec's CEL rules cover them, and the apiserver's cost estimate needs it.
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=64)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)


class SecretKeyRef(ApiModel):
    name: str = Field(pattern=DNS_LABEL, description="Secret name in the job's namespace.")
    key: str = Field(min_length=1, description="Key within the Secret.")


class SecretEnv(ApiModel):
    env: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable, e.g. HF_TOKEN."
    )
    secret_ref: SecretKeyRef = Field(description="Where the value lives; never copied elsewhere.")


class Volume(ApiModel):
    claim_name: str = Field(pattern=DNS_LABEL, description="PersistentVolumeClaim name.")
    mount_path: str = Field(
        pattern=r"^/", max_length=256, description="Where it is mounted in the trainer pod."
    )
    read_only: bool = True


class Distributed(ApiModel):
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp = a full model replica per worker, gradients all-reduced; fsdp = "
        "parameters, gradients and optimizer state sharded across workers (models that do "
        "not fit one GPU), through the HF Trainer's accelerate integration. Applies when "
        "the world size (resources.nodes x gpus) is above 1.",
    )


class Cache(ApiModel):
    pvc: str = Field(
        pattern=DNS_LABEL,
        description="PersistentVolumeClaim mounted as the Hugging Face cache (HF_HOME, "
        "/cache/huggingface) on every trainer pod, so nodes and trials download a model "
        "once. With resources.nodes > 1 it must be ReadWriteMany (or ReadOnlyMany with "
        "readOnly), since pods on several nodes mount it at once.",
    )
    read_only: bool = Field(
        False,
        description="Mount the cache read-only: it must already hold the model (and hub "
        "datasets); the trainer then runs offline (HF_HUB_OFFLINE=1).",
    )


class MlflowTracking(ApiModel):
    uri: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
        description="The MLflow tracking server, e.g. http://mlflow.mlops:5000.",
    )
    experiment: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Experiment name (created when missing); default: the job's namespace.",
    )
    register_model: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Register the trained model (or adapter) as a new version of this "
        "registered model.",
    )
    secret_ref: SecretKeyRef | None = Field(
        None,
        description="A Secret key holding the server's token (MLFLOW_TRACKING_TOKEN); only "
        "the reference travels.",
    )


class Tracking(ApiModel):
    mlflow: MlflowTracking | None = Field(
        None,
        description="Log params (the resolved spec), every metric at its step and the "
        "run's files to an MLflow tracking server; a server that is down costs at most a "
        "bounded timeout and never fails the run.",
    )


LM_EVAL_TASK = r"^[A-Za-z0-9_.-]+$"


class LmEval(ApiModel):
    tasks: list[Annotated[str, Field(pattern=LM_EVAL_TASK, max_length=128)]] = Field(
        min_length=1,
        max_length=32,
        description="lm-evaluation-harness task names (or task groups).",
    )
    limit: int | None = Field(None, ge=1, description="At most this many examples per task.")
    num_fewshot: int | None = Field(None, ge=0, le=64, description="Few-shot examples.")
    include_path: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="A folder of task YAMLs, as lm-eval's --include_path (relative paths "
        "resolve against the spec's folder).",
    )
    batch_size: int = Field(8, ge=1, le=1024, description="lm-eval's batch size.")


class Evaluation(ApiModel):
    lm_eval: LmEval | None = Field(
        None,
        description="Run EleutherAI's lm-evaluation-harness on the trained model after "
        "training (rank 0); results are status.metrics lmEval.<task>.<metric>.",
    )


class BeatsBase(ApiModel):
    by: float = Field(
        0,
        ge=0,
        description="The margin: the run must beat the base model's value by at least this.",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None,
        description="Which way is better; default minimize for a loss or perplexity, "
        "else maximize (task_metrics.lower_is_better).",
    )


PROMOTE_WHEN_RULE = (
    "(has(self.minimum) ? 1 : 0) + (has(self.maximum) ? 1 : 0) + (has(self.beatsBase) ? 1 : 0) == 1"
)
PROMOTE_WHEN_MESSAGE = "promote.when needs exactly one of minimum, maximum or beatsBase"


class PromoteWhen(ApiModel):
    """The evaluation gate: `metric` (a status.metrics key) at least `minimum`, at most
    `maximum`, or better than the base model's `base.<metric>` by `beatsBase.by`
    (exactly one)."""

    model_config = ConfigDict(json_schema_extra=cel((PROMOTE_WHEN_RULE, PROMOTE_WHEN_MESSAGE)))

    metric: str = Field(
        min_length=1,
        max_length=256,
        description="A status.metrics key, e.g. perplexity or lmEval.<task>.acc.",
    )
    minimum: float | None = Field(None, description="Promote when metric >= minimum.")
    maximum: float | None = Field(None, description="Promote when metric <= maximum.")
    beats_base: BeatsBase | None = Field(
        None,
        description="Promote when the run beats the base model (evaluated by the trainer "
        "on the same eval set and lm-eval tasks, reported as base.<metric>) by `by`.",
    )

    @model_validator(mode="after")
    def _one_bound(self) -> PromoteWhen:
        bounds = (self.minimum, self.maximum, self.beats_base)
        if sum(b is not None for b in bounds) != 1:
            raise ValueError(PROMOTE_WHEN_MESSAGE)
        return self


class InferenceServiceSpec(ApiModel):
    runtime: str | None = Field(
        None,
        max_length=253,
        description="A KServe ServingRuntime name; default: KServe picks the huggingface "
        "runtime for modelFormat huggingface.",
    )
    backend: Literal["vllm", "huggingface"] | None = Field(
        None,
        description="The huggingface runtime's backend; default vllm with a GPU, "
        "huggingface (transformers) on CPU.",
    )
    storage_uri: str | None = Field(
        None,
        max_length=2048,
        description="Serve from here instead of the run's artifacts (e.g. s3://bucket/run).",
    )
    gpus: int = Field(0, ge=0, le=64)
    cpu: Quantity = Field("1")
    memory: Quantity = Field("4Gi")
    args: list[str] = Field(default_factory=list, max_length=64)


class Promote(ApiModel):
    when: PromoteWhen = Field(description="The evaluation gate.")
    inference_service: InferenceServiceSpec = Field(
        default_factory=InferenceServiceSpec,
        description="The KServe InferenceService that serves the model once the gate holds.",
    )


HF_CACHE_MOUNT = "/cache/huggingface"  # where spec.cache is mounted (HF_HOME)
# CEL: with nodes > 1 every pod must reach the model (rule text in Resources.nodes).
MULTI_NODE_RULE = (
    "!has(self.resources) || !has(self.resources.nodes) || self.resources.nodes <= 1 || "
    "has(self.model.uri) || (has(self.model.name) ? has(self.cache) : "
    f"(has(self.cache) && self.model.path.startsWith('{HF_CACHE_MOUNT}/')) || "
    "(has(self.volumes) && self.volumes.exists(v, self.model.path == v.mountPath || "
    "self.model.path.startsWith(v.mountPath.endsWith('/') ? v.mountPath : v.mountPath + '/'))))"
)
MULTI_NODE_MESSAGE = (
    "with resources.nodes > 1 every pod must reach the model: put model.path under a "
    "spec.volumes mountPath (a shared PVC) or under /cache/huggingface with spec.cache, "
    "or use model.name with spec.cache, or model.uri (each pod downloads it)"
)


# (CEL rule, message) pairs; FineTuneJobSpec._optimisation_rules checks the same.
OPTIMISATION_RULES: tuple[tuple[str, str], ...] = (
    (
        "!has(self.distillation) || self.task == 'classification'",
        "distillation is supported for task classification",
    ),
    (
        "!has(self.pruning) || !has(self.quantization)",
        "pruning with quantization (qat) is not supported: prune in one job, then run "
        "qat on its pruned model (model.path) in a second",
    ),
    (
        "!has(self.pruning) || !has(self.lora)",
        "pruning with lora is not supported: merging the adapter's dense update would "
        "undo the sparsity; prune a full fine-tune, or a LoRA run's merged model",
    ),
)

# (CEL rule, message) pairs; FineTuneJobSpec._post_training_rules checks the same.
POST_TRAINING_RULES: tuple[tuple[str, str], ...] = (
    (
        "!has(self.method) || !has(self.method.type) || self.method.type == 'sft'"
        " || self.task == 'causal-lm'",
        "method.type dpo or orpo (preference tuning) is supported for task causal-lm",
    ),
    (
        "!has(self.dataset.format) || self.dataset.format == 'text' || self.task == 'causal-lm'",
        "dataset.format messages, prompt-completion, alpaca and sharegpt are supported for "
        "task causal-lm",
    ),
    (
        "!has(self.loss) || self.loss == 'all'"
        " || (has(self.dataset.format) && self.dataset.format != 'text')",
        "loss assistant or completion needs a chat dataset.format (messages, "
        "prompt-completion, alpaca or sharegpt)",
    ),
    (
        "!has(self.lora) || !has(self.lora.quantizeBase) || !has(self.quantization)",
        "lora.quantizeBase (QLoRA) with quantization (qat) is not supported: the QLoRA base "
        "is already quantised and frozen; choose one",
    ),
    (
        "!has(self.lora) || !has(self.lora.quantizeBase) || !has(self.distributed)"
        " || self.distributed.strategy != 'fsdp'",
        "lora.quantizeBase (QLoRA) with distributed.strategy fsdp is not supported: use ddp",
    ),
)

FSDP_MESSAGE = (
    "distributed.strategy fsdp is for full fine-tuning: use ddp with lora or quantization"
)


class FineTuneJobSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.quantization) || self.task == 'classification'",
                "quantization (qat) is supported for task classification",
            ),
            (MULTI_NODE_RULE, MULTI_NODE_MESSAGE),
            (
                "!has(self.distributed) || self.distributed.strategy != 'fsdp' || "
                "(!has(self.lora) && !has(self.quantization))",
                FSDP_MESSAGE,
            ),
            *OPTIMISATION_RULES,
            *POST_TRAINING_RULES,
        )
    )

    task: Task = Field(description="classification | causal-lm | masked-lm.")
    model: ModelSource
    dataset: Dataset
    method: Method = Field(default_factory=Method, description="sft | dpo | orpo (causal-lm).")
    loss: Literal["assistant", "completion", "all"] | None = Field(
        None,
        description="Which tokens count in the loss (chat formats): assistant turns (the "
        "default for messages/sharegpt), the completion (the default for "
        "prompt-completion/alpaca) or all.",
    )
    chat_template: str | None = Field(
        None,
        max_length=65536,
        description="A Jinja chat template, or a builtin name (chatml), used when the model "
        "has none; with loss assistant it needs {% generation %} markers.",
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    lora: Lora | None = Field(None, description="PEFT LoRA adapters; absent = full fine-tuning.")
    quantization: Quantization | None = Field(None, description="Quantization-aware training.")
    mlm: Mlm = Field(default_factory=Mlm, description="masked-lm task settings.")
    distillation: Distillation | None = Field(
        None, description="Train spec.model as a student of a teacher (classification)."
    )
    pruning: Pruning | None = Field(None, description="Prune the model (any task).")
    output: Output = Field(default_factory=Output)
    budget: Budget | None = Field(
        None,
        description="A spending limit: at maxCost, maxGpuHours or maxDurationSeconds the "
        "trainer saves a checkpoint and stops; the run goes Suspended with reason "
        "BudgetExhausted. Raising the budget resumes from that checkpoint.",
    )
    checkpoint: Checkpoint | None = Field(
        None,
        description="Checkpoints: where (uri), how often, how many, and the grace period "
        "after SIGTERM in which the last completed step is saved.",
    )
    resources: Resources = Field(default_factory=Resources)
    secrets: list[SecretEnv] = Field(
        default_factory=list,
        max_length=32,
        description="Secrets injected as env vars, e.g. HF_TOKEN.",
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=32,
        description="PVCs mounted into the trainer pod (data, models).",
    )
    distributed: Distributed = Field(
        default_factory=Distributed,
        description="How several workers (resources.nodes x gpus) share the training.",
    )
    cache: Cache | None = Field(
        None,
        description="A PVC used as the Hugging Face cache on every trainer pod; absent = a "
        "per-pod emptyDir (each pod downloads the model).",
    )
    tracking: Tracking | None = Field(None, description="Experiment tracking (MLflow).")
    evaluation: Evaluation | None = Field(
        None, description="Benchmark evaluation after training (lm-evaluation-harness)."
    )
    promote: Promote | None = Field(
        None,
        description="Serve the model once the run succeeded and the gate holds: the operator "
        "creates (and owns) a KServe InferenceService; condition Promoted says why or why not.",
    )
    image: str | None = Field(None, description="Trainer image; default from the operator.")
    backoff_limit: int = Field(2, ge=0, le=100)
    active_deadline_seconds: int | None = Field(None, ge=1)
    suspend: bool = Field(False, description="Suspend (or keep suspended) the trainer Job.")

    @model_validator(mode="after")
    def _post_training_rules(self) -> FineTuneJobSpec:
        """The POST_TRAINING_RULES, in the same order (before _qat_task's FSDP rule, so a
        QLoRA spec is refused for its own reason first)."""
        quantized = self.lora is not None and self.lora.quantize_base is not None
        broken = (
            self.method.type != "sft" and self.task is not Task.causal_lm,
            self.dataset.format is not DataFormat.text and self.task is not Task.causal_lm,
            self.loss not in (None, "all") and self.dataset.format is DataFormat.text,
            quantized and self.quantization is not None,
            quantized and self.distributed.strategy == "fsdp",
        )
        for (_, message), bad in zip(POST_TRAINING_RULES, broken, strict=True):
            if bad:
                raise ValueError(message)
        return self

    @model_validator(mode="after")
    def _qat_task(self) -> FineTuneJobSpec:
        if self.quantization is not None and self.task is not Task.classification:
            raise ValueError("quantization (qat) is supported for task classification")
        if self.distributed.strategy == "fsdp" and (self.lora or self.quantization):
            raise ValueError(FSDP_MESSAGE)
        return self

    @model_validator(mode="after")
    def _optimisation_rules(self) -> FineTuneJobSpec:
        """The OPTIMISATION_RULES, in the same order."""
        broken = (
            self.distillation is not None and self.task is not Task.classification,
            self.pruning is not None and self.quantization is not None,
            self.pruning is not None and self.lora is not None,
        )
        for (_, message), bad in zip(OPTIMISATION_RULES, broken, strict=True):
            if bad:
                raise ValueError(message)
        return self


# --------------------------------------------------------------------------- status


class Condition(ApiModel):
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class Progress(ApiModel):
    epoch: float = 0
    step: int = 0
    total_steps: int = 0


class Workers(ApiModel):
    ready: int = Field(0, ge=0, description="Trainer pods running and ready.")
    total: int = Field(1, ge=1, description="Trainer pods of the run (spec.resources.nodes).")


class ServedModel(ApiModel):
    """The InferenceService a promotion created (status.inferenceService)."""

    name: str
    url: str | None = Field(None, description="Set once KServe reports it Ready.")
    storage_uri: str | None = None
    trial: str | None = Field(None, description="A sweep's: the trial it serves.")


class FineTuneJobStatus(ApiModel):
    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    job_name: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    progress: Progress | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    history: list[dict[str, float]] = Field(
        default_factory=list, description="Per-evaluation metrics (bounded), feeds pruners."
    )
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="Where the run's outputs are, by name: model, metrics, confusionMatrix, "
        "classificationReport, lossCurve, adapter, mergedModel, ... (a map: every name the "
        "trainer writes is kept).",
    )
    workers: Workers | None = Field(
        None, description="Multi-node runs: how many trainer pods are ready, of how many."
    )
    message: str | None = None
    reason: str | None = Field(
        None,
        max_length=64,
        description="Why a Failed run failed, when the trainer knows (ChatTemplate, ...).",
    )
    inference_service: ServedModel | None = Field(
        None, description="spec.promote: the InferenceService serving this run's model."
    )


# --------------------------------------------------------------------------- HyperparameterSweep


class Distribution(ApiModel):
    model_config = ConfigDict(
        # "categorical needs choices" as a structural anyOf (no CEL on `choices`, whose
        # items are untyped: kube-apiserver's CEL compiler drops a field it cannot type
        # and refuses the whole CRD with "undefined field 'choices'").
        json_schema_extra=cel(
            (
                "self.type == 'categorical' ? !has(self.low) && !has(self.high)"
                " : has(self.low) && has(self.high) && self.low < self.high",
                "categorical takes choices (not low/high); int and float need low < high",
            ),
            ("!(has(self.log) && self.log && has(self.step))", "log and step cannot be combined"),
            (
                "!(has(self.log) && self.log) || (has(self.low) && self.low > 0.0)",
                "log needs low > 0",
            ),
        )
        | {STRUCTURAL_ANY_OF: [{"required": ["choices"]}, {"required": ["low", "high"]}]}
    )

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0)
    log: bool = False
    choices: list[Any] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="categorical: the values (numbers, strings or booleans).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Distribution:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty choices list")
            if self.low is not None or self.high is not None:
                raise ValueError("categorical takes choices, not low/high")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.log and (self.low is None or self.low <= 0):
            raise ValueError("log needs low > 0")
        return self


class Objective(ApiModel):
    metric: str = Field(
        "accuracy", min_length=1, description="A key of the trial's status.metrics."
    )
    direction: Literal["maximize", "minimize"] = "maximize"


class Sampler(ApiModel):
    type: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    seed: int = Field(0, ge=0)


class Pruner(ApiModel):
    type: Literal["median", "hyperband", "none"] = "median"
    warmup_steps: int = Field(0, ge=0, description="Reports before a trial may be pruned.")


def tunable_paths(model: type[BaseModel] = FineTuneJobSpec, prefix: str = "") -> list[str]:
    """Every dotted path to a scalar field of the spec: the legal searchSpace keys."""
    skip = {
        "resources",
        "secrets",
        "volumes",
        "output",
        "image",
        "model",
        "dataset",
        "task",
        "suspend",
        "backoffLimit",
        "activeDeadlineSeconds",
        "quantization",
        "distributed",
        "cache",
        "chatTemplate",
        "promote",
    }
    paths: list[str] = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if not prefix and alias in skip:
            continue
        ann = field.annotation
        sub = _model_of(ann)
        if alias == "teacher":
            continue
        if sub is not None:
            paths += tunable_paths(sub, f"{prefix}{alias}.")
        elif alias not in {"targetModules"}:
            paths.append(prefix + alias)
    return sorted(paths)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


TUNABLE_PATHS = tunable_paths()
# A map literal: `in` on a map is a constant-cost lookup for the apiserver's CEL budget.
_TUNABLE_CEL = "{" + ", ".join(f"'{p}': true" for p in TUNABLE_PATHS) + "}"


SWEEP_PROMOTE_MESSAGE = (
    "a sweep promotes only its best trial: put promote on the sweep's spec, not in template"
)


class HyperparameterSweepSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.parallelism <= self.maxTrials", "parallelism must not exceed maxTrials"),
            ("!has(self.template.promote)", SWEEP_PROMOTE_MESSAGE),
            (
                f"self.searchSpace.all(k, k in {_TUNABLE_CEL})",
                "searchSpace keys must be tunable paths of the template, e.g. "
                "hyperparameters.learningRate or lora.rank",
            ),
        )
    )

    template: FineTuneJobSpec = Field(description="The FineTuneJob spec every trial starts from.")
    objective: Objective = Field(default_factory=Objective)
    search_space: dict[str, Distribution] = Field(
        min_length=1,
        max_length=32,
        description="Dotted paths into template (e.g. hyperparameters.learningRate) "
        "mapped to distributions.",
    )
    sampler: Sampler = Field(default_factory=Sampler)
    pruner: Pruner = Field(default_factory=Pruner)
    max_trials: int = Field(20, ge=1, le=10000)
    parallelism: int = Field(2, ge=1, le=1000)
    max_failed_trials: int = Field(3, ge=0)
    promote: Promote | None = Field(
        None,
        description="Once the sweep succeeds, promote its best trial (and only it) as a "
        "FineTuneJob's spec.promote would; the gate applies to the best trial's metrics.",
    )
    budget: Budget | None = Field(
        None,
        description="A spending limit for the whole sweep, summed over its trials (each "
        "trial's time from its start to its end, x its GPUs, x the operator's price per "
        "GPU-hour for maxCost). Once spent, no new trial starts; running trials finish "
        "(or stop at their own spec.template.budget) and the sweep goes Suspended with "
        "reason BudgetExhausted. Raising it continues the sweep.",
    )

    @model_validator(mode="after")
    def _rules(self) -> HyperparameterSweepSpec:
        if self.parallelism > self.max_trials:
            raise ValueError("parallelism must not exceed maxTrials")
        if self.template.promote is not None:
            raise ValueError(SWEEP_PROMOTE_MESSAGE)
        unknown = sorted(set(self.search_space) - set(TUNABLE_PATHS))
        if unknown:
            raise ValueError(
                f"searchSpace path(s) {', '.join(unknown)} do not exist in the template; "
                f"tunable paths are: {', '.join(TUNABLE_PATHS)}"
            )
        return self

    @field_validator("objective")
    @classmethod
    def _objective_is_reported(cls, objective: Objective, info: ValidationInfo) -> Objective:
        """The objective must be a metric the template's runs report (task_metrics.py):
        a misspelling fails here, before any trial trains (locally and in the operator)."""
        template = info.data.get("template")  # absent when the template itself is invalid
        if isinstance(template, FineTuneJobSpec):
            problem = objective_error(objective.metric, *template_metrics(template))
            if problem:
                raise ValueError(problem)
        return objective


def template_metrics(spec: FineTuneJobSpec) -> tuple[frozenset[str], str]:
    """The metric names a run of `spec` reports (task_metrics.reported_metrics), and the
    run described in words for an error message."""
    lm_eval = spec.evaluation.lm_eval if spec.evaluation else None
    options = [
        name
        for name, on in (
            ("dataset.targetColumn", spec.task is Task.causal_lm and spec.dataset.target_column),
            ("quantization", spec.quantization is not None),
            ("distillation", spec.distillation is not None),
            ("pruning", spec.pruning is not None),
            (f"method {spec.method.type}", spec.method.type != "sft"),
            (
                f"dataset.format {spec.dataset.format.value}",
                spec.dataset.format is not DataFormat.text,
            ),
        )
        if on
    ]
    reported = reported_metrics(
        spec.task.value,
        target_column=spec.dataset.target_column is not None,
        quantization=spec.quantization is not None,
        distillation=spec.distillation is not None,
        pruning_schedule=spec.pruning.effective_schedule if spec.pruning else None,
        method=spec.method.type,
        chat=spec.dataset.format is not DataFormat.text,
        lm_eval_tasks=tuple(lm_eval.tasks) if lm_eval else (),
    )
    what = f"a {spec.task.value} trial" + (f" with {', '.join(options)}" if options else "")
    return reported, what


class TrialCounts(ApiModel):
    total: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    pruned: int = 0


class BestTrial(ApiModel):
    name: str
    value: float
    params: dict[str, Any] = Field(default_factory=dict)


class SweepSpent(ApiModel):
    duration_seconds: float = Field(0.0, description="Trial seconds, summed over trials.")
    gpu_hours: float = Field(0.0, description="GPUs x trial hours, summed over trials.")
    cost: float | None = Field(
        None, description="GPU-hours x the operator's price per GPU-hour (when one is set)."
    )


class HyperparameterSweepStatus(ApiModel):
    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    trials: TrialCounts | None = None
    best_trial: BestTrial | None = None
    spent: SweepSpent | None = Field(
        None, description="What the trials have used so far (with spec.budget)."
    )
    message: str | None = None
    inference_service: ServedModel | None = Field(
        None, description="spec.promote: the InferenceService serving the best trial."
    )


# --------------------------------------------------------------------------- whole objects


class ObjectMeta(BaseModel):
    """The slice of metav1.ObjectMeta we read; anything else is kept, not validated."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class FineTuneJob(ApiModel):
    api_version: Literal["finetune.dev/v1alpha1"] = Field(
        "finetune.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None


class HyperparameterSweep(ApiModel):
    api_version: Literal["finetune.dev/v1alpha1"] = Field(
        "finetune.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["HyperparameterSweep"] = "HyperparameterSweep"
    metadata: ObjectMeta
    spec: HyperparameterSweepSpec
    status: HyperparameterSweepStatus | None = None
