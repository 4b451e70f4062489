"""`ftctl run --local` in a terminal: the trainer's log lines scroll by above the live
view of `ftctl watch` (bar with ETA, loss and its sparkline, throughput), which is read
from the trainer's own metrics endpoint, as the operator reads a pod's."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from finetune_api.names import Phase
from finetune_api.types import FineTuneJob, FineTuneJobStatus

from .. import progress, views

REFRESH_SECONDS = 0.5


class Block:
    """Lines held at the bottom of the terminal while other lines scroll above them."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._frame = ""

    def _erase(self) -> None:
        if self._frame:  # to the start of the frame's first line, then clear below
            self._write(f"\x1b[{self._frame.count(chr(10)) + 1}F\x1b[J")

    def log(self, line: str) -> None:
        with self._lock:
            self._erase()
            self._write(line + "\n" + (self._frame + "\n" if self._frame else ""))

    def show(self, frame: str) -> None:
        with self._lock:
            self._erase()
            self._frame = frame
            self._write(frame + "\n")


def frame(job: FineTuneJob, reading: progress.Reading, losses: list[float]) -> str:
    status = FineTuneJobStatus(phase=Phase.RUNNING, progress=reading.progress)
    shown = job.model_copy(update={"status": status})
    checkpoint = (
        f"  last checkpoint: step {reading.checkpoint_step}" if reading.checkpoint_step else ""
    )
    return views.live(shown, losses, header=f"{job.metadata.name}  running locally{checkpoint}")


def _follow(job: FineTuneJob, port: int, block: Block, stop: threading.Event) -> None:
    losses: list[float] = []
    last_step: int | None = None
    while not stop.wait(REFRESH_SECONDS):  # the view's refresh period
        reading = progress.scrape("127.0.0.1", port, datetime.now(UTC), timeout=1.0)
        if reading is None:
            continue
        p = reading.progress
        if p.step != last_step and p.loss is not None:
            losses.append(p.loss)
            last_step = p.step
        block.show(frame(job, reading, losses))


@contextmanager
def following(job: FineTuneJob, port: int) -> Iterator[Callable[[str], None]]:
    """Show the live view of the run whose metrics are on `port`; yields the function
    that prints a log line above it. The last frame stays on screen at the end."""

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    block, stop = Block(write), threading.Event()
    thread = threading.Thread(target=_follow, args=(job, port, block, stop), daemon=True)
    thread.start()
    try:
        yield block.log
    finally:
        stop.set()
        thread.join()
