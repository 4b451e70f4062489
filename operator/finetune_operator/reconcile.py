"""The reconcile decision: what a FineTuneJob and its pods should become next.

A pure function of what the API shows now (the job, its pods, the time, the
progress read from rank 0), with no framework and no API calls, so every rule
is tested without a cluster. The controller applies the plan in one order:
the status first, then deletions and creations. The status therefore records
each decision (a new attempt, a failure) before anything acts on it, and a
crash at any point leaves the API in a state the next reconcile finishes from:

- pods of any other attempt than status.attempt are deleted, and no pod of the
  current attempt is created until they are gone, so two attempts never overlap;
- pods have fixed names, so creating a pod twice is a harmless conflict;
- a finished job keeps its finished pods (for their logs) until its TTL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from finetune_api import names as c
from finetune_api.checkpoints import checkpoint_uri
from finetune_api.exits import ExitCode, parse_termination_message
from finetune_api.names import ConditionStatus as S
from finetune_api.names import ConditionType as T
from finetune_api.names import Phase, Reason
from finetune_api.types import CheckpointRef, Condition, FineTuneJobStatus

from . import restart
from .builders import Defaults, Gang, Job, pod, pod_group, service
from .node_loss import left_behind, next_look, node_of
from .progress import Reading

FINISHED = (Phase.SUCCEEDED, Phase.FAILED)
# Kubelet waiting reasons that need a person, and the reason the job reports.
STUCK_WAITING = {
    "ErrImagePull": Reason.IMAGE_PULL,
    "ImagePullBackOff": Reason.IMAGE_PULL,
    "InvalidImageName": Reason.IMAGE_PULL,
    # imagePullPolicy Never and the image is not on the node.
    "ErrImageNeverPull": Reason.IMAGE_PULL,
    "CreateContainerConfigError": Reason.CONTAINER_CONFIG,
    "CreateContainerError": Reason.CONTAINER_CONFIG,
}
NEWS_WHEN_FALSE = {Reason.RESUMED, Reason.RECOVERED, Reason.IMAGE_PULL, Reason.CONTAINER_CONFIG}
WARNING_REASONS = {
    Reason.POD_FAILED,
    Reason.POD_DELETED,
    Reason.TRAINER_ERROR,
    Reason.BACKOFF_LIMIT_EXCEEDED,
    Reason.DEADLINE_EXCEEDED,
    Reason.UNSCHEDULABLE,
    Reason.IMAGE_PULL,
    Reason.CONTAINER_CONFIG,
    Reason.POD_REJECTED,
}


@dataclass(frozen=True)
class Settings:
    """Operator-wide choices that shape the plan."""

    defaults: Defaults = field(default_factory=Defaults)
    gang: Gang = "none"
    # How often a running job's progress is read from its rank-0 pod.
    progress_interval: float = 15.0
    # The wait before a restart: base, doubling per restart, up to the cap (restart.py).
    restart_backoff: float = restart.DEFAULT_BASE_SECONDS
    restart_backoff_max: float = restart.DEFAULT_CAP_SECONDS


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: FineTuneJobStatus
    create: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    # Deleted pods whose node is lost: removed with grace period 0 (node_loss.py).
    force_delete_pods: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    restarted: bool = False
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds


# --- reading pods -------------------------------------------------------------------


def attempt_of(p: dict[str, Any]) -> int:
    return int(p["metadata"].get("labels", {}).get(c.LABEL_ATTEMPT, "0"))


def index_of(p: dict[str, Any]) -> int:
    return int(p["metadata"].get("labels", {}).get(c.LABEL_NODE_INDEX, "-1"))


def deleting(p: dict[str, Any]) -> bool:
    return bool(p["metadata"].get("deletionTimestamp"))


def phase_of(p: dict[str, Any]) -> str:
    return str(p.get("status", {}).get("phase", "Pending"))


def _trainer_state(p: dict[str, Any]) -> dict[str, Any]:
    for cs in p.get("status", {}).get("containerStatuses", []) or []:
        if cs.get("name") == c.CONTAINER_NAME:
            return dict(cs.get("state") or {})
    return {}


OOM_HINT = "raise spec.resources.memory, or lower the batch size or maxSeqLength"


def exit_of(p: dict[str, Any]) -> tuple[int | None, str]:
    """The trainer's exit code and its one-line reason (termination message)."""
    term = _trainer_state(p).get("terminated")
    status = p.get("status", {})
    if not term:
        # Evicted or lost before the container ran: the pod says why.
        why = status.get("message") or status.get("reason") or "the pod failed"
        return None, str(why)
    kubelet_reason = str(term.get("reason") or "")
    _, reason = parse_termination_message(term.get("message") or kubelet_reason)
    if kubelet_reason == "OOMKilled" and not reason.startswith("OOMKilled"):
        # The kernel killed a process of the container: the message (or the log tail
        # it falls back to) would not say so.
        oom = f"OOMKilled: over its memory limit ({OOM_HINT})"
        reason = f"{oom}; {reason}" if reason else oom
    return int(term.get("exitCode", 1)), reason


def unschedulable(p: dict[str, Any]) -> str | None:
    for cond in p.get("status", {}).get("conditions", []) or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return str(cond.get("message") or "no node fits the pod")
    return None


def stuck(p: dict[str, Any]) -> tuple[Reason, str] | None:
    waiting = _trainer_state(p).get("waiting") or {}
    reason = STUCK_WAITING.get(str(waiting.get("reason")))
    if reason is None:
        return None
    return reason, f"{waiting.get('reason')}: {waiting.get('message') or ''}".strip(" :")


# --- writing status -------------------------------------------------------------------


def set_condition(
    status: FineTuneJobStatus,
    type_: T,
    value: S,
    reason: Reason,
    message: str,
    now: datetime,
    generation: int | None,
) -> None:
    conditions = list(status.conditions or [])
    for i, cond in enumerate(conditions):
        if cond.type == type_:
            changed = cond.status != value
            conditions[i] = Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=now if changed else cond.last_transition_time,
                observed_generation=generation,
            )
            break
    else:
        conditions.append(
            Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
    status.conditions = conditions


def condition(status: FineTuneJobStatus, type_: T) -> Condition | None:
    return next((x for x in status.conditions or [] if x.type == type_), None)


def transition_events(old: FineTuneJobStatus, new: FineTuneJobStatus) -> list[Event]:
    """One event per condition that changed its status or reason."""
    events = []
    for cond in new.conditions or []:
        before = condition(old, cond.type)
        if before is not None and (before.status, before.reason) == (cond.status, cond.reason):
            continue
        # A condition turning False is news only when it says why (resumed, recovered,
        # stuck); otherwise the condition that turned True tells the story.
        if cond.status != S.TRUE and cond.reason not in NEWS_WHEN_FALSE:
            continue
        kind = "Warning" if cond.reason in WARNING_REASONS else "Normal"
        events.append(Event(kind, cond.reason, cond.message or f"{cond.type}={cond.status}"))
    return events


# --- the decision -----------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """What the API refused on the last pass (its kind: Pod or Service) and its words."""

    kind: str
    message: str


class _Reconcile:
    def __init__(
        self,
        obj: dict[str, Any],
        pods: list[dict[str, Any]],
        now: datetime,
        settings: Settings,
        reading: Reading | None,
        lost_nodes: frozenset[str],
        rejected: Refusal | None = None,
    ) -> None:
        self.obj, self.now, self.settings, self.reading = obj, now, settings, reading
        self.lost_nodes = lost_nodes
        self.rejected = rejected
        self.job = Job.from_object(obj)
        self.spec = self.job.spec
        self.generation = obj["metadata"].get("generation")
        self.old = FineTuneJobStatus.model_validate(obj.get("status") or {})
        st = self.old.model_copy(deep=True)
        st.observed_generation = self.generation
        st.attempt = st.attempt or 1
        st.restart_count = st.restart_count or 0
        self.st = st
        self.plan = Plan(st)
        self.pods = pods
        self.current = {index_of(p): p for p in pods if attempt_of(p) == st.attempt}
        self.stale = [p for p in pods if attempt_of(p) != st.attempt]

    def cond(self, type_: T, value: S, reason: Reason, message: str) -> None:
        set_condition(self.st, type_, value, reason, message, self.now, self.generation)

    def delete(self, pods: list[dict[str, Any]]) -> None:
        self.plan.delete_pods += [p["metadata"]["name"] for p in pods if not deleting(p)]

    def live(self) -> list[dict[str, Any]]:
        return [p for p in self.pods if phase_of(p) not in ("Succeeded", "Failed")]

    def finish(self, phase: Phase, reason: Reason, message: str) -> None:
        self.st.phase = phase
        self.st.completion_time = self.now
        done = T.SUCCEEDED if phase == Phase.SUCCEEDED else T.FAILED
        self.cond(done, S.TRUE, reason, message)
        self.cond(T.RUNNING, S.FALSE, reason, message)
        if condition(self.st, T.RESTARTING) is not None:
            self.cond(T.RESTARTING, S.FALSE, reason, message)
        self.delete(self.live())
        self._expire()

    def _expire(self) -> None:
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        if ttl is None or self.st.completion_time is None:
            return
        left = (self.st.completion_time + timedelta(seconds=ttl) - self.now).total_seconds()
        if left <= 0:
            self.plan.delete_job = True
        else:
            self.plan.requeue(left)

    def run(self) -> Plan:
        if self.obj["metadata"].get("deletionTimestamp"):
            return Plan(self.old)
        if self.st.phase in FINISHED:
            self.delete(self.live())
            self._expire()
        elif self.rejected is not None:
            # Creating it again would be refused again: no retry loop, the API's words.
            what = "a training pod" if self.rejected.kind == "Pod" else "the job's Service"
            self.finish(
                Phase.FAILED,
                Reason.POD_REJECTED,
                f"the API refused {what}; fix the spec in a new job: {self.rejected.message}",
            )
        elif self.spec.suspend:
            self._suspend()
        elif not self._deadline_passed():
            self._advance()
        self.plan.events = transition_events(self.old, self.st) + self.plan.events
        return self.plan

    def _suspend(self) -> None:
        self.delete(self.pods)
        if self.st.phase != Phase.SUSPENDED:
            message = (
                "spec.suspend is true: the pods are removed; false resumes from the last checkpoint"
            )
            self.st.phase = Phase.SUSPENDED
            self.st.start_time = None  # the deadline clock stops while suspended
            self.cond(T.SUSPENDED, S.TRUE, Reason.SUSPENDED, message)
            self.cond(T.RUNNING, S.FALSE, Reason.SUSPENDED, message)

    def _deadline_passed(self) -> bool:
        deadline = self.spec.run_policy.active_deadline_seconds
        if deadline is None or self.st.start_time is None:
            return False
        left = (self.st.start_time + timedelta(seconds=deadline) - self.now).total_seconds()
        if left > 0:
            self.plan.requeue(left)
            return False
        self.finish(
            Phase.FAILED,
            Reason.DEADLINE_EXCEEDED,
            f"the job ran longer than spec.runPolicy.activeDeadlineSeconds ({deadline}s)",
        )
        return True

    def _advance(self) -> None:
        st = self.st
        if st.phase == Phase.SUSPENDED:
            self.cond(T.SUSPENDED, S.FALSE, Reason.RESUMED, "spec.suspend is false: pods return")
            st.phase = Phase.PENDING
        if self.stale:
            # An earlier attempt's pods must be gone before this attempt starts.
            self.delete(self.stale)
            self._release_lost_pods()
            if st.phase is None:
                st.phase = Phase.PENDING
            return
        if not self.current and self._backing_off():
            return
        failed = sorted((p for p in self.current.values() if phase_of(p) == "Failed"), key=index_of)
        if failed:
            self._failed(failed[0])
            return
        gone = [i for i in range(self.spec.resources.nodes) if i not in self.current]
        lost = [p for p in self.current.values() if deleting(p)]
        if st.phase == Phase.RUNNING and (gone or lost):
            name = lost[0]["metadata"]["name"] if lost else f"{self.job.name}-node-{gone[0]}"
            self._retry(Reason.POD_DELETED, f"pod {name} was deleted while the job ran")
            return
        nodes = self.spec.resources.nodes
        if len(self.current) == nodes and all(
            phase_of(p) == "Succeeded" for p in self.current.values()
        ):
            self.finish(
                Phase.SUCCEEDED,
                Reason.COMPLETED,
                f"training finished on attempt {st.attempt}",
            )
            self._record_progress()
            return
        if gone:
            self._create(gone)
        self._observe()

    def _release_lost_pods(self) -> None:
        for p in left_behind(self.stale, self.lost_nodes, self.now):
            name = p["metadata"]["name"]
            self.plan.force_delete_pods.append(name)
            message = (
                f"pod {name} of attempt {attempt_of(p)} is on node {node_of(p)}, which is not "
                f"ready: removed without its kubelet's confirmation so that attempt "
                f"{self.st.attempt} can start"
            )
            self.plan.events.append(Event("Warning", Reason.NODE_LOST, message))
        wait = next_look(self.stale, self.now)
        if wait is not None:
            self.plan.requeue(wait)

    def _backing_off(self) -> bool:
        """Whether the next attempt must still wait (its time is then the requeue)."""
        left = restart.wait_left(self.st.next_attempt_time, self.now)
        if left > 0:
            self.plan.requeue(left)
        return left > 0

    def _create(self, missing: list[int]) -> None:
        st, job, s = self.st, self.job, self.settings
        st.next_attempt_time = None
        self.plan.create.append(service(job, s.defaults))
        group = pod_group(job, s.gang)
        if group is not None:
            self.plan.create.append(group)
        self.plan.create += [pod(job, i, st.attempt or 1, s.defaults, s.gang) for i in missing]
        if st.start_time is None:
            st.start_time = self.now
        if st.phase in (None, Phase.PENDING):
            st.phase = Phase.CREATED
        self.cond(
            T.CREATED,
            S.TRUE,
            Reason.PODS_CREATED,
            f"attempt {st.attempt}: {self.spec.resources.nodes} pods of "
            f"{self.spec.resources.gpus_per_node} GPUs",
        )

    def _observe(self) -> None:
        """Running, or why not yet: unschedulable pods and stuck containers."""
        st, nodes = self.st, self.spec.resources.nodes
        pods = sorted(self.current.values(), key=index_of)
        blocked = [(p, m) for p in pods if (m := unschedulable(p)) is not None]
        if blocked:
            p, message = blocked[0]
            self.cond(
                T.UNSCHEDULABLE,
                S.TRUE,
                Reason.UNSCHEDULABLE,
                f"pod {p['metadata']['name']}: {message}",
            )
        elif (old := condition(st, T.UNSCHEDULABLE)) is not None and old.status == S.TRUE:
            self.cond(T.UNSCHEDULABLE, S.FALSE, Reason.SCHEDULED, "every pod has a node")
        running = [p for p in pods if phase_of(p) in ("Running", "Succeeded")]
        if len(running) == nodes and any(phase_of(p) == "Running" for p in pods):
            if st.phase != Phase.RUNNING:
                st.phase = Phase.RUNNING
            self.cond(
                T.RUNNING,
                S.TRUE,
                Reason.ALL_PODS_RUNNING,
                f"attempt {st.attempt}: all {nodes} pods are running",
            )
            restarting = condition(st, T.RESTARTING)
            if restarting is not None and restarting.status == S.TRUE:
                self.cond(
                    T.RESTARTING, S.FALSE, Reason.RECOVERED, f"attempt {st.attempt} is running"
                )
            self._record_progress()
            self.plan.requeue(self.settings.progress_interval)
            return
        problems = [(p, x) for p in pods if (x := stuck(p)) is not None]
        if problems:
            p, (reason, message) = problems[0]
            self.cond(T.RUNNING, S.FALSE, reason, f"pod {p['metadata']['name']}: {message}")
        else:
            self.cond(
                T.RUNNING,
                S.FALSE,
                Reason.WAITING,
                f"{len(running)} of {nodes} pods running",
            )

    def _failed(self, p: dict[str, Any]) -> None:
        code, why = exit_of(p)
        name = p["metadata"]["name"]
        what = f"pod {name} exited with code {code}" if code is not None else f"pod {name} failed"
        if why:
            what += f": {why}"
        if code == ExitCode.PERMANENT:
            self.finish(Phase.FAILED, Reason.TRAINER_ERROR, what)
            return
        self._retry(Reason.POD_FAILED, what)

    def _retry(self, reason: Reason, what: str) -> None:
        st, limit = self.st, self.spec.run_policy.backoff_limit
        restarts = st.restart_count or 0
        if restarts >= limit:
            self.finish(
                Phase.FAILED,
                Reason.BACKOFF_LIMIT_EXCEEDED,
                f"{what}; restarted {restarts} times already (spec.runPolicy.backoffLimit {limit})",
            )
            return
        failed_attempt = st.attempt or 1
        st.attempt = failed_attempt + 1
        st.restart_count = restarts + 1
        st.phase = Phase.RESTARTING
        s = self.settings
        wait = restart.backoff_seconds(st.restart_count, s.restart_backoff, s.restart_backoff_max)
        st.next_attempt_time = restart.next_attempt_at(
            self.now, st.restart_count, s.restart_backoff, s.restart_backoff_max
        )
        message = (
            f"attempt {failed_attempt} failed ({what}); attempt {st.attempt} starts at "
            f"{st.next_attempt_time:%Y-%m-%dT%H:%M:%SZ}, after a {wait:g}s backoff, "
            f"restart {st.restart_count} of {limit}, from the last checkpoint"
        )
        self.cond(T.RESTARTING, S.TRUE, reason, message)
        self.cond(T.RUNNING, S.FALSE, reason, message)
        self.delete(list(self.current.values()))
        self.plan.restarted = True

    def _record_progress(self) -> None:
        if self.reading is None:
            return
        p, old = self.reading.progress, self.st.progress
        if old is None or old.model_copy(update={"updated_at": None}) != p.model_copy(
            update={"updated_at": None}
        ):
            self.st.progress = p  # else keep the time it last changed
        step = self.reading.checkpoint_step
        if step and (self.st.last_checkpoint is None or self.st.last_checkpoint.step != step):
            self.st.last_checkpoint = CheckpointRef(
                uri=checkpoint_uri(self.spec.checkpoints.uri, step), step=step, time=self.now
            )


def reconcile(
    obj: dict[str, Any],
    pods: list[dict[str, Any]],
    now: datetime,
    settings: Settings | None = None,
    reading: Reading | None = None,
    lost_nodes: frozenset[str] = frozenset(),
    rejected: Refusal | None = None,
) -> Plan:
    """The next plan for one job, given its pods (all attempts) as the API shows them,
    what its rank-0 pod's metrics said (if it runs), which of the nodes that
    node_loss.nodes_to_check named are not ready, and what the API refused on the
    last pass (one of its pods or its Service; None if nothing)."""
    return _Reconcile(obj, pods, now, settings or Settings(), reading, lost_nodes, rejected).run()
