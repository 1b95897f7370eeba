"""Shared test fixtures: the reference fixture and the real clips in ../shared (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

# Triton fixes when a kernel is defined (its module imported) whether it compiles for a GPU or runs in
# its NumPy interpreter, so TRITON_INTERPRET must be set before anything imports kernels/: here, for
# the whole session, when there is no GPU (the kernel tests then run on the CPU). Nothing else reads it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = Path(os.environ.get("MINIMAX_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
FIXTURE = SHARED / "fixtures" / "reference-tiny"
DATA = SHARED / "data"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests need ../shared (or MINIMAX_SHARED)")
    return path


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return _require(FIXTURE)


@pytest.fixture(scope="session")
def checkpoint(fixture_dir: Path) -> Path:
    return fixture_dir / "checkpoint"


@pytest.fixture(scope="session")
def expected(fixture_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(fixture_dir / "expected.safetensors"))


@pytest.fixture(scope="session")
def fixture_inputs(fixture_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The fixture's frames uint8 [9, 240, 432, 3] and masks uint8 [9, 240, 432]."""
    inputs = fixture_dir / "inputs"
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted(inputs.glob("frame_*.png"))])
    masks = np.stack([np.asarray(Image.open(p)) for p in sorted(inputs.glob("mask_*.png"))])
    return frames, masks


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(DATA)


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """||actual - reference|| / ||reference|| in float64."""
    actual, reference = actual.double(), reference.double()
    return float((actual - reference).norm() / reference.norm())


def fresh_seed() -> int:
    """A seed drawn fresh for each run (tests report it so a failure can be replayed)."""
    return int.from_bytes(os.urandom(4), "little")
