"""Benchmark gates: `pytest bench/ --benchmark-only`. The suite is measured here, ours and the reference
in fresh processes in this session, once; every gate of bench/thresholds.py that applies must pass.
pytest-benchmark records how long measuring took; the figures, ratios and gate outcomes go to its
extra_info (saved with --benchmark-json). `--bench-save` also writes the run document to bench/results/
(as `python -m bench.run` would), so one command both gates and refreshes the figures that
`python -m bench.report` renders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import thresholds
from bench.conftest import bench_device, bench_quick
from bench.results import to_dict
from bench.run import default_json_path, parse_args, resolve, run_suite
from bench.study import save_json
from bench.workloads import SUITES, default_weights_dir, ensure_random_checkpoint


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
    args.command = " ".join(["pytest", *pytestconfig.invocation_params.args])
    weights = pytestconfig.getoption("--bench-weights")
    args.weights = Path(weights) if weights else ensure_random_checkpoint(default_weights_dir())
    return args


def test_suite_passes_its_gates(benchmark, bench_args, pytestconfig):
    names = SUITES[(bench_args.device, bench_args.quick)]
    run = benchmark.pedantic(run_suite, args=(bench_args, names), rounds=1, iterations=1)
    if pytestconfig.getoption("--bench-save"):
        save_json(default_json_path(bench_args), run.to_dict())
    outcomes = thresholds.evaluate(run)
    benchmark.extra_info.update(
        {
            "ours_total_s": run.ours.total_s,
            "reference_total_s": run.reference.total_s,
            "ours_peak_mem_mb": run.ours.peak_mem_mb,
            "reference_peak_mem_mb": run.reference.peak_mem_mb,
            "ratios": to_dict(run.ratios),
            "gates": [outcome.line() for outcome in outcomes],
        }
    )
    print("\n" + "\n".join(outcome.line() for outcome in outcomes))
    assert outcomes, f"no gate applies to {names}"
    failed = [outcome for outcome in outcomes if not outcome.passed]
    assert not failed, "\n".join(f"{outcome.line()}\n    why: {outcome.gate.reason}" for outcome in failed)
