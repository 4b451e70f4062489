"""Pods left behind by a lost node.

When a node's kubelet stops (the machine died, lost power or its network), its
pods stay in the API: a deleted one keeps its deletionTimestamp and never goes,
because only its kubelet confirms that the containers have stopped. Gang pods
have fixed names and two attempts never overlap, so such a pod would hold the
next attempt back for as long as the node stays away.

Kubernetes leaves that decision to whoever knows the workload (its pod garbage
collector removes them only once an administrator taints the node
out-of-service). For a training gang the operator decides: a pod of an
*earlier* attempt that is already being deleted, whose grace period has passed,
and whose node's Ready condition is not True (the node lifecycle controller
sets it Unknown once the kubelet stops reporting) is deleted with grace period
0, and the job gets a NodeLost event naming the pod and the node.

If the node is only cut off and its processes live on, that rank has lost every
peer of its attempt (they were deleted first), so its next collective fails or
times out; what it may still upload is a complete checkpoint of its own attempt
that the new attempt does not depend on (it resumed from the newest one committed
before it started). The node's pods stop when its kubelet returns and finds them
gone from the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

# How often a job whose old pods wait on a node is looked at again: nodes are not
# watched, and the node lifecycle controller marks a silent node within a minute.
RECHECK_SECONDS = 10.0


def node_of(pod: dict[str, Any]) -> str | None:
    name = pod.get("spec", {}).get("nodeName")
    return str(name) if name else None


def grace_ends(pod: dict[str, Any]) -> datetime | None:
    """When a deleted pod's grace period ends (its deletionTimestamp), else None."""
    stamp = pod["metadata"].get("deletionTimestamp")
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None


def overdue(pod: dict[str, Any], now: datetime) -> bool:
    """Deleted, on a node, and still here after its grace period."""
    ends = grace_ends(pod)
    return ends is not None and ends <= now and node_of(pod) is not None


def nodes_to_check(pods: list[dict[str, Any]], now: datetime) -> set[str]:
    """The nodes whose readiness decides what happens to these pods."""
    return {n for p in pods if overdue(p, now) and (n := node_of(p)) is not None}


def left_behind(
    stale: list[dict[str, Any]], lost_nodes: frozenset[str], now: datetime
) -> list[dict[str, Any]]:
    """Earlier attempts' pods to delete without their kubelet's confirmation."""
    return [p for p in stale if overdue(p, now) and node_of(p) in lost_nodes]


def next_look(stale: list[dict[str, Any]], now: datetime) -> float | None:
    """Seconds until these deleted pods are worth another look, if any wait."""
    waits = []
    for p in stale:
        ends = grace_ends(p)
        if ends is not None:
            left = (ends - now).total_seconds()
            waits.append(left + 1.0 if left > 0 else RECHECK_SECONDS)
    return min(waits) if waits else None
