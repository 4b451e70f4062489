"""`ftctl logs NAME`: the trainer's log, from rank 0 or any node."""

from __future__ import annotations

import threading
import time
from typing import Any

import click
from kubernetes.client.exceptions import ApiException

from finetune_api import names as c
from finetune_api.names import node_name

from .. import views
from ..client import ClientError, Jobs, explain
from .common import cluster_options


def _started(jobs: Jobs, pod: str) -> bool:
    """Whether the pod's trainer container has started (it may have ended since)."""
    try:
        found: Any = jobs.cluster.core.read_namespaced_pod(pod, jobs.cluster.namespace)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    statuses = (found.status and found.status.container_statuses) or []
    return any(s.state and (s.state.running or s.state.terminated) for s in statuses)


def _wait_started(jobs: Jobs, name: str, pod: str) -> None:
    """`logs -f` straight after `submit` waits for the pod to start (where `kubectl logs
    -f` would fail), and gives up once the job has ended without it."""
    told = False
    while not _started(jobs, pod):
        if views.phase(jobs.job(name)) in views.FINISHED:
            raise ClientError(f"{name} ended before pod {pod} started")
        if not told:
            click.echo(f"waiting for pod {pod} to start ...", err=True)
            told = True
        time.sleep(1.0)  # the polling period


def _stream(jobs: Jobs, name: str, pod: str, follow: bool, prefix: str) -> None:
    try:
        if follow:
            _wait_started(jobs, name, pod)
        response: Any = jobs.cluster.core.read_namespaced_pod_log(
            pod,
            jobs.cluster.namespace,
            container=c.CONTAINER_NAME,
            follow=follow,
            _preload_content=False,
        )
        for raw in response.stream(decode_content=True):
            for line in raw.decode(errors="replace").splitlines():
                click.echo(f"{prefix}{line}")
    except Exception as e:
        raise explain(e, jobs.cluster, f'the log of pod "{pod}"') from None


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines.")
@click.option("--node", type=click.IntRange(0), default=0, show_default=True, help="Node index.")
@click.option("--all", "all_nodes", is_flag=True, help="Every node, each line prefixed.")
@cluster_options
def logs(jobs: Jobs, name: str, follow: bool, node: int, all_nodes: bool) -> None:
    """Print a job's trainer log (rank 0 by default)."""
    nodes = jobs.job(name).spec.resources.nodes
    if node >= nodes:
        raise click.BadParameter(f"{name} has {nodes} nodes (0..{nodes - 1})", param_hint="--node")
    if not all_nodes:
        _stream(jobs, name, node_name(name, node), follow, "")
        return
    errors: list[ClientError] = []

    def one(i: int) -> None:
        try:
            _stream(jobs, name, node_name(name, i), follow, f"[node-{i}] ")
        except ClientError as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
