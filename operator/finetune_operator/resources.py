"""FineTuneJob calls over the official Kubernetes client, for the operator and ftctl.

One place spells the group, version and plural. Objects go in and come out as
plain JSON dictionaries (the wire shape the builders write and the models
parse), not as client model objects. Errors are the client's `ApiException`:
the operator and ftctl each decide what a 404 or 409 means to them.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from finetune_api import names as c


class FineTuneJobs:
    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return _json(
            self.custom.get_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.PLURAL, name, _preload_content=False
            )
        )

    def list(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """The jobs of one namespace, or of all (None)."""
        if namespace is None:
            response = self.custom.list_cluster_custom_object(
                c.GROUP, c.VERSION, c.PLURAL, _preload_content=False
            )
        else:
            response = self.custom.list_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.PLURAL, _preload_content=False
            )
        return list(_json(response).get("items", []))

    def create(self, namespace: str, body: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        return _json(
            self.custom.create_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.PLURAL, body, _preload_content=False, **kwargs
            )
        )

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the object (spec, metadata)."""
        return _json(
            self.custom.patch_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.PLURAL, name, patch, _preload_content=False
            )
        )

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A merge patch of the status subresource: the spec is untouched, so a user's
        concurrent edit of the spec cannot conflict with it or be lost."""
        self.custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, namespace, c.PLURAL, name, {"status": status},
            _preload_content=False,
        )  # fmt: skip

    def delete(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete in the background (pods go with their owner); with `uid`, only
        that very object, not one re-created under the same name."""
        options = client.V1DeleteOptions(
            propagation_policy="Background",
            preconditions={"uid": uid} if uid else None,
        )
        self.custom.delete_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.PLURAL, name, body=options, _preload_content=False
        )


def _json(response: Any) -> dict[str, Any]:
    return dict(json.loads(response.data))
