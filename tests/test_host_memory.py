"""The command's host allocator policy (runtime/execution/host_memory.py), seen in a fresh process, so
that this test process's own allocator is left alone: with the heap bounded, each freed 4 MB tensor goes
back to the system and the next one is faulted in afresh, except while the model computes, where they
reuse the heap; after the block, frames no longer grow the heap and what they held goes back when freed;
a process that never bounded its heap keeps glibc's behaviour."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

# argv: bound|free; prints, as JSON, the minor page faults of 50 tensors of 4 MB made and freed one after
# another before and inside model_temporaries_on_heap (which then leaves an 8 MB hole in the heap), then,
# after it, how much 10 such tensors held at once grew the heap and how much of the process's resident
# set they left behind once freed
CHURN = """
import json, os, resource, sys
import torch
from runtime.execution.host_memory import bound_host_heap, model_temporaries_on_heap
def churn():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        torch.ones(2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
def heap_bytes():
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith("[heap]"):
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                return end - start
    return 0
def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
if sys.argv[1] == "bound":
    assert bound_host_heap()
outside = churn()
with model_temporaries_on_heap():
    inside = churn()
    hole, pin = torch.ones(2**21), torch.ones(1000)  # as the model does: free space left between live blocks
    del hole
heap, resident = heap_bytes(), resident_bytes()
held = [torch.ones(2**20) for _ in range(10)]
heap_growth = heap_bytes() - heap
del held
kept = resident_bytes() - resident
print(json.dumps(dict(outside=outside, inside=inside, heap_growth=heap_growth, kept=kept)))
"""
BUFFER_PAGES = 4 * 2**20 // resource.getpagesize()
MB = 2**20


def allocator_figures(policy: str) -> dict[str, int]:
    run = subprocess.run([sys.executable, "-c", CHURN, policy], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_bounded_heap_gives_frames_back_but_lets_the_model_reuse_its_temporaries():
    figures = allocator_figures("bound")
    # each tensor mapped and faulted in afresh (measured 51296 for 50 x 1024 pages)
    assert figures["outside"] >= 40 * BUFFER_PAGES, figures
    # the heap reused (951 to 4049 pages: the first tensor or two, depending on where the heap lies)
    assert figures["inside"] <= 10 * BUFFER_PAGES, figures
    # after the block, 40 MB of frames take the free space the model left in the heap where a piece fits
    # and fresh mappings otherwise, which go back when freed: measured 0 growth, and 0 or -8 MB kept
    # (depending on where the heap lies); with the model's thresholds left in place after the block, the
    # heap grew 32 MB and kept it
    assert figures["heap_growth"] <= 0, figures
    assert figures["kept"] <= 1 * MB, figures


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_process_that_did_not_bound_its_heap_keeps_glibcs_behaviour():
    figures = allocator_figures("free")
    # glibc's own rule: after the first 4 MB mapping is freed, its threshold rises and the heap is reused
    # (measured 2050 to 7170 and 0 pages, against the bounded heap's 51296 and 978)
    assert max(figures["outside"], figures["inside"]) <= 10 * BUFFER_PAGES, figures
