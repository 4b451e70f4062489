"""ftctl against the real test control plane, through Click's runner."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from kubernetes.client.exceptions import ApiException

from finetune_api import names as c
from finetune_operator.client import connect, explain
from finetune_operator.ftctl.main import cli

from .conftest import CRD_FILE, Cluster

MODEL = "hf://bert-base-uncased"


def ftctl(cluster: Cluster, namespace: str, *args: str) -> Result:
    return CliRunner().invoke(
        cli,
        [*args, "--kubeconfig", str(cluster.plane.kubeconfig_path), "-n", namespace],
        catch_exceptions=False,
    )


def flags(name: str, *extra: str) -> list[str]:
    return [
        "submit",
        "--name",
        name,
        "--model",
        MODEL,
        "--num-labels",
        "2",
        "--dataset",
        "s3://data/mrpc/",
        "--text-columns",
        "sentence1,sentence2",
        "--checkpoint-uri",
        f"s3://ckpt/{name}",
        *extra,
    ]


@pytest.mark.parametrize(("gpus", "shape"), [("8", (1, 8)), ("16", (2, 8)), ("4", (1, 4))])
def test_submit_splits_total_gpus_into_nodes(
    cluster: Cluster, namespace: str, gpus: str, shape: tuple[int, int]
) -> None:
    result = ftctl(cluster, namespace, *flags("split", "--gpus", gpus))
    assert result.exit_code == 0, result.output
    assert result.output == f"finetunejob.finetune.dev/split created in {namespace}\n"
    res = cluster.get_job(namespace, "split")["spec"]["resources"]
    assert (res["nodes"], res["gpusPerNode"]) == shape


def test_uneven_gpus_are_refused_before_anything_is_sent(cluster: Cluster, namespace: str) -> None:
    result = ftctl(cluster, namespace, *flags("odd", "--gpus", "12"))
    assert result.exit_code == 1
    assert "--gpus 12 is not a multiple of --gpus-per-node 8; use 8 or 16" in result.output
    assert not ftctl(cluster, namespace, "list", "-o", "name").output


def test_dry_run_prints_exactly_what_gets_created(cluster: Cluster, namespace: str) -> None:
    args = flags("same", "--gpus", "16", "--lr", "3e-5", "--epochs", "2")
    dry = ftctl(cluster, namespace, *args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    printed = yaml.safe_load(dry.output)
    assert not ftctl(cluster, namespace, "list", "-o", "name").output  # nothing was sent
    assert ftctl(cluster, namespace, *args).exit_code == 0
    created = cluster.get_job(namespace, "same")
    # The client writes every default the CRD would: the spec is identical.
    assert printed["spec"] == created["spec"]
    assert printed["metadata"] == {"name": "same", "namespace": namespace}
    assert created["spec"]["training"]["learningRate"] == 3e-5


def test_submit_from_a_file_with_flags_over_it(cluster: Cluster, namespace: str) -> None:
    from controlplane import ROOT

    path = ROOT / "examples" / "mrpc-bert-2x8.yaml"
    result = ftctl(cluster, namespace, "submit", "-f", str(path), "--name", "mine", "--lr", "2e-5")
    assert result.exit_code == 0, result.output
    job = cluster.get_job(namespace, "mine")
    original = yaml.safe_load(path.read_text())["spec"]
    assert job["spec"]["training"]["learningRate"] == 2e-5
    assert job["spec"]["resources"]["nodes"] == original["resources"]["nodes"]
    assert job["spec"]["dataset"]["textColumns"] == original["dataset"]["textColumns"]


def test_generated_names_come_from_the_model(cluster: Cluster, namespace: str) -> None:
    args = [a for a in flags("x", "--gpus", "8") if a not in ("--name", "x")]
    result = ftctl(cluster, namespace, *args)
    assert result.exit_code == 0, result.output
    name = result.output.split("/")[1].split()[0]
    assert name.startswith("bert-base-uncased-")
    assert cluster.get_job(namespace, name)["metadata"]["name"] == name


def test_list_describe_suspend_resume_delete(cluster: Cluster, namespace: str) -> None:
    assert ftctl(cluster, namespace, *flags("one", "--gpus", "16")).exit_code == 0
    assert ftctl(cluster, namespace, *flags("two", "--gpus", "8")).exit_code == 0
    # Progress as the operator would write it, through the status subresource.
    body: dict[str, Any] = {
        "status": {
            "phase": "Running",
            "attempt": 1,
            "restartCount": 0,
            "progress": {"step": 120, "totalSteps": 1377, "loss": 0.4321, "etaSeconds": 600},
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "AllPodsRunning",
                    "message": "attempt 1: all 2 pods are running",
                    "lastTransitionTime": "2026-11-22T00:00:00Z",
                }
            ],
        }
    }
    cluster.custom.patch_namespaced_custom_object_status(
        c.GROUP, c.VERSION, namespace, c.PLURAL, "one", body
    )
    table = ftctl(cluster, namespace, "list").output.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "NODESxGPUS", "STEP", "LOSS", "AGE"]
    assert table[1].split()[:5] == ["one", "Running", "2x8", "120/1377", "0.4321"]
    assert table[2].split()[:5] == ["two", "Pending", "1x8", "-", "-"]
    wide = ftctl(cluster, namespace, "list", "-o", "wide").output.splitlines()
    assert wide[1].split()[6:] == ["0", "10m00s", MODEL]
    everywhere = ftctl(cluster, namespace, "list", "-A").output
    assert namespace in everywhere
    names = ftctl(cluster, namespace, "list", "-o", "name").output.split()
    assert names == ["finetunejob.finetune.dev/one", "finetunejob.finetune.dev/two"]
    as_json = yaml.safe_load(ftctl(cluster, namespace, "list", "-o", "json").output)
    assert [j["metadata"]["name"] for j in as_json["items"]] == ["one", "two"]

    described = ftctl(cluster, namespace, "describe", "one").output
    assert "Resources:    2 nodes x 8 nvidia.com/gpu" in described
    assert "Progress:     step 120/1377" in described
    assert "AllPodsRunning" in described

    assert (
        ftctl(cluster, namespace, "suspend", "one").output
        == "finetunejob.finetune.dev/one suspended\n"
    )
    assert cluster.get_job(namespace, "one")["spec"]["suspend"] is True
    assert ftctl(cluster, namespace, "resume", "one").exit_code == 0
    assert cluster.get_job(namespace, "one")["spec"]["suspend"] is False
    assert ftctl(cluster, namespace, "delete", "one", "two").exit_code == 0
    assert (
        ftctl(cluster, namespace, "list").output == f"No FineTuneJobs in namespace {namespace}.\n"
    )


def test_errors_are_one_or_two_lines(cluster: Cluster, namespace: str, tmp_path: Any) -> None:
    missing = ftctl(cluster, namespace, "describe", "nope")
    assert missing.exit_code == 1
    assert missing.output == f'Error: FineTuneJob "nope" not found in namespace {namespace}\n'

    # The CRD's CEL rule, checked before sending, with the message the server gives.
    rejected = ftctl(cluster, namespace, *flags("neg", "--gpus", "8", "--lr", "-1"))
    assert rejected.exit_code == 1
    message = "spec.training.learningRate must be greater than 0 and at most 1 (e.g. 5e-5)"
    assert rejected.output == f"Error: the job: {message}\n"
    body = yaml.safe_load(
        ftctl(cluster, namespace, *flags("neg", "--gpus", "8"), "--dry-run").output
    )
    body["spec"]["training"]["learningRate"] = -1.0
    with pytest.raises(ApiException) as server:
        cluster.create_job(namespace, body)
    assert message in (server.value.body or "")
    # And what the server says is shown as one line naming the field.
    shown = str(explain(server.value, connect(str(cluster.plane.kubeconfig_path), None, namespace)))
    assert shown.startswith("the cluster rejected the job: spec.training.learningRate: ")
    assert message in shown
    assert "\n" not in shown

    conflict = ftctl(cluster, namespace, *flags("twice", "--gpus", "8"))
    assert conflict.exit_code == 0
    again = ftctl(cluster, namespace, *flags("twice", "--gpus", "8"))
    assert again.exit_code == 1
    assert "already exists" in again.output

    from controlplane import free_port, kubeconfig

    dead = tmp_path / "dead.kubeconfig"
    ca = cluster.plane.workdir / "pki" / "ca.crt"
    dead.write_text(yaml.safe_dump(kubeconfig(f"https://127.0.0.1:{free_port()}", ca, "x", "u")))
    result = CliRunner().invoke(cli, ["list", "--kubeconfig", str(dead)], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.output.startswith("Error: no cluster reachable at https://127.0.0.1:")
    assert len(result.output.strip().splitlines()) == 1


def test_a_cluster_without_the_crd_is_named_as_such(cluster: Cluster, namespace: str) -> None:
    from controlplane import wait_for

    cluster.kubectl("delete", "-f", str(CRD_FILE), "--wait=true")
    try:

        def crd_gone() -> bool:
            return ftctl(cluster, namespace, "list").exit_code == 1

        wait_for(crd_gone, 60, "the CRD to be gone")
        result = ftctl(cluster, namespace, "list")
        assert "the FineTuneJob CRD is not installed" in result.output
        assert "kubectl apply --server-side -f manifests/crd/" in result.output
    finally:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))

        def established() -> bool:
            return ftctl(cluster, namespace, "list").exit_code == 0

        wait_for(established, 60, "the CRD to be back")


def test_watch_shows_a_live_view_in_a_terminal(cluster: Cluster, namespace: str) -> None:
    """`ftctl watch` in a pseudo-terminal while the job's status moves, until it succeeds."""
    import os
    import pty
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from controlplane import wait_for

    assert ftctl(cluster, namespace, *flags("live", "--gpus", "16")).exit_code == 0
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ftctl"),
            "watch",
            "live",
            "--interval",
            "0.2",
            "--kubeconfig",
            str(cluster.plane.kubeconfig_path),
            "-n",
            namespace,
        ],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        close_fds=True,
    )
    os.close(secondary)
    screen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def status(body: dict[str, Any]) -> None:
        cluster.custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, namespace, c.PLURAL, "live", {"status": body}
        )

    def shown(text: str) -> bool:
        return text in screen.decode(errors="replace")

    try:
        wait_for(lambda: shown("waiting for the trainer"), 30, "the first frame")
        for step, loss in ((100, 0.9), (200, 0.6), (300, 0.45), (400, 0.3)):
            status(
                {
                    "phase": "Running",
                    "attempt": 1,
                    "progress": {
                        "step": step,
                        "totalSteps": 1000,
                        "epoch": step / 500,
                        "loss": loss,
                        "learningRate": 4e-5,
                        "samplesPerSecond": 51.5,
                        "etaSeconds": 1000 - step,
                        "evalMetrics": {"accuracy": 0.8, "f1": 0.86},
                    },
                }
            )
            wait_for(lambda s=step: shown(f"step {s}/1000"), 30, f"step {step} on screen")
        status({"phase": "Succeeded", "progress": {"step": 1000, "totalSteps": 1000, "loss": 0.2}})
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=5)
        os.close(primary)
    text = screen.decode(errors="replace")
    assert "\x1b[H\x1b[J" in text  # redrawn in place on a terminal
    assert "[████████████░░░░░░░░░░░░░░░░░░]  40%  step 400/1000  epoch 0.80  ETA 10m00s" in text
    assert "loss 0.3000" in text
    assert "▁" in text  # the loss sparkline
    assert "█" in text
    assert "eval: accuracy 0.8000  f1 0.8600" in text
    assert "live  Succeeded" in text


def test_checkpoints_lists_what_was_committed_in_s3(
    cluster: Cluster, namespace: str, s3: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_api.types import S3Spec
    from finetune_trainer.checkpoint import CheckpointStore
    from trainer_support import ensure_bucket

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    ensure_bucket(s3.client(), "ckpt")
    prefix = f"s3://ckpt/{namespace}"
    doc = yaml.safe_load(
        ftctl(cluster, namespace, *flags("saved", "--gpus", "8"), "--dry-run").output
    )
    doc["spec"]["checkpoints"]["uri"] = prefix
    doc["spec"]["s3"] = {"endpoint": s3.endpoint, "forcePathStyle": True, "region": "us-east-1"}
    cluster.create_job(namespace, doc)

    store = CheckpointStore(prefix, S3Spec(endpoint=s3.endpoint, force_path_style=True))
    for step in (100, 200):
        snap = tmp_path / f"snap-{step}"
        snap.mkdir()
        (snap / "model.safetensors").write_bytes(b"x" * 3000)
        (snap / "trainer_state.json").write_text("{}")
        store.commit(snap, step, {"accuracy": step / 1000})
    # A checkpoint whose upload never finished (no manifest) does not exist.
    s3.client().put_object(
        Bucket="ckpt", Key=f"{namespace}/step-000000300/model.safetensors", Body=b"y"
    )

    result = ftctl(cluster, namespace, "checkpoints", "saved")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split() == ["STEP", "SIZE", "CREATED", "METRICS", "URI"]
    assert [line.split()[0] for line in lines[1:]] == ["100", "200"]
    assert "accuracy=0.2000" in lines[2]
    assert f"{prefix}/step-000000200" in lines[2]
    assert "2.9 KiB" in lines[1]


def test_logs_errors_and_options_from_the_environment(cluster: Cluster, namespace: str) -> None:
    # FTCTL_<COMMAND>_<OPTION> works for every option, here --gpus.
    result = CliRunner().invoke(
        cli,
        [*flags("envjob"), "--kubeconfig", str(cluster.plane.kubeconfig_path), "-n", namespace],
        env={"FTCTL_SUBMIT_GPUS": "16"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert cluster.get_job(namespace, "envjob")["spec"]["resources"]["nodes"] == 2

    # No pod yet (no operator runs here): one line saying which pod is missing.
    missing = ftctl(cluster, namespace, "logs", "envjob")
    assert missing.exit_code == 1
    assert missing.output == (
        f'Error: the log of pod "envjob-node-0" not found in namespace {namespace}\n'
    )
    # -f waits for the pod to start, and stops waiting once the job has ended without it.
    cluster.custom.patch_namespaced_custom_object_status(
        c.GROUP, c.VERSION, namespace, c.PLURAL, "envjob", {"status": {"phase": "Failed"}}
    )
    gone = ftctl(cluster, namespace, "logs", "-f", "envjob")
    assert gone.exit_code == 1
    assert gone.output.endswith("Error: envjob ended before pod envjob-node-0 started\n")
    out_of_range = ftctl(cluster, namespace, "logs", "envjob", "--node", "2")
    assert out_of_range.exit_code == 2
    assert "envjob has 2 nodes (0..1)" in out_of_range.output


def test_shell_completion_script() -> None:
    result = CliRunner().invoke(cli, ["completion", "bash"])
    assert result.exit_code == 0
    assert "_FTCTL_COMPLETE=bash_complete" in result.output


def test_submit_wait_returns_when_the_job_ends(cluster: Cluster, namespace: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from controlplane import wait_for

    args = [*flags("waited", "--gpus", "8"), "--wait"]
    args += ["--kubeconfig", str(cluster.plane.kubeconfig_path), "-n", namespace]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ftctl"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def exists() -> bool:
        return bool(ftctl(cluster, namespace, "list", "-o", "name").output)

    wait_for(exists, 30, "the job to be created")
    assert proc.poll() is None  # still waiting
    cluster.custom.patch_namespaced_custom_object_status(
        c.GROUP, c.VERSION, namespace, c.PLURAL, "waited", {"status": {"phase": "Failed"}}
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out.splitlines()[-2:] == [
        "finetunejob.finetune.dev/waited failed",
        "Error: waited failed; see: ftctl describe waited",
    ]


def test_namespace_and_context_come_from_the_kubeconfig_like_kubectl(
    cluster: Cluster, namespace: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load(cluster.plane.kubeconfig_path.read_text())
    base = config["contexts"][0]
    config["contexts"] = [
        {"name": "team", "context": {**base["context"], "namespace": namespace}},
        {"name": "other", "context": {**base["context"], "namespace": "default"}},
    ]
    config["current-context"] = "team"
    # Two files in KUBECONFIG, merged as kubectl merges them: "other" is only in the second.
    first, second = tmp_path / "kubeconfig", tmp_path / "more"
    first.write_text(yaml.safe_dump({**config, "contexts": config["contexts"][:1]}))
    second.write_text(yaml.safe_dump({**config, "contexts": config["contexts"][1:]}))
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    runner = CliRunner()
    created = runner.invoke(cli, flags("ctx", "--gpus", "8"), catch_exceptions=False)
    assert created.output == f"finetunejob.finetune.dev/ctx created in {namespace}\n"
    # A dry run asks the server when there is one: the name is taken.
    again = runner.invoke(cli, [*flags("ctx", "--gpus", "8"), "--dry-run"])
    assert again.exit_code == 1
    assert "already exists" in again.output
    assert runner.invoke(cli, ["list", "-o", "name"]).output == "finetunejob.finetune.dev/ctx\n"
    other = runner.invoke(cli, ["--help"])  # the group itself needs no cluster
    assert other.exit_code == 0
    elsewhere = runner.invoke(cli, ["list", "--context", "other"])
    assert elsewhere.output == "No FineTuneJobs in namespace default.\n"
    unknown = runner.invoke(cli, ["list", "--context", "nope"])
    assert unknown.exit_code == 1
    assert unknown.output == 'Error: context "nope" not found in the kubeconfig\n'


def test_unreachable_s3_is_one_line(
    cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controlplane import free_port

    monkeypatch.setenv("FT_S3_ATTEMPTS", "2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    doc = yaml.safe_load(
        ftctl(cluster, namespace, *flags("nos3", "--gpus", "8"), "--dry-run").output
    )
    doc["spec"]["s3"] = {"endpoint": f"http://127.0.0.1:{free_port()}", "forcePathStyle": True}
    cluster.create_job(namespace, doc)
    result = ftctl(cluster, namespace, "checkpoints", "nos3")
    assert result.exit_code == 1
    # A command does not wait out an outage as the trainer does: botocore's retries only.
    assert result.output.startswith(
        "Error: S3 unavailable: cannot reach s3://ckpt/nos3 (Could not connect to the endpoint"
    ), result.output
    assert "(spec.s3.retrySeconds: 0)" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "test-secret" not in result.output
