"""The host side of the test nodes: their processes, cgroups, mounts and network
namespaces, and how to remove all of it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

from controlplane import binaries, wait_for
from layout import BRIDGE, CGROUP_ROOT, KUBELET_CHAIN, NETNS_DIR, _run


def tear_down(
    workdir: Path,
    names: list[str],
    pids: dict[str, int],
    netns_before: list[str],
    netns_mounted_before: bool,
) -> None:
    """Stop the nodes' processes (kubelets first) and remove every process, mount,
    network namespace, link, firewall chain, cgroup and folder they made."""
    for key in sorted(pids, key=lambda k: not k.startswith("kubelet")):
        stop(pids[key])
    for name in names:
        for sub in cgroup_subsystems(unified=True):
            kill_cgroup(CGROUP_ROOT / sub / name)
    # Shims outlive containerd; they are the node's by their socket address.
    for pid, cmdline in processes():
        if "containerd-shim" in cmdline and str(workdir) in cmdline:
            stop(pid)
    for mount in reversed(mounts()):
        if mount.startswith(str(workdir)) or mount.startswith(f"{NETNS_DIR}/cni-"):
            if mount.startswith(f"{NETNS_DIR}/") and mount.rsplit("/", 1)[-1] in netns_before:
                continue
            _run("umount", "-l", mount, check=False)
    for name in set(netns()) - set(netns_before):
        if name.startswith("cni-"):
            _run("ip", "netns", "delete", name, check=False)
    for name in names:
        for sub in cgroup_subsystems(unified=True):
            remove_cgroup(CGROUP_ROOT / sub / name)
    if not netns_mounted_before and NETNS_DIR in mounts():
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
    shutil.rmtree(workdir, ignore_errors=True)


def cgroup_subsystems(unified: bool = False) -> list[str]:
    """The cgroup v1 hierarchies (the kubelet wants its root in each), and with
    `unified` the v2 one too (where it also leaves folders)."""
    return sorted(
        p.name for p in CGROUP_ROOT.iterdir() if p.is_dir() and (unified or p.name != "unified")
    )


def kill_cgroup(path: Path) -> None:
    # os.walk, not rglob: a container's cgroup vanishes as soon as its processes die,
    # often while the walk is still below it (os.walk skips what it cannot read).
    for folder, _, files in os.walk(path):
        if "cgroup.procs" not in files:
            continue
        with contextlib.suppress(OSError):
            for pid in Path(folder, "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    for sub in [
        *sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)),
        path,
    ]:
        # The kernel finishes a kill asynchronously: a cgroup empties a moment later.
        with contextlib.suppress(TimeoutError, RuntimeError):
            wait_for(lambda s=sub: rmdir(s), 10, f"cgroup {sub} to empty", every=0.1)


def rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        kill_cgroup(path)
        return False
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] != "Z"


def stop(pid: int, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError, RuntimeError):
        wait_for(lambda: not alive(pid) or reaped(pid), grace, f"process {pid} to exit", every=0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def reaped(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    return False


def processes() -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append((int(entry.name), cmd))
    return out


def mounts() -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]


def netns() -> set[str]:
    path = Path(NETNS_DIR)
    return {p.name for p in path.iterdir()} if path.exists() else set()
