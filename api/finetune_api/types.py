"""The FineTuneJob API (finetune.dev/v1alpha1): the one source of truth.

The CRD under manifests/ and the chart is generated from these models
(`make generate`); ftctl validates with them and the trainer parses its
configuration with them. Field names follow Hugging Face `TrainingArguments`
in camelCase wherever an equivalent exists.

Every field carries a description (it is what `kubectl explain` prints), and
every cross-field check is a CEL rule whose message names the field.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from .base import ApiModel, Rule, cel, immutable
from .env import AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, HF_TOKEN
from .k8s_types import Affinity, LocalObjectReference, Toleration
from .names import (
    MAX_JOB_NAME_LENGTH,
    MAX_NODES,
    ConditionStatus,
    ConditionType,
    Phase,
)
from .validation import RULE_ERROR

URI_MAX = 2048
NAME_MAX = 253
LIST_MAX = 64


class IntOrString:
    """Marks a field that takes an integer or a string (a Kubernetes quantity)."""


# The Kubernetes quantity grammar (resource.Quantity), unsigned: a number, then a binary
# (Ki..Ei) or decimal (m, k..E) suffix or an exponent.
QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[KMGTPE]i|[mkMGTPE])?$"
_QUANTITY_NUMBER = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
QUANTITY_EXAMPLES = "16, 1500m or 200Gi"
# Long enough to commit a checkpoint of a model of a few billion parameters on SIGTERM.
DEFAULT_GRACE_SECONDS = 120
# Outlasts a store's (or the Hub's) restart or a short partition; longer costs an attempt.
DEFAULT_RETRY_SECONDS = 300
# A step of a large model with gradient accumulation takes minutes at most.
DEFAULT_PROGRESS_DEADLINE_SECONDS = 900
# Long enough for every pod of a gang to pull its image and start.
DEFAULT_RENDEZVOUS_SECONDS = 900
# Room for a 7B model's download and one fp32 checkpoint with its optimizer state (~100 GB).
DEFAULT_SCRATCH = "200Gi"


QUANTITY_MESSAGE = f"must be a positive quantity such as {QUANTITY_EXAMPLES}"


def _positive_quantity(value: int | str) -> int | str:
    """The same check as quantity_rule's, with its message, for files that never reach an
    apiserver (cel-python has no quantity functions)."""
    text = str(value)
    number = re.match(_QUANTITY_NUMBER, text)
    if not re.match(QUANTITY, text) or number is None or float(number.group()) <= 0:
        raise PydanticCustomError(RULE_ERROR, QUANTITY_MESSAGE)
    return value


Quantity = Annotated[int | str, IntOrString(), AfterValidator(_positive_quantity)]


def quantity_rule(path: str) -> Rule:
    """CEL's quantity library (the apiserver's own parser) on an int-or-string field."""
    return Rule(
        "type(self) == int ? self > 0 : "
        "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
        f"{path} {QUANTITY_MESSAGE}",
    )


# Pieces of the URI rules, in the RE2 syntax CEL uses (Python's re agrees).
_S3_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_HF_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
S3_URI = rf"^s3://{_S3_BUCKET}(/.*)?$"
S3_URI_NO_GLOB = rf"^s3://{_S3_BUCKET}(/[^*?\[\]]*)?$"
FILE_URI = r"^file:///.*$"
PVC_URI = rf"^pvc://{_DNS_LABEL}(/.*)?$"
HF_URI = rf"^hf://{_HF_ID}$"
HTTPS_URI = r"^https://[^/\s]+(/\S*)?$"


def matches(regex: str) -> str:
    """A CEL `self.matches(...)` call, with the regex quoted as a CEL string."""
    quoted = regex.replace("\\", "\\\\").replace("'", "\\'")
    return f"self.matches('{quoted}')"


def _uri_rule(path: str, regexes: list[str], shapes: str) -> Rule:
    rule = " || ".join(matches(r) for r in regexes)
    return Rule(rule, f"{path} must be {shapes}")


def _no_blank_items(path: str) -> Rule:
    return Rule("self.all(x, x.size() > 0)", f"{path} must not contain empty strings")


class ModelSpec(ApiModel):
    """The pretrained model to fine-tune."""

    uri: str = Field(
        max_length=URI_MAX,
        description=(
            "Where the pretrained model comes from: hf://ORG/NAME (the Hugging Face Hub), "
            "s3://BUCKET/PREFIX (a save_pretrained folder), file:///PATH inside the image, "
            "or pvc://CLAIM/PATH on a PersistentVolumeClaim."
        ),
        json_schema_extra=cel(
            _uri_rule(
                "spec.model.uri",
                [HF_URI, S3_URI_NO_GLOB, FILE_URI, PVC_URI],
                "hf://ORG/NAME, s3://BUCKET/PREFIX, file:///PATH or pvc://CLAIM/PATH",
            )
        ),
    )
    revision: str | None = Field(
        default=None,
        max_length=NAME_MAX,
        description="Hub revision (branch, tag or commit) for hf:// models.",
    )
    task: Literal["sequence-classification"] = Field(
        default="sequence-classification",
        description="What the model is fine-tuned for. Only sequence-classification for now.",
    )
    num_labels: int = Field(
        default=2,
        ge=2,
        le=10000,
        description="Number of classes; labels in the data are integers 0..numLabels-1.",
    )
    label_names: list[str] | None = Field(
        default=None,
        max_length=10000,
        description=(
            "Readable class names, index i for label i; saved as id2label in the model config."
        ),
        json_schema_extra={"items": {"maxLength": NAME_MAX}},
    )
    trust_remote_code: bool = Field(
        default=False,
        description=(
            "Allow the model repository to run its own Python code. Off unless you trust it."
        ),
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.labelNames) || self.labelNames.size() == self.numLabels",
            "spec.model.labelNames must have exactly numLabels entries",
            field_path=".labelNames",
        ),
    )


DatasetFormat = Literal["auto", "jsonl", "csv", "tsv", "parquet", "arrow"]


class DatasetSpec(ApiModel):
    """The labelled text to train and evaluate on."""

    uri: str = Field(
        max_length=URI_MAX,
        description=(
            "Where the data is: hf://DATASET (the Hub, with `config` for a subset), "
            "s3://BUCKET/KEY with globs (s3://b/data/*.jsonl), https://HOST/FILE, or "
            "file:///PATH. Directories and globs are read as one dataset."
        ),
        json_schema_extra=cel(
            _uri_rule(
                "spec.dataset.uri",
                [HF_URI, S3_URI, HTTPS_URI, FILE_URI, PVC_URI],
                "hf://DATASET, s3://BUCKET/KEY (globs allowed), https://HOST/PATH, "
                "file:///PATH or pvc://CLAIM/PATH",
            )
        ),
    )
    config: str | None = Field(
        default=None,
        max_length=NAME_MAX,
        description="Dataset configuration (subset) for hf:// datasets, e.g. mrpc for glue.",
    )
    revision: str | None = Field(
        default=None,
        max_length=NAME_MAX,
        description="Hub revision (branch, tag or commit) for hf:// datasets; main by default.",
    )
    format: DatasetFormat = Field(
        default="auto",
        description=(
            "File format; auto picks it from the file extension (.gz, .zst, .bz2 and .xz "
            "compressed too) and finds save_to_disk folders by their state.json or "
            "dataset_dict.json; arrow requires such a folder."
        ),
    )
    text_columns: list[str] = Field(
        max_length=2,
        description="One text column, or two for sentence pairs (e.g. [sentence1, sentence2]).",
        json_schema_extra={
            "items": {"maxLength": NAME_MAX},
            **cel(
                Rule(
                    "self.size() >= 1",
                    "spec.dataset.textColumns must name one text column, or two for sentence pairs",
                ),
                _no_blank_items("spec.dataset.textColumns"),
            ),
        },
    )
    label_column: str = Field(
        default="label",
        min_length=1,
        max_length=NAME_MAX,
        description=(
            "Column holding the class label: an integer, a ClassLabel, or one of model.labelNames."
        ),
    )
    train_split: str = Field(
        default="train",
        max_length=NAME_MAX,
        description=(
            "Split to train on: a save_to_disk DatasetDict's split, an hf:// dataset's, or "
            "a file name stem for directories."
        ),
    )
    eval_split: str | None = Field(
        default=None,
        max_length=NAME_MAX,
        description="Split to evaluate on. Leave empty and set evalFraction to hold out data.",
    )
    eval_fraction: float | None = Field(
        default=None,
        description="Fraction of the training data held out for evaluation, e.g. 0.1.",
        json_schema_extra=cel(
            Rule(
                "self > 0.0 && self < 1.0",
                "spec.dataset.evalFraction must be between 0 and 1 (exclusive), e.g. 0.1",
            )
        ),
    )
    max_seq_length: int = Field(
        default=128,
        ge=8,
        le=32768,
        description="Longer examples are truncated to this many tokens.",
    )
    streaming: bool = Field(
        default=True,
        description="Stream the training data instead of downloading it all first.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!(has(self.evalSplit) && has(self.evalFraction))",
            "spec.dataset: set evalSplit or evalFraction, not both",
            field_path=".evalFraction",
        ),
        Rule(
            "!has(self.evalSplit) || self.evalSplit != self.trainSplit",
            "spec.dataset.evalSplit must differ from trainSplit (use evalFraction to hold "
            "out part of one split)",
            field_path=".evalSplit",
        ),
    )


SchedulerType = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
EvalStrategy = Literal["no", "steps", "epoch"]
BestMetric = Literal["accuracy", "f1", "precision", "recall", "loss"]


class TrainingSpec(ApiModel):
    """Optimisation settings, named after Hugging Face TrainingArguments."""

    num_train_epochs: float = Field(
        default=3.0,
        description="Passes over the training data. maxSteps, when set, takes precedence.",
        json_schema_extra=cel(
            Rule(
                "self > 0.0 && self <= 10000.0",
                "spec.training.numTrainEpochs must be greater than 0 (and at most 10000)",
            )
        ),
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="Total optimizer steps; overrides numTrainEpochs when set.",
    )
    learning_rate: float = Field(
        default=5e-5,
        description="Peak learning rate of AdamW.",
        json_schema_extra=cel(
            Rule(
                "self > 0.0 && self <= 1.0",
                "spec.training.learningRate must be greater than 0 and at most 1 (e.g. 5e-5)",
            )
        ),
    )
    per_device_train_batch_size: int = Field(
        default=8,
        ge=1,
        le=65536,
        description=(
            "Training examples per GPU per step; without GPUs the processes share the "
            "batch of nodes x gpusPerNode GPUs."
        ),
    )
    per_device_eval_batch_size: int = Field(
        default=8, ge=1, le=65536, description="Evaluation examples per GPU (shared likewise)."
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=65536, description="Micro-batches accumulated per optimizer step."
    )
    weight_decay: float = Field(
        default=0.0,
        description="AdamW weight decay (0.01 is common).",
        json_schema_extra=cel(
            Rule(
                "self >= 0.0 && self < 1.0",
                "spec.training.weightDecay must be at least 0 and below 1",
            )
        ),
    )
    warmup_steps: int = Field(
        default=0, ge=0, description="Linear warm-up steps; overrides warmupRatio when set."
    )
    warmup_ratio: float = Field(
        default=0.0,
        description="Fraction of the total steps used for warm-up.",
        json_schema_extra=cel(
            Rule(
                "self >= 0.0 && self < 1.0",
                "spec.training.warmupRatio must be at least 0 and below 1",
            )
        ),
    )
    lr_scheduler_type: SchedulerType = Field(
        default="linear", description="Learning-rate schedule after warm-up."
    )
    precision: Precision = Field(
        default="auto",
        description=(
            "Numeric precision: bf16, fp16 or fp32; auto uses bf16 on GPUs that support it and "
            "on CPUs with bf16 instructions (avx512_bf16, AMX), else fp32. bf16 on a CPU "
            "without them, or fp16 without a GPU, is refused at start."
        ),
    )
    group_by_length: bool = Field(
        default=False,
        description=(
            "Batch examples of similar length together (sorted within windows of 50 steps "
            "of each process's stream, the steps in a seeded random order): far less padding, "
            "the same examples every epoch, but it can cost accuracy, so it is off by "
            "default, as in transformers. false keeps the stream's order."
        ),
    )
    padding_free: bool = Field(
        default=True,
        description=(
            "Train without computing padding: each batch's real tokens run as one row, and "
            "only attention sees the padded batch. The same arithmetic and data order as "
            "padded training, with less work. Applies to BERT-family models (model_type "
            "bert, such as MiniLM); others train padded. false pads every batch."
        ),
    )
    max_grad_norm: float = Field(
        default=1.0,
        description="Gradient clipping norm; 0 turns clipping off.",
        json_schema_extra=cel(
            Rule("self >= 0.0", "spec.training.maxGradNorm must be 0 (off) or positive")
        ),
    )
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Random seed.")
    eval_strategy: EvalStrategy = Field(
        default="epoch",
        description="When to evaluate: no, every evalSteps steps, or at each epoch's end.",
    )
    eval_steps: int | None = Field(
        default=None, ge=1, description="Steps between evaluations when evalStrategy is steps."
    )
    logging_steps: int = Field(
        default=10, ge=1, description="Steps between progress lines and metric updates."
    )
    metric_for_best_model: BestMetric = Field(
        default="f1",
        description="Evaluation metric that decides the best checkpoint (loss: lower is better).",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            # has() guards: the CRD's `default: {}` is checked before nested defaults apply.
            "!has(self.evalStrategy) || self.evalStrategy != 'steps' || has(self.evalSteps)",
            "spec.training.evalSteps is required when evalStrategy is steps",
            field_path=".evalSteps",
        ),
    )


class ResourcesSpec(ApiModel):
    """How many nodes and GPUs the job uses, and what each pod gets."""

    nodes: int = Field(
        default=1,
        description="Number of nodes (pods); one machine rank each.",
        json_schema_extra=cel(
            Rule(
                f"self >= 1 && self <= {MAX_NODES}",
                f"spec.resources.nodes must be between 1 and {MAX_NODES}",
            )
        ),
    )
    gpus_per_node: int = Field(
        default=1,
        description=(
            "GPUs per node; one training process runs per GPU. Total GPUs = nodes x gpusPerNode."
        ),
        json_schema_extra=cel(
            Rule(
                "self >= 1 && self <= 64",
                "spec.resources.gpusPerNode must be between 1 and 64",
            )
        ),
    )
    processes_per_node: int | None = Field(
        default=None,
        description=(
            "Training processes per node. Default: one per GPU; on a node without GPUs, one "
            "process that uses all of the pod's CPUs. The global batch stays "
            "perDeviceTrainBatchSize x gradientAccumulationSteps x nodes x gpusPerNode "
            "whatever the number of processes."
        ),
        json_schema_extra=cel(
            Rule(
                "self >= 1 && self <= 64",
                "spec.resources.processesPerNode must be between 1 and 64",
            )
        ),
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=NAME_MAX,
        description="Extended resource that GPUs are requested as.",
        json_schema_extra=cel(
            Rule(
                matches(
                    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$"
                ),
                "spec.resources.gpuResourceName must be a resource name like nvidia.com/gpu",
            )
        ),
    )
    cpu: Quantity | None = Field(
        default=None,
        description="CPU request and limit per pod, e.g. 16 or 15500m.",
        json_schema_extra=cel(quantity_rule("spec.resources.cpu")),
    )
    memory: Quantity | None = Field(
        default=None,
        description="Memory request and limit per pod, e.g. 200Gi.",
        json_schema_extra=cel(quantity_rule("spec.resources.memory")),
    )
    shared_memory: Quantity | None = Field(
        default=None,
        description="Size of the memory-backed /dev/shm of each pod (default: half of memory).",
        json_schema_extra=cel(quantity_rule("spec.resources.sharedMemory")),
    )
    scratch: Quantity = Field(
        default=DEFAULT_SCRATCH,
        description=(
            "Size limit of each pod's /scratch volume (the downloaded model, the Hugging Face "
            "cache, the final model on its way to storage); the kubelet evicts a pod that "
            f"writes more. Default {DEFAULT_SCRATCH}."
        ),
        json_schema_extra=cel(quantity_rule("spec.resources.scratch")),
    )


class SchedulingSpec(ApiModel):
    """Where the training pods may run."""

    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels every training pod requires."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=LIST_MAX, description="Tolerations for tainted (GPU) nodes."
    )
    affinity: Affinity | None = Field(default=None, description="Affinity rules for the pods.")
    priority_class_name: str | None = Field(
        default=None, max_length=NAME_MAX, description="PriorityClass of the training pods."
    )
    scheduler_name: str | None = Field(
        default=None,
        max_length=NAME_MAX,
        description="Scheduler for the pods, e.g. a gang scheduler (volcano, scheduler-plugins).",
    )


class PodSpec(ApiModel):
    """The trainer container."""

    image: str | None = Field(
        default=None,
        max_length=URI_MAX,
        description="Trainer image; the operator's default image when empty.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="When the kubelet pulls the image."
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, max_length=LIST_MAX, description="Secrets for pulling the image."
    )
    service_account_name: str | None = Field(
        default=None, max_length=NAME_MAX, description="ServiceAccount the pods run as."
    )
    termination_grace_period_seconds: int = Field(
        default=DEFAULT_GRACE_SECONDS,
        ge=1,
        le=86400,
        description=(
            "Seconds a stopping pod (suspend, preemption, deletion, drain) has before it is "
            "killed; the trainer commits a checkpoint in them when the last one took less."
        ),
    )


class SecretKeys(ApiModel):
    """A Secret holding S3 credentials, and the keys inside it."""

    name: str = Field(
        max_length=NAME_MAX, description="Name of the Secret, in the job's namespace."
    )
    access_key_id_key: str = Field(
        default=AWS_ACCESS_KEY_ID,
        max_length=NAME_MAX,
        description="Key of the access key ID in the Secret.",
    )
    secret_access_key_key: str = Field(
        default=AWS_SECRET_ACCESS_KEY,
        max_length=NAME_MAX,
        description="Key of the secret access key in the Secret.",
    )


_INLINE_CREDENTIAL_FIELDS = ("accessKeyId", "secretAccessKey", "sessionToken")


class S3Spec(ApiModel):
    """How to reach S3 (or an S3-compatible store) for every s3:// URI of the job."""

    endpoint: str | None = Field(
        default=None,
        max_length=URI_MAX,
        description="Endpoint URL of an S3-compatible store, e.g. https://minio.storage:9000.",
        json_schema_extra=cel(
            Rule(
                matches(r"^https?://[^/\s]+/?$"),
                "spec.s3.endpoint must be a URL like https://HOST:PORT, with no path",
            )
        ),
    )
    region: str | None = Field(
        default=None, max_length=NAME_MAX, description="S3 region, e.g. us-east-1."
    )
    force_path_style: bool = Field(
        default=False,
        description="Address buckets as ENDPOINT/BUCKET (most S3-compatible stores need it).",
    )
    credentials_secret: SecretKeys | None = Field(
        default=None,
        description=(
            "Secret with the S3 credentials. Without it, the pod's own identity is used "
            "(e.g. IAM roles for service accounts)."
        ),
    )
    retry_seconds: int = Field(
        default=DEFAULT_RETRY_SECONDS,
        ge=0,
        le=86400,
        description=(
            "Seconds the trainer keeps retrying an S3 operation while the store is "
            "unreachable or overloaded (connection errors, timeouts, 5xx, throttling), "
            "from its first failure; then the attempt ends with a retryable error and the "
            "operator starts another after its backoff. 0: botocore's few retries only."
        ),
    )
    # Not settings: present only so that a key pasted inline is refused with a
    # message instead of being silently pruned. CEL rules below reject them.
    access_key_id: str | None = Field(
        default=None,
        max_length=URI_MAX,
        description="Not allowed: put credentials in a Secret and set credentialsSecret.",
    )
    secret_access_key: str | None = Field(
        default=None,
        max_length=URI_MAX,
        description="Not allowed: put credentials in a Secret and set credentialsSecret.",
    )
    session_token: str | None = Field(
        default=None,
        max_length=URI_MAX,
        description="Not allowed: put credentials in a Secret and set credentialsSecret.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = tuple(
        Rule(
            f"!has(self.{f})",
            f"spec.s3.{f} must not be set: credentials never go inline; store them in a "
            "Secret and set spec.s3.credentialsSecret.name",
            field_path=f".{f}",
            reason="FieldValueForbidden",
        )
        for f in _INLINE_CREDENTIAL_FIELDS
    )


class TokenSecret(ApiModel):
    """A Secret holding a Hugging Face access token, and its key."""

    name: str = Field(
        max_length=NAME_MAX, description="Name of the Secret, in the job's namespace."
    )
    key: str = Field(
        default=HF_TOKEN, max_length=NAME_MAX, description="Key of the token in the Secret."
    )


class HubSpec(ApiModel):
    """How to reach the Hugging Face Hub (or a mirror) for every hf:// URI of the job."""

    endpoint: str | None = Field(
        default=None,
        max_length=URI_MAX,
        description="A Hub mirror's URL (HF_ENDPOINT), e.g. https://hf-mirror.internal.",
        json_schema_extra=cel(
            Rule(
                matches(r"^https?://[^/\s]+(/\S*)?$"),
                "spec.hub.endpoint must be a URL like https://HOST[:PORT][/PATH]",
            )
        ),
    )
    retry_seconds: int = Field(
        default=DEFAULT_RETRY_SECONDS,
        ge=0,
        le=86400,
        description=(
            "Seconds the trainer keeps retrying a Hub call while the Hub is unreachable or "
            "failing (connection errors, timeouts, 5xx, 429), from its first failure; then "
            "the attempt ends with a retryable error. 0: one try, no retry."
        ),
    )
    token_secret: TokenSecret | None = Field(
        default=None,
        description="Secret with a token for gated or private models and datasets (HF_TOKEN).",
    )
    # Not a setting: present only so that a token pasted inline is refused with a
    # message instead of being silently pruned.
    token: str | None = Field(
        default=None,
        max_length=URI_MAX,
        description="Not allowed: put the token in a Secret and set tokenSecret.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.token)",
            "spec.hub.token must not be set: tokens never go inline; store it in a Secret "
            "and set spec.hub.tokenSecret.name",
            field_path=".token",
            reason="FieldValueForbidden",
        ),
    )


class CheckpointSpec(ApiModel):
    """Where and how often training state is saved, so a failed job resumes."""

    uri: str = Field(
        max_length=URI_MAX,
        description=(
            "Prefix the job's checkpoints go under: s3://BUCKET/PREFIX, or file:///PATH or "
            "pvc://CLAIM/PATH for a shared volume."
        ),
        json_schema_extra=cel(
            _uri_rule(
                "spec.checkpoints.uri",
                [S3_URI_NO_GLOB, FILE_URI, PVC_URI],
                "s3://BUCKET/PREFIX (bucket: 3-63 lowercase letters, digits, dots or dashes; "
                "no wildcards), file:///PATH or pvc://CLAIM/PATH",
            )
        ),
    )
    save_steps: int | None = Field(
        default=500, ge=1, description="Optimizer steps between checkpoints."
    )
    save_minutes: int | None = Field(
        default=None,
        ge=1,
        description="Minutes between checkpoints; with saveSteps, whichever comes first.",
    )
    save_total_limit: int = Field(
        default=3, ge=1, le=1000, description="Committed checkpoints to keep (newest first)."
    )
    keep_best: bool = Field(
        default=False,
        description="Also keep the checkpoint with the best metricForBestModel.",
    )
    on_corrupt: Literal["fail", "restart"] = Field(
        default="fail",
        description=(
            "When checkpoints exist but none verifies against its manifest: fail the job "
            "with a reason naming them, or restart training from step 0."
        ),
    )


class OutputSpec(ApiModel):
    """Where the fine-tuned model goes."""

    uri: str = Field(
        max_length=URI_MAX,
        description=(
            "Destination of the final model and tokenizer (save_pretrained layout): "
            "s3://BUCKET/PREFIX, file:///PATH or pvc://CLAIM/PATH."
        ),
        json_schema_extra=cel(
            _uri_rule(
                "spec.output.uri",
                [S3_URI_NO_GLOB, FILE_URI, PVC_URI],
                "s3://BUCKET/PREFIX, file:///PATH or pvc://CLAIM/PATH",
            )
        ),
    )


class RunPolicy(ApiModel):
    """Retries, deadlines and clean-up."""

    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="Restarts of the whole gang after failures before the job is Failed.",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Seconds the job may run in total before it is stopped and Failed.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=604800,
        ge=0,
        description="Seconds after it finishes that the job is deleted (default 7 days).",
    )
    progress_deadline_seconds: int = Field(
        default=DEFAULT_PROGRESS_DEADLINE_SECONDS,
        ge=10,
        le=86400,
        description=(
            "Seconds a training process may go without finishing an optimizer step, once "
            "it has finished one (evaluation and checkpoint saves stop the clock); then the "
            "attempt ends, naming the rank that stopped, and the gang restarts."
        ),
    )
    rendezvous_timeout_seconds: int = Field(
        default=DEFAULT_RENDEZVOUS_SECONDS,
        ge=10,
        le=86400,
        description=(
            "Seconds the nodes of an attempt wait for each other at start (a pod that "
            "never starts, or cannot reach node 0); then the attempt ends and the gang "
            "restarts. A collective operation between processes is bounded by this plus "
            "progressDeadlineSeconds."
        ),
    )


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, on what data, with which resources."""

    model: ModelSpec = Field(
        description="The pretrained model.",
        json_schema_extra=cel(immutable("spec.model")),
    )
    dataset: DatasetSpec = Field(
        description="The training and evaluation data.",
        json_schema_extra=cel(immutable("spec.dataset")),
    )
    training: TrainingSpec = Field(
        default_factory=TrainingSpec,
        description="Optimisation settings (Hugging Face TrainingArguments names).",
        json_schema_extra=cel(immutable("spec.training")),
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Nodes, GPUs, CPU and memory."
    )
    scheduling: SchedulingSpec | None = Field(
        default=None, description="Node selector, tolerations, affinity and priority."
    )
    pod: PodSpec = Field(
        default_factory=PodSpec, description="Trainer image, pull policy and service account."
    )
    s3: S3Spec | None = Field(
        default=None, description="S3 endpoint, region and credentials for every s3:// URI."
    )
    hub: HubSpec | None = Field(
        default=None, description="Hugging Face Hub mirror and token for every hf:// URI."
    )
    checkpoints: CheckpointSpec = Field(
        description="Checkpoint location and schedule.",
        json_schema_extra=cel(
            Rule(
                "self.uri == oldSelf.uri",
                "spec.checkpoints.uri is immutable: the job resumes from it",
                field_path=".uri",
                reason="FieldValueForbidden",
            )
        ),
    )
    output: OutputSpec | None = Field(
        default=None,
        description="Where the final model goes (default: CHECKPOINTS_URI/final).",
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="Retries, deadline and clean-up."
    )
    suspend: bool = Field(
        default=False,
        description="True stops the job's pods and keeps the job (queues like Kueue use it).",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.s3) || !has(self.s3.endpoint) || "
            "self.checkpoints.uri.startsWith('s3://') || "
            "self.dataset.uri.startsWith('s3://') || self.model.uri.startsWith('s3://') || "
            "(has(self.output) && self.output.uri.startsWith('s3://'))",
            "spec.s3 is set but no URI of the job uses s3://",
            field_path=".s3",
        ),
    )


class Condition(ApiModel):
    """An observation of one aspect of the job, in the standard Kubernetes shape."""

    type: ConditionType = Field(description="Condition type, e.g. Running or Failed.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last change.")
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was set for."
    )


class Progress(ApiModel):
    """Training progress, read from the rank-0 pod's metrics."""

    step: int | None = Field(default=None, description="Optimizer steps completed.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, description="Epochs completed (fractional).")
    loss: float | None = Field(default=None, description="Latest training loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    eval_metrics: dict[str, float] | None = Field(
        default=None, description="Latest evaluation metrics, e.g. accuracy and f1."
    )
    samples_per_second: float | None = Field(
        default=None, description="Training throughput over all GPUs."
    )
    eta_seconds: int | None = Field(default=None, description="Estimated seconds left.")
    updated_at: datetime | None = Field(default=None, description="When progress was read.")


class CheckpointRef(ApiModel):
    """A committed checkpoint."""

    uri: str = Field(max_length=URI_MAX, description="Where the checkpoint is.")
    step: int = Field(description="Global step the checkpoint was taken at.")
    time: datetime | None = Field(default=None, description="When it was committed.")


class FineTuneJobStatus(ApiModel):
    """What the operator observed. Written only through the status subresource."""

    phase: Phase | None = Field(default=None, description="One-word state of the job.")
    conditions: list[Condition] | None = Field(
        default=None,
        max_length=32,
        description="Typed conditions with reason and message.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    start_time: datetime | None = Field(default=None, description="When the job started.")
    completion_time: datetime | None = Field(
        default=None, description="When the job succeeded or failed."
    )
    restart_count: int | None = Field(
        default=None, description="Times the gang was restarted after a failure."
    )
    attempt: int | None = Field(default=None, description="Current attempt, 1 for the first run.")
    next_attempt_time: datetime | None = Field(
        default=None,
        description="While Restarting: when the next attempt's pods are created (the backoff).",
    )
    progress: Progress | None = Field(default=None, description="Training progress.")
    last_checkpoint: CheckpointRef | None = Field(
        default=None, description="The newest committed checkpoint."
    )


class ObjectMeta(ApiModel):
    """The parts of metadata a FineTuneJob manifest sets."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str | None = Field(default=None, description="Job name.")
    namespace: str | None = Field(default=None, description="Namespace.")
    labels: dict[str, str] | None = Field(default=None, description="Labels.")
    annotations: dict[str, str] | None = Field(default=None, description="Annotations.")


class FineTuneJob(ApiModel):
    """A fine-tuning run of a Hugging Face model on a gang of GPU pods."""

    api_version: Literal["finetune.dev/v1alpha1"] = Field(
        default="finetune.dev/v1alpha1", description="finetune.dev/v1alpha1"
    )
    kind: Literal["FineTuneJob"] = Field(default="FineTuneJob", description="FineTuneJob")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard metadata.")
    spec: FineTuneJobSpec = Field(description="What to fine-tune and how.")
    status: FineTuneJobStatus | None = Field(default=None, description="Observed state.")

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> FineTuneJob:
        """Parse an object as the apiserver returns it (metadata is passed through)."""
        return cls.model_validate(obj)


NAME_RULE = Rule(
    f"self.metadata.name.size() <= {MAX_JOB_NAME_LENGTH} && "
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
    f"metadata.name must be at most {MAX_JOB_NAME_LENGTH} characters of lowercase letters, "
    "digits and '-', starting with a letter (pods are named NAME-node-INDEX)",
)
