"""The command's host allocator policy (runtime/execution/host_memory.py), seen through page faults in a
fresh process, so that this test process's own allocator is left alone: with the heap bounded, each freed
4 MB tensor goes back to the system and the next one is faulted in afresh, except while the model
computes, where they reuse the heap; a process that never bounded its heap keeps glibc's behaviour."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

# argv: bound|free; prints the minor page faults of 50 tensors of 4 MB made and freed one after another,
# before, inside and after model_temporaries_on_heap
CHURN = """
import resource, sys
import torch
from runtime.execution.host_memory import bound_host_heap, model_temporaries_on_heap
def churn():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        torch.ones(2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
if sys.argv[1] == "bound":
    assert bound_host_heap()
outside = churn()
with model_temporaries_on_heap():
    inside = churn()
print(outside, inside, churn())
"""
BUFFER_PAGES = 4 * 2**20 // resource.getpagesize()


def faults(policy: str) -> tuple[int, int, int]:
    run = subprocess.run([sys.executable, "-c", CHURN, policy], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    outside, inside, after = map(int, run.stdout.split())
    return outside, inside, after


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_bounded_heap_gives_frames_back_but_lets_the_model_reuse_its_temporaries():
    outside, inside, after = faults("bound")
    assert outside >= 40 * BUFFER_PAGES, (outside, inside, after)  # (measured 51296 for 50 x 1024 pages)
    assert inside <= 5 * BUFFER_PAGES, (outside, inside, after)  # (1975)
    assert after >= 40 * BUFFER_PAGES, (outside, inside, after)  # (50225)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_process_that_did_not_bound_its_heap_keeps_glibcs_behaviour():
    assert max(faults("free")) <= 5 * BUFFER_PAGES  # (2023, 0, 0)
