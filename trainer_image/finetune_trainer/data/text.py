"""Text files: JSON lines, CSV and TSV, plain (cut into byte ranges) or compressed
(read whole, as one stream).

A record's offset is the byte where it starts (in the uncompressed text of a
compressed file): positions and hold-outs refer to it. JSON lines and TSV (GLUE
style, no quoting) are one record per line, so a byte range starts at the first
line after its first byte. CSV records may hold quoted line breaks, so CSV
ranges are cut only where a front-to-back parse found a record to start.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ..errors import PermanentError
from ..storage import ObjectInfo, Store, object_uri
from .reads import codec, decompressed, lines_from, ranges
from .rows import Columns
from .units import LEGACY_CSV, Example, Unit

# Bytes asked for beyond an estimated end, for the line running across it.
MARGIN = 4 * 1024
# The CSV boundary scan reads front to back in windows of this size.
SCAN_WINDOW = 8 << 20
# Compressed streams kept open between blocks (one per open unit is enough).
OPEN_STREAMS = 64

Record = tuple[int, Example | None]


def csv_records(lines: Iterator[tuple[int, bytes]], name: str) -> Iterator[tuple[int, list[str]]]:
    """(offset, fields) for each CSV record, as `csv.reader` splits them: a quoted
    field may run over several lines. The reader takes one line at a time and never
    reads ahead, so a record starts where the lines of the previous one ended."""
    first: int | None = None
    end = 0

    def texts() -> Iterator[str]:
        nonlocal first, end
        for offset, raw in lines:
            first = offset if first is None else first
            end = offset + len(raw)  # set before the reader sees the line
            yield raw.decode("utf-8-sig" if offset == 0 else "utf-8")

    reader = csv.reader(texts())
    start: int | None = None
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            at = first if start is None else start
            raise PermanentError(
                f"spec.dataset: {name}: the CSV record starting at byte {at} cannot be read "
                f"({e}); look for an unbalanced quote there"
            ) from None
        start = first if start is None else start
        assert start is not None
        yield start, fields
        start = end


class TextReader:
    def __init__(self, store: Store, sizes: dict[str, int], columns: Columns) -> None:
        self.store, self.sizes, self.columns = store, sizes, columns
        self._headers: dict[str, list[str]] = {}
        self._streams: OrderedDict[str, _Stream] = OrderedDict()

    def name(self, key: str) -> str:
        return object_uri(self.store, key)

    # --- planning ------------------------------------------------------------------

    def units(self, f: ObjectInfo, fmt: str, target: int) -> list[Unit]:
        if codec(f.key):
            return self.whole(f, fmt)
        n = -(-f.size // target)
        bounds = [f.size * k // n for k in range(n + 1)]
        if fmt == "csv" and n > 1:
            bounds = self._csv_cuts(f, bounds)
        return [Unit(f.key, fmt, a, b) for a, b in itertools.pairwise(bounds)]

    def whole(self, f: ObjectInfo, fmt: str) -> list[Unit]:
        return [Unit(f.key, fmt, 0, f.size)]

    def _csv_cuts(self, f: ObjectInfo, bounds: list[int]) -> list[int]:
        """The first record start at or after each inner bound (one front-to-back parse)."""
        targets = iter(bounds[1:-1])
        target = next(targets, None)
        cuts = [0]
        chunks = ranges(self.store, f.key, f.size, 0, SCAN_WINDOW, cap=SCAN_WINDOW)
        for start, _ in csv_records(lines_from(chunks, 0), self.name(f.key)):
            while target is not None and start >= target:
                if start > cuts[-1]:
                    cuts.append(start)
                target = next(targets, None)
            if target is None:
                break
        return [*cuts, f.size]

    # --- reading -------------------------------------------------------------------

    def header(self, unit: Unit) -> list[str]:
        if unit.key not in self._headers:
            lines = lines_from(self._chunks(unit.key, 0, MARGIN), 0)
            if unit.fmt in ("csv", LEGACY_CSV):
                first = next(csv_records(lines, self.name(unit.key)), (0, []))[1]
            else:
                raw = next(lines, (0, b""))[1]
                first = raw.decode("utf-8-sig").rstrip("\r\n").split("\t")
            self.columns.check(first, self.name(unit.key))
            self._headers[unit.key] = first
        return self._headers[unit.key]

    def _chunks(self, key: str, start: int, window: int) -> Iterator[bytes]:
        name = codec(key)
        if name:
            return decompressed(self.store, key, self.sizes[key], name)
        return ranges(self.store, key, self.sizes[key], start, window)

    def records(self, unit: Unit, block_start: int | None, window: int | None) -> Iterator[Record]:
        """(offset, example) for each record of a unit, from block_start on.

        `window` is how many bytes the first ranged read asks for (at most, and by
        default, the rest of the unit); a reader that wants only a block passes its size.
        """
        if codec(unit.key):
            return self._compressed(unit, block_start or 0)
        begin = unit.start if block_start is None else block_start
        # A JSON-lines or TSV range starts mid-line: that line belongs to the range before.
        skip_partial = unit.fmt != "csv" and block_start is None and unit.start > 0
        # (A legacy CSV unit starts mid-line like JSON lines: see units.LEGACY_CSV.)
        read_from = begin - 1 if skip_partial else begin
        rest = unit.end - read_from + MARGIN
        lines = lines_from(self._chunks(unit.key, read_from, min(window or rest, rest)), read_from)
        if skip_partial:
            next(lines, None)
        return self._parse(unit, lines, unit.end)

    def _compressed(self, unit: Unit, begin: int) -> Iterator[Record]:
        """A compressed file's records from `begin` on. Its stream stays open between
        blocks; resuming elsewhere decompresses the file again from its start."""
        stream = self._streams.pop(unit.key, None)
        if stream is None or stream.next is None or stream.next[0] > begin:
            lines = lines_from(self._chunks(unit.key, 0, 0), 0)
            stream = _Stream(self._parse(unit, lines, None))
        self._streams[unit.key] = stream
        while len(self._streams) > OPEN_STREAMS:
            self._streams.popitem(last=False)
        while (record := stream.next) is not None:
            if record[0] >= begin:
                yield record  # a reader that stops here gets this record again next time
            stream.advance()
        self._streams.pop(unit.key, None)

    def _parse(
        self, unit: Unit, lines: Iterator[tuple[int, bytes]], end: int | None
    ) -> Iterator[Record]:
        name = self.name(unit.key)
        suffix = "" if codec(unit.key) is None else " (uncompressed)"
        header = self.header(unit) if unit.fmt in ("csv", "tsv", LEGACY_CSV) else None
        records: Iterator[tuple[int, Any]] = (
            csv_records(lines, name) if unit.fmt == "csv" else iter(lines)
        )
        for start, record in records:
            if end is not None and start >= end:
                return
            if start == 0 and header is not None:
                continue
            where = f"{name} at byte {start}{suffix}"
            row = self._row(record, unit.fmt, header, where, start == 0)
            if row is not None:
                yield start, self.columns.example(row, where)

    @staticmethod
    def _row(
        record: Any, fmt: str, header: list[str] | None, where: str, first: bool
    ) -> dict[str, Any] | None:
        if fmt == "csv":
            return dict(zip(header or [], record, strict=False)) if record else None
        text = record.decode("utf-8-sig" if first else "utf-8").strip()
        if not text:
            return None
        if fmt == "tsv":
            return dict(zip(header or [], text.split("\t"), strict=False))
        if fmt == LEGACY_CSV:
            return dict(zip(header or [], next(csv.reader([text]), []), strict=False))
        try:
            row = json.loads(text)
        except ValueError:
            raise PermanentError(f"spec.dataset: {where} is not valid JSON") from None
        if not isinstance(row, dict):
            raise PermanentError(f"spec.dataset: {where} is not a JSON object")
        return row


class _Stream:
    """Records of an open compressed stream, with the next one held back until taken."""

    def __init__(self, records: Iterator[Record]) -> None:
        self.records = records
        self.next: Record | None = next(records, None)

    def advance(self) -> None:
        self.next = next(self.records, None)
