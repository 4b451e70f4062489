"""A checkpoint is the state at the moment training paused for it, although its files are
hashed and uploaded later, in a process of lower priority, while training goes on."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from botocore.exceptions import ClientError
from safetensors import safe_open
from safetensors.torch import load_file

from finetune_api.checkpoints import step_dir
from finetune_api.types import S3Spec
from finetune_trainer.checkpoint import CheckpointStore
from finetune_trainer.data.units import DataIndex
from finetune_trainer.errors import RetryableError
from finetune_trainer.multipart import PART_SIZE, upload_from_memory
from finetune_trainer.state import TrainerState, checkpoint_files, restore, rng_state
from finetune_trainer.storage import S3Store
from finetune_trainer.tensorfile import layout
from finetune_trainer.uploader import UPLOAD_NICE, ProcessUploader
from trainer_support import ensure_bucket


class Tied(torch.nn.Module):
    """An embedding tied to the output layer, as language models tie them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 4)
        self.out = torch.nn.Linear(4, 11, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.embed(ids))
        return out


def train_step(model: Tied, optimizer: torch.optim.Optimizer) -> None:
    loss = torch.nn.functional.cross_entropy(model(torch.arange(8)), torch.arange(8).flip(0))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def prepared() -> tuple[Tied, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(3)
    model = Tied()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, total_iters=10)
    return model, optimizer, scheduler


@pytest.mark.parametrize("where", ["s3", "file"])
def test_a_checkpoint_holds_the_state_of_its_pause(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training goes on after the snapshot; the committed files (in the S3 server, or on a
    volume) are the state at the pause, not what the weights became while they were
    uploaded, with their sizes and SHA-256 in the manifest, and restore into a fresh model
    brings that state back."""
    model, optimizer, scheduler = prepared()
    train_step(model, optimizer)
    scheduler.step()
    at_pause = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in optimizer.state[model.embed.weight].items()}
    snap = checkpoint_files(
        model, optimizer, scheduler, TrainerState(global_step=1), [rng_state()],
        DataIndex(units=[], counts={}),
    ).snapshot()  # fmt: skip
    train_step(model, optimizer)  # the next steps run while the upload does
    assert not torch.equal(model.embed.weight, at_pause["embed.weight"])

    store = checkpoint_store(where, tmp_path, request, monkeypatch)
    uploader = ProcessUploader(store)
    uploader.submit(snap, 1)
    uploader.wait()
    uploader.close()
    (committed,) = store.committed()
    folder = tmp_path / "restored" / committed.folder
    for name, meta in committed.manifest["files"].items():
        store.store.download_file(f"{committed.folder}/{name}", folder / name)
        data = (folder / name).read_bytes()
        assert meta == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    # The tied weight is stored once, under one name.
    assert list(load_file(str(folder / "model.safetensors"))) == ["embed.weight"]

    fresh, fresh_optimizer, fresh_scheduler = prepared()
    train_step(fresh, fresh_optimizer)  # so the optimizer has state to overwrite
    restore(folder, fresh, fresh_optimizer, fresh_scheduler, rank=0)
    for key, value in at_pause.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert fresh.out.weight is fresh.embed.weight  # still tied after the restore
    restored = fresh_optimizer.state[fresh.embed.weight]
    for key, value in moments.items():
        assert torch.equal(restored[key], value), key
    assert fresh_scheduler.state_dict()["last_epoch"] == 1


@pytest.mark.parametrize("where", ["s3", "file"])
def test_a_file_larger_than_a_part_goes_up_byte_for_byte_hashed_by_piece(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint's file larger than a part is sent from memory as it is (in S3, in two
    16 MiB parts, each carrying its SHA-256, which S3 checked and kept); the manifest
    records the SHA-256 of each piece, and the checkpoint restores against it."""
    store = checkpoint_store(where, tmp_path, request, monkeypatch)
    data = memoryview(bytearray(os.urandom(PART_SIZE + 5)))
    committed = store.commit_files([("big.safetensors", data[3:])], step=7)
    body = bytes(data[3:])
    assert committed.manifest["format"] == 2
    assert committed.manifest["files"]["big.safetensors"] == {
        "size": len(body),
        "partSize": PART_SIZE,
        "partSha256": [hashlib.sha256(body[s : s + PART_SIZE]).hexdigest() for s in (0, PART_SIZE)],
    }
    found = store.restore(tmp_path / "restored")
    assert found is not None
    assert (found[1] / "big.safetensors").read_bytes() == body
    if isinstance(store.store, S3Store):
        key = store.store._key(f"{committed.folder}/big.safetensors")
        head = store.store.client.head_object(Bucket="ckpt", Key=key, ChecksumMode="ENABLED")
        assert head["ETag"].strip('"').endswith("-2")  # a multipart object's part count
        assert head["ChecksumSHA256"] == composite_sha256(body)


def test_a_file_from_disk_goes_up_with_the_sha256_of_each_part(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files uploaded from disk (the final model) carry their SHA-256 too, part by part,
    so S3 checks them although the client no longer signs bodies."""
    store = checkpoint_store("s3", tmp_path, request, monkeypatch).store
    assert isinstance(store, S3Store)
    body = os.urandom(PART_SIZE + 5)
    (tmp_path / "model.safetensors").write_bytes(body)
    store.upload_file(tmp_path / "model.safetensors", "final/model.safetensors")
    key = store._key("final/model.safetensors")
    head = store.client.head_object(Bucket="ckpt", Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == composite_sha256(body)


def composite_sha256(body: bytes) -> str:
    """What S3 keeps for an object uploaded in PART_SIZE parts, each with its SHA-256:
    the SHA-256 of the parts' digests, and the part count."""
    starts = range(0, len(body), PART_SIZE)
    pieces = b"".join(hashlib.sha256(body[s : s + PART_SIZE]).digest() for s in starts)
    return f"{base64.b64encode(hashlib.sha256(pieces).digest()).decode()}-{len(starts)}"


def test_a_failed_multipart_upload_leaves_no_parts_behind(s3: Any) -> None:
    """Parts that S3 refuses to assemble (parts under its 5 MiB minimum) fail the upload
    with S3's own error and the upload is aborted: no parts stay behind in the bucket."""
    client = s3.client()
    ensure_bucket(client, "parts")
    with pytest.raises(ClientError, match="EntityTooSmall"):
        upload_from_memory(client, "parts", "small-parts", os.urandom(3 << 20), part_size=1 << 20)
    assert client.list_multipart_uploads(Bucket="parts").get("Uploads", []) == []
    assert client.list_objects_v2(Bucket="parts").get("KeyCount") == 0


def checkpoint_store(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> CheckpointStore:
    if where == "file":
        return CheckpointStore(f"file://{tmp_path}/ckpt", None)
    s3 = request.getfixturevalue("s3")
    ensure_bucket(s3.client(), "ckpt")
    for key, value in s3.env().items():  # what the pod gets from its Secret
        monkeypatch.setenv(key, value)
    spec = S3Spec.model_validate({"endpoint": s3.endpoint, "forcePathStyle": True})
    return CheckpointStore(f"s3://ckpt/snapshot-{tmp_path.name}", spec)


def small_snapshot(step: int = 0) -> Any:
    model, optimizer, scheduler = prepared()
    state = TrainerState(global_step=step)
    return checkpoint_files(
        model, optimizer, scheduler, state, [rng_state()], DataIndex(units=[], counts={})
    ).snapshot()


def commit_one(uploader: ProcessUploader, step: int) -> None:
    uploader.submit(small_snapshot(step), step)
    uploader.wait()


@pytest.mark.parametrize("idle", [False, True])
def test_the_upload_runs_in_a_process_of_lower_priority(tmp_path: Path, idle: bool) -> None:
    """The upload runs in a process of its own (it does not share the training process's
    interpreter lock), below training so that training gets the CPU first: as SCHED_IDLE
    where training leaves a CPU to spare, else niced; that process ends when the trainer
    closes it."""
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    done: list[tuple[int, float]] = []
    sent: list[int] = []
    uploader = ProcessUploader(
        CheckpointStore(f"file://{tmp_path}/ckpt", None),
        on_done=lambda c, seconds: done.append((c.step, seconds)),
        on_bytes=sent.append,
        idle=idle,
    )
    snap = small_snapshot(step=4)
    size = snap.size
    uploader.submit(snap, 4)
    pid = uploader.pid
    assert pid is not None
    assert pid != os.getpid()
    uploader.wait()  # it has answered, so it has lowered its priority
    if idle:
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    else:
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(ours + UPLOAD_NICE, 19)
    assert [step for step, _ in done] == [4]
    assert sent == [size]
    assert uploader.last is not None
    assert uploader.last.folder == step_dir(4)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == ours
    assert uploader.close() == 0


def test_a_runs_snapshots_reuse_one_memory_and_each_checkpoint_holds_its_own_state(
    tmp_path: Path,
) -> None:
    """Each snapshot of a run is written into the same memory (its pages stay in place,
    so the pause does not fault them in again), even as its JSON files grow, taken once
    the previous upload is done: every checkpoint still holds the weights of its pause."""
    store = CheckpointStore(f"file://{tmp_path}/ckpt", None)
    uploader = ProcessUploader(store)
    model, optimizer, scheduler = prepared()
    weights, files = {}, set()
    for step in (9, 10):  # the second trainer_state.json is a byte longer
        train_step(model, optimizer)
        weights[step] = model.embed.weight.detach().clone()
        uploader.wait()  # as the trainer does before each snapshot
        state = TrainerState(global_step=step)
        snap = checkpoint_files(
            model, optimizer, scheduler, state, [rng_state()], DataIndex(units=[], counts={})
        ).snapshot(uploader.arena)
        files.add(os.fstat(snap.fd).st_ino)  # the same memory file, not only the same number
        uploader.submit(snap, step)
    uploader.wait()
    uploader.close()
    assert len(files) == 1
    assert not torch.equal(weights[9], weights[10])
    for committed in store.committed():
        path = tmp_path / "ckpt" / committed.folder / "model.safetensors"
        assert torch.equal(load_file(path)["embed.weight"], weights[committed.step])
    assert [c.step for c in store.committed()] == [9, 10]


def resident_shared_kb() -> int:
    """Shared memory mapped into this process's page tables (RssShmem), in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssShmem:"):
            return int(line.split()[1])
    raise AssertionError("no RssShmem in /proc/self/status")


def test_snapshot_memory_is_prepared_after_the_first_step_off_the_training_thread(
    tmp_path: Path,
) -> None:
    """Reserved ahead, the snapshots' memory is faulted in by a thread of its own before
    any snapshot is taken; the first snapshot is written into that memory, and the
    training thread keeps its priority."""
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    uploader = ProcessUploader(CheckpointStore(f"file://{tmp_path}/ckpt", None))
    model, optimizer, scheduler = prepared()
    train_step(model, optimizer)  # AdamW has its moments from here on
    files = checkpoint_files(
        model, optimizer, scheduler, TrainerState(global_step=1), [rng_state()],
        DataIndex(units=[], counts={}),
    )  # fmt: skip
    size = sum(files.sizes.values())
    # More than this tiny snapshot needs, so that its pages stand out in the kernel's
    # count, which it keeps per CPU and adds up in batches of pages.
    reserved = 32 << 20
    before = resident_shared_kb()
    uploader.reserve(reserved)
    assert uploader.arena.asked
    deadline = time.monotonic() + 30
    while resident_shared_kb() - before < (reserved - (1 << 20)) // 1024:
        assert time.monotonic() < deadline, "the reserved memory was not faulted in"
        time.sleep(0.01)  # polling the kernel's count, not waiting for a result
    snap = files.snapshot(uploader.arena)
    assert snap.memory.size >= reserved  # written into the prepared memory, not a new one
    assert snap.size == size
    uploader.submit(snap, 1)
    uploader.wait()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == ours
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert uploader.close() == 0
    (committed,) = CheckpointStore(f"file://{tmp_path}/ckpt", None).committed()
    path = tmp_path / "ckpt" / committed.folder / "model.safetensors"
    assert torch.equal(load_file(path)["embed.weight"], model.embed.weight.detach())


def test_an_upload_process_that_dies_fails_the_checkpoint_and_the_next_one_starts_anew(
    tmp_path: Path,
) -> None:
    """If the upload process is killed (say, out of memory), the trainer hears of it at the
    next wait, as a retryable failure naming the exit code, and never hangs; a later
    checkpoint starts a new upload process and commits."""
    store = CheckpointStore(f"file://{tmp_path}/ckpt", None)
    uploader = ProcessUploader(store)
    commit_one(uploader, 1)
    assert uploader.pid is not None
    os.kill(uploader.pid, signal.SIGKILL)
    # The submit fails if the process is already gone, the wait if it dies after it.
    with pytest.raises(RetryableError, match=r"upload process ended \(exit code -9\)"):
        commit_one(uploader, 2)
    commit_one(uploader, 3)
    assert [c.step for c in store.committed()] == [1, 3]
    uploader.close()


TRAINER = """
import sys
from finetune_trainer.checkpoint import CheckpointStore
from finetune_trainer.handoff import Snapshot
from finetune_trainer.uploader import ProcessUploader

uploader = ProcessUploader(CheckpointStore(sys.argv[1], None))
uploader.submit(Snapshot.holding({"model.safetensors": bytes(4 << 20)}), 1)
print(uploader.pid, flush=True)
uploader.wait()
"""


def gone(pid: int) -> bool:
    """Exited (a zombie that nobody reaped counts: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_an_upload_in_flight_dies_with_its_trainer(tmp_path: Path) -> None:
    """A trainer killed in the middle of an upload takes its upload process with it: no
    upload outlives the trainer to commit behind a new attempt's back. A named pipe where the
    file's bytes go stands in for a slow store (the real S3 server cannot be held in the
    middle of one upload on demand): this test reads a byte of it, so the upload has begun,
    and then leaves it full, so the upload cannot finish."""
    folder = tmp_path / "ckpt" / step_dir(1)
    folder.mkdir(parents=True)
    os.mkfifo(folder / "model.safetensors.partial")
    pipe = os.open(folder / "model.safetensors.partial", os.O_RDONLY | os.O_NONBLOCK)
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, f"file://{tmp_path}/ckpt"], stdout=subprocess.PIPE
    )
    assert trainer.stdout is not None
    pid = int(trainer.stdout.readline())
    try:
        assert read_a_byte(pipe, time.monotonic() + 60) == b"\0"
        trainer.kill()
        trainer.wait()
        deadline = time.monotonic() + 30
        while not gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(pid), "the upload process outlived its trainer"
    finally:
        trainer.kill()
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
        os.close(pipe)


def read_a_byte(pipe: int, deadline: float) -> bytes:
    """The first byte written to `pipe`, once a writer has sent one."""
    while time.monotonic() < deadline:
        try:
            got = os.read(pipe, 1)
        except BlockingIOError:  # a writer, nothing written yet
            got = b""
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("the upload never began writing")


def test_snapshot_files_are_safetensors_that_safetensors_reads_back(tmp_path: Path) -> None:
    """The snapshot lays each tensor into its file's bytes itself; the files are the
    safetensors format as the safetensors library reads it: every dtype a checkpoint
    holds, scalars, empty and non-contiguous tensors, and the metadata."""
    tensors = {
        "weight": torch.randn(6, 4).t(),  # not contiguous
        "half": torch.randn(5, dtype=torch.bfloat16),
        "step": torch.tensor(7.0),  # 0-dim, as AdamW keeps its step
        "rng": torch.get_rng_state(),  # uint8
        "count": torch.arange(3, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "t.safetensors"
    planned = layout(tensors, {"out.weight": "embed.weight"})
    data = bytearray(planned.size)
    planned.write(memoryview(data))
    path.write_bytes(data)
    back = load_file(path)
    assert sorted(back) == sorted(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype, name
        assert torch.equal(back[name], tensor), name
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"out.weight": "embed.weight"}


def test_a_tensor_type_safetensors_has_no_name_for_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"moments: no safetensors type for torch\.complex64"):
        layout({"moments": torch.zeros(2, dtype=torch.complex64)})
