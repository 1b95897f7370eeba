"""Options of the benchmark gates (`pytest bench/ --benchmark-only`); the unit tests live in tests/."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench", "benchmark gates")
    group.addoption("--bench-device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    group.addoption("--bench-full", action="store_true", help="the full suite (default on GPU; hours on a CPU)")
    group.addoption("--bench-weights", help="a released-layout checkpoint (default: random released shapes)")
    group.addoption("--bench-threads", type=int, help="CPU threads per measurement process")
    group.addoption("--bench-rounds", type=int, help="fresh processes per side (default: 3 on a CPU, 1 on a GPU)")
    group.addoption("--bench-save", action="store_true", help="write the run to bench/results/<device>[-quick].json")


def bench_device(config: pytest.Config) -> str:
    return config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")


def bench_quick(config: pytest.Config) -> bool:
    """The quick suite on a CPU unless --bench-full; always the full suite on a GPU."""
    return bench_device(config) == "cpu" and not config.getoption("--bench-full")
