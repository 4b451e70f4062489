"""Real worker nodes joined to the local test control plane.

Each node is a kubelet (built from the control plane's own module pin) with a
containerd of its own (root, state, socket), runc, and the bridge CNI plugin
(Debian's packages), its own kubelet root, pod-log folder, ports and cgroup
root. All pods share one Linux bridge, so pods of both nodes talk over their pod
IPs; CoreDNS, on the bridge's gateway address, serves cluster.local from the
apiserver. Nodes join as system:node:<name> (Node authorizer), and advertise
GPUs as an extended resource the way Kubernetes documents it (a node-status
capacity patch): the pods are scheduled as on GPU nodes, and run on the CPU.

Addresses exist only on the bridge this module creates: pods 10.213.0.0/16
(node i allocates from 10.213.i+1.0/24), node addresses 10.212.0.10+i/32.

    python tests/node/nodes.py up [--cluster DIR]     # make node-up
    python tests/node/nodes.py down [--cluster DIR]   # make node-down
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "cluster"))
sys.path.insert(0, str(HERE))

import host  # noqa: E402
import layout  # noqa: E402
import nodeapi  # noqa: E402
from controlplane import (  # noqa: E402
    DEFAULT_DIR,
    NODE_NAMES,
    binaries,
    built,
    wait_for,
)
from layout import (  # noqa: E402
    BRIDGE,
    CGROUP_ROOT,
    DNS_IP,
    GATEWAY,
    NETNS_DIR,
    PAUSE_IMAGE,
    POD_CIDR,
    PROBE_IMAGE,
    STATE,
    Node,
    _run,
)

from images import docker_archive  # noqa: E402


class NodeDied(AssertionError):
    """A node process exited: ends any wait at once (wait_for lets assertions through)."""


def cache_dir() -> Path:
    return Path(built(HERE.parent / "cache-dir.sh")[-1])


def _forget_containers(node: Node) -> None:
    """Containers a previous run left in the persistent root (their processes are
    gone): removed before the kubelet starts, so it begins with none."""
    for cid in node.ctr("containers", "ls", "-q").stdout.split():
        node.ctr("tasks", "delete", "--force", cid, check=False)
        node.ctr("containers", "delete", cid, check=False)


def node_bin() -> Path:
    return Path(built(HERE / "build.sh")[-1])


@dataclass
class NodeSet:
    """The nodes of one control plane, their processes and what they created."""

    cluster_dir: Path
    count: int = 2
    gpus_per_node: int = 8
    nodes: list[Node] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    netns_before: list[str] = field(default_factory=list)
    netns_mounted_before: bool = True

    @property
    def workdir(self) -> Path:
        return self.cluster_dir / "nodes"

    @property
    def kubeconfig(self) -> Path:
        return self.cluster_dir / "kubeconfig"

    # --- up ------------------------------------------------------------------------------

    def up(self, timeout: float = 120.0) -> NodeSet:
        if self.count > len(NODE_NAMES):
            raise ValueError(f"at most {len(NODE_NAMES)} nodes (the control plane's tokens)")
        sweep_stale(keep=self.cluster_dir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.netns_before = sorted(host.netns())
        self.netns_mounted_before = NETNS_DIR in host.mounts()
        roots = cache_dir() / "node-containerd"
        self.nodes = [
            Node(name, i, str(self.workdir / name), str(roots / name))
            for i, name in enumerate(NODE_NAMES[: self.count])
        ]
        self._save()
        tools = node_bin()
        images = self._images(tools)
        self._network()
        self._coredns(tools)
        self._kube_proxy()
        for node in self.nodes:
            self._containerd(node)
        for node in self.nodes:
            wait_for(lambda n=node: self._check_alive() or n.ctr("version").returncode == 0,
                     timeout, f"containerd of {node.name}")  # fmt: skip
            _forget_containers(node)
            for archive in images:
                node.ctr("images", "import", str(archive))
            self._kubelet(node)
        self._save()
        for node in self.nodes:
            self._joined(node, timeout)
        for node in self.nodes:
            self._gpus_allocatable(node, timeout)
        return self

    # --- node loss -----------------------------------------------------------------------

    def lose(self, name: str) -> None:
        """A node dies: its kubelet is killed without warning, and so is every process
        of its pods; containerd stays (all it knew dies with the containers)."""
        pid = self.pids.pop(f"kubelet/{name}")
        self._save()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        host.stop(pid)  # reaps it
        for sub in host.cgroup_subsystems(unified=True):
            host.kill_cgroup(CGROUP_ROOT / sub / name)

    def restore(self, name: str, timeout: float = 120.0) -> None:
        """The node's kubelet starts again, with its pods as the API now has them."""
        node = next(n for n in self.nodes if n.name == name)
        if f"kubelet/{name}" not in self.pids:
            self._kubelet(node)
        self._joined(node, timeout)
        self._gpus_allocatable(node, timeout)

    def load_image(self, archive: Path, name: str) -> None:
        """Import a docker-archive into every node's containerd (skipped where the
        node already lists the image)."""
        repository = name.rsplit(":", 1)[0] + ":"
        for node in self.nodes:
            present = node.ctr("images", "ls", "-q").stdout.split()
            if name in present:
                continue
            # Earlier builds of the same image go first: each trainer image holds
            # 13 GB of a node's storage, which containerd frees once it is untagged.
            old = [ref for ref in present if ref.startswith(repository)]
            if old:
                node.ctr("images", "rm", "--sync", *old, timeout=600)
            # The trainer image (6.7 GB) takes minutes: once per build, per machine.
            node.ctr("images", "import", str(archive), timeout=1200)

    def _images(self, tools: Path) -> list[Path]:
        out = self.workdir / "images"
        return [
            docker_archive(out / "pause.tar", PAUSE_IMAGE, {"pause": tools / "pause"}, ["/pause"]),
            docker_archive(out / "probe.tar", PROBE_IMAGE, {"probe": tools / "probe"}, ["/probe"]),
        ]

    def _network(self) -> None:
        if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "replace", f"{GATEWAY}/16", "dev", BRIDGE)
        for node in self.nodes:
            _run("ip", "addr", "replace", f"{node.ip}/32", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")

    def _spawn(self, key: str, argv: list[str], log: Path) -> None:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.pids[key] = proc.pid
        self._save()  # so that `down` finds it, even if `up` fails later

    def _coredns(self, tools: Path) -> None:
        corefile = self.workdir / "Corefile"
        corefile.write_text(layout.corefile(self.kubeconfig))
        self._spawn("coredns", [str(tools / "coredns"), "-conf", str(corefile)],
                    self.workdir / "coredns.log")  # fmt: skip

    def _kube_proxy(self) -> None:
        """One kube-proxy for the host: all nodes share its network namespace, so a
        second one would only rewrite the same rules."""
        path = self.workdir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(layout.kube_proxy_config(self.kubeconfig)))
        self._spawn("kube-proxy", [str(binaries() / "kube-proxy"), "--config", str(path)],
                    self.workdir / "kube-proxy.log")  # fmt: skip

    def _containerd(self, node: Node) -> None:
        base = node.path / "containerd"
        (node.path / "net.d").mkdir(parents=True, exist_ok=True)
        base.mkdir(parents=True, exist_ok=True)
        (node.path / "net.d" / "10-finetune.conflist").write_text(
            json.dumps(layout.cni_config(node), indent=1)
        )
        config = base / "config.toml"
        config.write_text(layout.containerd_config(node))
        self._spawn(f"containerd/{node.name}", ["containerd", "--config", str(config)],
                    node.path / "containerd.log")  # fmt: skip

    def _kubelet(self, node: Node) -> None:
        for sub in host.cgroup_subsystems():
            (CGROUP_ROOT / sub / node.name).mkdir(exist_ok=True)
        resolv = node.path / "resolv.conf"
        resolv.write_text(f"nameserver {DNS_IP}\n")
        path = node.path / "kubelet.yaml"
        path.write_text(yaml.safe_dump(layout.kubelet_config(node, self.cluster_dir, resolv)))
        kubelet = binaries() / "kubelet"
        self._spawn(
            f"kubelet/{node.name}",
            [
                str(kubelet),
                "--config", str(path),
                "--kubeconfig", str(self.cluster_dir / f"{node.name}.kubeconfig"),
                "--root-dir", str(node.path / "kubelet"),
                "--cert-dir", str(node.path / "kubelet-pki"),
                "--hostname-override", node.name,
                "--node-ip", node.ip,
                "--node-labels", f"finetune.dev/test-node={node.name},finetune.dev/test-bed=real",
                "--v", "1",
            ],
            node.path / "kubelet.log",
        )  # fmt: skip

    def _kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return nodeapi.kubectl(self.kubeconfig, *args, check=check)

    def _joined(self, node: Node, timeout: float) -> None:
        """Wait for the node to be Ready, then advertise its GPUs; the scheduler reads
        allocatable, which the kubelet derives at its next update."""
        wait_for(lambda: self._check_alive() or nodeapi.ready(self.kubeconfig, node.name),
                 timeout, f"node {node.name} Ready")  # fmt: skip
        nodeapi.advertise_gpus(self.kubeconfig, node.name, self.gpus_per_node)

    def _gpus_allocatable(self, node: Node, timeout: float) -> None:
        def counted() -> bool:
            self._check_alive()
            return nodeapi.allocatable_gpus(self.kubeconfig, node.name) == self.gpus_per_node

        wait_for(counted, timeout, f"GPUs allocatable on {node.name}")

    def _check_alive(self) -> None:
        for key, pid in self.pids.items():
            if not host.alive(pid):
                log = self._log_of(key)
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise NodeDied(f"{key} exited:\n{tail}")

    def _log_of(self, key: str) -> Path:
        if key in ("coredns", "kube-proxy"):
            return self.workdir / f"{key}.log"
        kind, name = key.split("/")
        return self.workdir / name / f"{kind}.log"

    def _save(self) -> None:
        state = {
            "nodes": [asdict(n) for n in self.nodes],
            "pids": self.pids,
            "netns_before": self.netns_before,
            "netns_mounted_before": self.netns_mounted_before,
        }
        (self.workdir / STATE).write_text(json.dumps(state, indent=1))

    # --- down ----------------------------------------------------------------------------

    @classmethod
    def load(cls, cluster_dir: Path) -> NodeSet | None:
        path = cluster_dir / "nodes" / STATE
        if not path.exists():
            return None
        doc = json.loads(path.read_text())
        return cls(
            cluster_dir,
            count=len(doc["nodes"]),
            nodes=[Node(**n) for n in doc["nodes"]],
            pids={k: int(v) for k, v in doc["pids"].items()},
            netns_before=list(doc["netns_before"]),
            netns_mounted_before=bool(doc["netns_mounted_before"]),
        )

    def down(self) -> None:
        """Stop everything, then remove every process, mount, namespace, link, cgroup and
        folder the nodes made, and the Node objects (a stopped node's object would
        still attract pods, as no node-lifecycle controller runs here)."""
        for node in self.nodes:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._kubectl("delete", "node", node.name, "--ignore-not-found", "--wait=false",
                              check=False)  # fmt: skip
        host.tear_down(self.workdir, [n.name for n in self.nodes], self.pids,
                       self.netns_before, self.netns_mounted_before)  # fmt: skip


_NODE_PATH = re.compile(r"(/\S+)/nodes/ft-node-\d+(?:/|\s|$)")


def sweep_stale(keep: Path | None = None) -> list[Path]:
    """Tear down the node sets that killed runs left: their mounts (which keep their
    folders, and the disk those pin, from ever being removed) and any process still
    running. Only one node set can run at a time (one bridge, fixed node names), so
    every set but `keep`'s is stale. They are found by their mounts and command lines,
    never by their saved pids, which a restarted machine may have given to others.
    Returns the control-plane folders it tore the nodes of down."""
    found = {m.group(1) for text in host.mounts() if (m := _NODE_PATH.match(text))}
    found |= {m.group(1) for _, cmd in host.processes() for m in _NODE_PATH.finditer(cmd)}
    stale = sorted(Path(d) for d in found if keep is None or Path(d) != keep)
    for cluster_dir in stale:
        saved = NodeSet.load(cluster_dir)
        workdir = str(cluster_dir / "nodes") + "/"
        pids = {
            f"{Path(cmd.split()[0]).name}/{pid}": pid  # kubelets first, as `down` does
            for pid, cmd in host.processes()
            if workdir in cmd
        }
        host.tear_down(cluster_dir / "nodes", list(NODE_NAMES), pids,
                       saved.netns_before if saved else sorted(host.netns()),
                       saved.netns_mounted_before if saved else True)  # fmt: skip
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop real nodes of the test cluster.")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--cluster", type=Path, default=DEFAULT_DIR, help="control plane folder")
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    old = NodeSet.load(args.cluster)
    if old is not None:
        old.down()
    if args.action == "down":
        sweep_stale()  # and whatever killed runs left elsewhere
    if args.action == "up":
        nodes = NodeSet(args.cluster, count=args.nodes).up()
        for node in nodes.nodes:
            print(f"{node.name:12} {node.ip}  kubelet :{node.kubelet_port}  {node.path}")
        print(f"pods {POD_CIDR} on bridge {BRIDGE}, cluster DNS {DNS_IP}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
