"""The C allocator of a process that trains on the CPU: freed memory stays with it.

Every CPU step allocates tensors larger than glibc's largest mmap threshold (32 MB):
the word embeddings' dense gradient alone is 47 MB for MiniLM's vocabulary. glibc
maps each such block from the kernel and unmaps it when it is freed, so each step
zero-fills it again page by page, through a page fault per 4 KB: about 11,500 faults
and 10 ms of a 215 ms MiniLM step. Served from the heap, and with freed heap memory
kept rather than trimmed, the next step reuses the same pages (bare steps 1.09x,
docs/benchmarks.md). The process then holds its peak memory between steps, which is
what the next step needs anyway. GPU training allocates little on the host and is
left as it is.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("finetune")

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP = 2**31 - 1  # the largest value (an int): trim only beyond 2 GB free


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and never give freed memory back to the
    kernel; False where the C library is not glibc (the setting does not exist)."""
    libc = ctypes.CDLL(None)  # the process's own symbols, the C library's among them
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    # mallopt returns 1 on success.
    done = bool(libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEEP) == 1)
    if not done:
        log.warning("glibc refused mallopt; large CPU tensors stay mmapped")
    return done
