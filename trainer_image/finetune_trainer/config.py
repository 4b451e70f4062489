"""The trainer's configuration: the pod environment and the job spec it names.

The operator hands each pod the FineTuneJob spec (FT_JOB_SPEC as JSON, or
FT_JOB_SPEC_FILE naming a mounted YAML/JSON file) and the pod's place in the
gang; `finetune_api.env.TrainerEnv` defines every variable. The spec is parsed
with the same models the CRD is generated from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from finetune_api.checkpoints import output_uri
from finetune_api.env import EnvError, TrainerEnv
from finetune_api.types import FineTuneJobSpec
from finetune_api.validation import describe_validation_error

from .errors import PermanentError, termination_log


@dataclass(frozen=True, kw_only=True)
class TrainerConfig(TrainerEnv):
    """The environment with the gaps filled from the spec, and the spec itself."""

    spec: FineTuneJobSpec
    num_nodes: int = 1
    procs_per_node: int = 1
    cpu_threads: int = 1
    termination_log: Path

    @property
    def checkpoint_uri(self) -> str:
        return self.spec.checkpoints.uri.rstrip("/")

    @property
    def output_uri(self) -> str:
        return output_uri(self.checkpoint_uri, self.spec.output.uri if self.spec.output else None)

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.procs_per_node


def _load_spec(env: TrainerEnv) -> dict[str, Any]:
    inline, path = TrainerEnv.variable("job_spec"), TrainerEnv.variable("job_spec_file")
    if env.job_spec:
        source, text = inline, env.job_spec
    elif env.job_spec_file:
        source = env.job_spec_file
        try:
            text = Path(source).read_text()
        except OSError as e:
            raise PermanentError(f"{path}: cannot read {source}: {e}") from None
    else:
        raise PermanentError(f"set {inline} (JSON) or {path} (a file path)")
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


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this container may use: its CPU limit (the cgroup quota, v2 or v1), else its
    affinity mask. Without it, every pod of a node would start one thread per host CPU."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cpu_quota(cgroup)
    return min(cpus, max(1, int(quota))) if quota else cpus


def _cpu_quota(cgroup: Path) -> float | None:
    """The CPU limit in CPUs, or None when there is none (or no cgroup to read)."""
    try:
        if (cgroup / "cpu.max").exists():  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
            quota, period = (cgroup / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        v1 = cgroup / "cpu"  # cgroup v1: quota -1 means no limit
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def _at_least(field: str, value: int, minimum: int) -> int:
    if value < minimum:
        name = TrainerEnv.variable(field)
        raise PermanentError(f"{name} must be at least {minimum}, got {value}")
    return value


def from_env(env: Mapping[str, str] | None = None) -> TrainerConfig:
    """Parse the contract; a PermanentError names what is wrong."""
    try:
        base = TrainerEnv.from_env(os.environ if env is None else env)
    except EnvError as e:
        raise PermanentError(str(e)) from None
    raw = _load_spec(base)
    try:
        spec = FineTuneJobSpec.model_validate(raw)
    except ValidationError as e:
        raise PermanentError(describe_validation_error(e, "spec")) from None
    num_nodes = _at_least("num_nodes", base.num_nodes or spec.resources.nodes, 1)
    node_rank = _at_least("node_rank", base.node_rank, 0)
    if node_rank >= num_nodes:
        rank, nodes = TrainerEnv.variable("node_rank"), TrainerEnv.variable("num_nodes")
        raise PermanentError(f"{rank}={node_rank} must be below {nodes}={num_nodes}")
    procs = _at_least("procs_per_node", base.procs_per_node or spec.resources.gpus_per_node, 1)
    for field, minimum in (("master_port", 1), ("attempt", 1), ("metrics_port", 0)):
        _at_least(field, getattr(base, field), minimum)
    _at_least("shard_bytes", base.shard_bytes, 1)
    kept = {f.name: getattr(base, f.name) for f in fields(TrainerEnv)}
    return TrainerConfig(
        **{
            **kept,
            "spec": spec,
            "num_nodes": num_nodes,
            "procs_per_node": procs,
            # In a pod, Kubernetes' terminationMessagePath; elsewhere, the work dir.
            "termination_log": termination_log(env) or base.work_dir / "termination-log",
            "cpu_threads": _at_least(
                "cpu_threads", base.cpu_threads or max(1, available_cpus() // procs), 1
            ),
        }
    )
