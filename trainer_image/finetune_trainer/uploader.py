"""Checkpoint uploads in a process of their own, at a lower CPU priority.

Why a process: an upload thread shares the training process's interpreter lock.
botocore builds and signs each part's request in Python, and while it holds the lock the
training thread waits for it between torch operations: with a thread, training lost
about as long as the upload ran, whatever CPU the upload used (docs/benchmarks.md, "The
checkpoint stall"). A process has a lock of its own.

The trainer's main process starts one upload process at its first checkpoint and keeps
it for the run. Each checkpoint goes to it as a snapshot's memory file (handoff.py),
passed over a Unix socket with a short JSON request; the reply (the committed manifest,
or the error) is read at the next `wait()`: at the next checkpoint, or at the end.

Where training leaves a CPU to spare (a GPU node, or fewer compute threads than CPUs), the
process runs as SCHED_IDLE: it gets a CPU only when nothing else in the container wants
one. Where training keeps every CPU busy, SCHED_IDLE would starve the upload for most of
the interval between checkpoints, and the next checkpoint would wait for it; there it runs
10 nice steps lower and takes what training leaves idle first (docs/benchmarks.md, "The
checkpoint stall"). It has the trainer's environment (S3 credentials come from there,
never over the socket), and ignores SIGINT and SIGTERM: the trainer decides when to stop,
and may still commit a last checkpoint. It exits when the trainer's end of the socket
closes, and on Linux is killed when the trainer's process ends, even in the middle of an
upload, so no upload outlives its trainer (a checkpoint cut short has no
manifest, so it is never used).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from finetune_api.checkpoints import Committed

from .checkpoint import CheckpointStore
from .errors import RetryableError
from .handoff import Arena, Snapshot

log = logging.getLogger(__name__)

UPLOAD_NICE = 10  # nice steps below the trainer
IDLE, NICE = "idle", "nice"  # the upload process's priority: SCHED_IDLE, or UPLOAD_NICE
START = b"S"  # the byte a snapshot's descriptor travels with
HEADER = struct.Struct("<I")  # each JSON message's length
EXIT_WAIT_SECONDS = 30.0


def send_message(sock: socket.socket, doc: dict[str, Any]) -> None:
    data = json.dumps(doc).encode()
    sock.sendall(HEADER.pack(len(data)) + data)


def receive_message(sock: socket.socket) -> dict[str, Any] | None:
    """The next JSON message, or None when the other end closed between messages."""
    head = _exactly(sock, HEADER.size)
    if head is None:
        return None
    body = _exactly(sock, HEADER.unpack(head)[0])
    if body is None:
        raise ConnectionError("the other end closed in the middle of a message")
    doc: dict[str, Any] = json.loads(body)
    return doc


def _exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise ConnectionError("the other end closed in the middle of a message")
            return None
        buf += chunk
    return bytes(buf)


class ProcessUploader:
    """Commits one checkpoint at a time in the upload process; errors surface on the
    next call, as `RetryableError`."""

    def __init__(
        self,
        store: CheckpointStore,
        on_done: Callable[[Committed, float], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
        idle: bool = False,
    ) -> None:
        self.store = store
        self.idle = idle  # SCHED_IDLE (training leaves a CPU to spare), else nice
        self.on_done = on_done
        self.on_bytes = on_bytes
        self.last: Committed | None = None
        self.arena = Arena()  # the snapshots' memory, reused once each upload is done
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._waiting = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        # The same interpreter and import path as this process, whatever launched it.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        with theirs:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    __name__,
                    str(theirs.fileno()),
                    str(os.getpid()),
                    IDLE if self.idle else NICE,
                ],
                pass_fds=[theirs.fileno()],
                env=env,
            )
        self._sock = ours
        send_message(ours, self.store.settings())
        return ours

    def reserve(self, size: int) -> None:
        """Prepare the snapshots' memory (`size` bytes) now, in a thread at the upload's
        priority, so that the first checkpoint's pause does not fault it in."""
        self.arena.reserve(size, first=lambda: lower_priority(self.idle))

    def submit(self, snap: Snapshot, step: int, metrics: dict[str, float] | None = None) -> None:
        """Commit `snap` in the upload process. Its memory must not change until `wait`
        returns: take a snapshot into `arena` only after it."""
        self.wait()
        try:
            sock = self._sock or self._start()
            socket.send_fds(sock, [START], [snap.fd])
            send_message(sock, {"step": step, "metrics": metrics or {}, "files": snap.spans})
        except OSError as e:
            raise RetryableError(f"checkpoint upload failed: {self._ended()}") from e
        finally:
            snap.close()
        self._waiting = True

    def wait(self) -> None:
        """Until the checkpoint in flight is committed (or has failed)."""
        if not self._waiting or self._sock is None:
            return
        self._waiting = False
        try:
            reply = receive_message(self._sock)
        except OSError:
            reply = None
        if reply is None:
            raise RetryableError(f"checkpoint upload failed: {self._ended()}")
        if "error" in reply:
            raise RetryableError(f"checkpoint upload failed: {reply['error']}")
        self.last = Committed(reply["step"], reply["folder"], reply["manifest"])
        if self.on_bytes:
            self.on_bytes(reply["bytes"])
        if self.on_done:
            self.on_done(self.last, reply["seconds"])

    def _ended(self) -> str:
        """Why the upload process stopped answering; the next submit starts a new one."""
        code = self.close()
        return f"the upload process ended (exit code {code})"

    def close(self) -> int | None:
        """End the upload process (after `wait`, it is idle) and free the arena: the
        upload process's exit code."""
        self.arena.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        try:
            return proc.wait(timeout=EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


# --- the upload process ------------------------------------------------------------


def commit(store: CheckpointStore, fd: int, request: dict[str, Any]) -> dict[str, Any]:
    """Commit one snapshot from its memory file: the reply for the trainer."""
    started = time.monotonic()
    spans = {name: (int(start), int(size)) for name, (start, size) in request["files"].items()}
    snap = Snapshot.attach(fd, spans)
    try:
        committed = store.commit_files(snap.files(), request["step"], request["metrics"])
    except Exception as e:  # the trainer reports it; the traceback stays here
        log.warning("checkpoint step %s failed", request["step"], exc_info=True)
        return {"error": str(e) or type(e).__name__}
    finally:
        snap.close()
    return {
        "step": committed.step,
        "folder": committed.folder,
        "manifest": committed.manifest,
        "seconds": time.monotonic() - started,
        "bytes": snap.size,
    }


def serve(sock: socket.socket) -> None:
    settings = receive_message(sock)
    if settings is None:
        return
    store = CheckpointStore.from_settings(settings)
    while True:
        data, fds, _, _ = socket.recv_fds(sock, len(START), 1)
        if not data:
            return  # the trainer closed its end
        request = receive_message(sock)
        if data != START or len(fds) != 1 or request is None:
            raise ConnectionError("the trainer sent a request this uploader does not read")
        send_message(sock, commit(store, fds[0], request))


PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with(trainer: int) -> None:
    """Be killed when the trainer's process ends (Linux); exit now if it already has."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != trainer:
        sys.exit(0)


def lower_priority(idle: bool) -> None:
    """This thread's priority, which the transfer threads started later inherit:
    SCHED_IDLE if `idle` and the kernel allows it, else UPLOAD_NICE steps lower."""
    if idle:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except (AttributeError, OSError) as e:  # not Linux, or refused
            log.info("uploads run %d nice steps lower: SCHED_IDLE refused (%s)", UPLOAD_NICE, e)
    os.nice(UPLOAD_NICE)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    fd, trainer = int(args[0]), int(args[1])
    die_with(trainer)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [checkpoint upload] %(message)s",
        stream=sys.stdout,
    )
    lower_priority(args[2:3] == [IDLE])
    for noisy in ("botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with socket.socket(fileno=fd) as sock:
        serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
