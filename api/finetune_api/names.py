"""Names shared by the API, the operator, ftctl and the trainer.

Everything that two components must spell the same way lives here: the API
group and kind, condition types and reasons, label keys, the training pod's
container, paths and ports. The pod environment is in `env`, exit codes and
the termination message in `exits`, the checkpoint layout in `checkpoints`
and metric names in `metrics`. Import from here; never repeat a literal.
"""

from __future__ import annotations

from enum import StrEnum
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
    # An earlier attempt's pod removed from a node whose kubelet stopped reporting.
    NODE_LOST = "NodeLost"
    # The API refused to create a training pod (invalid, or forbidden by admission).
    POD_REJECTED = "PodRejected"


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


# --- The training pod -----------------------------------------------------------
CONTAINER_NAME: Final = "trainer"
# Where the pod mounts the PersistentVolumeClaims of pvc:// URIs (one folder per claim).
PVC_MOUNT_ROOT: Final = "/mnt/pvc"
METRICS_PORT: Final = 9420
# Port names on the pod and the job's Service (a PodMonitor selects the metrics port by name).
METRICS_PORT_NAME: Final = "metrics"
RENDEZVOUS_PORT_NAME: Final = "rendezvous"
DEFAULT_MASTER_PORT: Final = 29500
TERMINATION_LOG_PATH: Final = "/dev/termination-log"


def node_name(job: str, index: int) -> str:
    """The pod (and hostname) of node `index` of a job."""
    return f"{job}{NODE_NAME_INFIX}{index}"
