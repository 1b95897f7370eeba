"""`make gpu-check` (bench/gpu_check.py): its one line without a GPU, and its checks on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: make gpu-check runs for real")
def test_without_a_gpu_it_says_so_and_exits_0():
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "gpu-check: no CUDA GPU on this machine; nothing to check\n"


def test_fixture_parity_passes_and_fails_by_its_bound(monkeypatch):
    cpu = torch.device("cpu")
    steps = gpu_check.fixture_parity(cpu, ("fp32",), ("sdpa", "math", "flash-attn"), ("off", "cuda-graphs"))
    by_name = {step.name: step for step in steps}
    assert all(step.passed for step in steps), steps
    assert "max abs" in by_name["parity fp32, attention math, compile off"].detail
    assert by_name["parity fp32, attention flash-attn, compile off"].detail.startswith("not available here")
    assert by_name["parity fp32, attention sdpa, compile cuda-graphs"].detail.startswith("not available here")
    monkeypatch.setitem(gpu_check.PARITY_BOUND, "fp32", 1e-9)
    (step,) = gpu_check.fixture_parity(cpu, ("fp32",), ("math",), ("off",))
    assert not step.passed


def test_results_replace_their_own_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\nother sections\n")
    first = [gpu_check.Step("a", True, "fine", 1.0)]
    gpu_check.write_results(first, torch.device("cpu"), path)
    gpu_check.write_results([gpu_check.Step("b", False, "broken", 2.0)], torch.device("cpu"), path)
    text = path.read_text()
    assert text.startswith("# Benchmark results\n\nother sections\n") and text.count(gpu_check.BEGIN) == 1
    assert "| b | **FAIL** | broken | 2.0 |" in text and "| a |" not in text
