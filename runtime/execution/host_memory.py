"""Host memory that stays flat over a long clip, at the speed of glibc's default allocator.

The command fixes glibc's mmap threshold at 128 KiB (`bound_host_heap`), so frame-sized buffers are
mapped and given back when freed, and raises it to 32 MB only while the model computes
(`model_temporaries_on_heap`), so the model's temporaries come from the heap and are reused call after
call. A process that did not call `bound_host_heap` (a library caller, the app) keeps its allocator as
it was. Why, and the three policies measured: bench/RESULTS.md, "Host allocator" (`python -m bench.heap`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value: blocks this large are mapped and given back when freed
MODEL_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: the model's temporaries up to this size reuse the heap
TRIM_THRESHOLD = 128 * 1024  # glibc's initial value: free memory this large at the heap's top goes back

_bound: dict[str, object] = {}  # once bound_host_heap succeeded: "mallopt" and the "threshold" it set


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return None


def bound_host_heap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes, so that freed frame buffers go back to the
    system; True when it was set (False off glibc, where nothing needs doing or nothing can be done)."""
    mallopt = _mallopt()
    if mallopt is None or not mallopt(M_MMAP_THRESHOLD, threshold):
        return False
    _bound.update(mallopt=mallopt, threshold=threshold)
    return True


@contextmanager
def model_temporaries_on_heap() -> Iterator[None]:
    """While the model computes in this block, blocks up to 32 MB come from the heap and stay there when
    freed (its temporaries, reused step after step, as glibc's own rule would have it); afterwards the
    bound threshold again: the heap's free top goes back at the next free, and a frame made later takes
    free space the model left inside the heap where a piece fits, a fresh mapping otherwise, so the heap
    grows only in this block (tests/test_host_memory.py). Does nothing unless
    `bound_host_heap` bounded this process. The block must allocate nothing long-lived of frame size: it
    would stay on the heap."""
    mallopt = _bound.get("mallopt")
    if mallopt is None:
        yield
        return
    mallopt(M_MMAP_THRESHOLD, MODEL_MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, 2 * MODEL_MMAP_THRESHOLD)  # glibc's dynamic rule: trim at twice the mmap threshold
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, _bound["threshold"])
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
