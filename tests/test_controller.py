"""The controller's work queue and health rules (no cluster)."""

from __future__ import annotations

import threading

from finetune_operator.controller import Health, WorkQueue


def test_a_key_is_queued_once_and_never_worked_on_twice_at_a_time() -> None:
    q = WorkQueue()
    for _ in range(5):
        q.add(("ns", "a"))
    q.add(("ns", "b"))
    assert len(q) == 2
    key = q.get()
    assert key == ("ns", "a")
    # Events while "a" is being reconciled schedule exactly one more pass, after this one.
    q.add(("ns", "a"))
    q.add(("ns", "a"))
    assert q.get() == ("ns", "b")
    assert len(q) == 0
    q.done(("ns", "a"))
    assert q.get() == ("ns", "a")


def test_requeue_after_delivers_the_key_when_due() -> None:
    q = WorkQueue()
    q.add_after(("ns", "later"), 0.2)
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    worker.join(timeout=5)
    assert got == [("ns", "later")]


def test_close_releases_waiting_workers() -> None:
    q = WorkQueue()
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    q.close()
    worker.join(timeout=5)
    assert got == [None]


def test_liveness_fails_when_the_watch_falls_behind_the_api() -> None:
    h = Health(stale_after=120)
    key = ("ns", "job")
    h.watched(key, "10")
    assert h.compare({key: "10"}, now=1000.0) == 0.0
    # The API shows a newer version than the watch delivered: behind since now.
    assert h.compare({key: "12"}, now=1010.0) == 0.0
    assert h.compare({key: "12"}, now=1100.0) == 90.0
    h.watched(key, "12")  # the watch caught up
    assert h.compare({key: "12"}, now=1200.0) == 0.0
    h.compare({key: "13"}, now=1300.0)
    lag = h.compare({key: "14"}, now=1500.0)
    assert lag == 200.0
    assert lag > h.stale_after


def test_the_liveness_answer() -> None:
    import time

    h = Health(stale_after=120)
    key = ("ns", "job")
    h.watched(key, "1")
    h.compare({key: "1"}, now=time.monotonic())
    assert h.live(resync=60) == (True, "ok")
    h.compare({key: "2"}, now=time.monotonic() - 200)  # behind for 200 s already
    ok, why = h.live(resync=60)
    assert not ok
    assert "behind" in why
