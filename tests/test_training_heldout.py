"""training.heldout: held-out clips as files that runtime.evaluate scores against their truth."""

from __future__ import annotations

import json

import numpy as np
from conftest import diamond_dilation

from runtime.evaluate.__main__ import main as evaluate_main
from runtime.io import read_clip
from runtime.pipeline.composite import DEFAULT_DILATION
from training.data import ClipSpec, make_source
from training.heldout import main as heldout_main


def frames_of(path) -> np.ndarray:
    return read_clip(path).frames


def test_the_clips_truths_and_baselines_are_written_losslessly_and_evaluate_scores_them(tmp_path, capsys):
    out = tmp_path / "heldout"
    assert heldout_main(["--out", str(out), "--clips", "2", "--frames", "5", "--height", "32", "--width", "48"]) == 0
    clip = make_source("synthetic-soft-held-out", ClipSpec(5, 32, 48, 1000))(1)
    np.testing.assert_array_equal(frames_of(out / "clip_1" / "video"), clip.frames)
    np.testing.assert_array_equal(frames_of(out / "clip_1" / "truth"), clip.background)
    telea = frames_of(out / "clip_1" / "telea")
    region = diamond_dilation(clip.masks, DEFAULT_DILATION)  # all a baseline may change
    np.testing.assert_array_equal(telea[~region], clip.frames[~region])
    assert (telea[region] != clip.frames[region]).any()
    assert (out / "ours.batch.csv").read_text().splitlines()[1] == "clip_0/video,clip_0/mask,clip_0/ours.mkv"
    capsys.readouterr()
    code = evaluate_main(
        ["--manifest", str(out / "telea.csv"), "--no-lpips", "--json", str(tmp_path / "t.json"), "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "t.json").read_text())
    assert sorted(report["clips"]) == ["clip_0", "clip_1"]
    assert 5.0 < report["aggregate"]["truth"]["masked_psnr_db"] < 60.0
