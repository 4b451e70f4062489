"""Bytes of stored objects, read by bounded ranges: random access, lines, and
decompressed streams."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import PermanentError, RetryableError
from ..storage import Store, object_uri

# Compressed files are read in windows of this size, one ranged read each.
STREAM_WINDOW = 1 << 20
CODECS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}


def codec(key: str) -> str | None:
    """The compression of a file, by its last extension (as `datasets` infers it)."""
    name = key.lower()
    return next((c for ext, c in CODECS.items() if name.endswith(ext)), None)


class RangeFile(io.RawIOBase):
    """A seekable, read-only file over ranged reads of one stored object."""

    def __init__(self, store: Store, key: str, size: int) -> None:
        super().__init__()
        self.store, self.key, self.size, self.pos = store, key, size, 0
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def readinto(self, buffer: Any) -> int:
        end = min(self.size, self.pos + len(buffer))
        if end <= self.pos:
            return 0
        try:
            with self.store.read_range(self.key, self.pos, end) as body:
                data = body.read()
        except BaseException as e:
            self.error = e  # the store's failure, not the data's
            raise
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def ranges(
    store: Store, key: str, size: int, start: int, window: int, cap: int | None = None
) -> Iterator[bytes]:
    """The bytes of an object from `start` on, as bounded ranged reads.

    Each read asks for `window` bytes (doubling from one read to the next, up to
    `cap`) and is read to its end before it is yielded. A reader that stops
    early has therefore been sent at most one window it did not use, never the
    rest of the object, and no S3 response is abandoned half-read (which would
    also cost its pooled connection).
    """
    while start < size:
        end = min(size, start + max(1, window))
        with store.read_range(key, start, end) as body:
            data = body.read()
        if not data:
            return
        yield data
        start += len(data)
        window = window * 2 if cap is None else min(cap, window * 2)


def lines_from(chunks: Iterable[bytes], offset: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for each line of a sequence of chunks that starts at `offset`;
    each line keeps its newline."""
    rest = b""
    for data in chunks:
        data = rest + data
        lines = data.split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield offset, line + b"\n"
            offset += len(line) + 1
    if rest:
        yield offset, rest


def _decompressor(raw: Any, name: str) -> Any:
    if name == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if name == "bz2":
        return bz2.BZ2File(raw)
    if name == "xz":
        return lzma.LZMAFile(raw)
    import pyarrow as pa

    return pa.CompressedInputStream(raw, "zstd")


def decompressed(store: Store, key: str, size: int, name: str) -> Iterator[bytes]:
    """The uncompressed bytes of a compressed object, read front to back in bounded
    windows. Damaged data is a permanent error naming the file and where it broke;
    a failing store stays the store's error (retried as such)."""
    raw_file = RangeFile(store, key, size)
    raw = io.BufferedReader(raw_file, buffer_size=STREAM_WINDOW)
    stream = _decompressor(raw, name)
    while True:
        try:
            data = stream.read(STREAM_WINDOW)
        except (PermanentError, RetryableError):
            raise
        except Exception as e:
            if e is raw_file.error:
                raise
            where = object_uri(store, key)
            raise PermanentError(
                f"spec.dataset: {where} is not a valid {name} file: {e} (the damage lies at or "
                f"before compressed byte {raw_file.pos}); replace the file"
            ) from None
        if not data:
            return
        yield bytes(data)
