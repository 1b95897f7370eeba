"""training.measure_step on the CPU: the harness runs stage 1's step on a random model and reports
consistent figures (no speed is claimed from this machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "out": "unused", "vae": "unused", "steps": 1, "num_layers": 2, "num_attention_heads": 2,
    "attention_head_dim": 32, "ffn_dim": 256, "num_condition_tokens": 2, "num_frames": 9,
    "height": 64, "width": 96, "batch_size": 4, "micro_batch_size": 1, "threads": 1,
}  # fmt: skip


def bench(tmp_path: Path, processes: int, *options: str) -> subprocess.CompletedProcess:
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "training.measure_step"]
    command += ["--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "result.json"), *options]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_one_process_reports_throughput_memory_and_the_plan(tmp_path):
    result = bench(tmp_path, 1, "--steps", "6", "--skip", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((tmp_path / "result.json").read_text())
    assert figures["gpus"] == 1 and figures["device"] == "cpu" and figures["steps_timed"] == 4
    assert figures["tokens_per_clip"] == 3 * 4 * 6  # 9 frames -> 3 latent frames, 64x96 -> 8x12 -> 4x6 patches
    step = figures["step_seconds_median"]
    low, high = figures["step_seconds_range"]
    assert 0 < low <= step <= high
    assert figures["tokens_per_second"] == pytest.approx(4 * 72 / step, rel=1e-3)
    assert figures["peak_gib_per_gpu"][0] > 0 and figures["plan_tensors_gib"] > 0
    assert "| cpu x 1 | ddp, fp32, 0 checkpointed, batch 4 (1 per pass) |" in result.stdout


@pytest.mark.slow
def test_a_config_that_does_not_fit_is_refused_before_running(tmp_path):
    result = bench(tmp_path, 1, "--steps", "6", "--skip", "2", "--set", "gpu_memory_gb=0.001")
    assert result.returncode == 2 and "error: the memory plan needs" in result.stderr
    assert not (tmp_path / "result.json").exists()
    too_few = bench(tmp_path, 1, "--steps", "3", "--skip", "2")
    assert (
        too_few.returncode == 2
        and too_few.stderr.strip() == "error: --steps must be at least --skip + 2 (4) to time a step"
    )


@pytest.mark.slow
def test_two_processes_with_fsdp_report_each_peak(tmp_path):
    result = bench(tmp_path, 2, "--steps", "4", "--skip", "1", "--set", "parallelism=fsdp", "--set", "precision=bf16")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((tmp_path / "result.json").read_text())
    assert figures["gpus"] == 2 and len(figures["peak_gib_per_gpu"]) == 2
    assert figures["config"] == {"precision": "bf16", "activation_checkpointing": 0, "parallelism": "fsdp"}
