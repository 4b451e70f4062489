"""Where the test nodes live and how their parts are configured: names, addresses,
paths, and the configuration files of containerd, the CNI bridge, the kubelet,
kube-proxy and CoreDNS, as pure functions of a node (nodes.py starts them)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane import NODE_NAMES, POD_GATEWAY, free_port

BRIDGE = "ftbr0"
GATEWAY = POD_GATEWAY
POD_CIDR = "10.213.0.0/16"
DNS_IP = GATEWAY
PAUSE_IMAGE = "localhost/finetune-pause:1"
PROBE_IMAGE = "localhost/finetune-probe:1"
GPU_RESOURCE = "nvidia.com/gpu"
STATE = "nodes.json"
NETNS_DIR = "/run/netns"
KUBELET_CHAIN = "KUBE-FIREWALL"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class Node:
    name: str
    index: int
    dir: str
    # containerd's root (images, snapshots) outlives the node, in the build cache:
    # an image of several gigabytes is imported once per machine, not per test run.
    root: str

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def ip(self) -> str:
        return f"10.212.0.{10 + self.index}"

    @property
    def socket(self) -> Path:
        return self.path / "containerd" / "containerd.sock"

    @property
    def kubelet_port(self) -> int:
        return 10250 + 10 * self.index

    @property
    def cgroup(self) -> str:
        return f"/{self.name}"

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return _run(
            "ctr", "--address", str(self.socket), "-n", "k8s.io", *args,
            check=check, timeout=timeout,
        )  # fmt: skip


def corefile(kubeconfig: Path) -> str:
    return (
        f".:53 {{\n  bind {DNS_IP}\n  errors\n"
        f"  kubernetes cluster.local in-addr.arpa ip6.arpa {{\n"
        f"    kubeconfig {kubeconfig}\n    pods insecure\n"
        "    fallthrough in-addr.arpa ip6.arpa\n  }\n  cache 5\n}\n"
    )


def kube_proxy_config(kubeconfig: Path) -> dict[str, Any]:
    """One kube-proxy for the host: all nodes share its network namespace."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAMES[0],
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{free_port()}",
        "metricsBindAddress": f"127.0.0.1:{free_port()}",
        "clusterCIDR": POD_CIDR,
        "mode": "iptables",
        # Leave the host's conntrack sysctls alone (a container may not set them).
        "conntrack": {"maxPerCore": 0, "min": 0},
        "iptables": {"syncPeriod": "5s", "minSyncPeriod": "0s"},
    }


def cni_config(node: Node) -> dict[str, Any]:
    """The bridge every pod joins; node N hands out addresses from 10.213.N+1.0/24."""
    return {
        "cniVersion": "1.0.0",
        "name": "finetune-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(node.path / "ipam"),
                    "ranges": [
                        [
                            {
                                "subnet": POD_CIDR,
                                "gateway": GATEWAY,
                                "rangeStart": f"10.213.{node.index + 1}.2",
                                "rangeEnd": f"10.213.{node.index + 1}.254",
                            }
                        ]
                    ],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }


def containerd_config(node: Node) -> str:
    return f"""version = 2
root = "{node.root}"
state = "{node.path / "containerd" / "state"}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{node.socket}"
[ttrpc]
  address = "{node.socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{node.path / "net.d"}"
"""


def kubelet_config(node: Node, cluster_dir: Path, resolv: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": node.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": node.kubelet_port + 1,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(cluster_dir / "pki" / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup,
        "failSwapOn": False,
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        "imageServiceEndpoint": f"unix://{node.socket}",
        "clusterDNS": [DNS_IP],
        "clusterDomain": "cluster.local",
        "resolvConf": str(resolv),
        "podLogsDir": str(node.path / "pod-logs"),
        "makeIPTablesUtilChains": False,
        "enforceNodeAllocatable": [],
        "protectKernelDefaults": False,
        "serializeImagePulls": False,
        # A busy shared machine: evict only when truly out of room, and never
        # collect the imported images (nothing could pull them back). Disk thresholds
        # are absolute: under disk pressure the kubelet deletes every image no running
        # container uses, the pause image included (containerd 1.6 does not pin it),
        # and 1% of a large disk is gigabytes, which an image import can dip under.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "256Mi",
            "imagefs.available": "256Mi",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "4s",
        # The lease is the heartbeat; renewed every quarter of its duration (5 s), so
        # a node lifecycle controller's grace of 20 s spans four renewals.
        "nodeLeaseDurationSeconds": 20,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
    }
