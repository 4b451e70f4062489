"""Names shared by the API, the operator, ftctl and the trainer.

Everything that two components must spell the same way lives here: the API
group and kind, condition types and reasons, label keys and the environment
variables of the trainer contract. Import from here; never repeat a literal.
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


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"
