"""ftctl: the local mode (README's first command) and its errors."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from controlplane import free_port

from finetune_operator.ftctl.main import cli

ROOT = Path(__file__).resolve().parent.parent
FTCTL = str(Path(sys.executable).parent / "ftctl")


def test_the_readme_quickstart_runs_locally_and_prints_its_accuracy(tmp_path: Path) -> None:
    # The README command, run from a copy of the repository's examples (fresh checkpoints).
    shutil.copytree(ROOT / "examples" / "local", tmp_path / "examples" / "local")
    done = subprocess.run(
        [FTCTL, "run", "-f", "examples/local/quickstart.yaml", "--local", "--metrics-port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "using the offline copy installed at" in out
    # Without a GPU: one process on every core, with the batch of the job's 2 GPUs.
    assert re.search(r"on 1 process \(1 node, cpu, \d+ threads? per process\)", out), out
    assert "16 examples per step" in out
    found = re.search(
        r"ftctl: quickstart finished\. Evaluation at step \d+: accuracy ([0-9.]+)", out
    )
    assert found, out[-4000:]
    accuracy = float(found.group(1))
    print(f"\nquickstart dev accuracy: {accuracy:.4f}")
    assert accuracy > 0.75  # chance is 0.5 (the dev labels are balanced within 4 points)
    model = tmp_path / "runs" / "quickstart" / "model"
    assert (model / "model.safetensors").is_file()
    assert "Traceback" not in out


def test_a_bad_job_file_is_one_line_naming_the_field(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "local" / "quickstart.yaml").read_text())
    doc["spec"]["training"]["perDeviceTrainBatchSize"] = 0
    doc["spec"]["training"]["warmupRatoi"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(cli, ["run", "-f", str(bad), "--local"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert (
        "spec.training.perDeviceTrainBatchSize: Input should be greater than or equal to 1"
        in lines[0]
    )
    assert 'unknown field "spec.training.warmupRatoi"' in lines[0]
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_missing_files_and_wrong_kinds_are_plain_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "-f", str(tmp_path / "nope.yaml"), "--local"])
    assert result.exit_code == 1
    assert "nope.yaml" in result.output
    assert "No such file" in result.output
    other = tmp_path / "pod.yaml"
    other.write_text("apiVersion: v1\nkind: Pod\n")
    result = CliRunner().invoke(cli, ["run", "-f", str(other), "--local"])
    assert result.exit_code == 1
    assert "expected a FineTuneJob" in result.output


def test_run_without_local_says_what_to_do_instead() -> None:
    path = str(ROOT / "examples" / "local" / "quickstart.yaml")
    result = CliRunner().invoke(cli, ["run", "-f", path])
    assert result.exit_code == 2
    assert "--local" in result.output


def test_version() -> None:
    result = CliRunner().invoke(cli, ["version"])
    assert result.exit_code == 0
    assert re.fullmatch(r"ftctl \d+\.\d+\.\d+\S* \(finetune\.dev/v1alpha1\)\n", result.output)


def test_local_runs_reach_the_hub_only_when_the_job_needs_it(tmp_path: Path) -> None:
    from finetune_api.types import FineTuneJob
    from finetune_operator.localrun import LocalRun

    def env_for(dataset_uri: str, hub: dict[str, str] | None) -> dict[str, str]:
        job = FineTuneJob.model_validate(
            {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "local"},
                "spec": {
                    "model": {"uri": f"file://{tmp_path}/model"},
                    "dataset": {"uri": dataset_uri, "textColumns": ["text"]},
                    "checkpoints": {"uri": f"file://{tmp_path}/ckpt"},
                    **({"hub": hub} if hub else {}),
                },
            }
        )
        return LocalRun(job, 1, tmp_path, 0).env({}, 29500)

    local = env_for(f"file://{tmp_path}/data.jsonl", None)
    assert local["HF_HUB_OFFLINE"] == "1"
    assert "HF_ENDPOINT" not in local
    hub = env_for("hf://nyu-mll/glue", {"endpoint": "https://hf-mirror.internal"})
    assert "HF_HUB_OFFLINE" not in hub
    assert hub["HF_ENDPOINT"] == "https://hf-mirror.internal"


def test_a_dry_run_needs_no_cluster(tmp_path: Path) -> None:
    """As `kubectl create --dry-run=client`: no kubeconfig, and still a valid job."""
    env = {"KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)}
    args = ["submit", "--gpus", "8", "--model", "hf://bert-base-uncased", "--num-labels", "2",
            "--dataset", "s3://data/mrpc/", "--text-columns", "sentence1,sentence2",
            "--checkpoint-uri", "s3://ckpt/offline", "--name", "offline", "--dry-run"]  # fmt: skip
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert result.stderr == "# not checked by a cluster (none reachable): client-side checks only\n"
    doc = yaml.safe_load(result.stdout)
    assert doc["metadata"] == {"name": "offline", "namespace": "default"}
    assert (doc["spec"]["resources"]["nodes"], doc["spec"]["resources"]["gpusPerNode"]) == (1, 8)
    from finetune_api.types import FineTuneJob

    FineTuneJob.from_wire(doc)  # what the operator will read
    # Anything that needs the cluster still says so.
    listed = CliRunner().invoke(cli, ["list"], env=env)
    assert listed.exit_code == 1
    assert listed.output.startswith("Error: no usable kubeconfig")


def local_job(tmp_path: Path, tiny_model: Path, **spec: object) -> Path:
    """A small job file for `ftctl run --local`: the tiny model on MRPC's train.tsv."""
    from trainer_support import mrpc_train_only

    doc = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "small"},
        "spec": {
            "model": {"uri": f"file://{tiny_model}", "numLabels": 2},
            "dataset": mrpc_train_only(),
            "training": {"maxSteps": 3, "evalStrategy": "no"},
            "resources": {"nodes": 1, "gpusPerNode": 1},
            "checkpoints": {"uri": f"file://{tmp_path}/ckpt"},
            **spec,
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def ftctl_local(job: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FTCTL, "run", "-f", str(job), "--local", "--metrics-port", "0", *extra],
        cwd=job.parent, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_a_run_without_evaluation_says_so(tmp_path: Path, tiny_model: Path) -> None:
    # With its metrics served, but output to a pipe: plain lines, no live view.
    done = ftctl_local(local_job(tmp_path, tiny_model), "--metrics-port", str(free_port()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'ftctl: small finished (no evaluation: evalStrategy is "no")\n' in done.stdout
    assert "n/a" not in done.stdout
    assert "\x1b[" not in done.stdout
    assert "░" not in done.stdout


@pytest.mark.parametrize("processes", [1, 2])
def test_a_permanent_error_in_a_local_run_is_said_once_without_a_traceback(
    tmp_path: Path, tiny_model: Path, processes: int
) -> None:
    rows = [{"text": f"review {i}", "label": i % 2} for i in range(40)]
    rows[33]["label"] = "maybe"  # type: ignore[assignment]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = local_job(
        tmp_path,
        tiny_model,
        dataset={"uri": f"file://{data}", "textColumns": ["text"]},
        resources={"nodes": 1, "gpusPerNode": processes, "processesPerNode": processes},
    )
    done = ftctl_local(job)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    reason = "spec.dataset.labelColumn: label 'maybe' in file://"
    assert out.count(reason) == 1, out
    assert "Traceback" not in out, out
    assert "Error: small failed (exit code 42); its reason is above" in out


def read_all(fd: int, deadline: float) -> bytes:
    """Everything written to a pseudo-terminal until its last writer closes it."""
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            return out
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"no end of output before the deadline: {out[-2000:]!r}")


def test_a_local_run_in_a_terminal_shows_the_live_view(tmp_path: Path, tiny_model: Path) -> None:
    """In a terminal: the bar with ETA and the loss while it trains, then the evaluation
    (with output to a pipe, plain lines: test_a_run_without_evaluation_says_so)."""
    from trainer_support import mrpc_dataset

    training = {"maxSteps": 120, "evalStrategy": "steps", "evalSteps": 120, "loggingSteps": 40}
    job = local_job(tmp_path, tiny_model, training=training, dataset=mrpc_dataset(64))
    argv = [FTCTL, "run", "-f", str(job), "--local", "--metrics-port", str(free_port())]
    main, sub = pty.openpty()
    proc = subprocess.Popen(argv, cwd=tmp_path, stdin=sub, stdout=sub, stderr=sub)
    os.close(sub)
    try:
        out = read_all(main, time.monotonic() + 600).decode()
    finally:
        os.close(main)
    assert proc.wait(timeout=60) == 0, out[-4000:]
    assert "\x1b[" in out  # the view redraws in place
    bars = re.findall(r"\[[█░]{30}\] +\d+%  step (\d+)/120  epoch [0-9.]+  ETA \d+m\d\ds", out)
    assert bars, out[-4000:]
    assert re.search(r"\nloss \d+\.\d{4}  [▁▂▃▄▅▆▇█]+  lr [0-9.e-]+  [0-9.]+ samples/s", out)
    assert re.search(r"ftctl: small finished\. Evaluation at step 120: accuracy", out), out[-3000:]
