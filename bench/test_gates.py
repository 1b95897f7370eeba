"""Benchmark gates: `pytest bench/ --benchmark-only`. Each workload of the suite is measured here, ours
and the reference in fresh processes in this session, and must pass every gate of bench/thresholds.py
that applies to it. pytest-benchmark records how long measuring took; the figures, ratios and gate
outcomes go to its extra_info (saved with --benchmark-json)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import thresholds
from bench.conftest import bench_device, bench_quick
from bench.run import parse_args, resolve, run_suite
from bench.workloads import default_weights_dir, ensure_random_checkpoint


@pytest.fixture(scope="session")
def bench_args(pytestconfig: pytest.Config):
    device = bench_device(pytestconfig)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda: this machine has no CUDA device")
    argv = ["--device", device] + (["--quick"] if bench_quick(pytestconfig) else [])
    for option in ("threads", "rounds"):
        if pytestconfig.getoption(f"--bench-{option}"):
            argv += [f"--{option}", str(pytestconfig.getoption(f"--bench-{option}"))]
    args = resolve(parse_args(argv))
    weights = pytestconfig.getoption("--bench-weights")
    args.weights = Path(weights) if weights else ensure_random_checkpoint(default_weights_dir())
    return args


def test_workload_passes_its_gates(benchmark, bench_args, workload_name):
    run = benchmark.pedantic(run_suite, args=(bench_args, (workload_name,)), rounds=1, iterations=1)
    outcomes = thresholds.evaluate(run)
    point = run["workloads"][workload_name]["points"][-1]
    benchmark.extra_info.update(
        {
            "ours_total_s": point["ours"]["total_s"],
            "reference_total_s": point["reference"]["total_s"],
            "ours_peak_mem_mb": point["ours"]["peak_mem_mb"],
            "reference_peak_mem_mb": point["reference"]["peak_mem_mb"],
            "ratios": point["ratios"],
            "gates": [outcome.line() for outcome in outcomes],
        }
    )
    assert outcomes, f"no gate applies to {workload_name}"
    failed = [outcome for outcome in outcomes if not outcome.passed]
    assert not failed, "\n".join(f"{outcome.line()}\n    why: {outcome.gate.reason}" for outcome in failed)
