"""Checkpoint retention: the newest K, plus the best one when asked, never an uncommitted one;
and a checkpoint URI belongs to one job."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from finetune_api.checkpoints import MANIFEST, OWNER
from finetune_api.types import S3Spec
from finetune_trainer.checkpoint import CheckpointStore, DamagedCheckpoint
from finetune_trainer.errors import PermanentError
from finetune_trainer.multipart import PART_SIZE


def snapshot(root: Path, step: int) -> Path:
    folder = root / f"snap-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(step.to_bytes(4, "big") * 100)
    return folder


@pytest.mark.parametrize(("keep_best", "kept"), [(False, [40, 50]), (True, [20, 40, 50])])
def test_retention_keeps_the_newest_and_the_best(
    tmp_path: Path, keep_best: bool, kept: list[int]
) -> None:
    store = CheckpointStore(
        f"file://{tmp_path}/ckpt", None, keep=2, keep_best=keep_best, best_metric="f1"
    )
    f1 = {10: 0.60, 20: 0.91, 30: 0.70, 40: 0.80, 50: 0.75}
    for step, score in f1.items():
        store.commit(snapshot(tmp_path, step), step, {"f1": score})
    assert [c.step for c in store.committed()] == kept
    on_disk = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert on_disk == [f"step-{s:09d}" for s in kept]


def test_best_by_loss_is_the_lowest(tmp_path: Path) -> None:
    store = CheckpointStore(
        f"file://{tmp_path}/ckpt", None, keep=1, keep_best=True, best_metric="loss"
    )
    for step, loss in ((1, 0.5), (2, 0.2), (3, 0.4)):
        store.commit(snapshot(tmp_path, step), step, {"loss": loss})
    assert [c.step for c in store.committed()] == [2, 3]


def test_a_checkpoint_uri_belongs_to_one_job(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs given the same URI (say one YAML applied in two namespaces): the second is
    refused with the field and the owner named, instead of resuming from the first's
    checkpoints; the first job itself (a later attempt, a re-created job) goes on."""
    from trainer_support import ensure_bucket

    ensure_bucket(s3.client(), "ckpt")
    for key, value in s3.env().items():  # what the pod gets from its Secret
        monkeypatch.setenv(key, value)
    spec = S3Spec.model_validate({"endpoint": s3.endpoint, "forcePathStyle": True})
    first = CheckpointStore("s3://ckpt/shared-run", spec)
    first.claim("team-a", "bert")
    first.claim("team-a", "bert")  # its next attempt
    other = CheckpointStore("s3://ckpt/shared-run", spec)
    with pytest.raises(PermanentError) as refused:
        other.claim("team-b", "bert")
    assert str(refused.value) == (
        "spec.checkpoints.uri: s3://ckpt/shared-run holds the checkpoints of FineTuneJob "
        "team-a/bert; give this job a URI of its own (or delete those checkpoints to start "
        "over there)"
    )
    CheckpointStore("s3://ckpt/shared-run-2", spec).claim("team-b", "bert")  # its own URI


def test_checkpoints_from_before_the_owner_marker_are_taken_over(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}/ckpt", None)
    store.commit(snapshot(tmp_path, 10), 10)
    store.claim("ml", "mrpc")
    assert json.loads((tmp_path / "ckpt" / OWNER).read_text()) == {
        "name": "mrpc",
        "namespace": "ml",
    }
    assert [c.step for c in store.committed()] == [10]


def damage_all(root: Path) -> None:
    for weights in root.glob("step-*/model.safetensors"):
        body = bytearray(weights.read_bytes())
        body[0] ^= 0xFF
        weights.write_bytes(bytes(body))


def test_when_every_checkpoint_is_damaged_the_job_fails_naming_them(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}/ckpt", None, keep=2)
    for step in (10, 20):
        store.commit(snapshot(tmp_path, step), step, {})
    damage_all(tmp_path / "ckpt")
    with pytest.raises(PermanentError) as err:
        store.restore(tmp_path / "restore")
    message = str(err.value)
    assert f"every committed checkpoint under file://{tmp_path}/ckpt is damaged" in message
    assert "step-000000020 (model.safetensors does not match its SHA-256" in message
    assert "step-000000010" in message
    assert "spec.checkpoints.onCorrupt: restart" in message


def test_on_corrupt_restart_starts_from_step_zero(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}/ckpt", None, keep=2, on_corrupt="restart")
    store.commit(snapshot(tmp_path, 10), 10, {})
    damage_all(tmp_path / "ckpt")
    assert store.restore(tmp_path / "restore") is None
    # With one intact checkpoint left, it is the one restored.
    store.commit(snapshot(tmp_path, 20), 20, {})
    found = store.restore(tmp_path / "restore")
    assert found is not None
    assert found[0].step == 20


def test_a_damaged_piece_of_a_large_file_falls_back_to_the_previous_checkpoint(
    tmp_path: Path,
) -> None:
    """A file larger than a piece is checked piece by piece: one flipped byte in its
    second piece makes that checkpoint damaged (the part named), and the one before is
    restored."""
    store = CheckpointStore(f"file://{tmp_path}/ckpt", None, keep=2)
    weights = {step: os.urandom(PART_SIZE + 100) for step in (10, 20)}
    for step, body in weights.items():
        store.commit_files([("model.safetensors", body)], step)
    newest = tmp_path / "ckpt" / "step-000000020" / "model.safetensors"
    body = bytearray(newest.read_bytes())
    body[PART_SIZE + 50] ^= 0x01
    newest.write_bytes(bytes(body))
    with pytest.raises(DamagedCheckpoint, match=r"does not match its SHA-256 .*\(part 2 of 2\)"):
        store.download(store.committed()[-1], tmp_path / "check")
    found = store.restore(tmp_path / "restore")
    assert found is not None
    assert found[0].step == 10
    assert (found[1] / "model.safetensors").read_bytes() == weights[10]


def test_a_checkpoint_of_the_first_manifest_format_still_restores(tmp_path: Path) -> None:
    """Checkpoints written before pieces were hashed (format 1: one SHA-256 per whole file)
    restore, and are refused when damaged."""
    body = os.urandom(PART_SIZE + 100)
    folder = tmp_path / "ckpt" / "step-000000010"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(body)
    entry = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    manifest = {"format": 1, "step": 10, "metrics": {}, "files": {"model.safetensors": entry}}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    store = CheckpointStore(f"file://{tmp_path}/ckpt", None)
    found = store.restore(tmp_path / "restore")
    assert found is not None
    assert (found[1] / "model.safetensors").read_bytes() == body
    (folder / "model.safetensors").write_bytes(body[:-1] + b"\0")
    with pytest.raises(DamagedCheckpoint, match=r"does not match its SHA-256 in the manifest$"):
        store.download(store.committed()[-1], tmp_path / "again")
