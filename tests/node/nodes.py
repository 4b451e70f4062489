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
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "cluster"))
sys.path.insert(0, str(HERE))

import layout  # noqa: E402
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
    GPU_RESOURCE,
    KUBELET_CHAIN,
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
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.netns_before = sorted(_netns())
        self.netns_mounted_before = NETNS_DIR in _mounts()
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
            wait_for(lambda n=node: self._ready(n.name), timeout, f"node {node.name} Ready")
            self._advertise_gpus(node)
        for node in self.nodes:
            # The scheduler reads allocatable, which the kubelet derives at its next update.
            wait_for(lambda n=node: self._allocatable_gpus(n.name) == self.gpus_per_node,
                     timeout, f"GPUs allocatable on {node.name}")  # fmt: skip
        return self

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
        for sub in _cgroup_subsystems():
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
        return _run(str(binaries() / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args,
                    check=check)  # fmt: skip

    def _ready(self, name: str) -> bool:
        self._check_alive()
        got = self._kubectl(
            "get", "node", name, "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False,
        )  # fmt: skip
        return got.stdout.strip() == "True"

    def _advertise_gpus(self, node: Node) -> None:
        """What a device plugin would do on a GPU node: the documented status patch."""
        patch = [
            {
                "op": "add",
                "path": "/status/capacity/" + GPU_RESOURCE.replace("/", "~1"),
                "value": str(self.gpus_per_node),
            }
        ]
        self._kubectl("patch", "node", node.name, "--subresource", "status", "--type", "json",
                      "-p", json.dumps(patch))  # fmt: skip

    def _allocatable_gpus(self, name: str) -> int:
        self._check_alive()
        path = "{.status.allocatable." + GPU_RESOURCE.replace(".", "\\.") + "}"
        got = self._kubectl("get", "node", name, "-o", f"jsonpath={path}", check=False)
        return int(got.stdout.strip() or 0)

    def _check_alive(self) -> None:
        for key, pid in self.pids.items():
            if not _alive(pid):
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
        for key in sorted(self.pids, key=lambda k: not k.startswith("kubelet")):
            _stop(self.pids[key])
        for node in self.nodes:
            for sub in _cgroup_subsystems(unified=True):
                _kill_cgroup(CGROUP_ROOT / sub / node.name)
        # Shims outlive containerd; they are the node's by their socket address.
        for pid, cmdline in _processes():
            if "containerd-shim" in cmdline and str(self.workdir) in cmdline:
                _stop(pid)
        for mount in reversed(_mounts()):
            if mount.startswith(str(self.workdir)) or mount.startswith(f"{NETNS_DIR}/cni-"):
                if (
                    mount.startswith(f"{NETNS_DIR}/")
                    and mount.rsplit("/", 1)[-1] in self.netns_before
                ):
                    continue
                _run("umount", "-l", mount, check=False)
        for name in set(_netns()) - set(self.netns_before):
            if name.startswith("cni-"):
                _run("ip", "netns", "delete", name, check=False)
        for node in self.nodes:
            for sub in _cgroup_subsystems(unified=True):
                _remove_cgroup(CGROUP_ROOT / sub / node.name)
        if not self.netns_mounted_before and NETNS_DIR in _mounts():
            _run("umount", NETNS_DIR, check=False)  # made shared by the first pod network
        _run("ip", "link", "delete", BRIDGE, check=False)
        # kube-proxy's own cleanup removes its chains and rules; the kubelet's
        # localnet firewall chain goes by hand.
        _run(str(binaries() / "kube-proxy"), "--cleanup", check=False)
        for tool in ("iptables", "ip6tables"):
            for hook in ("INPUT", "OUTPUT"):
                while _run(tool, "-D", hook, "-j", KUBELET_CHAIN, check=False).returncode == 0:
                    pass
            _run(tool, "-F", KUBELET_CHAIN, check=False)
            _run(tool, "-X", KUBELET_CHAIN, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _cgroup_subsystems(unified: bool = False) -> list[str]:
    """The cgroup v1 hierarchies (the kubelet wants its root in each), and with
    `unified` the v2 one too (where it also leaves folders)."""
    return sorted(
        p.name for p in CGROUP_ROOT.iterdir() if p.is_dir() and (unified or p.name != "unified")
    )


def _kill_cgroup(path: Path) -> None:
    if not path.exists():
        return
    for procs in path.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def _remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    for sub in [
        *sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)),
        path,
    ]:
        # The kernel finishes a kill asynchronously: a cgroup empties a moment later.
        with contextlib.suppress(TimeoutError, RuntimeError):
            wait_for(lambda s=sub: _rmdir(s), 10, f"cgroup {sub} to empty", every=0.1)


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        _kill_cgroup(path)
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] != "Z"


def _stop(pid: int, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError, RuntimeError):
        wait_for(
            lambda: not _alive(pid) or _reaped(pid), grace, f"process {pid} to exit", every=0.05
        )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _reaped(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    return False


def _processes() -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append((int(entry.name), cmd))
    return out


def _mounts() -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]


def _netns() -> set[str]:
    path = Path(NETNS_DIR)
    return {p.name for p in path.iterdir()} if path.exists() else set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop real nodes of the test cluster.")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--cluster", type=Path, default=DEFAULT_DIR, help="control plane folder")
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    old = NodeSet.load(args.cluster)
    if old is not None:
        old.down()
    if args.action == "up":
        nodes = NodeSet(args.cluster, count=args.nodes).up()
        for node in nodes.nodes:
            print(f"{node.name:12} {node.ip}  kubelet :{node.kubelet_port}  {node.path}")
        print(f"pods {POD_CIDR} on bridge {BRIDGE}, cluster DNS {DNS_IP}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
