"""What the operator tests need around the real control plane.

- GPU Node objects registered through the API (the scheduler places pods on them);
- Kubelet: plays the kubelet's part for pods bound to those nodes by writing
  pod status through the API (Running with an IP, a container exit code and
  termination message, the end of a graceful deletion). It runs no containers:
  the operator under test only ever sees the API, as with real kubelets;
- OperatorProcess: the real `finetune-operator` command as a child process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from controlplane import ROOT, free_port, wait_for
from kubernetes import client, watch

from finetune_api import names as c

VENV_BIN = Path(sys.executable).parent


def gpu_node(name: str, gpus: int = 8) -> dict[str, Any]:
    resources = {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test"}
            ],
        },
    }


@contextlib.contextmanager
def gpu_nodes(
    core: client.CoreV1Api, prefix: str, count: int, gpus: int = 8
) -> Iterator[list[str]]:
    names = [f"{prefix}-gpu-{i}" for i in range(count)]
    for name in names:
        core.create_node(gpu_node(name, gpus))
    try:
        yield names
    finally:
        for name in names:
            with contextlib.suppress(client.ApiException):
                core.delete_node(name)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class PodRecord:
    """One watch event about a pod, in the order the API server committed them."""

    type: str
    name: str
    job: str
    attempt: str
    uid: str


@dataclass
class PodWatch:
    """Records every watch event about the pods of one namespace, in commit order."""

    core: client.CoreV1Api
    namespace: str
    history: list[PodRecord] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        resource_version = None
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    resource_version=resource_version,
                    timeout_seconds=5,
                ):
                    obj = ev["object"]
                    resource_version = obj.metadata.resource_version
                    labels = obj.metadata.labels or {}
                    self.history.append(
                        PodRecord(
                            ev["type"],
                            obj.metadata.name,
                            labels.get(c.LABEL_JOB, ""),
                            labels.get(c.LABEL_ATTEMPT, ""),
                            obj.metadata.uid,
                        )
                    )
                    self._act(obj, ev["type"])
                    if self._stop.is_set():
                        break
            except client.ApiException as e:
                if e.status == 410:  # too old: list again
                    resource_version = None
            except Exception:  # noqa: S110 - the watch reconnects where it was
                pass

    def _act(self, pod: Any, kind: str) -> None:
        """What a subclass does with each event (nothing here)."""

    def overlaps(self) -> list[str]:
        """Pods of a job's newer attempt that appeared while a pod of an older one existed."""
        alive: dict[str, PodRecord] = {}
        found = []
        for rec in self.history:
            if rec.type == "DELETED":
                alive.pop(rec.uid, None)
                continue
            if rec.type == "ADDED":
                older = [
                    a.attempt
                    for a in alive.values()
                    if a.job == rec.job and int(a.attempt or 0) < int(rec.attempt or 0)
                ]
                if older:
                    found.append(
                        f"{rec.name} (attempt {rec.attempt}) while attempt {older[0]} lived"
                    )
            alive[rec.uid] = rec
        return found


@dataclass
class Kubelet(PodWatch):
    """Writes pod status the way a kubelet would, for pods in one namespace."""

    pod_ip: str = "127.0.0.1"
    auto_run: bool = False

    def _act(self, pod: Any, kind: str) -> None:
        if kind == "DELETED":
            return
        if pod.metadata.deletion_timestamp is not None and pod.spec.node_name:
            # The containers have stopped: the kubelet finishes the graceful deletion.
            with contextlib.suppress(client.ApiException):  # gone already
                self.core.delete_namespaced_pod(
                    pod.metadata.name,
                    self.namespace,
                    body=client.V1DeleteOptions(
                        grace_period_seconds=0, preconditions={"uid": pod.metadata.uid}
                    ),
                )

            return
        if self.auto_run and pod.spec.node_name and (pod.status.phase or "Pending") == "Pending":
            with contextlib.suppress(client.ApiException):
                self.run(pod.metadata.name)

    def _status(self, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status})

    def run(self, name: str) -> None:
        self._status(
            name,
            {
                "phase": "Running",
                "podIP": self.pod_ip,
                "podIPs": [{"ip": self.pod_ip}],
                "startTime": _now(),
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "image": "finetune/trainer:test",
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": _now()}},
                    }
                ],
            },
        )

    def exit(self, name: str, code: int, message: str = "") -> None:
        self._status(
            name,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "image": "finetune/trainer:test",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": code,
                                "reason": "Completed" if code == 0 else "Error",
                                "message": message,
                                "startedAt": _now(),
                                "finishedAt": _now(),
                            }
                        },
                    }
                ],
            },
        )

    def waiting(self, name: str, reason: str, message: str) -> None:
        self._status(
            name,
            {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "image": "finetune/trainer:test",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": reason, "message": message}},
                    }
                ],
            },
        )


RESTART_BACKOFF = 2


class OperatorProcess:
    """`finetune-operator` run as a real process against the test cluster."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log: Path,
        metrics_port: int,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig, self.namespace, self.log_path = kubeconfig, namespace, log
        self.metrics_port = metrics_port
        self.http_port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> OperatorProcess:
        args = [
            str(VENV_BIN / "finetune-operator"),
            "--kubeconfig",
            str(self.kubeconfig),
            "--namespace",
            self.namespace,
            "--http-address",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--trainer-metrics-port",
            str(self.metrics_port),
            "--resync-seconds",
            "5",
            "--progress-seconds",
            "1",
            # 2 s, 4 s, ...: short enough for these tests, long enough to see the spacing.
            "--restart-backoff-seconds",
            str(RESTART_BACKOFF),
            *self.extra,
        ]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
        if wait_ready:
            wait_for(lambda: self.get("/readyz")[0] == 200, 60, "the operator to be ready")
        return self

    def get(self, path: str) -> tuple[int, str]:
        self._check()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def _check(self) -> None:
        if (
            self.proc is not None
            and self.proc.poll() is not None
            and self.proc.returncode
            not in (
                -signal.SIGKILL,
                -signal.SIGTERM,
            )
        ):
            raise AssertionError(f"the operator exited:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
