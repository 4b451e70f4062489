"""A checkpoint's files in memory that another process can map: the hand-off from the
training process to the upload process (uploader.py).

All files of one snapshot lie end to end in one anonymous memory file (`memfd_create`;
an unlinked temporary file where the system has none). Training writes each file into
it once; the upload process receives its descriptor over a Unix socket and maps it
read-only, so no byte is copied between the processes. The memory counts against the
container's memory like any other, and is freed when both processes have let go of it.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)


def memory_file(size: int) -> int:
    """A new descriptor of `size` bytes of zeroed memory that is no file on any disk."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("checkpoint", os.MFD_CLOEXEC)
    else:
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd


class Snapshot:
    """The files of one checkpoint, in one memory file: name -> (offset, size)."""

    def __init__(self, fd: int, spans: dict[str, tuple[int, int]], writable: bool) -> None:
        self.fd = fd
        self.spans = spans
        size = max((start + n for start, n in spans.values()), default=0)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self._map = mmap.mmap(fd, size, prot=prot) if size else None
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")

    @classmethod
    def allocate(cls, sizes: dict[str, int]) -> Snapshot:
        """Room for files of these sizes, in this order, to be filled through `view`."""
        spans, offset = {}, 0
        for name, size in sizes.items():
            spans[name] = (offset, size)
            offset += size
        return cls(memory_file(offset), spans, writable=True)

    @classmethod
    def holding(cls, files: dict[str, bytes | memoryview]) -> Snapshot:
        """A snapshot of files already in memory (a copy of each)."""
        snap = cls.allocate({name: len(data) for name, data in files.items()})
        for name, data in files.items():
            snap.view(name)[:] = data
        return snap

    def view(self, name: str) -> memoryview:
        start, size = self.spans[name]
        return self._view[start : start + size]

    def files(self) -> Iterator[tuple[str, memoryview]]:
        for name in self.spans:
            yield name, self.view(name)

    @property
    def size(self) -> int:
        return sum(n for _, n in self.spans.values())

    def close(self) -> None:
        """Let go of this process's hold on the memory (the other one may still map it)."""
        try:
            self._view.release()
            if self._map is not None:
                self._map.close()
        except BufferError:  # a view of a file is still referenced; unmapped with it
            log.debug("snapshot memory still referenced; it is freed with its last view")
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
