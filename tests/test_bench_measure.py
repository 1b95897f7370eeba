"""The benchmark's stage recorder and memory probe, and one measured side on the tiny fixture checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.measure import HostMemory, StageRecorder
from bench.sides import measure_side
from bench.workloads import WORKLOADS, write_pipeline_inputs

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    """Time advances only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def stamp(self) -> float:
        return self.now

    def elapsed(self, start: float, end: float) -> float:
        return end - start

    def cpu_elapsed(self, start: float, end: float) -> float:
        return (end - start) / 2  # as if the process had half the core


class FakeMemory:
    """A probe whose usage the test sets; the peak is the highest usage since the last reset."""

    def __init__(self) -> None:
        self.used = self.peak = 100.0

    def set(self, used: float) -> None:
        self.used = used
        self.peak = max(self.peak, used)

    def reset(self) -> None:
        self.peak = self.used

    def peak_mb(self) -> float:
        return self.peak

    def current_mb(self) -> float:
        return self.used


def test_stages_and_nested_spans_get_their_own_time_and_peak():
    clock, memory = FakeClock(), FakeMemory()
    recorder = StageRecorder(clock, memory)
    recorder.mark("encode")
    memory.set(300.0)
    clock.now = 2.0
    memory.set(150.0)
    recorder.mark("denoise")
    clock.now = 2.5
    recorder.begin("dit_step")
    memory.set(900.0)  # the step's peak belongs to the step and to the stage around it
    clock.now = 4.0
    memory.set(200.0)
    recorder.end("dit_step")
    clock.now = 5.0
    recorder.mark("decode")
    memory.set(400.0)
    clock.now = 7.0
    spans = {span.name: span for span in recorder.finish()}
    assert spans["encode"].seconds == 2.0 and spans["encode"].peak_mb == 300.0 and spans["encode"].cpu_seconds == 1.0
    assert spans["dit_step"].seconds == 1.5 and spans["dit_step"].peak_mb == 900.0 and spans["dit_step"].depth == 1
    assert spans["denoise"].seconds == 3.0 and spans["denoise"].peak_mb == 900.0
    assert spans["decode"].seconds == 2.0 and spans["decode"].peak_mb == 400.0  # not the earlier 900


def test_host_memory_peak_resets():
    memory = HostMemory()
    memory.reset()
    baseline = memory.peak_mb()
    block = np.ones(200 * 1024 * 1024 // 8)  # touch 200 MB
    grown = memory.peak_mb()
    del block
    memory.reset()
    assert grown - baseline > 190
    assert memory.peak_mb() < grown - 150


@pytest.mark.slow
@pytest.mark.parametrize("side", ["ours", "reference"])
def test_one_side_on_the_tiny_checkpoint(side, checkpoint, tmp_path):
    """The whole child path: load with options, read, stages in order, one span per DiT call, figures as the
    report reads them."""
    torch.set_num_threads(1)  # tiny ops: avoid thread hand-off stalls on a busy machine
    workload = WORKLOADS["pipeline-64x112x5"]
    inputs = write_pipeline_inputs(workload, tmp_path)
    figures = measure_side(
        side, workload, 5, weights=checkpoint, device=torch.device("cpu"), dtype=torch.float32,
        inputs=inputs, stage=None, warmup=0, repeats=2, options={"attention": "math"},
    )  # fmt: skip
    if side == "ours":  # our from_pretrained options reach the model, and the figures say what ran
        assert figures["backends"] == "attention math, kernels torch"
    paste_back = ["paste_back"] if side == "ours" else []
    assert list(figures["stages"]) == ["read", "preprocess", "encode", "denoise", "decode", *paste_back, "write"]
    assert len(figures["dit_steps_s"]) == workload.steps and len(figures["repeat_totals_s"]) == 2
    assert figures["total_s"] == pytest.approx(sorted(figures["repeat_totals_s"])[0], rel=1.0)
    assert 0 <= figures["sampler_s"] < figures["stages"]["denoise"]["seconds"]
    assert 0 < sum(figures["dit_steps_cpu_s"]) <= figures["stages"]["denoise"]["cpu_s"] <= figures["total_cpu_s"]
    assert figures["peak_mem_mb"] >= figures["loaded_mb"] > 0
    assert (figures["video_frames"], figures["latent_frames"]) == (5, 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--device", "cuda"], "CUDA is not available"),
     (["--device", "cpu", "--workloads", "pipeline-480x832x81"], "need a GPU"),
     (["--device", "cpu", "--workloads", "pipeline-64x112x5", "--frames", "2"], "VAE workloads only")],
)  # fmt: skip
def test_cli_refuses_bad_requests_in_one_line(arguments, message):
    if torch.cuda.is_available() and "cuda" in arguments:
        pytest.skip("this machine has CUDA, so --device cuda is valid here")
    process = subprocess.run([sys.executable, "-m", "bench.run", *arguments], cwd=REPO, capture_output=True, text=True)
    assert process.returncode == 2
    assert process.stderr.startswith("error: ") and message in process.stderr
    assert process.stderr.count("\n") == 1 and not process.stdout
