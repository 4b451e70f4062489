"""The training pod's environment: the one definition that writes and reads it.

The operator (one pod per node), `ftctl run --local` (one node on this machine)
and the trainer all go through `TrainerEnv`: builders call `to_env()`, the
trainer calls `from_env()`. Each field names its variable, its default and what
it means; docs/trainer.md lists them from here (a test keeps the two equal).
Credentials are never fields: they reach the pod only as Secret references
under the names in `SECRET_VARIABLES`, and the libraries that use them (boto3,
huggingface_hub) read them themselves.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Union, get_args, get_origin, get_type_hints

from .names import DEFAULT_MASTER_PORT, METRICS_PORT, PVC_MOUNT_ROOT

DEFAULT_SHARD_BYTES: Final = 64 * 1024 * 1024
# Outside a pod; in a pod the operator points it at the scratch volume.
DEFAULT_WORK_DIR: Final = Path("/tmp/finetune")  # noqa: S108

_PVC_ROOT: Final = Path(PVC_MOUNT_ROOT)

# Credentials, from the Secrets named in spec.s3.credentialsSecret and spec.hub.tokenSecret.
AWS_ACCESS_KEY_ID: Final = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY: Final = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a variable name
HF_TOKEN: Final = "HF_TOKEN"  # noqa: S105 - a variable name
SECRET_VARIABLES: Final = (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, HF_TOKEN)


class EnvError(ValueError):
    """A variable holds a value of the wrong kind; the message names it."""


def var(name: str, default: Any, doc: str) -> Any:
    """A field of the contract: its environment variable, default and meaning."""
    return field(default=default, metadata={"var": name, "doc": doc, "gang": False})


def gang(name: str, default: Any, doc: str) -> Any:
    """A field that places the process in its job's gang (which job, which node, its
    ports and files), as opposed to a setting a user may bring to a local run."""
    return field(default=default, metadata={"var": name, "doc": doc, "gang": True})


@dataclass(frozen=True, kw_only=True)
class TrainerEnv:
    """What one node of a FineTuneJob is told through its environment."""

    job_name: str = gang("FT_JOB_NAME", "finetune", "The FineTuneJob's name (metric labels, logs).")
    namespace: str = gang("FT_JOB_NAMESPACE", "default", "Its namespace.")
    job_spec: str | None = gang("FT_JOB_SPEC", None, "The job's spec as JSON.")
    job_spec_file: str | None = gang(
        "FT_JOB_SPEC_FILE", None, "Or a YAML/JSON file holding the spec (or the whole job)."
    )
    num_nodes: int | None = gang("FT_NUM_NODES", None, "Nodes in the gang (spec.resources.nodes).")
    node_rank: int = gang("FT_NODE_RANK", 0, "This node's machine rank, 0 to nodes-1.")
    master_addr: str = gang("FT_MASTER_ADDR", "127.0.0.1", "Rank 0's address (rendezvous).")
    master_port: int = gang("FT_MASTER_PORT", DEFAULT_MASTER_PORT, "Rank 0's rendezvous port.")
    procs_per_node: int | None = gang(
        "FT_PROCS_PER_NODE",
        None,
        "Training processes on this node (default: processesPerNode, else one per GPU, else 1).",
    )
    attempt: int = gang("FT_ATTEMPT", 1, "The gang's attempt number (status.attempt).")
    metrics_port: int = gang("FT_METRICS_PORT", METRICS_PORT, "Prometheus port; 0 turns it off.")
    work_dir: Path = gang("FT_WORK_DIR", DEFAULT_WORK_DIR, "Scratch space.")
    termination_log: Path | None = gang(
        "FT_TERMINATION_LOG",
        None,
        "Where a failure's one-line reason goes (the pod's terminationMessagePath).",
    )
    grace_seconds: int | None = gang(
        "FT_GRACE_SECONDS",
        None,
        "Seconds from SIGTERM to SIGKILL (the pod's terminationGracePeriodSeconds).",
    )
    device: str = gang("FT_DEVICE", "auto", "cuda, cpu, or auto (cuda when a GPU is visible).")
    cpu_threads: int | None = gang(
        "FT_CPU_THREADS",
        None,
        "CPU threads per training process (default: the CPU limit, else the CPUs, / processes).",
    )
    shard_bytes: int = var(
        "FT_SHARD_BYTES", DEFAULT_SHARD_BYTES, "Largest byte range of a data file in one unit."
    )
    pvc_root: Path = var("FT_PVC_ROOT", _PVC_ROOT, "Where pvc://CLAIM/... volumes are mounted.")
    hf_home: Path | None = var("HF_HOME", None, "Hugging Face cache (the scratch volume in pods).")
    hf_endpoint: str | None = var(
        "HF_ENDPOINT", None, "A Hugging Face Hub mirror (spec.hub.endpoint)."
    )
    hf_hub_offline: bool = var(
        "HF_HUB_OFFLINE", False, "1: never contact the Hub (local runs that need nothing from it)."
    )
    aws_region: str | None = var(
        "AWS_REGION", None, "S3 region when spec.s3.region is unset (default us-east-1)."
    )
    s3_attempts: int = var("FT_S3_ATTEMPTS", 5, "Attempts per S3 request (botocore's retries).")
    s3_connect_timeout: float = var(
        "FT_S3_CONNECT_TIMEOUT", 10.0, "Seconds to wait for an S3 connection."
    )

    TRUE: ClassVar = ("1", "true", "yes", "on")

    def to_env(self) -> dict[str, str]:
        """The variables to set: every gang field that has a value (a pod states its
        place in full), and each setting that differs from its default (so that a
        user's own setting is not overwritten by a default)."""
        out: dict[str, str] = {}
        for f, _ in _fields():
            value = getattr(self, f.name)
            if value is not None and (f.metadata["gang"] or value != f.default):
                out[f.metadata["var"]] = _text(value)
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainerEnv:
        """Read the variables (unset or empty: the default); EnvError names a bad one."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f, kind in _fields():
            raw = env.get(f.metadata["var"], "")
            if raw != "":
                values[f.name] = _parse(f.metadata["var"], raw, kind)
        return cls(**values)

    @staticmethod
    def variable(name: str) -> str:
        """The environment variable of a field."""
        return str(_field(name)[0].metadata["var"])

    @classmethod
    def read(cls, name: str, env: Mapping[str, str] | None = None) -> Any:
        """One field from the environment (its default when unset), leaving the others
        unread: for code that needs one setting, such as where failures are recorded."""
        env = os.environ if env is None else env
        f, kind = _field(name)
        raw = env.get(f.metadata["var"], "")
        return f.default if raw == "" else _parse(f.metadata["var"], raw, kind)


def without_gang(env: Mapping[str, str]) -> dict[str, str]:
    """An environment less the variables that place a process in a gang (the job, its
    nodes and ranks, its ports and files), keeping the user's own settings (Hub,
    S3, caches) for a run that sets its place itself."""
    placing = {f.metadata["var"] for f, _ in _fields() if f.metadata["gang"]}
    return {k: v for k, v in env.items() if k not in placing}


def variables() -> Iterator[tuple[str, str | None, str]]:
    """(variable, default as written, meaning) for each field, then the credentials."""
    for f, _ in _fields():
        yield f.metadata["var"], None if f.default is None else _text(f.default), f.metadata["doc"]
    yield AWS_ACCESS_KEY_ID, None, "S3 access key, from spec.s3.credentialsSecret."
    yield AWS_SECRET_ACCESS_KEY, None, "S3 secret key, from the same Secret."
    yield HF_TOKEN, None, "Hub token, from spec.hub.tokenSecret."


@functools.cache
def _fields() -> tuple[tuple[dataclasses.Field[Any], type], ...]:
    """Each field with the type its variable parses to (Optional unwrapped)."""
    hints = get_type_hints(TrainerEnv)
    out = []
    for f in dataclasses.fields(TrainerEnv):
        kind = hints[f.name]
        if get_origin(kind) in (Union, types.UnionType):
            kind = next(a for a in get_args(kind) if a is not type(None))
        out.append((f, kind))
    return tuple(out)


def _field(name: str) -> tuple[dataclasses.Field[Any], type]:
    return next((f, kind) for f, kind in _fields() if f.name == name)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _parse(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        return raw.strip().lower() in TrainerEnv.TRUE
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise EnvError(f"{name} must be {what}, got {raw!r}") from None
    return kind(raw)
