"""Checkpoints in S3 (or a volume): atomic commits, verified restores, retention.

A checkpoint is a folder under the job's checkpoint URI, laid out as
`finetune_api.checkpoints` says. Its files are uploaded first;
`manifest.json`, listing each file's size and SHA-256, is written last. A
folder without a manifest is not a checkpoint: an upload killed half-way is
never used. Restores verify every file and fall
back to the previous checkpoint when one is damaged; when none verifies the job
fails (spec.checkpoints.onCorrupt: restart starts it from step 0 instead). Old checkpoints are
deleted (manifest first) only after a newer one is committed.

Uploads run in a background thread at a lower CPU priority, so training waits
only for the in-memory snapshot (state.py), which already holds each file's bytes; the
thread hashes each file and uploads it from memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_api.checkpoints import (
    MANIFEST,
    OWNER,
    Committed,
    owner_of,
    owner_record,
    step_dir,
    step_of,
)
from finetune_api.types import S3Spec

from .errors import PermanentError, RetryableError
from .state import Snapshot
from .storage import S3Store, Store, open_store

log = logging.getLogger(__name__)

FORMAT = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DamagedCheckpoint(Exception):
    pass


class CheckpointStore:
    def __init__(
        self,
        uri: str,
        s3: S3Spec | None,
        keep: int = 3,
        keep_best: bool = False,
        best_metric: str = "loss",
        on_corrupt: str = "fail",
    ) -> None:
        self.uri = uri.rstrip("/")
        self.on_corrupt = on_corrupt
        self.store: Store = open_store(self.uri, s3)
        self.keep = keep
        self.keep_best = keep_best
        self.best_metric = best_metric

    def claim(self, namespace: str, name: str) -> None:
        """Mark the URI as this job's, or refuse it when another job's checkpoints are
        there: resuming from them would train on another job's state. Checkpoints written
        before this marker existed are taken over. (Two jobs starting in the same second
        may both pass; the first commit still names one owner.)"""
        mine = owner_record(namespace, name)
        if any(o.key == OWNER for o in self.store.list_objects(OWNER)):
            found = self.store.get_bytes(OWNER)
            if owner_of(found) != owner_of(mine):
                raise PermanentError(
                    f"spec.checkpoints.uri: {self.uri} holds the checkpoints of FineTuneJob "
                    f"{owner_of(found)}; give this job a URI of its own (or delete those "
                    "checkpoints to start over there)"
                )
            return
        self.store.put_bytes(OWNER, mine)

    # --- reading -----------------------------------------------------------------

    def committed(self) -> list[Committed]:
        """Committed checkpoints, oldest first."""
        out = []
        for obj in self.store.list_objects():
            folder, _, name = obj.key.rpartition("/")
            if name != MANIFEST or step_of(folder) is None:
                continue
            try:
                manifest = json.loads(self.store.get_bytes(obj.key))
                out.append(Committed(int(manifest["step"]), folder, manifest))
            except (ValueError, KeyError) as e:
                log.warning("ignoring checkpoint %s: unreadable manifest (%s)", folder, e)
        return sorted(out, key=lambda c: c.step)

    def download(self, ckpt: Committed, dest: Path) -> Path:
        """Fetch and verify one checkpoint; DamagedCheckpoint if any file is wrong."""
        target = dest / ckpt.folder
        if target.exists():
            shutil.rmtree(target)
        for name, meta in ckpt.manifest["files"].items():
            path = target / name
            try:
                self.store.download_file(f"{ckpt.folder}/{name}", path)
            except RetryableError:
                raise  # the storage is unreachable, not the checkpoint damaged
            except Exception as e:
                raise DamagedCheckpoint(f"{name} cannot be read ({e})") from None
            size = path.stat().st_size
            if size != meta["size"]:
                raise DamagedCheckpoint(f"{name} has {size} bytes, manifest says {meta['size']}")
            if sha256_file(path) != meta["sha256"]:
                raise DamagedCheckpoint(f"{name} does not match its SHA-256 in the manifest")
        return target

    def restore(self, dest: Path, step: int | None = None) -> tuple[Committed, Path] | None:
        """The newest intact checkpoint (or the one at `step`), downloaded and verified."""
        candidates = [c for c in self.committed() if step is None or c.step == step]
        damaged: list[str] = []
        for ckpt in reversed(candidates):
            try:
                return ckpt, self.download(ckpt, dest)
            except DamagedCheckpoint as e:
                older = [c.step for c in candidates if c.step < ckpt.step]
                fallback = f"falling back to {step_dir(older[-1])}" if older else "no older one"
                log.warning("checkpoint %s is damaged: %s; %s", ckpt.folder, e, fallback)
                damaged.append(f"{ckpt.folder} ({e})")
        if damaged and step is None:
            self._all_damaged(damaged)
        return None

    def _all_damaged(self, damaged: list[str]) -> None:
        """No committed checkpoint verifies: never start from step 0 unless asked to."""
        if self.on_corrupt == "restart":
            log.warning(
                "every checkpoint under %s is damaged; spec.checkpoints.onCorrupt is restart: "
                "training starts again from step 0",
                self.uri,
            )
            return
        raise PermanentError(
            f"spec.checkpoints: every committed checkpoint under {self.uri} is damaged "
            f"({'; '.join(damaged)[:600]}); delete them to start over, or set "
            "spec.checkpoints.onCorrupt: restart to train from step 0"
        )

    # --- writing -----------------------------------------------------------------

    def commit(
        self,
        local: Path,
        step: int,
        metrics: dict[str, float] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Committed:
        """Commit the files under `local`."""
        paths = sorted(p for p in local.rglob("*") if p.is_file())
        files = ((str(p.relative_to(local)), p.read_bytes()) for p in paths)
        return self.commit_files(files, step, metrics, on_bytes)

    def commit_files(
        self,
        named: Iterable[tuple[str, bytes | memoryview]],
        step: int,
        metrics: dict[str, float] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Committed:
        """Hash and upload each (name, bytes), then write the manifest; a snapshot's
        `files()` lets go of each file once it is passed on and sent."""
        folder = step_dir(step)
        files: dict[str, dict[str, Any]] = {}
        for name, data in named:
            files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            self.store.upload_bytes(f"{folder}/{name}", data)
            if on_bytes:
                on_bytes(len(data))
        return self._write_manifest(folder, step, metrics, files)

    def _write_manifest(
        self, folder: str, step: int, metrics: dict[str, float] | None, files: dict[str, Any]
    ) -> Committed:
        manifest = {
            "format": FORMAT,
            "step": step,
            "created": datetime.now(UTC).isoformat(),
            "metrics": metrics or {},
            "files": dict(sorted(files.items())),
        }
        # The manifest goes last: from this write on, the checkpoint exists.
        self.store.put_bytes(f"{folder}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
        committed = Committed(step, folder, manifest)
        self.prune(committed)
        return committed

    def _best(self, committed: list[Committed]) -> Committed | None:
        scored = [c for c in committed if self.best_metric in c.metrics]
        if not scored:
            return None
        lower = self.best_metric == "loss"
        return (min if lower else max)(scored, key=lambda c: c.metrics[self.best_metric])

    def prune(self, newest: Committed) -> None:
        committed = self.committed()
        keep = {c.step for c in committed[-self.keep :]} | {newest.step}
        best = self._best(committed) if self.keep_best else None
        if best is not None:
            keep.add(best.step)
        for c in committed:
            if c.step not in keep:
                # Manifest first: a half-deleted checkpoint is never taken for a good one.
                self.store.delete([f"{c.folder}/{MANIFEST}"])
                self.store.delete([f"{c.folder}/{name}" for name in c.manifest["files"]])
        # Leftovers of uploads that died before their manifest was written.
        committed_folders = {c.folder for c in committed}
        stale = [
            o.key
            for o in self.store.list_objects()
            if step_of(o.key.split("/", 1)[0]) is not None
            and o.key.split("/", 1)[0] not in committed_folders
            and o.key.split("/", 1)[0] < newest.folder
        ]
        if stale:
            self.store.delete(stale)

    def abort_stale_uploads(self) -> int:
        if isinstance(self.store, S3Store):
            return self.store.abort_stale_uploads()
        return 0


# The upload thread's nice value (and its transfer threads', which inherit it): when
# training keeps every core busy, the upload takes the time training leaves idle
# first (docs/benchmarks.md, "The checkpoint stall").
UPLOAD_NICE = 10


def lower_priority(by: int = UPLOAD_NICE) -> None:
    """Lower the calling thread's CPU priority by `by` nice steps, up to the lowest (19);
    on Linux nice values are per thread."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except OSError as e:  # never a reason to lose a checkpoint
        log.warning("checkpoint upload runs at normal priority: %s", e)


class BackgroundUploader:
    """Commits one checkpoint at a time in a thread; errors surface on the next call."""

    def __init__(
        self,
        store: CheckpointStore,
        on_done: Callable[[Committed, float], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.on_done = on_done
        self.on_bytes = on_bytes
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last: Committed | None = None

    def _run(self, snap: Snapshot, step: int, metrics: dict[str, float] | None) -> None:
        lower_priority()
        started = time.monotonic()
        try:
            self.last = self.store.commit_files(snap.files(), step, metrics, self.on_bytes)
            if self.on_done:
                self.on_done(self.last, time.monotonic() - started)
        except BaseException as e:  # surfaced to the training thread
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RetryableError(f"checkpoint upload failed: {error}") from error

    def submit(self, snap: Snapshot, step: int, metrics: dict[str, float] | None = None) -> None:
        """Commit `snap` in the background."""
        self.wait()
        self._thread = threading.Thread(
            target=self._run,
            args=(snap, step, metrics),
            name="checkpoint-upload",
            daemon=True,
        )
        self._thread.start()
