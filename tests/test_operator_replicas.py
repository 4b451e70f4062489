"""Two operator replicas with leader election, as `replicaCount: 2` runs them: real
`finetune-operator` processes against the real control plane (the kubelet's part is
played as in test_operator.py). One reconciles at any moment; SIGKILL of the active
one, at three points of 20 jobs' lives, hands the work to the standby within the
documented time, and every job ends exactly as with one operator."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from controlplane import free_port, wait_for

from finetune_api import names as c
from finetune_api.exits import ExitCode
from finetune_api.metrics import OperatorMetric as OM
from finetune_api.metrics import total
from finetune_operator.leader import Timing, may_hold

from .conftest import Cluster
from .operator_support import Kubelet, OperatorProcess, gpu_nodes
from .test_operator import job_body, pods_of, status

LEASE = 6.0
# docs/operator.md: the standby first sees the last renewal up to one retry late, waits
# one lease, and writes at its next try; plus 2 s for the API calls of this busy machine.
TAKEOVER = LEASE + 2 * Timing(LEASE).retry + 2.0
JOBS = [f"ha-{i:02d}" for i in range(20)]


def test_the_lease_rules() -> None:
    assert may_hold(None, "a", 0.0, 15.0)  # free, or released
    assert may_hold("a", "a", 0.0, 15.0)  # renewal
    assert not may_hold("b", "a", 14.9, 15.0)  # b renewed within the lease
    assert may_hold("b", "a", 15.0, 15.0)  # b has not renewed for a whole lease
    assert Timing(15.0).renew_deadline < 15.0  # a leader stops before anyone may take over


def test_an_unreachable_api_is_a_missed_renewal_not_a_dead_election_thread() -> None:
    """Nothing listens on the port: the try fails quietly, so a leader's renew deadline
    (not a crashed thread) decides what happens next."""
    from kubernetes import client

    from finetune_operator.leader import Elector

    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{free_port()}"
    cfg.retries = 0
    elector = Elector(client.ApiClient(cfg), "ns", "lease", "me", Timing(3.0))
    assert elector._try() is False
    assert not elector.reached_api.is_set()


@dataclass
class Sampler:
    """Reads both replicas' /metrics every 0.1 s: who leads, and who reconciles."""

    ops: list[OperatorProcess]
    both_led: list[float] = field(default_factory=list)
    standby_reconciled: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def read(self, op: OperatorProcess) -> tuple[bool, float]:
        code, text = op.get("/metrics")
        if code != 200:
            return False, 0.0
        values = dict(re.findall(r"^(finetune_operator_\w+) ([0-9.e+]+)$", text, re.M))
        return values.get(OM.LEADER) == "1.0", float(values.get(total(OM.RECONCILES), 0))

    def leader(self) -> OperatorProcess | None:
        leading = [op for op in self.ops if self.read(op)[0]]
        return leading[0] if len(leading) == 1 else None

    def _run(self) -> None:
        while not self._stop.wait(0.1):  # the sampling period
            seen = [self.read(op) for op in self.ops]
            if all(lead for lead, _ in seen):
                self.both_led.append(time.monotonic())
            for op, (lead, reconciles) in zip(self.ops, seen, strict=True):
                if not lead and reconciles:
                    self.standby_reconciled.append(op.log_path.name)

    def start(self) -> Sampler:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()


def take_over(sampler: Sampler, killed: OperatorProcess) -> float:
    """SIGKILL the leader `killed`; seconds until the other replica leads."""
    began = time.monotonic()
    killed.kill()
    (other,) = [op for op in sampler.ops if op is not killed]
    wait_for(lambda: sampler.read(other)[0], TAKEOVER + 10, "the standby to take over")
    took = time.monotonic() - began
    killed.start()  # back, as the standby (ready once it has read the Lease)
    return took


def test_two_replicas_one_active_and_the_standby_takes_over(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    kubelet = Kubelet(cluster.core, ns, auto_run=True).start()
    extra = ("--leader-elect", "--leader-election-namespace", ns,
             "--leader-election-id", "ftop", "--lease-seconds", str(LEASE))  # fmt: skip
    ops = [
        OperatorProcess(cluster.plane.kubeconfig_path, ns, tmp_path / f"op{i}.log", 1, extra)
        for i in range(2)
    ]
    sampler = Sampler(ops)
    takeovers: list[float] = []
    failed: set[str] = set()

    def all_phase(phase: str) -> bool:
        return all(status(cluster, ns, name).get("phase") == phase for name in JOBS)

    def restarted_and_running() -> bool:
        return all(
            status(cluster, ns, name).get("restartCount", 0) == 1
            and status(cluster, ns, name).get("phase") == "Running"
            for name in failed
        )

    with gpu_nodes(cluster.core, ns[-6:], 3, gpus=8):
        try:
            for op in ops:
                op.start()
            sampler.start()
            leader = wait_for(sampler.leader, 30, "one replica to lead")
            for name in JOBS:
                cluster.create_job(ns, job_body(name, nodes=1, gpus=1))
            # 1. While the 20 jobs' Services and pods are being created.
            takeovers.append(take_over(sampler, leader))
            wait_for(lambda: all_phase("Running"), 90, "every job to run")
            # 2. Right after five pods failed: their gang restarts are the new leader's.
            leader = wait_for(sampler.leader, 30, "one replica to lead")
            for name in JOBS[:5]:
                kubelet.exit(c.node_name(name, 0), ExitCode.RETRYABLE, "lost")
                failed.add(name)
            takeovers.append(take_over(sampler, leader))
            wait_for(lambda: restarted_and_running(), 90, "the five gangs to restart")
            # 3. While every job's pod is finishing.
            leader = wait_for(sampler.leader, 30, "one replica to lead")
            for name in JOBS:
                kubelet.exit(c.node_name(name, 0), 0)
            takeovers.append(take_over(sampler, leader))
            wait_for(lambda: all_phase("Succeeded"), 90, "every job to succeed")
        finally:
            sampler.stop()
            for op in ops:
                op.stop()
            kubelet.stop()
            print("".join(op.log()[-3000:] for op in ops))

    print(f"takeovers: {[round(t, 1) for t in takeovers]} s (bound {TAKEOVER:.1f} s)")
    assert all(t <= TAKEOVER for t in takeovers), takeovers
    assert sampler.both_led == []
    assert sampler.standby_reconciled == []
    # No status update lost: each job counted exactly its own restarts, and ended.
    uids = {cluster.get_job(ns, name)["metadata"]["uid"]: name for name in JOBS}
    for name in JOBS:
        st = status(cluster, ns, name)
        assert st["phase"] == "Succeeded", (name, st)
        assert st["restartCount"] == (1 if name in failed else 0), (name, st)
        assert st["attempt"] == (2 if name in failed else 1), (name, st)
        assert st["completionTime"]
    # No duplicate and no orphan: at most the job's one pod, owned by the job.
    for pod in cluster.core.list_namespaced_pod(ns).items:
        assert [uids.get(o.uid) for o in pod.metadata.owner_references] == [
            pod.metadata.labels[c.LABEL_JOB]
        ]
    for name in JOBS:
        assert len(pods_of(cluster, ns, name)) <= 1
    assert kubelet.overlaps() == []
