"""Checkpoints in S3 (or a volume): atomic commits, verified restores, retention.

A checkpoint is a folder under the job's checkpoint URI, laid out as
`finetune_api.checkpoints` says. Its files are uploaded first;
`manifest.json`, listing each file's size and SHA-256 (of each 16 MiB piece, for a larger
file: the hashes S3 checked its parts against), is written last. A
folder without a manifest is not a checkpoint: an upload killed half-way is
never used. Restores verify every file and fall
back to the previous checkpoint when one is damaged; when none verifies the job
fails (spec.checkpoints.onCorrupt: restart starts it from step 0 instead). Old checkpoints are
deleted (manifest first) only after a newer one is committed.

Uploads run in a process of their own at a lower CPU priority (uploader.py), so
training waits only for the in-memory snapshot (state.py), which already holds each
file's bytes; that process uploads each file from memory, hashing each byte once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

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
from .multipart import PART_SIZE
from .storage import S3Store, Store, open_store

log = logging.getLogger(__name__)

# 2: a file larger than one piece lists the SHA-256 of each piece ("partSize",
# "partSha256") instead of one of the whole file ("sha256", as format 1 did for all).
FORMAT = 2


def file_entry(size: int, digests: list[str]) -> dict[str, Any]:
    """A manifest's record of one file, from the SHA-256 of each of its pieces."""
    if len(digests) == 1:
        return {"size": size, "sha256": digests[0]}
    return {"size": size, "partSize": PART_SIZE, "partSha256": digests}


def mismatch(path: Path, meta: dict[str, Any]) -> str | None:
    """Why the file at `path` is not the one its manifest entry describes, or None."""
    size = path.stat().st_size
    if size != meta["size"]:
        return f"has {size} bytes, manifest says {meta['size']}"
    piece = int(meta.get("partSize") or max(size, 1))
    expected = meta["partSha256"] if "partSha256" in meta else [meta["sha256"]]
    with path.open("rb") as f:
        for number, want in enumerate(expected, 1):
            if piece_sha256(f, piece) != want:
                where = f" (part {number} of {len(expected)})" if len(expected) > 1 else ""
                return f"does not match its SHA-256 in the manifest{where}"
    return None


def piece_sha256(f: BinaryIO, size: int) -> str:
    """The hex SHA-256 of the next `size` bytes of `f` (fewer at its end)."""
    digest, left = hashlib.sha256(), size
    while left > 0 and (chunk := f.read(min(left, 1 << 20))):
        digest.update(chunk)
        left -= len(chunk)
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
        self.s3 = s3
        self.on_corrupt = on_corrupt
        self.store: Store = open_store(self.uri, s3)
        self.keep = keep
        self.keep_best = keep_best
        self.best_metric = best_metric

    def settings(self) -> dict[str, Any]:
        """What `from_settings` needs to open this store in another process (no
        credentials: those come from the environment)."""
        return {
            "uri": self.uri,
            "s3": self.s3.model_dump(mode="json", by_alias=True) if self.s3 else None,
            "keep": self.keep,
            "keep_best": self.keep_best,
            "best_metric": self.best_metric,
            "on_corrupt": self.on_corrupt,
        }

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> CheckpointStore:
        s3 = settings["s3"]
        return cls(**{**settings, "s3": S3Spec.model_validate(s3) if s3 is not None else None})

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
            wrong = mismatch(path, meta)
            if wrong:
                raise DamagedCheckpoint(f"{name} {wrong}")
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

    def commit(self, local: Path, step: int, metrics: dict[str, float] | None = None) -> Committed:
        """Commit the files under `local`."""
        paths = sorted(p for p in local.rglob("*") if p.is_file())
        files = ((str(p.relative_to(local)), p.read_bytes()) for p in paths)
        return self.commit_files(files, step, metrics)

    def commit_files(
        self,
        named: Iterable[tuple[str, bytes | memoryview]],
        step: int,
        metrics: dict[str, float] | None = None,
    ) -> Committed:
        """Upload each (name, bytes), then write the manifest with the SHA-256 of each
        piece that the upload computed (and S3 checked)."""
        folder = step_dir(step)
        files: dict[str, dict[str, Any]] = {}
        for name, data in named:
            digests = self.store.upload_bytes(f"{folder}/{name}", data)
            files[name] = file_entry(len(data), digests)
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
