"""Names shared by the API, the operator, ftctl and the trainer.

Everything that two components must spell the same way lives here: the API
group and kind, condition types and reasons, label keys and the environment
variables of the trainer contract. Import from here; never repeat a literal.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Final

# --- API identity -----------------------------------------------------------
GROUP: Final = "finetune.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "FineTuneJob"
LIST_KIND: Final = "FineTuneJobList"
PLURAL: Final = "finetunejobs"
SINGULAR: Final = "finetunejob"
SHORT_NAMES: Final = ("ftj",)
CATEGORIES: Final = ("all", "finetune")
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# --- Naming limits ----------------------------------------------------------
# Pods are named "<job>-node-<i>" and use that as their hostname, which must be
# a DNS label (63 characters at most). With up to MAX_NODES nodes the index has
# at most len(str(MAX_NODES - 1)) digits, which bounds the job's own name.
MAX_NODES: Final = 512
NODE_NAME_INFIX: Final = "-node-"
DNS_LABEL_MAX: Final = 63
MAX_JOB_NAME_LENGTH: Final = DNS_LABEL_MAX - len(NODE_NAME_INFIX) - len(str(MAX_NODES - 1))


class Phase(StrEnum):
    """The one-word summary of a job, shown by `kubectl get ftj`."""

    PENDING = "Pending"
    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ConditionType(StrEnum):
    """Condition types a FineTuneJob's status carries."""

    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    UNSCHEDULABLE = "Unschedulable"


class Reason(StrEnum):
    """Reasons on conditions and events (CamelCase, as Kubernetes writes them)."""

    PODS_CREATED = "PodsCreated"
    ALL_PODS_RUNNING = "AllPodsRunning"
    POD_FAILED = "PodFailed"
    POD_DELETED = "PodDeleted"
    RECOVERED = "Recovered"
    TRAINER_ERROR = "TrainerError"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    COMPLETED = "Completed"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    UNSCHEDULABLE = "Unschedulable"
    SCHEDULED = "Scheduled"
    WAITING = "WaitingForPods"
    # Kubelet waiting reasons the operator passes on: bad image, missing Secret, ...
    IMAGE_PULL = "ImagePullFailed"
    CONTAINER_CONFIG = "ContainerConfigError"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


# --- Labels and annotations on what the operator creates ----------------------
LABEL_JOB: Final = f"{GROUP}/job"
LABEL_ROLE: Final = f"{GROUP}/role"
LABEL_NODE_INDEX: Final = f"{GROUP}/node-index"
LABEL_ATTEMPT: Final = f"{GROUP}/attempt"
ROLE_WORKER: Final = "worker"
FIELD_MANAGER: Final = "finetune-operator"
DEFAULT_TRAINER_IMAGE: Final = "finetune/trainer:0.1.0"
SCRATCH_PATH: Final = "/scratch"
SHM_PATH: Final = "/dev/shm"  # noqa: S108 - the pod's memory-backed volume
# Gang scheduling: scheduler-plugins' coscheduling and Volcano.
COSCHEDULING_LABEL: Final = "scheduling.x-k8s.io/pod-group"
VOLCANO_GROUP_ANNOTATION: Final = "scheduling.k8s.io/group-name"


# --- The trainer contract ------------------------------------------------------
# What the operator puts into each training pod's environment, and what the
# trainer reads. docs/trainer.md documents each one.
class Env(StrEnum):
    JOB_NAME = "FT_JOB_NAME"
    JOB_NAMESPACE = "FT_JOB_NAMESPACE"
    # The FineTuneJob spec as JSON, or a path to a YAML/JSON file holding it.
    JOB_SPEC = "FT_JOB_SPEC"
    JOB_SPEC_FILE = "FT_JOB_SPEC_FILE"
    NUM_NODES = "FT_NUM_NODES"
    NODE_RANK = "FT_NODE_RANK"
    MASTER_ADDR = "FT_MASTER_ADDR"
    MASTER_PORT = "FT_MASTER_PORT"
    PROCS_PER_NODE = "FT_PROCS_PER_NODE"
    ATTEMPT = "FT_ATTEMPT"
    METRICS_PORT = "FT_METRICS_PORT"
    WORK_DIR = "FT_WORK_DIR"
    TERMINATION_LOG = "FT_TERMINATION_LOG"
    # "cuda", "cpu" or "auto" (cuda when a GPU is visible).
    DEVICE = "FT_DEVICE"
    # CPU threads per training process (default: the pod's CPUs / processes).
    CPU_THREADS = "FT_CPU_THREADS"
    # Largest byte range of a data file that one shard covers.
    SHARD_BYTES = "FT_SHARD_BYTES"
    # S3 credentials, from the Secret named in spec.s3.credentialsSecret.
    AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
    AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a variable name
    HF_ENDPOINT = "HF_ENDPOINT"
    HF_TOKEN = "HF_TOKEN"  # noqa: S105 - a variable name


METRICS_PORT: Final = 9420
DEFAULT_MASTER_PORT: Final = 29500
TERMINATION_LOG_PATH: Final = "/dev/termination-log"


class ExitCode(IntEnum):
    """How a trainer process ends; the operator decides on retries by it."""

    SUCCESS = 0
    # Configuration or data the trainer cannot use: retrying cannot help.
    PERMANENT = 42
    # Storage, network or peer failures: a new attempt may succeed.
    RETRYABLE = 75
