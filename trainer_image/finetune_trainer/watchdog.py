"""Hangs end: a training process that finishes no optimizer step for
`spec.runPolicy.progressDeadlineSeconds` (after its first step; evaluation and
checkpoint saves stop the clock) ends its attempt with a reason and the
retryable exit code, and the operator restarts the gang.

A rank that froze (SIGSTOP, a stuck driver, a dead peer's socket) cannot report
itself, so the ranks that are still alive do: their steps block in the gradient
all-reduce until their own deadline passes. Before leaving, they meet on a gloo
group of their own (created at start, so it works while the training group is
blocked) in a monitored barrier: rank 0 learns which ranks never arrived, and
another rank learns whether rank 0 did. The reason names them and where this
rank waited, e.g. `Hang: no optimizer step for 60s after step 124 (rank 0 was
computing the step: forward, backward, gradient all-reduce); rank 1 (node 1)
did not answer`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from .errors import RetryableError, record_failure

log = logging.getLogger(__name__)

# How long the living ranks wait for each other when a deadline passes.
ROLL_CALL_SECONDS = 30.0


def roll_call_group() -> Any:
    """The gloo group the watchdog calls the roll on (every rank creates it at start);
    its own timeout bounds how long a rank waits for rank 0's answer."""
    import torch.distributed as dist

    return dist.new_group(backend="gloo", timeout=timedelta(seconds=ROLL_CALL_SECONDS))


class Hang(RetryableError):
    """No progress within the deadline: the attempt ends so the gang restarts."""

    plain = True


class Watchdog:
    """One per training process; `beat` after every optimizer step."""

    def __init__(self, deadline: float, rank: int, procs_per_node: int, group: Any) -> None:
        self.deadline = deadline
        self.rank = rank
        self.procs_per_node = max(1, procs_per_node)
        self.group = group  # a gloo group of every rank, or None for one process
        self.phase = "starting"
        self.step = 0
        self._last: float | None = None  # None: not armed (before the first step, paused)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopped.set()

    def beat(self, step: int) -> None:
        with self._lock:
            self.step, self._last = step, time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Evaluation, checkpoints: the clock stops, and starts afresh after."""
        with self._lock:
            armed, self._last = self._last is not None, None
        try:
            yield
        finally:
            with self._lock:
                self._last = time.monotonic() if armed else None

    def overdue(self, now: float) -> bool:
        with self._lock:
            return self._last is not None and now - self._last > self.deadline

    def _watch(self) -> None:
        interval = min(5.0, self.deadline / 4)
        while not self._stopped.wait(interval):
            if self.overdue(time.monotonic()):
                self._fire()

    def _fire(self) -> None:
        reason = (
            f"Hang: no optimizer step for {self.deadline:g}s after step {self.step} "
            f"(rank {self.rank} was {self.phase}); {self.roll_call()}; "
            "spec.runPolicy.progressDeadlineSeconds bounds this"
        )
        log.error("%s", reason)
        record_failure(Hang(reason))
        logging.shutdown()
        # The main thread is blocked (that is the hang): leave without it.
        os._exit(int(Hang.exit_code))

    def roll_call(self) -> str:
        """Which ranks are gone, as far as this one can tell."""
        if self.group is None:
            return "this is the only process"
        import torch.distributed as dist

        try:
            dist.monitored_barrier(
                self.group, timeout=timedelta(seconds=ROLL_CALL_SECONDS), wait_all_ranks=True
            )
        except RuntimeError as e:
            if self.rank == 0:
                return self._missing(str(e))
            return "rank 0 (node 0) did not answer"
        return "every rank answered: a collective or storage call is stuck, no process died"

    def _missing(self, error: str) -> str:
        import re

        # gloo: "Ranks 1, 3 failed to pass monitoredBarrier in 30000 ms"
        found = re.search(r"Ranks? ([\d, ]+) failed to pass", error)
        if not found:
            return f"a rank did not answer ({error.splitlines()[0][:200]})"
        ranks = [int(r) for r in found.group(1).replace(" ", "").split(",") if r]
        named = ", ".join(f"rank {r} (node {r // self.procs_per_node})" for r in ranks)
        return f"{named} did not answer"
