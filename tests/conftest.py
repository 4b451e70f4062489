"""Shared fixtures: a real control plane per test session, a namespace per test."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

sys.path.insert(0, str(Path(__file__).resolve().parent / "cluster"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane import ROOT, ControlPlane, built, wait_for

from finetune_api import names as c
from killed_runs import remove_killed_runs

CRD_FILE = ROOT / "manifests" / "crd" / "finetune.dev_finetunejobs.yaml"


@dataclass
class Cluster:
    """A running control plane and clients for it."""

    plane: ControlPlane
    api: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.plane.kubectl(*args, input=input, check=check)

    def create_job(self, namespace: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.custom.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.PLURAL, body, **kw
        )
        return out

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.custom.get_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.PLURAL, name
        )
        return out


@pytest.fixture(scope="session", autouse=True)
def killed_runs_removed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """What earlier test runs that were killed left (tests/killed_runs.py)."""
    remove_killed_runs(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane")).start()
    try:
        plane.kubectl("apply", "--server-side", "-f", str(CRD_FILE))

        def established() -> bool:
            got = plane.kubectl(
                "get",
                f"crd/{c.CRD_NAME}",
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                check=False,
            )
            return got.stdout.strip() == "True"

        wait_for(established, 60, "the FineTuneJob CRD to be established")
        api = config.new_client_from_config(config_file=str(plane.kubeconfig_path))
        yield Cluster(plane, api)
        api.close()
    finally:
        plane.stop()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace that enforces the "restricted" Pod Security Standard."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=name,
                labels={"pod-security.kubernetes.io/enforce": "restricted"},
            )
        )
    )
    # Pods can only be created once the service-account controller has made
    # the namespace's default ServiceAccount.
    wait_for(
        lambda: cluster.core.read_namespaced_service_account("default", name) is not None,
        60,
        f"default ServiceAccount in {name}",
    )
    yield name
    cluster.core.delete_namespace(name)


@pytest.fixture(scope="session")
def helm() -> str:
    """A helm binary built from its Go module (tests/helm/build.sh, cached)."""
    return built(ROOT / "tests" / "helm" / "build.sh")[-1]


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real MinIO server for the whole session, on loopback and (for pods of the
    test nodes) on their bridge's gateway."""
    from controlplane import free_port

    from s3.server import S3Server  # type: ignore[import-not-found]

    server = S3Server(tmp_path_factory.mktemp("minio"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer_support import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def mrpc_in_s3(s3: Any, tiny_model: Path) -> dict[str, str]:
    """MRPC train/dev and the tiny model in MinIO; returns their URIs."""
    from trainer_support import put_mrpc

    return put_mrpc(s3.client(), tiny_model)
