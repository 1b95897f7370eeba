"""Host memory that stays flat over a long clip: glibc's allocator, by default, raises its mmap
threshold each time a large block is freed (up to 32 MB), after which frame-sized buffers come from
the heap and what is freed there stays resident. Measured on a 640x360 clip at a 64x112 working size
(tests/test_footage.py's method, VmHWM of the CLI): peaks of 880 MB at 81 frames and 1014 MB at 321
(1.15x, climbing window by window); with the threshold fixed at 128 KiB by the environment
(MALLOC_MMAP_THRESHOLD_=131072), 814 and 883 MB (1.085x), and by `bound_host_heap` called before the
CLI's main, 814 and 885 MB (1.087x). What is left is one step when the second window starts (its
known frames and the overlap's buffers), then flat."""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value: blocks this large are mapped and given back when freed


def bound_host_heap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes, so that freed frame buffers go back to the
    system; True when it was set (False off glibc, where nothing needs doing or nothing can be done)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
