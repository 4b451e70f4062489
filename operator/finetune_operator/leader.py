"""Leader election over a coordination.k8s.io Lease: of several operator replicas,
exactly one reconciles; the others watch and wait (docs/operator.md, "Replicas").

The rules are client-go's, in short. The leader writes its identity and the time
into the Lease every `retry` seconds. A standby takes the Lease over once it has
seen the same record, unchanged, for a whole lease duration, timed on its own clock
(so no clock skew between machines matters); writes carry the Lease's
resourceVersion, so of two standbys racing for it one wins. A leader that has not
renewed for `renew_deadline` stops leading at once, before any standby may take
over; here that ends the process, which its Deployment restarts as a standby. A
leader that stops gracefully releases the Lease, so a standby takes over at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("finetune_operator")


@dataclass(frozen=True)
class Timing:
    """A lease of `lease` seconds; the others follow client-go's proportions."""

    lease: float = 15.0

    @property
    def renew_deadline(self) -> float:
        return self.lease * 2 / 3

    @property
    def retry(self) -> float:
        return self.lease / 7.5


def may_hold(holder: str | None, me: str, unchanged_for: float, lease: float) -> bool:
    """May `me` write itself into a Lease held by `holder`, whose record has not
    changed for `unchanged_for` seconds (on this replica's clock)?"""
    return not holder or holder == me or unchanged_for >= lease


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing = Timing(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Any: Leases go in and out as JSON dictionaries, as kube.py's objects do
        # (the typed V1Lease would reformat renewTime's microseconds).
        self.coordination: Any = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.timing, self.clock = timing, clock
        self.leading = threading.Event()
        self.reached_api = threading.Event()
        self._seen: tuple[Any, float] | None = None  # (record, first seen at)

    def run(
        self, stop: threading.Event, on_elected: Callable[[], None], on_lost: Callable[[], None]
    ) -> None:
        """Try for the Lease until elected, then renew it until `stop` (or until a
        renewal is overdue: `on_lost`, which must not return)."""
        renewed = self.clock()
        while not stop.is_set():
            held = self._try()
            if held:
                renewed = self.clock()
                if not self.leading.is_set():
                    self.leading.set()
                    log.info("leading: holds lease %s/%s as %s", self.namespace, self.name,
                             self.identity)  # fmt: skip
                    on_elected()
            elif self.leading.is_set() and self.clock() - renewed > self.timing.renew_deadline:
                log.error("lost lease %s/%s: not renewed for %.0fs", self.namespace, self.name,
                          self.clock() - renewed)  # fmt: skip
                on_lost()
            stop.wait(self.timing.retry)  # the period between tries and renewals

    def _try(self) -> bool:
        """One attempt to take or renew the Lease; whether this replica holds it now."""
        try:
            lease = self._read()
            self.reached_api.set()
            if lease is None:
                self._write(None, 0)
                return True
            spec = lease.get("spec", {})
            record = (spec.get("holderIdentity"), spec.get("renewTime"))
            now = self.clock()
            if self._seen is None or self._seen[0] != record:
                self._seen = (record, now)
            if not may_hold(record[0], self.identity, now - self._seen[1], self.timing.lease):
                return False
            self._write(lease, spec.get("leaseTransitions") or 0)
            return True
        except ApiException as e:
            if e.status != 409:  # 409: another replica wrote first
                log.warning("lease %s/%s: %s", self.namespace, self.name, e.reason)
            return False
        except Exception as e:  # the API unreachable (urllib3's errors are not OSErrors):
            # not renewed, so a leader stops at its renew deadline rather than this
            # thread dying while the controller goes on reconciling.
            log.warning("lease %s/%s: %s", self.namespace, self.name, e)
            return False

    def _read(self) -> dict[str, Any] | None:
        try:
            response = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        lease: dict[str, Any] = json.loads(response.data)
        return lease

    def _write(self, lease: dict[str, Any] | None, transitions: int) -> None:
        now = _micro_time()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.lease)),
            "renewTime": now,
        }
        if lease is None:
            body = {
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {**spec, "acquireTime": now, "leaseTransitions": 0},
            }
            self.coordination.create_namespaced_lease(self.namespace, body)
            return
        old = lease["spec"]
        taken = old.get("holderIdentity") != self.identity
        lease["spec"] = {
            **old,
            **spec,
            "acquireTime": now if taken else old.get("acquireTime", now),
            "leaseTransitions": transitions + 1 if taken else transitions,
        }
        self.coordination.replace_namespaced_lease(self.name, self.namespace, lease)

    def release(self) -> None:
        """Give the Lease up (a graceful stop), so that a standby takes it at once."""
        if not self.leading.is_set():
            return
        try:
            lease = self._read()
            if lease is None or lease["spec"].get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = None
            lease["spec"]["renewTime"] = _micro_time()
            self.coordination.replace_namespaced_lease(self.name, self.namespace, lease)
            log.info("released lease %s/%s", self.namespace, self.name)
        except Exception as e:  # stopping anyway: the lease then expires by itself
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, e)
