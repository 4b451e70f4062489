"""`ftctl logs NAME`: the trainer's log, from rank 0 or any node."""

from __future__ import annotations

import threading
from typing import Any

import click

from finetune_api import names as c
from finetune_api.names import node_name

from ..client import ClientError, Jobs, explain
from .common import cluster_options


def _stream(jobs: Jobs, pod: str, follow: bool, prefix: str) -> None:
    try:
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
        _stream(jobs, node_name(name, node), follow, "")
        return
    errors: list[ClientError] = []

    def one(i: int) -> None:
        try:
            _stream(jobs, node_name(name, i), follow, f"[node-{i}] ")
        except ClientError as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
