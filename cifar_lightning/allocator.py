"""Keep large CPU tensors in glibc's heap: a fresh mmap, zeroed by the kernel, per activation is slow.

glibc serves each allocation above its mmap threshold (128 KiB rising to at most 32 MiB) with a new mmap and
returns it at free, so every training step page-faults and zeroes its large activations again (FastNet's at
batch 1024, the report CNN's first convolution from batch 128). With mmap off and trimming only above 1 GiB of
free heap, freed activations are reused by the next step (benchmarks/cpu_allocator.py measures the gain).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept for reuse before it is given back


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt's parameters are glibc's), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_heap(enabled: bool) -> bool:
    """With `enabled`, turn glibc's mmap of large blocks off for this process; True when applied.

    Elsewhere (macOS, Windows, musl) nothing changes: their allocators have no such parameters."""
    if not enabled or (libc := glibc()) is None:
        return False
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        log.warning("glibc's mallopt refused the settings: large tensors stay mmapped (keep_heap has no effect)")
        return False
    return True
