"""Bad input fails fast: the permanent-error exit code and one line that says why."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_api.exits import ExitCode
from trainer_support import MRPC, TRAINER, job_env

MRPC_COLUMNS = "Quality, #1 ID, #2 ID, #1 String, #2 String"


def run_trainer(
    spec: dict[str, Any], work: Path, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = job_env(spec, nodes=1, procs=1, master_port=0, extra=extra)
    env.update({"FT_NODE_RANK": "0", "FT_WORK_DIR": str(work), "FT_MASTER_PORT": "29400"})
    from controlplane import free_port

    env["FT_MASTER_PORT"] = str(free_port())
    proc = subprocess.Popen(
        TRAINER,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        # The launcher's workers are its grandchildren: end the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(TRAINER, proc.returncode, out, err)


def base_spec(tiny_model: Path, data: str, work: Path) -> dict[str, Any]:
    return {
        "model": {"uri": f"file://{tiny_model}", "numLabels": 2},
        "dataset": {
            "uri": data,
            "format": "tsv",
            "textColumns": ["#1 String", "#2 String"],
            "labelColumn": "Quality",
        },
        "training": {"maxSteps": 2, "evalStrategy": "no"},
        "checkpoints": {"uri": f"file://{work}/ckpt"},
    }


def remote_code_model(tiny_model: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(tiny_model, dest)
    config = json.loads((dest / "config.json").read_text())
    config["model_type"] = "acme-bert"
    config["auto_map"] = {
        "AutoConfig": "modeling_acme.AcmeConfig",
        "AutoModelForSequenceClassification": "modeling_acme.AcmeModel",
    }
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "modeling_acme.py").write_text("raise SystemExit('remote code ran')\n")
    return dest


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return f"file://{path}"


CASES = [
    "missing-text-column",
    "label-out-of-range",
    "empty-dataset",
    "missing-model",
    "needs-remote-code",
    "hub-dataset-offline",
    "all-checkpoints-damaged",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_fast_with_one_clear_line(
    case: str, tiny_model: Path, tmp_path: Path
) -> None:
    spec = base_spec(tiny_model, f"file://{MRPC}/train.tsv", tmp_path)
    extra: dict[str, str] = {}
    if case == "missing-text-column":
        spec["dataset"]["textColumns"] = ["sentence1", "sentence2"]
        expected = (
            "spec.dataset.textColumns: column 'sentence1' not found in "
            f"file://{MRPC / 'train.tsv'}; the data has columns: {MRPC_COLUMNS}"
        )
    elif case == "label-out-of-range":
        spec["dataset"] = {
            "uri": write(
                tmp_path / "d.jsonl", '{"text": "fine", "label": 1}\n{"text": "odd", "label": 3}\n'
            ),
            "textColumns": ["text"],
        }
        expected = "spec.model.numLabels: label 3 in"
    elif case == "empty-dataset":
        spec["dataset"] = {
            "uri": write(tmp_path / "train.csv", "label,text\n"),
            "textColumns": ["text"],
        }
        expected = "spec.dataset: the training data has no usable examples"
    elif case == "missing-model":
        spec["model"]["uri"] = f"file://{tmp_path}/no-such-model"
        expected = f"spec.model.uri: cannot load a model from file://{tmp_path}/no-such-model"
    elif case == "hub-dataset-offline":
        # The trainer's environment sets HF_HUB_OFFLINE=1, as an air-gapped cluster would.
        spec["dataset"] = {"uri": "hf://nyu-mll/glue", "config": "mrpc", "textColumns": ["s"]}
        expected = (
            "spec.dataset.uri: hf://nyu-mll/glue is on the Hugging Face Hub but HF_HUB_OFFLINE"
        )
    elif case == "all-checkpoints-damaged":
        # An earlier attempt committed a checkpoint whose weights were damaged since.
        from finetune_trainer.checkpoint import CheckpointStore

        snapshot = tmp_path / "snapshot"
        snapshot.mkdir()
        (snapshot / "model.safetensors").write_bytes(b"weights")
        CheckpointStore(spec["checkpoints"]["uri"], None).commit(snapshot, 1, {})
        (tmp_path / "ckpt" / "step-000000001" / "model.safetensors").write_bytes(b"damaged")
        expected = f"spec.checkpoints: every committed checkpoint under file://{tmp_path}/ckpt"
    else:
        spec["model"]["uri"] = f"file://{remote_code_model(tiny_model, tmp_path / 'acme')}"
        expected = "spec.model.trustRemoteCode: file://"
    result = run_trainer(spec, tmp_path / "work", extra)
    assert result.returncode == ExitCode.PERMANENT, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("finetune-trainer: "), result.stderr
    assert expected in last, last
    assert "Traceback" not in last
    assert "remote code ran" not in result.stdout + result.stderr


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A real filesystem of `size` (tmpfs), so writes fail with ENOSPC as on a full disk."""
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_full_disk_is_reported_as_such(tiny_model: Path, tmp_path: Path) -> None:
    spec = base_spec(tiny_model, f"file://{MRPC}/train.tsv", tmp_path)
    log = tmp_path / "termination-log"  # in a pod: /dev/termination-log, off the scratch disk
    with small_disk(tmp_path / "scratch", "256k") as scratch:
        result = run_trainer(spec, scratch, {"FT_TERMINATION_LOG": str(log)})
    out = result.stdout + result.stderr
    assert result.returncode == ExitCode.DISK_FULL, out[-3000:]
    code, reason = log.read_text().split(" ", 1)
    assert int(code) == ExitCode.DISK_FULL
    print(f"\n{reason}")
    assert reason.startswith(f"DiskFull: no space left under {tmp_path / 'scratch'}"), reason
    assert "finetune-trainer: DiskFull: no space left" in result.stderr.strip().splitlines()[-1]
