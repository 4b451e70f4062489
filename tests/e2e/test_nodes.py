"""Real nodes: kubelets with containerd, runc and a bridge pod network, joined to the
test control plane. Pods are scheduled, run, talk over pod IPs, resolve cluster
DNS names, and are held to their memory limits by the kernel."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from controlplane import wait_for

from conftest import Cluster
from node.layout import GPU_RESOURCE, POD_CIDR
from node.nodes import NodeSet
from node.pods import finished, pod_of, probe_pod


def test_two_nodes_join_and_advertise_gpus(cluster: Cluster, nodes: NodeSet) -> None:
    for node in nodes.nodes:
        obj = cluster.core.read_node(node.name)
        ready = next(c for c in obj.status.conditions if c.type == "Ready")
        assert ready.status == "True"
        assert obj.status.capacity[GPU_RESOURCE] == str(nodes.gpus_per_node)
        assert obj.status.allocatable[GPU_RESOURCE] == str(nodes.gpus_per_node)
        assert {a.type: a.address for a in obj.status.addresses}["InternalIP"] == node.ip
    # The Node authorizer: a node may change its own object, not another's.
    kubectl = str(cluster.plane.bin_dir / "kubectl")
    first, second = nodes.nodes[0].name, nodes.nodes[1].name
    own = cluster.plane.workdir / f"{first}.kubeconfig"
    denied = subprocess.run(
        [kubectl, "--kubeconfig", str(own), "label", "node", second, "x=y"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    secrets = subprocess.run(
        [kubectl, "--kubeconfig", str(own), "get", "secrets", "-A"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "forbidden" in secrets.stderr.lower()


def test_pods_on_both_nodes_talk_over_pod_ips_and_cluster_dns(
    cluster: Cluster, namespace: str, nodes: NodeSet
) -> None:
    core = cluster.core
    core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "probes"},
            "spec": {
                "clusterIP": "None",
                "selector": {"app": "probe"},
                "publishNotReadyAddresses": True,
                "ports": [{"name": "http", "port": 8080}],
            },
        },
    )
    first, second = nodes.nodes[0].name, nodes.nodes[1].name
    core.create_namespaced_pod(namespace, probe_pod("server", first, ["serve", "8080"]))
    wait_for(lambda: pod_of(cluster, namespace, "server").status.phase == "Running", 90,
             "the server pod to run")  # fmt: skip
    name = f"server.probes.{namespace}.svc.cluster.local"
    core.create_namespaced_pod(
        namespace, probe_pod("client", second, ["get", f"http://{name}:8080/", "60"])
    )
    done = wait_for(lambda: finished(cluster, namespace, "client"), 120, "the client pod to end")
    log = core.read_namespaced_pod_log("client", namespace)  # through the kubelet
    assert done.status.phase == "Succeeded", log
    assert log.strip() == "server"  # the server's hostname, fetched across nodes
    server = pod_of(cluster, namespace, "server")
    assert (server.spec.node_name, done.spec.node_name) == (first, second)
    ips = {server.status.pod_ip, done.status.pod_ip}
    assert len(ips) == 2
    assert all(ip.startswith(POD_CIDR.split(".0.0/")[0] + ".") for ip in ips)
    core.create_namespaced_pod(namespace, probe_pod("resolver", second, ["resolve", name]))
    wait_for(lambda: finished(cluster, namespace, "resolver"), 60, "the resolver pod to end")
    assert core.read_namespaced_pod_log("resolver", namespace).split() == [server.status.pod_ip]


def test_a_pod_over_its_memory_limit_is_oom_killed(
    cluster: Cluster, namespace: str, nodes: NodeSet
) -> None:
    limits = {"memory": "64Mi", "cpu": "500m"}
    pod = probe_pod(
        "hog",
        nodes.nodes[0].name,
        ["alloc", "512"],
        resources={"requests": limits, "limits": limits},
    )
    cluster.core.create_namespaced_pod(namespace, pod)
    done = wait_for(lambda: finished(cluster, namespace, "hog"), 120, "the hog pod to end")
    term = done.status.container_statuses[0].state.terminated
    assert (done.status.phase, term.reason, term.exit_code) == ("Failed", "OOMKilled", 137)


def test_a_pod_reaches_the_apiserver_through_the_kubernetes_service(
    cluster: Cluster, namespace: str, nodes: NodeSet
) -> None:
    """What a pod-hosted operator does: in-cluster credentials, the `kubernetes`
    Service's ClusterIP (kube-proxy) and its DNS name."""
    pod = probe_pod(
        "incluster", nodes.nodes[1].name, ["api", "https://kubernetes.default.svc/version"]
    )
    pod["spec"]["automountServiceAccountToken"] = True
    cluster.core.create_namespaced_pod(namespace, pod)
    done = wait_for(lambda: finished(cluster, namespace, "incluster"), 90, "the pod to end")
    log = cluster.core.read_namespaced_pod_log("incluster", namespace)
    assert done.status.phase == "Succeeded", log
    assert json.loads(log)["gitVersion"] == "v1.36.3"


def test_a_pod_reaches_the_test_s3_server(
    cluster: Cluster, namespace: str, nodes: NodeSet, s3: Any
) -> None:
    """Training pods read data and write checkpoints there: its address on the bridge."""
    url = f"{s3.pod_endpoint}/minio/health/live"
    cluster.core.create_namespaced_pod(
        namespace, probe_pod("s3check", nodes.nodes[0].name, ["get", url, "30"])
    )
    done = wait_for(lambda: finished(cluster, namespace, "s3check"), 90, "the pod to end")
    log = cluster.core.read_namespaced_pod_log("s3check", namespace)
    assert done.status.phase == "Succeeded", log
