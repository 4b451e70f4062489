"""The few API calls the operator makes, over the official Kubernetes client.

Responses are read as plain JSON dictionaries (the same shape the builders
write), not as client model objects. Creating what already exists and deleting
what is already gone both count as done: that is what makes a repeated
reconcile harmless.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_api import names as c

from .resources import FineTuneJobs

log = logging.getLogger("finetune_operator")


def _json(response: Any) -> Any:
    return json.loads(response.data)


class Rejected(Exception):
    """The API refused an object for a reason that creating it again cannot change."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)[:1000]
    except (ValueError, AttributeError):
        return str(e.reason)


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.jobs = FineTuneJobs(api)

    # --- jobs ------------------------------------------------------------------------

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.jobs.get(namespace, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_jobs(self, namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every job, or those of the given namespaces."""
        if not namespaces:
            return self.jobs.list()
        return [job for ns in namespaces for job in self.jobs.list(ns)]

    def patch_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        meta = job["metadata"]
        self.jobs.patch_status(meta["namespace"], meta["name"], status)

    def delete_job(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        try:
            self.jobs.delete(meta["namespace"], meta["name"], uid=meta["uid"])
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    # --- children ----------------------------------------------------------------------

    def list_pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        meta = job["metadata"]
        doc = _json(
            self.core.list_namespaced_pod(
                meta["namespace"],
                label_selector=f"{c.LABEL_JOB}={meta['name']}",
                _preload_content=False,
            )
        )
        # Only the pods this very job owns (a job re-created under the same name is another).
        return [
            p
            for p in doc.get("items", [])
            if any(o.get("uid") == meta["uid"] for o in p["metadata"].get("ownerReferences", []))
        ]

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create one object; False when it already exists. Rejected (with the API's
        message) when the API refuses it for good: invalid, or forbidden by admission
        for any reason but a full quota or a namespace being deleted."""
        body: Any = manifest  # the client sends plain dictionaries as they are
        ns = manifest["metadata"]["namespace"]
        kind = manifest["kind"]
        try:
            if kind == "Pod":
                self.core.create_namespaced_pod(ns, body, _preload_content=False)
            elif kind == "Service":
                self.core.create_namespaced_service(ns, body, _preload_content=False)
            else:
                group, version = manifest["apiVersion"].split("/")
                plural = kind.lower() + "s"
                self.custom.create_namespaced_custom_object(
                    group, version, ns, plural, manifest, _preload_content=False
                )
        except ApiException as e:
            if e.status == 409:
                return False
            message = _api_message(e)
            # A full quota may free up, and a namespace being deleted takes the job with it.
            passing = ("exceeded quota", "being terminated")
            if e.status in (400, 422) or (
                e.status == 403 and not any(p in message for p in passing)
            ):
                raise Rejected(message, kind) from None
            raise
        return True

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        try:
            self.core.delete_namespaced_pod(
                name, namespace, grace_period_seconds=grace_seconds, _preload_content=False
            )
        except ApiException as e:
            if e.status != 404:
                raise

    # --- nodes -----------------------------------------------------------------------

    def node_ready(self, name: str) -> bool:
        """Whether a node's kubelet reports it Ready. A node that no longer exists is
        not; one the operator may not read counts as ready (nothing is forced)."""
        try:
            node = _json(self.core.read_node(name, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return False
            if e.status == 403:
                log.warning("may not read node %s (RBAC: nodes get): assuming it is ready", name)
                return True
            raise
        conditions = node.get("status", {}).get("conditions") or []
        return any(x.get("type") == "Ready" and x.get("status") == "True" for x in conditions)

    def event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = job["metadata"]
        now = datetime.now(UTC)
        body: Any = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": c.API_VERSION,
                "kind": c.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": c.FIELD_MANAGER},
            "firstTimestamp": now.isoformat().replace("+00:00", "Z"),
            "lastTimestamp": now.isoformat().replace("+00:00", "Z"),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except ApiException as e:  # an event is worth a log line, never a failed reconcile
            log.warning("could not post event %s for %s: %s", reason, meta["name"], e.reason)
