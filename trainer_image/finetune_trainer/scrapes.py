"""The metrics endpoint, and a last read for everyone who reads it regularly.

A pod's series vanish with the pod. A short job, or the last seconds of any job, can
end between two scrapes, and then Prometheus never holds the final step, loss and
evaluation, and the operator (which copies progress and the newest checkpoint into
the job's status from this endpoint) never sees the last commit. So when training
is over, `Scrapes.wait_for_final_reads` holds the process until every reader that
has been polling (two reads or more, and not gone quiet) has read once more,
each within about one of its own polling intervals, and never longer than a cap.
A run that nobody scrapes ends at once.

A reader is told apart by its address and User-Agent; a read counts once its
whole response has been written (WSGI's `close()` of the response body).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

FINAL_READ_CAP_SECONDS = 60.0
GAPS_KEPT = 4
READERS_KEPT = 64  # a bound on memory, whoever connects


@dataclass
class Reader:
    last: float
    gaps: list[float] = field(default_factory=list)

    def read(self, at: float) -> None:
        self.gaps = [*self.gaps, at - self.last][-GAPS_KEPT:]
        self.last = at

    def due(self) -> float | None:
        """When its next read should have come (None: read only once, not polling)."""
        if not self.gaps:
            return None
        return self.last + 1.5 * max(self.gaps) + 1.0


class Scrapes:
    """Who read the endpoint and when (monotonic seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.readers: dict[tuple[str, str], Reader] = {}
        self._changed = threading.Condition()

    def record(self, who: tuple[str, str]) -> None:
        with self._changed:
            now = self.clock()
            reader = self.readers.get(who)
            if reader is None:
                if len(self.readers) >= READERS_KEPT:  # forget a one-off reader first
                    del self.readers[min(self.readers, key=self._forgettable)]
                self.readers[who] = Reader(now)
            else:
                reader.read(now)
            self._changed.notify_all()

    def wait_for_final_reads(self, cap: float = FINAL_READ_CAP_SECONDS) -> list[str]:
        """Block until each polling reader has read after now, or its due time (at
        most `cap` from now) has passed; the readers that did not come."""
        with self._changed:
            since = self.clock()
            expected = {
                who: min(due, since + cap)
                for who, r in self.readers.items()
                if (due := r.due()) is not None and due > since
            }
            waiting = dict(expected)
            while True:
                now = self.clock()
                waiting = {
                    who: until
                    for who, until in waiting.items()
                    if not self._read_since(who, since) and until > now
                }
                if not waiting:
                    break
                self._changed.wait(min(waiting.values()) - now)
            return [
                f"{a} ({agent})" for a, agent in expected if not self._read_since((a, agent), since)
            ]

    def _forgettable(self, who: tuple[str, str]) -> tuple[bool, float]:
        reader = self.readers[who]
        return bool(reader.gaps), reader.last

    def _read_since(self, who: tuple[str, str], since: float) -> bool:
        """Whether `who` read at `since` or later (never, if it was dropped to bound memory)."""
        reader = self.readers.get(who)
        return reader is not None and reader.last >= since


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve(registry: CollectorRegistry, port: int, scrapes: Scrapes) -> WSGIServer:
    """Serve `registry` on all addresses at `port` in a daemon thread."""
    app = make_wsgi_app(registry)

    def counted(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        who = (environ.get("REMOTE_ADDR", ""), environ.get("HTTP_USER_AGENT", ""))
        return _Body(app(environ, start_response), lambda: scrapes.record(who))

    server = make_server("0.0.0.0", port, counted, _Server, _Quiet)  # noqa: S104
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Body:
    """A response body whose `close()` (called once it has been sent) reports it."""

    def __init__(self, body: Iterable[bytes], sent: Callable[[], None]) -> None:
        self.body, self.sent = body, sent

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()
        self.sent()
