"""Training time a checkpoint costs, and the checkpoint upload rate
(`.venv/bin/python bench/checkpoint_stall.py`).

Same job as bench/trainer_vs_recipe.py (all-MiniLM-L6-v2, MRPC, global batch 8), run through
`ftctl run --local` with its checkpoints in the test S3 server (MinIO on loopback), side by
side in one session, rounds alternating the order:

- without a checkpoint inside the measured steps, and with one every `--every` steps (the
  trainer snapshots in memory, then uploads in the background while training goes on);
- the time training lost per checkpoint: the difference of the two runs' training time,
  divided by the checkpoints taken; against what a blocking checkpoint of the same bytes
  would lose: the training pause for the snapshot (from the trainer's log of the same runs)
  plus the upload process's work for one checkpoint (`CheckpointStore.commit_files`:
  upload each file from memory, hashing it on the way) with training stopped;
- two numbers less noisy than training time: how
  long training's main thread waited for a CPU while it could run (its run-queue delay,
  with minus without, per checkpoint), and the upload process's CPU time per checkpoint;
- with `--priority idle|nice10|nice19` (repeatable), more runs with checkpoints in which
  the bench sets the upload process's priority from outside, to compare with the one it
  sets itself (SCHED_IDLE where training leaves a CPU to spare, else nice 10);
- the upload rate of one checkpoint's files: the trainer's store (`CheckpointStore.commit`:
  16 MiB parts, 8 threads, each hashed once with SHA-256 for S3 and the manifest, then the
  manifest)
  against plain boto3 `upload_file` (its default transfer settings) of the same files.

On a cluster the S3 server is another machine. So by default the S3 server runs pinned to
the last core and the trainer to the others, in every run (`--shared`: all on all cores).
`--spare-core` stands in for a GPU node, whose host cores wait on the GPU while it computes:
the trainer's entry point runs the job on one node with FT_CPU_THREADS one fewer than the
cores it may use (`ftctl run --local` sets that itself), and the S3 server shares the
spare core with whatever the scheduler puts there (the upload process).

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests")]

from controlplane import free_port  # noqa: E402
from trainer_vs_recipe import ftctl_local, output_of, samples_per_second  # noqa: E402

from finetune_api.env import TrainerEnv, without_gang  # noqa: E402
from s3.server import S3Server  # noqa: E402
from trainer_support import minilm_dir, mrpc_train_only  # noqa: E402

BATCH = 8
# The upload process's priority, set from outside to compare with the one it sets itself.
PRIORITIES: dict[str, Callable[[int], None]] = {
    "idle": lambda tid: os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0)),
    "nice10": lambda tid: nice(tid, 10),
    "nice19": lambda tid: nice(tid, 19),
}


SHOWS = {"idle": "policy 5", "nice10": "policy 0, nice 10", "nice19": "policy 0, nice 19"}


def nice(tid: int, steps: int) -> None:
    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
    os.setpriority(os.PRIO_PROCESS, tid, steps)


COMMITTED = re.compile(
    r"checkpoint step (\d+) committed .* in ([0-9.]+)s \(training paused ([0-9.]+)s"
)


class Watch(threading.Thread):
    """Polls /proc while a run goes on, for two numbers less noisy than training time: how
    long the training process's main thread waited for a CPU while it could run (its
    run-queue delay, /proc/PID/schedstat), and the CPU time of its upload process, each as
    last seen before the process ended."""

    def __init__(self, priority: str | None = None) -> None:
        super().__init__(daemon=True)
        self.done = threading.Event()
        self.pids: dict[str, int] = {}
        self.waited: dict[int, float] = {}
        self.upload_cpu: dict[int, float] = {}
        self.priority = priority  # set on the upload process from outside (PRIORITIES)
        self.upload_sched = ""  # as /proc last showed it: SCHED_OTHER is 0, SCHED_IDLE 5

    def run(self) -> None:
        polls = 0
        while not self.done.wait(0.1):
            # /proc is scanned every 2 s, the two processes' own files every 0.1 s.
            missing = (
                "worker" not in self.pids or not Path(f"/proc/{self.pids.get('uploader')}").exists()
            )
            if missing and polls % 20 == 0:
                self.find()
            elif missing and self.priority:
                self.find_uploader()  # within 0.1 s of its start, to set its priority
            polls += 1
            try:
                if "worker" in self.pids:
                    stat = Path(f"/proc/{self.pids['worker']}/schedstat").read_text()
                    self.waited[self.pids["worker"]] = int(stat.split()[1]) / 1e9
                if "uploader" in self.pids:
                    stat = Path(f"/proc/{self.pids['uploader']}/stat").read_text()
                    fields = stat.rsplit(")", 1)[1].split()
                    ticks = int(fields[11]) + int(fields[12])
                    self.upload_cpu[self.pids["uploader"]] = ticks / os.sysconf("SC_CLK_TCK")
                    self.upload_sched = f"policy {fields[38]}, nice {fields[16]}"
                    if self.priority and not self.upload_sched.startswith(SHOWS[self.priority]):
                        # Again after the process has set its own, at its start.
                        self.reprioritise(self.pids["uploader"])
            except (OSError, ValueError):
                pass  # it ended between the two reads

    def find(self) -> None:
        for proc in Path("/proc").iterdir():
            try:
                args = (
                    (proc / "cmdline").read_bytes().split(b"\0")[1:3] if proc.name.isdigit() else []
                )
            except OSError:
                continue
            if args[:1] == [b"-m"] and args[1:] in (
                [b"finetune_trainer.worker"],
                [b"finetune_trainer.uploader"],
            ):
                self.pids[args[1].decode().rpartition(".")[2]] = int(proc.name)

    def find_uploader(self) -> None:
        """The worker's child (the upload process) from /proc/PID/task/*/children."""
        if "worker" not in self.pids:
            return
        try:
            for task in Path(f"/proc/{self.pids['worker']}/task").iterdir():
                for child in (task / "children").read_text().split():
                    if b"finetune_trainer.uploader" in Path(f"/proc/{child}/cmdline").read_bytes():
                        self.pids["uploader"] = int(child)
        except (OSError, ValueError):
            pass

    def reprioritise(self, pid: int) -> None:
        """Every thread of `pid` to `self.priority`; threads it starts later inherit it."""
        for task in Path(f"/proc/{pid}/task").iterdir():
            PRIORITIES[self.priority](int(task.name))  # type: ignore[index]

    def totals(self) -> dict[str, float]:
        self.done.set()
        self.join()
        return {
            "waited": sum(self.waited.values()),
            "upload_cpu": sum(self.upload_cpu.values()),
            "upload_sched": self.upload_sched,
        }


def run(
    s3: S3Server,
    work: Path,
    steps: int,
    every: int,
    prefix: str,
    env: dict[str, str],
    priority: str | None = None,
) -> dict[str, Any]:
    """One `ftctl run --local`: its samples/s, its checkpoints' (step, upload, pause), and
    what `Watch` saw."""
    job = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "stall"},
        "spec": {
            "model": {"uri": f"file://{minilm_dir()}", "numLabels": 2},
            "dataset": mrpc_train_only(),
            "training": {"maxSteps": steps, "perDeviceTrainBatchSize": BATCH,
                         "learningRate": 5e-5, "evalStrategy": "no", "loggingSteps": 10_000},
            "resources": {"nodes": 1, "gpusPerNode": 1},
            "s3": {"endpoint": s3.endpoint, "forcePathStyle": True},
            "checkpoints": {"uri": f"s3://ckpt/{prefix}", "saveSteps": every, "saveTotalLimit": 2},
        },
    }  # fmt: skip
    watch = Watch(priority)
    watch.start()
    try:
        out = (trainer_entry if env else ftctl_local)(job, work, prefix, {**s3.env(), **env})
    finally:
        seen = watch.totals()
    rate = samples_per_second(out)
    checkpoints = [(int(s), float(u), float(p)) for s, u, p in COMMITTED.findall(out)]
    print(
        "# " + next(x for x in out.splitlines() if " thread" in x and "training " in x), flush=True
    )
    return {"rate": rate, "checkpoints": checkpoints, **seen}


def trainer_entry(job: dict[str, Any], work: Path, name: str, env: dict[str, str]) -> str:
    """The trainer's entry point running `job` as one node, as `ftctl run --local` does,
    with `env` over the contract: its output."""
    contract = TrainerEnv(
        job_name=name,
        namespace="local",
        job_spec=json.dumps(job["spec"]),
        num_nodes=1,
        node_rank=0,
        master_port=free_port(),
        metrics_port=0,
        work_dir=work / name,
        termination_log=work / name / "termination-log",
        device="cpu",
        hf_hub_offline=True,
    )
    argv = [str(Path(sys.executable).parent / "finetune-trainer")]
    full = {**without_gang(os.environ), **contract.to_env(), **env}
    return output_of(argv, full, "finetune-trainer")


def pin(s3: S3Server, mode: str) -> tuple[str, dict[str, str]]:
    """Places the S3 server and this process (and what it starts) for `mode`: says where
    each runs, and the trainer's environment for it."""
    cores = sorted(os.sched_getaffinity(0))
    if mode == "shared" or len(cores) < 2:
        return f"the S3 server and the trainer share all {len(cores)} cores", {}
    for task in Path(f"/proc/{s3.proc.pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cores[-1]})  # threads it starts inherit it
    if mode == "spare-core":
        threads = len(cores) - 1
        return (
            f"the S3 server on core {cores[-1]}, the trainer on all {len(cores)} cores "
            f"computing with {threads} thread(s)",
            {TrainerEnv.variable("cpu_threads"): str(threads)},
        )
    os.sched_setaffinity(0, set(cores[:-1]))
    return f"the S3 server on core {cores[-1]}, the trainer on cores {cores[:-1]}", {}


def upload_rates(s3: S3Server, work: Path, rounds: int) -> tuple[float, float, float, int]:
    """MB/s of the trainer's store and of plain boto3 for the newest checkpoint's files,
    and the seconds to commit them from memory (a blocking checkpoint's work)."""
    from finetune_api.types import S3Spec
    from finetune_trainer.checkpoint import CheckpointStore
    from finetune_trainer.handoff import Snapshot

    client = s3.client()
    listed = client.list_objects_v2(Bucket="ckpt", Prefix="with-0/")["Contents"]
    folder = max({o["Key"].split("/")[1] for o in listed if "/step-" in "/" + o["Key"]})
    local = work / "files"
    for o in listed:
        if o["Key"].startswith(f"with-0/{folder}/") and not o["Key"].endswith(".json"):
            target = local / o["Key"].removeprefix(f"with-0/{folder}/")
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file("ckpt", o["Key"], str(target))
    files = sorted(p for p in local.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    os.environ.update(s3.env())
    spec = S3Spec(endpoint=s3.endpoint, force_path_style=True)
    ours: list[float] = []
    plain: list[float] = []
    blocking: list[float] = []
    for i in range(rounds):
        snap = Snapshot.holding({str(p.relative_to(local)): p.read_bytes() for p in files})
        began = time.monotonic()
        CheckpointStore(f"s3://ckpt/blocking-{i}", spec).commit_files(snap.files(), 2000 + i)
        blocking.append(time.monotonic() - began)
        for which in ("ours", "plain") if i % 2 == 0 else ("plain", "ours"):
            began = time.monotonic()
            if which == "ours":
                CheckpointStore(f"s3://ckpt/up-ours-{i}", spec).commit(local, 1000 + i)
                ours.append(size / (time.monotonic() - began) / 1e6)
            else:
                for p in files:
                    client.upload_file(str(p), "ckpt", f"up-plain-{i}/{p.relative_to(local)}")
                plain.append(size / (time.monotonic() - began) / 1e6)
    return statistics.mean(ours), statistics.mean(plain), statistics.mean(blocking), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="steps between checkpoints")
    parser.add_argument("--rounds", type=int, default=2)
    place = parser.add_mutually_exclusive_group()
    place.add_argument("--shared", action="store_true", help="S3 server on the trainer's cores")
    place.add_argument(
        "--spare-core",
        action="store_true",
        help="the trainer computes on one core fewer than it has, as a GPU node's host does",
    )
    parser.add_argument(
        "--priority",
        action="append",
        choices=sorted(PRIORITIES),
        default=[],
        help="also run with checkpoints with the upload process set to this priority from "
        "outside (SCHED_IDLE, nice 10 or 19), to compare with the one it sets itself "
        "(SCHED_IDLE where training leaves a CPU to spare, else nice 10); repeatable",
    )
    args = parser.parse_args()
    mode = "shared" if args.shared else "spare-core" if args.spare_core else "pinned"
    variants = ["without", "with", *(f"with, {p}" for p in args.priority)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        s3 = S3Server(work / "s3", free_port())
        (work / "s3").mkdir()
        s3.start()
        try:
            s3.client().create_bucket(Bucket="ckpt")
            where, env = pin(s3, mode)
            print(f"# {where}", flush=True)
            results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for i in range(args.rounds):
                for name in variants if i % 2 == 0 else variants[::-1]:
                    every = args.steps * 10 if name == "without" else args.every
                    priority = name.partition(", ")[2] or None
                    slug = name.replace(", ", "-")
                    got = run(s3, work, args.steps, every, f"{slug}-{i}", env, priority)
                    results[name].append(got)
                    print(f"# round {i + 1}: {name}: {got}", flush=True)
            ours, plain, blocking, size = upload_rates(s3, work, 3)
        finally:
            s3.stop()
    report(results, args, (ours, plain, blocking), size, where)


def report(
    results: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    idle: tuple[float, float, float],
    size: int,
    where: str,
) -> None:
    ours, plain, blocking = idle
    base = results["without"]
    columns = {n: loss(rs, base, args.steps) for n, rs in results.items() if n != "without"}
    first = columns["with"]
    print(
        f"\n{args.steps} steps, a checkpoint every {args.every} ({first['per_run']:.0f} "
        f"inside the measured steps), {size / 1e6:.0f} MB each, {args.rounds} rounds"
    )
    print(f"({where})\n")
    own = {"0": "nice 10", "5": "SCHED_IDLE"}.get(results["with"][0]["upload_sched"][7:8], "?")
    names = {"with": f"its own: {own}", "with, idle": "SCHED_IDLE", "with, nice10": "nice 10",
             "with, nice19": "nice 19"}  # fmt: skip
    print("| upload process at | " + " | ".join(names[n] for n in columns) + " |")
    print("|---|" + "---|" * len(columns))

    # A blocking checkpoint pauses for the snapshot alone: the least pause of the columns
    # (a column's pause also holds any wait for an upload that is not done).
    snapshot = min(c["pause"] for c in columns.values())

    def of_blocking(_: dict[str, float]) -> float:
        return snapshot + blocking

    rows: list[tuple[str, Callable[[dict[str, float]], float], str]] = [
        ("training time, no checkpoint, s", lambda c: c["without"], ".1f"),
        ("training time, checkpoints uploaded in the background, s", lambda c: c["with"], ".1f"),
        ("lost per checkpoint, background upload, s", lambda c: c["lost"], ".2f"),
        ("of which the pause (the snapshot, and any wait for the upload before), s",
         lambda c: c["pause"], ".2f"),
        ("the upload in the background, while training, s", lambda c: c["upload"], ".2f"),
        ("lost per checkpoint, blocking (the least pause + the same work, training stopped), s",
         of_blocking, ".2f"),
        ("background loss / blocking loss", lambda c: c["lost"] / of_blocking(c), ".0%"),
        ("training's wait for a CPU per checkpoint (run-queue delay, with minus without), s",
         lambda c: c["waited"], ".2f"),
        ("(run-queue delay + pause) / blocking loss",
         lambda c: (c["waited"] + c["pause"]) / of_blocking(c), ".0%"),
        ("the upload process's CPU time per checkpoint, CPU-s", lambda c: c["cpu"], ".2f"),
    ]  # fmt: skip
    for label, value, form in rows:
        cells = [format(value(c), form) for c in columns.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n| upload of one checkpoint | MB/s |\n|---|---|")
    print(f"| the trainer's store (commit, with SHA-256 and manifest) | {ours:.0f} |")
    print(f"| boto3 upload_file, defaults | {plain:.0f} |")


def loss(runs: list[dict[str, Any]], base: list[dict[str, Any]], steps: int) -> dict[str, float]:
    """What runs with checkpoints cost against `base` (runs without), per checkpoint."""
    seconds = [statistics.mean(steps * BATCH / r["rate"] for r in rs) for rs in (base, runs)]
    inside = [c for r in runs for c in r["checkpoints"] if c[0] < steps]
    per_run = len(inside) / len(runs)
    waited = [statistics.mean(r["waited"] for r in rs) for rs in (base, runs)]
    # Each run starts one upload process; the difference leaves out its start-up.
    cpu = [statistics.mean(r["upload_cpu"] for r in rs) for rs in (base, runs)]
    count = [statistics.mean(len(r["checkpoints"]) for r in rs) for rs in (base, runs)]
    return {
        "without": seconds[0],
        "with": seconds[1],
        "per_run": per_run,
        "lost": (seconds[1] - seconds[0]) / per_run,
        "pause": statistics.mean(c[2] for c in inside),
        "upload": statistics.mean(c[1] for c in inside),
        "waited": (waited[1] - waited[0]) / per_run,
        "cpu": (cpu[1] - cpu[0]) / (count[1] - count[0]),
    }


if __name__ == "__main__":
    main()
