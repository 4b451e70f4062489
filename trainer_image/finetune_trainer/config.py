"""The trainer's configuration: the pod environment and the job spec it names.

The operator hands each pod the FineTuneJob spec (FT_JOB_SPEC as JSON, or
FT_JOB_SPEC_FILE naming a mounted YAML/JSON file) and the pod's place in the
gang; `finetune_api.env.TrainerEnv` defines every variable. The spec is parsed
with the same models the CRD is generated from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
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
    micro_batch: int = 1  # examples per process in each forward/backward pass
    eval_batch: int = 1
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

    @property
    def spare_cpu(self) -> bool:
        """Whether training leaves a CPU of this node to spare: on GPUs (the host's cores
        wait on the device), or with fewer compute threads than the CPUs it may use."""
        return uses_gpu(self.device) or self.procs_per_node * self.cpu_threads < available_cpus()


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


def uses_gpu(device: str) -> bool:
    """Whether training runs on GPUs: FT_DEVICE=cuda, or auto with a GPU visible."""
    if device != "auto":
        return device == "cuda"
    import torch

    return bool(torch.cuda.is_available())


def default_procs(spec: FineTuneJobSpec, num_nodes: int, gpu: bool) -> int:
    """Training processes on a node when FT_PROCS_PER_NODE is unset: the spec's
    processesPerNode, else one per GPU, else (no GPU) one process using every core.
    A local run folds the job's nodes into one node with all their processes."""
    r = spec.resources
    per_node = r.processes_per_node or (r.gpus_per_node if gpu else None)
    if per_node is None:
        return 1
    return max(1, per_node * r.nodes // num_nodes)


def batch_sizes(spec: FineTuneJobSpec, world: int) -> tuple[int, int]:
    """Each process's train and eval micro-batch: the spec's per-GPU sizes times the
    job's GPUs, shared by `world` processes, so the global batch never depends on how
    many processes train (docs/trainer.md, "Processes")."""
    t, r = spec.training, spec.resources
    devices = r.nodes * r.gpus_per_node
    examples = t.per_device_train_batch_size * devices
    if examples % world:
        raise PermanentError(
            f"spec.resources.processesPerNode: {world} processes cannot share the "
            f"{examples} examples of each micro-step (perDeviceTrainBatchSize "
            f"{t.per_device_train_batch_size} x {devices} GPUs) evenly; use a number of "
            f"processes that divides {examples}"
        )
    return examples // world, max(1, t.per_device_eval_batch_size * devices // world)


def from_env(
    env: Mapping[str, str] | None = None, gpu: Callable[[str], bool] = uses_gpu
) -> TrainerConfig:
    """Parse the contract; a PermanentError names what is wrong. `gpu(device)` says
    whether training will run on GPUs (asked only when the processes are not given)."""
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
    if base.procs_per_node is None:
        procs = default_procs(spec, num_nodes, gpu(base.device))
    else:
        procs = _at_least("procs_per_node", base.procs_per_node, 1)
    for field, minimum in (("master_port", 1), ("attempt", 1), ("metrics_port", 0)):
        _at_least(field, getattr(base, field), minimum)
    _at_least("shard_bytes", base.shard_bytes, 1)
    micro, eval_batch = batch_sizes(spec, num_nodes * procs)
    kept = {f.name: getattr(base, f.name) for f in fields(TrainerEnv)}
    return TrainerConfig(
        **{
            **kept,
            "spec": spec,
            "num_nodes": num_nodes,
            "procs_per_node": procs,
            "micro_batch": micro,
            "eval_batch": eval_batch,
            # In a pod, Kubernetes' terminationMessagePath; elsewhere, the work dir.
            "termination_log": termination_log(env) or base.work_dir / "termination-log",
            "cpu_threads": _at_least(
                "cpu_threads", base.cpu_threads or max(1, available_cpus() // procs), 1
            ),
        }
    )
