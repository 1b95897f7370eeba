"""The benchmark's stage recorder and memory probe, and one measured side on the tiny fixture checkpoint."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.measure import HostMemory, Span, StageRecorder
from bench.results import Side, load, to_dict
from bench.sides import DIT_STEP, measure_side, summarize
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


def timed_call(stages: dict[str, tuple[float, float]], dit_steps: list[tuple[float, float]]) -> list[Span]:
    """One call's spans as the recorder returns them: each stage and DiT call as (seconds, peak MB), with
    half as many CPU seconds; the DiT calls inside the denoise stage."""

    def span(name: str, depth: int, seconds: float, peak_mb: float) -> Span:
        return Span(name, depth, start=None, peak_mb=peak_mb, seconds=seconds, cpu_seconds=seconds / 2)

    spans = []
    for name, (seconds, peak_mb) in stages.items():
        spans.append(span(name, 0, seconds, peak_mb))
        if name == "denoise":
            spans += [span(DIT_STEP, 1, seconds, peak_mb) for seconds, peak_mb in dit_steps]
    return spans


def test_summary_takes_median_times_and_highest_peaks():
    """Three calls whose medians, means, extremes and first values differ: every time is the median over the
    calls (the total: the median call's total, not a sum of medians), every peak the highest."""
    repeats = [
        timed_call({"encode": (1.0, 300), "denoise": (4.0, 900), "decode": (1.0, 400)}, [(1.0, 850), (2.0, 880)]),
        timed_call({"encode": (2.0, 700), "denoise": (3.0, 600), "decode": (5.0, 450)}, [(1.2, 590), (1.5, 600)]),
        timed_call({"encode": (9.0, 500), "denoise": (8.0, 800), "decode": (2.0, 420)}, [(2.0, 700), (1.1, 790)]),
    ]
    summary = summarize(repeats, loaded_mb=100.0)
    stages = summary["stages"]
    assert {name: stage.seconds for name, stage in stages.items()} == {"encode": 2.0, "denoise": 4.0, "decode": 2.0}
    assert {name: stage.cpu_s for name, stage in stages.items()} == {"encode": 1.0, "denoise": 2.0, "decode": 1.0}
    assert {name: stage.peak_mb for name, stage in stages.items()} == {"encode": 700, "denoise": 900, "decode": 450}
    assert stages["encode"].above_loaded_mb == 600.0
    assert summary["repeat_totals_s"] == [6.0, 10.0, 19.0]
    assert summary["total_s"] == 10.0 and summary["total_cpu_s"] == 5.0 and summary["peak_mem_mb"] == 900.0
    assert summary["dit_steps_s"] == [1.2, 1.5] and summary["dit_steps_cpu_s"] == [0.6, 0.75]
    assert summary["dit_step_peak_mb"] == 880.0 and summary["sampler_s"] == pytest.approx(4.0 - 1.2 - 1.5)


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
        assert figures.backends == "attention math, kernels torch"
    paste_back = ["paste_back"] if side == "ours" else []
    assert list(figures.stages) == ["read", "preprocess", "encode", "denoise", "decode", *paste_back, "write"]
    assert len(figures.dit_steps_s) == workload.steps and len(figures.repeat_totals_s) == 2
    assert figures.total_s == statistics.median(figures.repeat_totals_s)
    assert 0 <= figures.sampler_s < figures.stages["denoise"].seconds
    assert 0 < sum(figures.dit_steps_cpu_s) <= figures.stages["denoise"].cpu_s <= figures.total_cpu_s
    assert figures.peak_mem_mb >= figures.loaded_mb > 0
    assert (figures.video_frames, figures.latent_frames) == (5, 2)
    assert load(Side, json.loads(json.dumps(to_dict(figures))), "child") == figures  # as the parent reads it


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
