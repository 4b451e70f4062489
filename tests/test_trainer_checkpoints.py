"""Checkpoint retention: the newest K, plus the best one when asked, never an uncommitted one."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_trainer.checkpoint import CheckpointStore


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
