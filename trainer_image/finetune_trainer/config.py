"""The trainer's one configuration contract, parsed once at start.

The operator hands each pod the FineTuneJob spec (FT_JOB_SPEC as JSON, or
FT_JOB_SPEC_FILE naming a mounted YAML/JSON file) and the pod's place in the
gang (FT_NUM_NODES, FT_NODE_RANK, ...). The spec is parsed with the same
models the CRD is generated from. Names are in finetune_operator.constants.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from finetune_operator.api.types import FineTuneJobSpec
from finetune_operator.api.validation import describe_validation_error
from finetune_operator.constants import (
    DEFAULT_MASTER_PORT,
    METRICS_PORT,
    TERMINATION_LOG_PATH,
    Env,
)

from .errors import PermanentError, termination_log

DEFAULT_SHARD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TrainerConfig:
    """Everything the trainer needs to know, read once from the environment."""

    job_name: str
    namespace: str
    spec: FineTuneJobSpec
    num_nodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT
    procs_per_node: int = 1
    attempt: int = 1
    metrics_port: int = METRICS_PORT
    work_dir: Path = Path("/tmp/finetune")  # noqa: S108 - the pod's scratch volume
    termination_log: Path = Path(TERMINATION_LOG_PATH)
    device: str = "auto"
    shard_bytes: int = DEFAULT_SHARD_BYTES
    cpu_threads: int = 1

    @property
    def checkpoint_uri(self) -> str:
        return self.spec.checkpoints.uri.rstrip("/")

    @property
    def output_uri(self) -> str:
        if self.spec.output is not None:
            return self.spec.output.uri.rstrip("/")
        return f"{self.checkpoint_uri}/final"

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.procs_per_node


def _int(env: Mapping[str, str], name: Env, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PermanentError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise PermanentError(f"{name} must be at least {minimum}, got {value}")
    return value


def _load_spec(env: Mapping[str, str]) -> dict[str, Any]:
    if env.get(Env.JOB_SPEC):
        source, text = Env.JOB_SPEC.value, env[Env.JOB_SPEC]
    elif env.get(Env.JOB_SPEC_FILE):
        source = env[Env.JOB_SPEC_FILE]
        try:
            text = Path(source).read_text()
        except OSError as e:
            raise PermanentError(f"{Env.JOB_SPEC_FILE}: cannot read {source}: {e}") from None
    else:
        raise PermanentError(f"set {Env.JOB_SPEC} (JSON) or {Env.JOB_SPEC_FILE} (a file path)")
    try:
        doc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise PermanentError(f"{source} is not valid JSON or YAML: {e}") from None
    if not isinstance(doc, dict):
        raise PermanentError(f"{source} must hold a FineTuneJob or its spec")
    # A whole FineTuneJob manifest, or just its spec.
    spec = doc.get("spec", doc) if doc.get("kind") == "FineTuneJob" else doc
    if not isinstance(spec, dict):
        raise PermanentError(f"{source}: spec must be a mapping")
    return spec


def available_cpus() -> int:
    """CPUs this container may use: its cgroup quota, else its affinity mask."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cpus


def from_env(env: Mapping[str, str] | None = None) -> TrainerConfig:
    """Parse the contract; a PermanentError names what is wrong."""
    env = os.environ if env is None else env
    raw = _load_spec(env)
    try:
        spec = FineTuneJobSpec.model_validate(raw)
    except ValidationError as e:
        raise PermanentError(describe_validation_error(e, "spec")) from None
    num_nodes = _int(env, Env.NUM_NODES, spec.resources.nodes, 1)
    node_rank = _int(env, Env.NODE_RANK, 0)
    if node_rank >= num_nodes:
        raise PermanentError(
            f"{Env.NODE_RANK}={node_rank} must be below {Env.NUM_NODES}={num_nodes}"
        )
    work_dir = Path(env.get(Env.WORK_DIR, "/tmp/finetune"))  # noqa: S108 - pod scratch
    procs_per_node = _int(env, Env.PROCS_PER_NODE, spec.resources.gpus_per_node, 1)
    return TrainerConfig(
        job_name=env.get(Env.JOB_NAME, "finetune"),
        namespace=env.get(Env.JOB_NAMESPACE, "default"),
        spec=spec,
        num_nodes=num_nodes,
        node_rank=node_rank,
        master_addr=env.get(Env.MASTER_ADDR, "127.0.0.1"),
        master_port=_int(env, Env.MASTER_PORT, DEFAULT_MASTER_PORT, 1),
        procs_per_node=procs_per_node,
        attempt=_int(env, Env.ATTEMPT, 1, 1),
        metrics_port=_int(env, Env.METRICS_PORT, METRICS_PORT, 0),
        work_dir=work_dir,
        # In a pod, Kubernetes' terminationMessagePath; elsewhere, the work dir.
        termination_log=termination_log(env) or work_dir / "termination-log",
        device=env.get(Env.DEVICE, "auto"),
        shard_bytes=_int(env, Env.SHARD_BYTES, DEFAULT_SHARD_BYTES, 1),
        cpu_threads=_int(env, Env.CPU_THREADS, max(1, available_cpus() // procs_per_node), 1),
    )
