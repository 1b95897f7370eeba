"""bench.truth: clips with a known truth composited from ../shared/data (skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.truth import make_truth_clip
from runtime.evaluate import evaluate_clip
from runtime.io import read_clip


@pytest.fixture
def data(data_dir):
    if not (data_dir / "tennis").is_dir() or not (data_dir / "running_car").is_dir():
        pytest.skip("../shared/data lacks tennis or running_car")
    return data_dir


@pytest.mark.slow
def test_the_same_seed_makes_the_same_clip_and_the_truth_is_exact_outside_the_mask(data, tmp_path):
    first = make_truth_clip(tmp_path / "a", seed=3, frames=6, size=(96, 176), data=data)
    again = make_truth_clip(tmp_path / "b", seed=3, frames=6, size=(96, 176), data=data)
    other = make_truth_clip(tmp_path / "c", seed=4, frames=6, size=(96, 176), data=data)
    video, truth = read_clip(first.video).frames, read_clip(first.truth).frames
    masks = read_clip(first.mask).frames[..., 0] > 127
    assert video.shape == (6, 96, 176, 3) and masks.any(axis=(1, 2)).all()
    assert np.array_equal(video[~masks], truth[~masks])  # the composite is the truth outside the mask
    assert (video[masks] != truth[masks]).any()  # and holds the object inside it
    assert np.array_equal(read_clip(again.video).frames, video)
    assert not np.array_equal(read_clip(other.video).frames, video)
    figures = evaluate_clip(first.truth, first.video, first.mask, first.truth, progress=False)
    assert figures.background.psnr_db is None and figures.truth.masked_psnr_db is None


def test_bad_lengths_are_one_line(data, tmp_path, capsys):
    from bench.truth import main

    assert main(["--out", str(tmp_path / "x"), "--frames", "1000", "--data", str(data)]) == 2
    assert capsys.readouterr().err.startswith("error: --frames must be 2 to 70")
