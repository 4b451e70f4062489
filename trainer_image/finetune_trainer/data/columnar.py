"""Columnar files: parquet row groups and the record batches of Arrow IPC streams
(what `save_to_disk` writes). Both are read by ranges: a file's footer or message
headers first, then only the row groups or batches a rank reads."""

from __future__ import annotations

import bisect
import itertools
import struct
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

from ..errors import PermanentError
from ..storage import ObjectInfo, Store, object_uri
from .reads import RangeFile
from .rows import Columns
from .units import Example, Unit

# Uncompressed row groups or batches a rank keeps in memory.
COLUMNAR_MEMORY = 1 << 30
# Bytes read at each Arrow message to find its header (one request per message).
PEEK = 4096
SCHEMA, DICTIONARY_BATCH, RECORD_BATCH = 1, 2, 3


class RowGroups(Protocol):
    starts: list[int]  # the first row of each group, and the file's row count last

    def names(self) -> list[str]: ...
    def memory(self, group: int) -> int: ...
    def read(self, group: int, columns: list[str]) -> list[dict[str, Any]]: ...


class ParquetGroups:
    def __init__(self, store: Store, key: str, size: int) -> None:
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(RangeFile(store, key, size))
        meta = self.file.metadata
        sizes = (meta.row_group(g).num_rows for g in range(meta.num_row_groups))
        self.starts = [0, *itertools.accumulate(sizes)]

    def names(self) -> list[str]:
        return list(self.file.schema_arrow.names)

    def memory(self, group: int) -> int:
        return int(self.file.metadata.row_group(group).total_byte_size)

    def read(self, group: int, columns: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.file.read_row_group(group, columns=columns).to_pylist()
        return rows


def _field(buf: bytes, table: int, index: int) -> int | None:
    """Where field `index` of a flatbuffer table lies, or None when it is absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    slot = 4 + 2 * index
    if slot >= struct.unpack_from("<H", buf, vtable)[0]:
        return None
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + offset if offset else None


def _message_header(meta: bytes) -> tuple[int, int, int]:
    """(header type, body bytes, rows) of an Arrow IPC `Message` flatbuffer."""
    root = struct.unpack_from("<I", meta, 0)[0]
    at = _field(meta, root, 1)
    kind = meta[at] if at is not None else 0
    at = _field(meta, root, 3)
    body = struct.unpack_from("<q", meta, at)[0] if at is not None else 0
    rows = 0
    at = _field(meta, root, 2)
    if kind == RECORD_BATCH and at is not None:
        batch = at + struct.unpack_from("<I", meta, at)[0]
        length = _field(meta, batch, 0)
        rows = struct.unpack_from("<q", meta, length)[0] if length is not None else 0
    return kind, body, rows


def ipc_messages(store: Store, key: str, size: int) -> Iterator[tuple[int, int, int, int]]:
    """(offset, bytes, header type, rows) of each message of an Arrow IPC stream,
    reading only the message headers, not their bodies."""
    pos = 0
    while pos + 4 <= size:
        with store.read_range(key, pos, min(size, pos + PEEK)) as body:
            head = body.read()
        prefix, meta_len = 4, struct.unpack_from("<i", head, 0)[0]
        if meta_len == -1:  # the continuation marker of current streams
            prefix, meta_len = 8, struct.unpack_from("<i", head, 4)[0]
        if meta_len <= 0:
            return  # end of stream
        if prefix + meta_len > len(head):
            with store.read_range(key, pos, pos + prefix + meta_len) as body:
                head = body.read()
        kind, body_len, rows = _message_header(head[prefix : prefix + meta_len])
        total = prefix + meta_len + body_len
        if body_len < 0 or pos + total > size:
            raise ValueError(f"a message at byte {pos} runs past the end of the file")
        yield pos, total, kind, rows
        pos += total


class ArrowBatches:
    """The record batches of an Arrow IPC stream file, found by their headers."""

    def __init__(self, store: Store, key: str, size: int) -> None:
        import pyarrow as pa

        self.store, self.key = store, key
        try:
            messages = list(ipc_messages(store, key, size))
            if not messages or messages[0][2] != SCHEMA:
                raise ValueError("it does not start with a schema")
            if any(m[2] == DICTIONARY_BATCH for m in messages):
                raise ValueError("dictionary-encoded columns are not supported")
            self.schema = pa.ipc.read_schema(pa.py_buffer(self._bytes(*messages[0][:2])))
        except (ValueError, struct.error, pa.ArrowInvalid) as e:
            where = object_uri(store, key)
            raise PermanentError(
                f"spec.dataset: {where} is not an Arrow stream as save_to_disk writes it: {e}"
            ) from None
        self.batches = [(m[0], m[1]) for m in messages if m[2] == RECORD_BATCH]
        rows = (m[3] for m in messages if m[2] == RECORD_BATCH)
        self.starts = [0, *itertools.accumulate(rows)]

    def _bytes(self, offset: int, length: int) -> bytes:
        with self.store.read_range(self.key, offset, offset + length) as body:
            data: bytes = body.read()
        return data

    def names(self) -> list[str]:
        return list(self.schema.names)

    def memory(self, group: int) -> int:
        return self.batches[group][1]

    def read(self, group: int, columns: list[str]) -> list[dict[str, Any]]:
        import pyarrow as pa

        message = pa.ipc.read_message(pa.py_buffer(self._bytes(*self.batches[group])))
        batch = pa.ipc.read_record_batch(message, self.schema)
        rows: list[dict[str, Any]] = batch.select(columns).to_pylist()
        return rows


def open_groups(store: Store, key: str, size: int, fmt: str) -> RowGroups:
    return ParquetGroups(store, key, size) if fmt == "parquet" else ArrowBatches(store, key, size)


class ColumnarReader:
    def __init__(self, store: Store, sizes: dict[str, int], columns: Columns) -> None:
        self.store, self.sizes, self.columns = store, sizes, columns
        self._files: dict[str, RowGroups] = {}
        self._checked: set[str] = set()
        self._cache: OrderedDict[tuple[str, int], tuple[int, list[dict[str, Any]]]] = OrderedDict()

    def file(self, key: str, fmt: str) -> RowGroups:
        if key not in self._files:
            self._files[key] = open_groups(self.store, key, self.sizes[key], fmt)
        return self._files[key]

    def units(self, f: ObjectInfo, fmt: str, target: int) -> list[Unit]:
        """Row ranges of about `target` file bytes, none across a group's edge, so
        even a file of one group is many units."""
        groups = self.file(f.key, fmt)
        starts = groups.starts
        bytes_per_row = f.size / max(1, starts[-1])
        units: list[Unit] = []
        for g, (first, last) in enumerate(itertools.pairwise(starts)):
            rows = last - first
            if rows == 0:
                continue
            n = max(1, min(rows, round(rows * bytes_per_row / target)))
            bounds = [first + rows * k // n for k in range(n + 1)]
            memory = groups.memory(g)
            units += [Unit(f.key, fmt, a, b, memory) for a, b in itertools.pairwise(bounds)]
        return units

    def whole(self, f: ObjectInfo, fmt: str) -> list[Unit]:
        starts = self.file(f.key, fmt).starts
        return [Unit(f.key, fmt, a, b) for a, b in itertools.pairwise(starts) if b > a]

    def records(
        self, unit: Unit, block_start: int | None, window: int | None = None
    ) -> Iterator[tuple[int, Example | None]]:
        starts = self.file(unit.key, unit.fmt).starts
        group = bisect.bisect_right(starts, unit.start) - 1
        rows = self._group(unit, group)
        name = object_uri(self.store, unit.key)
        for i in range(unit.start if block_start is None else block_start, unit.end):
            yield i, self.columns.example(rows[i - starts[group]], f"{name} row {i}")

    def _group(self, unit: Unit, group: int) -> list[dict[str, Any]]:
        """The rows of a group (the needed columns only). Groups stay cached up to
        COLUMNAR_MEMORY bytes, so the open units' groups are read once."""
        ident = (unit.key, group)
        if ident in self._cache:
            self._cache.move_to_end(ident)
            return self._cache[ident][1]
        groups = self.file(unit.key, unit.fmt)
        if unit.key not in self._checked:
            self.columns.check(groups.names(), object_uri(self.store, unit.key))
            self._checked.add(unit.key)
        rows = groups.read(group, self.columns.wanted)
        self._cache[ident] = (groups.memory(group), rows)
        while len(self._cache) > 1 and sum(v[0] for v in self._cache.values()) > COLUMNAR_MEMORY:
            self._cache.popitem(last=False)
        return rows
