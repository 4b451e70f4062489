"""A checkpoint's files in memory that another process can map: the hand-off from the
training process to the upload process (uploader.py).

All files of one snapshot lie end to end in one anonymous memory file (`memfd_create`;
an unlinked temporary file where the system has none). Training writes each file into
it once; the upload process receives its descriptor over a Unix socket and maps it
read-only, so no byte is copied between the processes. The memory counts against the
container's memory like any other. A run's snapshots reuse one memory file (`Arena`):
its pages stay in place, so the snapshot's copies do not fault 273 MB of fresh pages in
at every checkpoint (a pause of 0.3-0.8 s instead of 0.07 s for MiniLM), and rank 0
holds one checkpoint's size of memory for the run, which every checkpoint needs anyway.
The trainer prepares that memory after its first step (`Arena.reserve`), in a thread
below training's priority, so the first checkpoint's pause does not fault it in either.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator

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


class Memory:
    """A memory file and this process's map of it."""

    def __init__(self, fd: int, size: int, writable: bool) -> None:
        self.fd = fd
        self.size = size
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self._map = mmap.mmap(fd, size, prot=prot) if size else None

    def view(self) -> memoryview:
        return memoryview(self._map) if self._map is not None else memoryview(b"")

    def populate(self) -> bool:
        """Fault every page in now (writable memory), so that copies into it later do
        not: one call into the kernel, made without the interpreter lock (ctypes lets go
        of it), so other threads go on running Python meanwhile. False where the kernel
        has no MADV_POPULATE_WRITE (before Linux 5.14): the first copies fault the pages."""
        if self._map is None or sys.platform != "linux":
            return False
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        start = ctypes.c_char.from_buffer(self._map)
        try:
            done = bool(libc.madvise(ctypes.addressof(start), self.size, MADV_POPULATE_WRITE) == 0)
        finally:
            del start  # let go of the map, so that it can be closed
        if not done:
            log.debug("MADV_POPULATE_WRITE refused: %s", os.strerror(ctypes.get_errno()))
        return done

    def close(self) -> None:
        """Unmap and close this process's descriptor (the other one may still map it)."""
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still referenced; unmapped with it
                log.debug("snapshot memory still referenced; it is freed with its last view")
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


MADV_POPULATE_WRITE = 23  # madvise(2), Linux 5.14 and later

# Room an arena leaves beyond its first snapshot: a run's JSON files grow by a few bytes
# as its step count and metrics do, and a new memory file would fault every page in again.
HEADROOM = 1 << 20


class Arena:
    """One memory file reused by a run's snapshots, replaced by a larger one when a
    snapshot outgrows it. A snapshot may take it once the upload process is done with
    the last one."""

    def __init__(self) -> None:
        self._memory: Memory | None = None
        self._preparing: threading.Thread | None = None

    @property
    def asked(self) -> bool:
        """Whether memory was reserved or taken already."""
        return self._memory is not None or self._preparing is not None

    def reserve(self, size: int, first: Callable[[], None] | None = None) -> None:
        """Prepare the memory for snapshots of `size` bytes in a thread of its own (which
        calls `first` before it starts, to set its priority), unless memory was reserved
        or taken already. The first `take` waits for it; if it fails, `take` allocates
        the memory itself, as without a reservation."""
        if self.asked:
            return
        self._preparing = threading.Thread(
            target=self._prepare, args=(size, first), name="snapshot-memory", daemon=True
        )
        self._preparing.start()

    def _prepare(self, size: int, first: Callable[[], None] | None) -> None:
        if first is not None:
            first()
        try:
            memory = _room(size)
        except OSError as e:
            log.warning("could not prepare %d bytes for checkpoints ahead: %s", size, e)
            return
        memory.populate()
        self._memory = memory

    def _ready(self) -> None:
        if self._preparing is not None:
            self._preparing.join()

    def take(self, size: int) -> Memory:
        self._ready()
        if self._memory is None or self._memory.size < size:
            self.close()
            self._memory = _room(size)
        return self._memory

    def close(self) -> None:
        self._ready()
        if self._memory is not None:
            self._memory.close()
            self._memory = None


def _room(size: int) -> Memory:
    """Writable memory for a snapshot of `size` bytes, with room for it to grow."""
    room = size + max(HEADROOM, size // 64)
    return Memory(memory_file(room), room, writable=True)


class Snapshot:
    """The files of one checkpoint, in one memory file: name -> (offset, size)."""

    def __init__(self, memory: Memory, spans: dict[str, tuple[int, int]], owned: bool) -> None:
        self.memory = memory
        self.spans = spans
        self.owned = owned  # closed with the snapshot, not an arena's
        self._view = memory.view()

    @classmethod
    def allocate(cls, sizes: dict[str, int], arena: Arena | None = None) -> Snapshot:
        """Room for files of these sizes, in this order, to be filled through `view`:
        in the arena's memory, or in a memory file of its own."""
        spans, offset = {}, 0
        for name, size in sizes.items():
            spans[name] = (offset, size)
            offset += size
        if arena is not None:
            return cls(arena.take(offset), spans, owned=False)
        return cls(Memory(memory_file(offset), offset, writable=True), spans, owned=True)

    @classmethod
    def attach(cls, fd: int, spans: dict[str, tuple[int, int]]) -> Snapshot:
        """The snapshot another process sent: its descriptor and spans, mapped read-only."""
        end = max((start + size for start, size in spans.values()), default=0)
        return cls(Memory(fd, end, writable=False), spans, owned=True)

    @classmethod
    def holding(cls, files: dict[str, bytes | memoryview]) -> Snapshot:
        """A snapshot of files already in memory (a copy of each)."""
        snap = cls.allocate({name: len(data) for name, data in files.items()})
        for name, data in files.items():
            snap.view(name)[:] = data
        return snap

    @property
    def fd(self) -> int:
        return self.memory.fd

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
        """Let go of this process's hold on the memory (an arena keeps it for the next)."""
        try:
            self._view.release()
        except BufferError:  # a file's view is still referenced; released with it
            log.debug("snapshot view still referenced")
        if self.owned:
            self.memory.close()
