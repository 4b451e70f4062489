"""The reconcile loop: a de-duplicating work queue of jobs and the workers that
apply each job's plan.

Watch events (from kopf) and timers only *enqueue* a job's key; a worker then
reads the job and its pods fresh from the API, asks reconcile.reconcile what
should happen, and applies it: status first, then deletions, then creations,
then events. A key is never worked on by two workers at once, and a key added
while it is being worked on is worked on again afterwards, so nothing is lost
and nothing races. A periodic resync enqueues every job, which also covers
anything that happened while the operator was down.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from finetune_api import names as c
from finetune_api.metrics import OperatorMetric as OM
from finetune_api.names import node_name

from .kube import Kube, Rejected
from .node_loss import nodes_to_check
from .progress import Reading, scrape
from .reconcile import Refusal, Settings, phase_of, reconcile

log = logging.getLogger("finetune_operator")
Key = tuple[str, str]  # (namespace, name)


class WorkQueue:
    """Keys to reconcile, each at most once in the queue and once in progress."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._queue: list[Key] = []
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._again: set[Key] = set()
        self._timers: list[tuple[float, Key]] = []
        self._closed = False

    def add(self, key: Key) -> None:
        with self._cv:
            if key in self._active:
                self._again.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._queue.append(key)
                self._cv.notify()

    def add_after(self, key: Key, seconds: float) -> None:
        with self._cv:
            heapq.heappush(self._timers, (time.monotonic() + seconds, key))
            self._cv.notify_all()

    def get(self) -> Key | None:
        """The next key to work on (None once closed)."""
        with self._cv:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, key = heapq.heappop(self._timers)
                    if key in self._active:
                        self._again.add(key)
                    elif key not in self._queued:
                        self._queued.add(key)
                        self._queue.append(key)
                if self._queue:
                    key = self._queue.pop(0)
                    self._queued.discard(key)
                    self._active.add(key)
                    return key
                wait = self._timers[0][0] - now if self._timers else None
                self._cv.wait(wait)

    def done(self, key: Key) -> None:
        with self._cv:
            self._active.discard(key)
            if key in self._again:
                self._again.discard(key)
                if key not in self._queued:
                    self._queued.add(key)
                    self._queue.append(key)
                    self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def __len__(self) -> int:
        with self._cv:
            return len(self._queue)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.jobs = Gauge(OM.JOBS, "FineTuneJobs by phase.", ("phase",), registry=r)
        self.reconcile_seconds = Histogram(
            OM.RECONCILE_SECONDS,
            "Time to reconcile one job.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.reconciles = Counter(OM.RECONCILES, "Reconciles run.", registry=r)
        self.errors = Counter(OM.RECONCILE_ERRORS, "Reconciles that raised.", registry=r)
        self.restarts = Counter(OM.GANG_RESTARTS, "Gang restarts after a failure.", registry=r)
        self.pods_created = Counter(OM.PODS_CREATED, "Training pods created.", registry=r)
        self.queue_depth = Gauge(OM.QUEUE_DEPTH, "Jobs waiting to be reconciled.", registry=r)
        self.leader = Gauge(OM.LEADER, "1 while this replica reconciles, else 0.", registry=r)
        self.watch_lag = Gauge(
            OM.WATCH_LAG,
            "How long the watch has been behind the API (0 when it is current).",
            registry=r,
        )


@dataclass
class Health:
    """What liveness and readiness are judged by."""

    stale_after: float = 120.0
    ready: bool = False
    # With leader election: set once a standby has read the Lease (it is then ready,
    # though it does not reconcile).
    standby: threading.Event | None = None
    last_resync: float = 0.0
    # Resource versions the watch delivered, and since when the API has shown a
    # newer one than the watch did (per job).
    seen: dict[Key, str] = field(default_factory=dict)
    behind_since: dict[Key, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def watched(self, key: Key, resource_version: str | None) -> None:
        with self.lock:
            if resource_version is None:
                self.seen.pop(key, None)
            else:
                self.seen[key] = resource_version
            self.behind_since.pop(key, None)

    def compare(self, listed: dict[Key, str], now: float) -> float:
        """Record a LIST's resource versions; the longest the watch has been behind."""
        with self.lock:
            for key, rv in listed.items():
                if self.seen.get(key) == rv:
                    self.behind_since.pop(key, None)
                else:
                    self.behind_since.setdefault(key, now)
            for key in list(self.behind_since):
                if key not in listed:
                    del self.behind_since[key]
            self.last_resync = now
            return max((now - t for t in self.behind_since.values()), default=0.0)

    def is_ready(self) -> bool:
        return self.ready or (self.standby is not None and self.standby.is_set())

    def live(self, resync: float) -> tuple[bool, str]:
        now = time.monotonic()
        with self.lock:
            lag = max((now - t for t in self.behind_since.values()), default=0.0)
            if lag > self.stale_after:
                return False, f"the watch is {lag:.0f}s behind the API"
            if self.ready and now - self.last_resync > max(3 * resync, self.stale_after):
                return False, f"no resync for {now - self.last_resync:.0f}s"
        return True, "ok"


class Controller:
    def __init__(
        self,
        kube: Kube,
        settings: Settings | None = None,
        workers: int = 8,
        resync: float = 60.0,
        namespaces: tuple[str, ...] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube, self.settings, self.clock = kube, settings or Settings(), clock
        self.queue = WorkQueue()
        self.metrics = OperatorMetrics()
        self.health = Health()
        self.resync = resync
        self.namespaces = namespaces
        self.workers = workers
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._phases: dict[Key, str] = {}
        # Why the API refused a pod of a job on its last pass, for the next one.
        self._rejected: dict[Key, Refusal] = {}

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        self.metrics.leader.set(1)
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._resync_loop, name="resync", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()

    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            try:
                self.reconcile(key)
            except Exception:
                self.metrics.errors.inc()
                log.exception("reconcile of %s/%s failed; retrying", *key)
                self.queue.add_after(key, 5.0)
            finally:
                self.queue.done(key)
                self.metrics.queue_depth.set(len(self.queue))

    def _resync_loop(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = self.kube.list_jobs(self.namespaces)
                listed = {}
                for job in jobs:
                    key = (job["metadata"]["namespace"], job["metadata"]["name"])
                    listed[key] = job["metadata"]["resourceVersion"]
                    self.queue.add(key)
                lag = self.health.compare(listed, time.monotonic())
                self.metrics.watch_lag.set(lag)
                self.health.ready = True
            except Exception:
                log.exception("resync failed")
            self._stop.wait(self.resync)

    # --- one job -----------------------------------------------------------------------

    def reconcile(self, key: Key) -> None:
        began = time.monotonic()
        namespace, name = key
        job = self.kube.get_job(namespace, name)
        if job is None:
            self._phases.pop(key, None)
            self._count_phases()
            return
        pods = self.kube.list_pods(job)
        now = self.clock()
        reading = self._read_progress(job, pods, now)
        lost = frozenset(n for n in nodes_to_check(pods, now) if not self.kube.node_ready(n))
        rejected = self._rejected.pop(key, None)
        plan = reconcile(job, pods, now, self.settings, reading, lost, rejected)
        new_status = plan.status.to_wire()
        if new_status != (job.get("status") or {}):
            self.kube.patch_status(job, new_status)
        for pod_name in plan.delete_pods:
            self.kube.delete_pod(namespace, pod_name)
        for pod_name in plan.force_delete_pods:
            self.kube.delete_pod(namespace, pod_name, grace_seconds=0)
        try:
            self._create(plan.create)
        except Rejected as e:
            # The next pass fails the job with the API's message instead of retrying.
            log.warning("%s/%s: the API refused a %s: %s", namespace, name, e.kind, e)
            self._rejected[key] = Refusal(e.kind, str(e))
            self.queue.add(key)
        for event in plan.events:
            self.kube.event(job, event.type, event.reason, event.message)
            log.info("%s/%s: %s %s", namespace, name, event.reason, event.message)
        if plan.restarted:
            self.metrics.restarts.inc()
        if plan.delete_job:
            log.info("%s/%s: deleting, ttlSecondsAfterFinished has passed", namespace, name)
            self.kube.delete_job(job)
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)
        self._phases[key] = str(plan.status.phase or c.Phase.PENDING)
        self._count_phases()
        self.metrics.reconciles.inc()
        self.metrics.reconcile_seconds.observe(time.monotonic() - began)

    def _create(self, manifests: list[dict[str, Any]]) -> None:
        for manifest in manifests:
            created = self.kube.create(manifest)
            if created and manifest["kind"] == "Pod":
                self.metrics.pods_created.inc()

    def _read_progress(
        self, job: dict[str, Any], pods: list[dict[str, Any]], now: datetime
    ) -> Reading | None:
        rank0 = node_name(job["metadata"]["name"], 0)
        for p in pods:
            ip = p.get("status", {}).get("podIP")
            if p["metadata"]["name"] == rank0 and ip and phase_of(p) == "Running":
                return scrape(ip, self.settings.defaults.metrics_port, now)
        return None

    def _count_phases(self) -> None:
        counts = {str(p): 0 for p in c.Phase}
        for phase in list(self._phases.values()):
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            self.metrics.jobs.labels(phase).set(n)

    # --- fed by the watches ------------------------------------------------------------

    def job_event(self, namespace: str, name: str, resource_version: str | None) -> None:
        self.health.watched((namespace, name), resource_version)
        self.queue.add((namespace, name))

    def pod_event(self, namespace: str, job_name: str) -> None:
        self.queue.add((namespace, job_name))
