"""The pod contract: environment in, `accelerate launch` command out (no processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from finetune_trainer.config import TrainerConfig, available_cpus, from_env
from finetune_trainer.errors import PermanentError
from finetune_trainer.launch import accelerate_command

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mrpc-bert-2x8.yaml"


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def pod_env(**extra: str) -> dict[str, str]:
    env = {
        "FT_JOB_SPEC_FILE": str(EXAMPLE),
        "FT_JOB_NAME": "mrpc-bert",
        "FT_JOB_NAMESPACE": "ml",
        "FT_NUM_NODES": "2",
        "FT_NODE_RANK": "1",
        "FT_MASTER_ADDR": "mrpc-bert-node-0.mrpc-bert",
        "FT_MASTER_PORT": "29500",
        "FT_TERMINATION_LOG": "/dev/termination-log",
    }
    env.update(extra)
    return {str(k): v for k, v in env.items()}


def on_gpus(device: str) -> bool:
    """The GPU probe's answer on a node with GPUs (simulated: this machine has none)."""
    return device != "cpu"


def no_gpus(device: str) -> bool:
    return device == "cuda"


def test_a_manifest_file_becomes_the_configuration() -> None:
    cfg = from_env(pod_env(), gpu=on_gpus)
    assert (cfg.job_name, cfg.namespace, cfg.num_nodes, cfg.node_rank) == ("mrpc-bert", "ml", 2, 1)
    assert cfg.procs_per_node == 8  # one process per GPU, from spec.resources.gpusPerNode
    assert cfg.world_size == 16
    assert cfg.micro_batch == cfg.spec.training.per_device_train_batch_size
    assert cfg.spec.dataset.text_columns == ["sentence1", "sentence2"]
    assert cfg.checkpoint_uri == "s3://ml-checkpoints/mrpc-bert"
    assert cfg.output_uri == "s3://ml-models/mrpc-bert"


def test_multi_node_gpu_launch_command() -> None:
    cfg = from_env(pod_env(), gpu=on_gpus)
    argv, env = accelerate_command(cfg, {"PATH": "/usr/bin"})
    assert argv[1:3] == ["-m", "finetune_trainer.accelerate_main"]
    assert "--multi_gpu" in argv
    assert "--cpu" not in argv
    assert option(argv, "--num_machines") == "2"
    assert option(argv, "--machine_rank") == "1"
    assert option(argv, "--num_processes") == "16"
    assert option(argv, "--main_process_ip") == "mrpc-bert-node-0.mrpc-bert"
    assert option(argv, "--main_process_port") == "29500"
    assert argv[-2:] == ["-m", "finetune_trainer.worker"]
    assert env["FT_TERMINATION_LOG"] == "/dev/termination-log"
    assert env["PATH"] == "/usr/bin"
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert env["FT_PROCS_PER_NODE"] == "8"  # the workers do not probe for GPUs again


def test_without_gpus_one_process_per_node_keeps_the_global_batch() -> None:
    # The 2 x 8 GPU example on CPU-only nodes: one process per node, all of its cores,
    # each taking the batch of its node's 8 GPUs, so every step has the same examples.
    cfg = from_env(pod_env(), gpu=no_gpus)
    per_gpu = cfg.spec.training.per_device_train_batch_size
    assert (cfg.procs_per_node, cfg.world_size) == (1, 2)
    assert cfg.micro_batch == per_gpu * 8
    assert cfg.eval_batch == cfg.spec.training.per_device_eval_batch_size * 8
    argv, env = accelerate_command(cfg, {})
    assert option(argv, "--num_processes") == "2"
    assert env["FT_PROCS_PER_NODE"] == "1"
    # A job may still ask for more processes; a local run folds both nodes into one.
    cfg = from_env(pod_env(FT_PROCS_PER_NODE="4"), gpu=no_gpus)
    assert (cfg.world_size, cfg.micro_batch) == (8, per_gpu * 2)
    local = {"FT_NUM_NODES": "1", "FT_NODE_RANK": "0"}
    assert from_env(pod_env(**local), gpu=on_gpus).procs_per_node == 16
    assert from_env(pod_env(**local), gpu=no_gpus).procs_per_node == 1


def test_processes_that_cannot_share_the_batch_are_refused() -> None:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    spec["resources"].update(nodes=1, gpusPerNode=1, processesPerNode=3)
    spec["training"]["perDeviceTrainBatchSize"] = 8
    env = {**pod_env(), "FT_JOB_SPEC": json.dumps(spec), "FT_NUM_NODES": "1", "FT_NODE_RANK": "0"}
    env.pop("FT_JOB_SPEC_FILE")
    with pytest.raises(PermanentError) as err:
        from_env(env, gpu=no_gpus)
    assert "spec.resources.processesPerNode: 3 processes cannot share" in str(err.value)
    assert "divides 8" in str(err.value)
    spec["resources"]["processesPerNode"] = 2
    cfg = from_env({**env, "FT_JOB_SPEC": json.dumps(spec)}, gpu=no_gpus)
    assert (cfg.procs_per_node, cfg.micro_batch) == (2, 4)


def test_single_cpu_process_uses_the_simple_launcher() -> None:
    spec = {
        "model": {"uri": "file:///m"},
        "dataset": {"uri": "file:///d.csv", "textColumns": ["t"]},
        "checkpoints": {"uri": "file:///c"},
    }
    cfg = from_env({"FT_JOB_SPEC": json.dumps(spec), "FT_DEVICE": "cpu", "FT_WORK_DIR": "/scratch"})
    argv, env = accelerate_command(cfg, {})
    assert "--multi_gpu" not in argv
    assert "--cpu" in argv
    assert option(argv, "--num_processes") == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    # Threads per process follow the contract, not the host's core count.
    cfg = from_env({"FT_JOB_SPEC": json.dumps(spec), "FT_CPU_THREADS": "3"})
    argv, env = accelerate_command(cfg, {})
    assert option(argv, "--num_cpu_threads_per_process") == "3"
    assert env["OMP_NUM_THREADS"] == "3"
    assert cfg.output_uri == "file:///c/final"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "set FT_JOB_SPEC (JSON) or FT_JOB_SPEC_FILE (a file path)"),
        ({"FT_JOB_SPEC_FILE": "/nonexistent/job.yaml"}, "FT_JOB_SPEC_FILE: cannot read"),
        ({"FT_JOB_SPEC": "{not json"}, "is not valid JSON or YAML"),
        (
            {
                "FT_JOB_SPEC": json.dumps(
                    {
                        "model": {"uri": "file:///m"},
                        "dataset": {"uri": "file:///d", "textColumns": ["t"]},
                        "checkpoints": {"uri": "file:///c"},
                        "training": {"lr": 0.1},
                    }
                )
            },
            'unknown field "spec.training.lr"',
        ),
        (
            {
                "FT_JOB_SPEC": json.dumps(
                    {
                        "model": {"uri": "file:///m"},
                        "dataset": {"uri": "file:///d", "textColumns": ["t"]},
                    }
                )
            },
            "spec.checkpoints: Field required",
        ),
        (
            {"FT_JOB_SPEC_FILE": str(EXAMPLE), "FT_NUM_NODES": "2", "FT_NODE_RANK": "2"},
            "FT_NODE_RANK=2 must be below FT_NUM_NODES=2",
        ),
        (
            {"FT_JOB_SPEC_FILE": str(EXAMPLE), "FT_MASTER_PORT": "http"},
            "FT_MASTER_PORT must be an integer",
        ),
    ],
)
def test_a_bad_contract_names_what_to_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(PermanentError, match=None) as err:
        from_env({str(k): v for k, v in env.items()})
    assert message in str(err.value)


def test_config_is_immutable() -> None:
    cfg = from_env(pod_env(), gpu=no_gpus)
    assert isinstance(cfg, TrainerConfig)
    with pytest.raises(AttributeError):
        cfg.node_rank = 0  # type: ignore[misc]


def test_the_installed_command_explains_itself() -> None:
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("finetune-trainer")
    shown = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0
    assert "FT_JOB_SPEC" in shown.stdout
    assert "42 bad configuration" in shown.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    env["FT_WORK_DIR"] = "/tmp/finetune-no-job"  # noqa: S108 - a scratch path for the log
    pod_log = Path("/dev/termination-log")
    existed = pod_log.exists()
    bare = subprocess.run([exe], capture_output=True, text=True, check=False, env=env)
    # Outside a pod the reason goes to stderr only: nothing is created in /dev.
    assert pod_log.exists() == existed
    assert bare.returncode == 42
    assert bare.stderr.strip() == (
        "finetune-trainer: set FT_JOB_SPEC (JSON) or FT_JOB_SPEC_FILE (a file path)"
    )


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1),  # cgroup v2, a limit of 1.5 CPUs
        ({"cpu.max": "max 100000\n"}, None),  # v2 without a limit
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # nothing to read
    ],
)
def test_threads_follow_the_containers_cpu_limit(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    """The kernel's files as a container sees them (the e2e training test reads the real
    ones in a pod with a CPU limit)."""
    import os

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    host = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (min(host, expected) if expected else host)


def test_a_cpu_is_spare_on_gpus_or_with_fewer_threads_than_cpus() -> None:
    """Decides the checkpoint upload's priority (uploader.py): SCHED_IDLE only where
    training leaves a CPU to spare."""
    local = {"FT_NUM_NODES": "1", "FT_NODE_RANK": "0", "FT_PROCS_PER_NODE": "1"}
    cpus = available_cpus()
    assert from_env(pod_env(**local, FT_DEVICE="cuda")).spare_cpu
    every = from_env(pod_env(**local, FT_DEVICE="cpu"))
    assert every.cpu_threads == cpus
    assert not every.spare_cpu
    one = from_env(pod_env(**local, FT_DEVICE="cpu", FT_CPU_THREADS="1"))
    assert one.spare_cpu == (cpus > 1)
    two = from_env(pod_env(**{**local, "FT_PROCS_PER_NODE": "2"}, FT_DEVICE="cpu"))
    assert two.spare_cpu == (2 * max(1, cpus // 2) < cpus)
