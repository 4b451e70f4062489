"""A real Kubernetes control plane on loopback, for tests and benchmarks.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from
upstream sources by build.sh, run as local processes on random free ports in
a directory of their own. Authentication uses static tokens (an admin in
system:masters, and the controller-manager and scheduler as their built-in
RBAC users); authorization is RBAC; service-account tokens are signed with a
key generated here, so pods can have service accounts and RBAC applies to them.

    python tests/cluster/controlplane.py up [--dir DIR]    # make cluster-up
    python tests/cluster/controlplane.py down [--dir DIR]  # make cluster-down
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(__file__).resolve().parent / "build.sh"
DEFAULT_DIR = ROOT / ".cache" / "cluster"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Real worker nodes (tests/node/) may join under these names: each has a token as
# system:node:<name> in system:nodes, so the Node authorizer applies to it.
NODE_NAMES = ("ft-node-0", "ft-node-1")
# The gateway of the nodes' pod bridge: where pods find the host's services.
POD_GATEWAY = "10.213.0.1"
PIDS_FILE = "pids.json"
NODE_LIFECYCLE = "node-lifecycle"  # a second controller-manager, only while a test asks


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """Poll `predicate` until it returns something true, and return that; raise
    TimeoutError naming `what`. A probe that raises means "not yet", except for a
    failed assertion, which is the test's own verdict."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if result := predicate():
                return result
        except AssertionError:
            raise
        except Exception:  # noqa: S110 - a failing probe means "not yet"
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def built(script: Path, *args: str, timeout: float | None = None) -> list[str]:
    """Run one of the test bed's cached build scripts; the lines it printed (the last
    ones name what it built)."""
    out = subprocess.run(
        ["bash", str(script), *args], check=True, stdout=subprocess.PIPE, text=True,
        timeout=timeout,
    )  # fmt: skip
    return out.stdout.strip().splitlines()


def binaries() -> Path:
    """Build (or reuse) the control-plane binaries; return their folder."""
    return Path(built(BUILD)[-1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """A CA, the apiserver's serving certificate and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=finetune-test-ca",
        cwd=pki,
    )
    sans = ",".join(
        [
            "IP:127.0.0.1",
            "IP:10.96.0.1",
            f"IP:{POD_GATEWAY}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    _openssl(
        "req",
        "-new",
        *ec,
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
        "-addext",
        f"subjectAltName={sans}",
        cwd=pki,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-copy_extensions",
        "copy",
        "-out",
        "apiserver.crt",
        cwd=pki,
    )
    _openssl(
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "sa.key",
        cwd=pki,
    )
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    # The apiserver's client certificate towards kubelets (logs, exec): kubelets
    # trust the CA and authorize it through the apiserver (system:masters).
    _openssl(
        "req", "-new", *ec, "-keyout", "kubelet-client.key", "-out", "kubelet-client.csr",
        "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client",
        cwd=pki,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "kubelet-client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "3650", "-out", "kubelet-client.crt",
        cwd=pki,
    )  # fmt: skip


def kubeconfig(server: str, ca: Path, token: str, user: str) -> dict[str, object]:
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "finetune-test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": "finetune-test",
                "context": {
                    "cluster": "finetune-test",
                    "user": user,
                    "namespace": "default",
                },
            }
        ],
        "current-context": "finetune-test",
    }


@dataclass
class ControlPlane:
    """The processes of one local control plane, and how to reach it."""

    workdir: Path
    bin_dir: Path = field(default_factory=binaries)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_port: int = 0

    @property
    def kubeconfig_path(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _spawn(self, name: str, args: list[str], binary: str | None = None) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [self.tool(binary or name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def _get(self, path: str, token: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        req = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return bytes(resp.read())

    def start(self, timeout: float = 180.0) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = self.workdir / "pki"
        make_pki(pki)
        tokens = {
            "admin": os.urandom(16).hex(),
            "controller-manager": os.urandom(16).hex(),
            "scheduler": os.urandom(16).hex(),
        }
        nodes = {name: os.urandom(16).hex() for name in NODE_NAMES}
        (pki / "tokens.csv").write_text(
            f'{tokens["admin"]},admin,admin,"system:masters"\n'
            f"{tokens['controller-manager']},system:kube-controller-manager,kcm\n"
            f"{tokens['scheduler']},system:kube-scheduler,scheduler\n"
            + "".join(
                f'{token},system:node:{name},{name},"system:nodes"\n'
                for name, token in nodes.items()
            )
        )
        etcd_port, peer_port, self.api_port = free_port(), free_port(), free_port()

        self._spawn(
            "etcd",
            [
                "--name",
                "test",
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"test=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                "--etcd-servers",
                f"http://127.0.0.1:{etcd_port}",
                # Pods of the test nodes reach the apiserver through the kubernetes
                # Service (kube-proxy) at the address of their bridge.
                "--bind-address",
                "0.0.0.0",  # noqa: S104 - it serves only with credentials
                "--advertise-address",
                POD_GATEWAY,
                "--secure-port",
                str(self.api_port),
                "--tls-cert-file",
                str(pki / "apiserver.crt"),
                "--tls-private-key-file",
                str(pki / "apiserver.key"),
                "--client-ca-file",
                str(pki / "ca.crt"),
                "--token-auth-file",
                str(pki / "tokens.csv"),
                "--authorization-mode",
                "Node,RBAC",
                "--enable-admission-plugins",
                "NodeRestriction",
                "--kubelet-client-certificate",
                str(pki / "kubelet-client.crt"),
                "--kubelet-client-key",
                str(pki / "kubelet-client.key"),
                "--kubelet-preferred-address-types",
                "InternalIP,Hostname",
                "--service-account-issuer",
                SERVICE_ACCOUNT_ISSUER,
                "--service-account-key-file",
                str(pki / "sa.pub"),
                "--service-account-signing-key-file",
                str(pki / "sa.key"),
                "--service-cluster-ip-range",
                SERVICE_CIDR,
                "--cert-dir",
                str(self.workdir / "apiserver-certs"),
                "--allow-privileged=false",
                # Tests register Node objects themselves and no node-lifecycle
                # controller runs to lift the not-ready taint this plugin adds.
                "--disable-admission-plugins",
                "TaintNodesByCondition",
                "--profiling=false",
                "--v=1",
            ],
        )
        admin = tokens["admin"]
        wait_for(
            lambda: self._check_alive() is None and self._get("/readyz", admin) == b"ok",
            timeout,
            "kube-apiserver /readyz",
        )

        ca = pki / "ca.crt"
        for name, user in (
            ("controller-manager", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
        ):
            (self.workdir / f"{name}.kubeconfig").write_text(
                yaml.safe_dump(kubeconfig(self.server, ca, tokens[name], user))
            )
        self._spawn(
            "kube-controller-manager",
            [
                "--kubeconfig",
                str(self.workdir / "controller-manager.kubeconfig"),
                "--secure-port",
                "0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                "--service-account-private-key-file",
                str(pki / "sa.key"),
                "--root-ca-file",
                str(ca),
                # No kubelets heartbeat here: the node lifecycle controller would
                # taint every registered Node as unreachable and evict its pods.
                "--controllers",
                "*,-nodelifecycle,-nodeipam,-persistentvolume-expander",
                "--concurrent-gc-syncs",
                "10",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                "--kubeconfig",
                str(self.workdir / "scheduler.kubeconfig"),
                "--secure-port",
                "0",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        self.kubeconfig_path.write_text(yaml.safe_dump(kubeconfig(self.server, ca, admin, "admin")))
        for name, token in nodes.items():
            (self.workdir / f"{name}.kubeconfig").write_text(
                yaml.safe_dump(kubeconfig(self.server, ca, token, f"system:node:{name}"))
            )

        def default_sa_exists() -> bool:
            self._check_alive()
            self._get("/api/v1/namespaces/default/serviceaccounts/default", admin)
            return True

        # The service-account controller creating "default" proves the
        # controller-manager is up and authorized.
        wait_for(default_sa_exists, timeout, "the controller-manager (default service account)")
        (self.workdir / PIDS_FILE).write_text(json.dumps({n: p.pid for n, p in self.procs.items()}))
        return self

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.tool("kubectl"), "--kubeconfig", str(self.kubeconfig_path), *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    @contextlib.contextmanager
    def node_lifecycle(self, grace: int = 20) -> Iterator[None]:
        """The node lifecycle controller, while the block runs: it marks a node whose
        kubelet stopped reporting for `grace` seconds as not ready (Ready=Unknown) and
        taints it unreachable. The controller-manager runs without it, because most
        tests register Node objects that no kubelet heartbeats; a test of real nodes
        runs it here, with a shorter grace than the default 50 s (their kubelets renew
        their lease every 5 s). Its taints stay when it stops, so the block returns
        the nodes to health first."""
        self._spawn(
            NODE_LIFECYCLE,
            [
                "--kubeconfig", str(self.workdir / "controller-manager.kubeconfig"),
                "--secure-port", "0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                "--service-account-private-key-file", str(self.workdir / "pki" / "sa.key"),
                "--root-ca-file", str(self.workdir / "pki" / "ca.crt"),
                "--controllers", "nodelifecycle",
                "--node-monitor-period", "2s",
                "--node-monitor-grace-period", f"{grace}s",
                "--v=1",
            ],
            binary="kube-controller-manager",
        )  # fmt: skip
        try:
            yield
        finally:
            self._stop(NODE_LIFECYCLE)

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        for name in (NODE_LIFECYCLE, "kube-scheduler", "kube-controller-manager",
                     "kube-apiserver", "etcd"):  # fmt: skip
            self._stop(name)


def _down(workdir: Path) -> None:
    """Stop a control plane started by `up` (another process): etcd last, since the
    apiserver ignores SIGTERM for minutes once etcd is gone; SIGKILL after a grace."""
    pids = workdir / PIDS_FILE
    if pids.exists():
        started = json.loads(pids.read_text())
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            if name in started:
                _stop_group(int(started[name]))
    if workdir.exists():
        shutil.rmtree(workdir, ignore_errors=True)


def _stop_group(pid: int, grace: float = 20.0) -> None:
    def gone() -> bool:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        return not stat.exists() or stat.read_text().split(") ")[-1][:1] == "Z"

    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        wait_for(gone, grace, f"process group {pid} to exit", every=0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop the local test control plane.")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="working directory")
    args = parser.parse_args(argv)
    _down(args.dir)
    if args.action == "up":
        cp = ControlPlane(args.dir).start()
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            print(f"{name:24} pid {cp.procs[name].pid}, log {args.dir / (name + '.log')}")
        print(f"apiserver   {cp.server}")
        print(f"kubeconfig  {cp.kubeconfig_path}")
        print(f"try:        KUBECONFIG={cp.kubeconfig_path} {cp.tool('kubectl')} get ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
