"""`make node-down` (NodeSet.down) removes everything the nodes made: processes,
mounts, network namespaces, the bridge, cgroups. Its own module, so that no other
node set is up meanwhile."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from controlplane import wait_for

from conftest import Cluster
from node.nodes import NodeSet, sweep_stale
from node.pods import pod_of, probe_pod


@pytest.mark.parametrize("how", ["down", "next run"])
def test_node_down_leaves_nothing_behind(cluster: Cluster, how: str) -> None:
    """`down` cleans up its own nodes; a run that was killed cannot, so the next
    run's sweep (what `up` and `make node-down` do first) finds them by their mounts
    and processes, with their processes still running as a killed run leaves them."""
    before = _host_state()
    extra = NodeSet(cluster.plane.workdir, count=1)
    try:
        extra.up()
        ns = f"down-{uuid.uuid4().hex[:6]}"
        cluster.core.create_namespace({"metadata": {"name": ns}})
        cluster.core.create_namespaced_pod(
            ns, probe_pod("sleeper", extra.nodes[0].name, ["sleep", "600"])
        )
        wait_for(lambda: pod_of(cluster, ns, "sleeper").status.phase == "Running", 90, "a pod")
        assert _host_state() != before
    finally:
        if how == "down":
            extra.down()
        else:
            assert sweep_stale() == [cluster.plane.workdir]
            # The Node object is the API's: a killed run's went with its control plane.
            cluster.core.delete_node(extra.nodes[0].name)
    after = _host_state()
    assert after == before
    assert not [line for line in after["iptables"] if "KUBE-" in line]
    cluster.core.delete_namespace(ns)


def _host_state() -> dict[str, Any]:
    links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True)
    netns = (
        sorted(p.name for p in Path("/run/netns").iterdir()) if Path("/run/netns").exists() else []
    )
    mounts = sorted(
        line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
        if "/nodes/" in line.split()[1] or line.split()[1].startswith("/run/netns")
    )  # fmt: skip
    procs = sorted(
        p.name for p in Path("/proc").iterdir()
        if p.name.isdigit() and any(
            word in _cmdline(p) for word in ("kubelet", "containerd", "coredns", "probe ")
        )
    )  # fmt: skip
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/ft-node-*"))
    return {
        "links": sorted(x["ifname"] for x in json.loads(links.stdout)),
        "netns": netns,
        "mounts": mounts,
        "procs": procs,
        "cgroups": cgroups,
        "iptables": _iptables(),
    }


def _iptables() -> list[str]:
    """Every rule and chain of IPv4 and IPv6, without counters."""
    lines = []
    for tool in ("iptables-save", "ip6tables-save"):
        out = subprocess.run([tool], capture_output=True, text=True, check=True).stdout
        lines += [f"{tool}: {line.split(' [')[0]}" for line in out.splitlines()]
    return sorted(line for line in lines if not line.split(": ", 1)[1].startswith(("#", "COMMIT")))


def _cmdline(p: Path) -> str:
    try:
        return (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
