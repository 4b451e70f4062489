"""The end-to-end tests share one set of real nodes, the trainer image on them and
the operator installed by helm: all three are made once for this folder."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from controlplane import ROOT
from kubernetes import client

from conftest import Cluster
from e2e.support import CHART, RESTRICTED, build_image, s3_job, s3_secret
from operator_support import PodWatch
from prometheus.server import Prometheus

SCRAPE_CONFIG = ROOT / "manifests" / "prometheus" / "scrape-config.yaml"


@pytest.fixture(scope="package")
def nodes(cluster: Cluster) -> Iterator[Any]:
    """Two real nodes (tests/node/nodes.py), up for this folder only: the tests
    elsewhere register Node objects without a kubelet, and their pods must not land here."""
    from node.nodes import NodeSet

    nodeset = NodeSet(cluster.plane.workdir)
    try:
        yield nodeset.up()
    finally:
        nodeset.down()


@pytest.fixture(scope="package")
def trainer_image(nodes: Any) -> str:
    """The trainer image from trainer_image/Dockerfile on both nodes. A new build is
    imported into each node (about 5 minutes); the nodes keep it for later runs."""
    archive, image = build_image("trainer")
    nodes.load_image(archive, image)
    return image


@pytest.fixture(scope="package")
def operator(cluster: Cluster, nodes: Any, helm: str) -> Iterator[dict[str, str]]:
    """The operator image, installed with `helm install` from the chart into a
    namespace that enforces the restricted standard."""
    archive, image = build_image("operator")
    nodes.load_image(archive, image)
    ns = f"finetune-system-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": ns, "labels": RESTRICTED}})
    repository, tag = image.rsplit(":", 1)
    kubeconfig = str(cluster.plane.kubeconfig_path)
    release = subprocess.run(
        [
            helm, "install", "finetune-operator", str(CHART), "--namespace", ns,
            "--kubeconfig", kubeconfig, "--wait", "--timeout", "180s",
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=Never", "--set", "resyncSeconds=10",
            "--set", "progressSeconds=2",
            # Restarts spaced 3 s, 6 s, ... (the spacing itself: tests/test_operator.py).
            "--set", "restartBackoffSeconds=3",
        ],
        capture_output=True, text=True, check=False, timeout=240,
    )  # fmt: skip
    try:
        assert release.returncode == 0, release.stdout + release.stderr
        yield {"namespace": ns, "image": image}
    finally:
        subprocess.run(
            [helm, "uninstall", "finetune-operator", "-n", ns, "--kubeconfig", kubeconfig],
            capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        cluster.core.delete_namespace(ns)


@pytest.fixture(scope="package")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus on this host, finding pods as a cluster's Prometheus does: Kubernetes
    service discovery with manifests/prometheus/scrape-config.yaml, as a ServiceAccount
    that may only read pods. Only the connection and the interval are the test's own."""
    ns = f"monitoring-{uuid.uuid4().hex[:6]}"
    role = {"metadata": {"name": ns}}
    cluster.core.create_namespace({"metadata": {"name": ns}})
    cluster.core.create_namespaced_service_account(ns, {"metadata": {"name": "prometheus"}})
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    rbac.create_cluster_role(
        {
            **role,
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
            ],
        }
    )
    rbac.create_cluster_role_binding(
        {
            **role,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ns},
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": ns}],
        }
    )
    workdir = tmp_path_factory.mktemp("prometheus")
    token = workdir / "token"
    request = {"spec": {"expirationSeconds": 7200}}
    token.write_text(
        cluster.core.create_namespaced_service_account_token("prometheus", ns, request).status.token
    )
    jobs = yaml.safe_load(SCRAPE_CONFIG.read_text())
    for job in jobs:
        job.update(scrape_interval="1s", scrape_timeout="900ms")
        for sd in job["kubernetes_sd_configs"]:
            sd.update(
                api_server=cluster.plane.server,
                tls_config={"ca_file": str(cluster.plane.workdir / "pki" / "ca.crt")},
                authorization={"credentials_file": str(token)},
            )
    prom = Prometheus(workdir, {"scrape_configs": jobs}).start()
    try:
        yield prom
    finally:
        prom.stop()
        rbac.delete_cluster_role_binding(ns)
        rbac.delete_cluster_role(ns)
        cluster.core.delete_namespace(ns)


@pytest.fixture
def mrpc_job(
    cluster: Cluster,
    namespace: str,
    operator: dict[str, str],
    trainer_image: str,
    s3: Any,
    mrpc_in_s3: dict[str, str],
) -> Callable[..., dict[str, Any]]:
    """Makes two-node MRPC jobs of the trainer image (`mrpc_job(name, **training)`), with
    the operator running and the S3 keys in the Secret "s3-keys" of the test's namespace."""
    s3_secret(cluster, namespace, s3)
    return lambda name, **training: s3_job(name, trainer_image, s3, mrpc_in_s3, **training)


@pytest.fixture
def pod_watch(cluster: Cluster, namespace: str) -> Iterator[PodWatch]:
    """Every pod event of the test's namespace, recorded from before its first job."""
    recorder = PodWatch(cluster.core, namespace).start()
    try:
        yield recorder
    finally:
        recorder.stop()
