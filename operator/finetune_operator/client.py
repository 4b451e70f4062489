"""ftctl's view of a cluster: kubeconfig handling like kubectl, FineTuneJob calls,
and API errors turned into one or two readable lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from finetune_api import names as c
from finetune_api.types import FineTuneJob

from .resources import FineTuneJobs


class ClientError(Exception):
    """A failure to show the user as is (no traceback)."""


@dataclass
class Cluster:
    api: client.ApiClient
    namespace: str
    server: str

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Cluster:
    """Like kubectl: --kubeconfig, $KUBECONFIG or ~/.kube/config; the context's namespace."""
    try:
        contexts, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
        chosen = next((x for x in contexts if x["name"] == context), None) if context else current
        if context and chosen is None:
            raise ClientError(f'context "{context}" not found in the kubeconfig')
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context
        )
    except ConfigException as e:
        raise ClientError(f"no usable kubeconfig: {e}") from None
    ns = namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
    return Cluster(api, ns, api.configuration.host)


def _causes(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body.strip()[:500]
    causes = doc.get("details", {}).get("causes") or []
    if causes:
        return "; ".join(
            f"{x.get('field', '')}: {x.get('message', '')}".strip(": ") for x in causes
        )
    return str(doc.get("message", body))


def _names_an_object(body: str) -> bool:
    """A 404 about one object (it does not exist), not about its type (no such API)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return bool(isinstance(doc, dict) and doc.get("details", {}).get("name"))


def explain(e: Exception, cluster: Cluster, what: str = "") -> ClientError:
    """The one-line story of an API failure."""
    if isinstance(e, ApiException):
        if e.status == 404 and not _names_an_object(e.body or ""):
            return ClientError(
                f"the FineTuneJob CRD is not installed in the cluster at {cluster.server}; "
                "install it with: kubectl apply --server-side -f manifests/crd/"
            )
        if e.status == 404:
            return ClientError(f"{what or 'the object'} not found in namespace {cluster.namespace}")
        if e.status == 422:
            return ClientError(f"the cluster rejected {what or 'the job'}: {_causes(e.body or '')}")
        if e.status == 409:
            return ClientError(
                f"{what or 'the job'} already exists in namespace {cluster.namespace}"
            )
        if e.status in (401, 403):
            return ClientError(f"not allowed: {_causes(e.body or '')}")
        return ClientError(f"the API server answered {e.status}: {_causes(e.body or '')}")
    if isinstance(e, urllib3.exceptions.HTTPError | OSError):
        return ClientError(
            f"no cluster reachable at {cluster.server} (check --kubeconfig/--context): "
            f"{type(e).__name__}"
        )
    return ClientError(str(e))


class Jobs:
    """FineTuneJob operations in one namespace (or all)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.api = FineTuneJobs(cluster.api)
        self.connected = True

    @classmethod
    def offline(cls, namespace: str) -> Jobs:
        """No cluster configured: only what needs none (a client-side dry run) works;
        any call names the missing kubeconfig."""
        jobs = cls(Cluster(client.ApiClient(), namespace, "(no cluster configured)"))
        jobs.connected = False
        return jobs

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as e:
            raise explain(e, self.cluster, what) from None

    def create(self, body: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        name = body["metadata"].get("name") or body["metadata"].get("generateName", "")
        return self._job_call(name, self.api.create, self.cluster.namespace, body, dry_run)

    def server_checks(self, body: dict[str, Any]) -> bool:
        """The server's own checks of a create (schema, CEL rules, a name taken), sent as
        a dry run; False, and nothing checked, when no cluster answers."""
        if not self.connected:
            return False
        try:
            self.api.create(self.cluster.namespace, body, True)
        except (urllib3.exceptions.HTTPError, OSError):
            return False
        except ApiException as e:
            raise explain(e, self.cluster, f'FineTuneJob "{body["metadata"]["name"]}"') from None
        return True

    def get(self, name: str) -> dict[str, Any]:
        return self._job_call(name, self.api.get, self.cluster.namespace, name)

    def job(self, name: str) -> FineTuneJob:
        """The job as the API model (what ftctl's views read)."""
        return FineTuneJob.from_wire(self.get(name))

    def list_jobs(self, all_namespaces: bool = False) -> list[dict[str, Any]]:
        namespace = None if all_namespaces else self.cluster.namespace
        items: list[dict[str, Any]] = self._call("FineTuneJobs", self.api.list, namespace)
        return sorted(items, key=lambda j: (j["metadata"]["namespace"], j["metadata"]["name"]))

    def delete(self, name: str) -> None:
        self._job_call(name, self.api.delete, self.cluster.namespace, name)

    def set_suspend(self, name: str, suspend: bool) -> dict[str, Any]:
        patch = {"spec": {"suspend": suspend}}
        return self._job_call(name, self.api.patch, self.cluster.namespace, name, patch)

    def _job_call(self, name: str, fn: Any, *args: Any) -> dict[str, Any]:
        out: dict[str, Any] | None = self._call(f'FineTuneJob "{name}"', fn, *args)
        return out or {}

    def events(self, name: str) -> list[Any]:
        items = self._call(
            "events",
            self.cluster.core.list_namespaced_event,
            self.cluster.namespace,
            field_selector=f"involvedObject.name={name},involvedObject.kind={c.KIND}",
        ).items
        return sorted(
            items, key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp
        )
