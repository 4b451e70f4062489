"""CPU time one checkpoint's upload costs the trainer's host
(`.venv/bin/python bench/upload_cpu.py`).

A checkpoint upload runs beside training, so on a node whose cores all train, every
CPU-second it spends is taken from training (docs/benchmarks.md, "The checkpoint stall").
This measures, side by side in one run, rounds alternating the order, the CPU time of this
process (client) and of the S3 server (MinIO on loopback, pinned to the last core, this
process to the others) to put the same bytes in memory (3 files, 273 MB as MiniLM's
checkpoint) to S3:

- each part hashed twice (before): multipart.py through a client that signs every body
  (botocore's default over plain HTTP: a SHA-256 of each body) besides the SHA-256 that
  S3 and the manifest get, 8 MiB parts;
- each part hashed once, 8 MiB parts: the store's client, which sends bodies unsigned;
- the trainer's store (`S3Store.upload_bytes`: each part hashed once, 16 MiB parts);
- sha256 of the same bytes alone (one hash of a checkpoint).

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests"), str(ROOT / "bench")]

from checkpoint_stall import pin  # noqa: E402
from controlplane import free_port  # noqa: E402

from finetune_api.types import S3Spec  # noqa: E402
from finetune_trainer.multipart import upload_from_memory  # noqa: E402
from finetune_trainer.storage import S3Store  # noqa: E402
from s3.server import S3Server  # noqa: E402


def own_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def digest(_: str, data: bytes) -> None:
    hashlib.sha256(data).digest()


def ways(s3: S3Server, files: list[bytes]) -> dict[str, Callable[[str], None]]:
    """Each way of putting `files` under a prefix."""
    store = S3Store(
        "s3://ckpt/store", "ckpt", "store", S3Spec(endpoint=s3.endpoint, force_path_style=True)
    )
    signing = s3.client()

    def each(put: Callable[[str, bytes], None]) -> Callable[[str], None]:
        return lambda prefix: [put(f"{prefix}/f{i}", data) for i, data in enumerate(files)]

    return {
        "each part hashed twice: signed, plus the SHA-256 (before), 8 MiB parts": each(
            lambda k, d: upload_from_memory(signing, "ckpt", k, d, part_size=8 << 20)
        ),
        "each part hashed once, 8 MiB parts": each(
            lambda k, d: upload_from_memory(store.client, "ckpt", k, d, part_size=8 << 20)
        ),
        "the store: each part hashed once, 16 MiB parts (now)": each(store.upload_bytes),
        "sha256 of the bytes alone": each(digest),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=273, help="MB of the checkpoint, 3 files")
    args = parser.parse_args()
    files = [os.urandom(args.mb * 1_000_000 // 3) for _ in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        s3 = S3Server(Path(tmp) / "s3", free_port())
        (Path(tmp) / "s3").mkdir()
        s3.start()
        try:
            s3.client().create_bucket(Bucket="ckpt")
            os.environ.update(s3.env())
            where, _ = pin(s3, "pinned")
            got: dict[str, list[tuple[float, float]]] = {}
            todo = ways(s3, files)
            for i in range(args.rounds):
                for name, put in todo.items() if i % 2 == 0 else reversed(todo.items()):
                    client, server = own_cpu(), cpu_of(s3.proc.pid)
                    put(f"r{i}")
                    used = (own_cpu() - client, cpu_of(s3.proc.pid) - server)
                    got.setdefault(name, []).append(used)
        finally:
            s3.stop()
    print(f"\n{args.mb} MB in 3 files, median of {args.rounds} rounds ({where})\n")
    print("| upload of one checkpoint | trainer's host, CPU-s | S3 server, CPU-s |")
    print("|---|---|---|")
    for name, runs in got.items():
        client = statistics.median(c for c, _ in runs)
        server = statistics.median(s for _, s in runs)
        print(f"| {name} | {client:.2f} | {server:.2f} |")


if __name__ == "__main__":
    main()
