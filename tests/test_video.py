"""Reading and writing clips on the real data in ../shared/data, and the writers' safety."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from runtime import RemoverError
from runtime.video import check_output_path, read_clip, read_masks, write_clip


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_reads_the_tennis_frames_and_masks(data_dir):
    clip = read_clip(data_dir / "tennis" / "frames")
    masks = read_masks(data_dir / "tennis" / "masks")
    assert clip.frames.shape == (70, 240, 432, 3) and clip.frames.dtype == np.uint8
    assert masks.shape == (70, 240, 432) and masks.dtype == bool
    assert 0.0 < masks.mean() < 0.5


def test_reads_the_running_car_video_and_still_mask(data_dir):
    clip = read_clip(data_dir / "running_car" / "running_car.mp4")
    assert clip.frames.shape == (292, 540, 972, 3)
    assert clip.fps == 25
    mask = read_masks(data_dir / "running_car" / "mask_square.png")
    assert mask.shape == (240, 432) and mask.any()


def test_png_folder_round_trip_is_exact(data_dir, tmp_path):
    frames = read_clip(data_dir / "tennis" / "frames").frames[:12]
    write_clip(tmp_path / "out", frames, Fraction(25))
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[:2] == ["00000.png", "00001.png"]
    np.testing.assert_array_equal(read_clip(tmp_path / "out").frames, frames)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
def test_video_round_trip_keeps_size_rate_and_content(data_dir, tmp_path, suffix):
    source = read_clip(data_dir / "running_car" / "running_car.mp4")
    frames = source.frames[:10, :270, :480]
    write_clip(tmp_path / f"out{suffix}", frames, source.fps)
    back = read_clip(tmp_path / f"out{suffix}")
    assert back.frames.shape == frames.shape
    assert back.fps == source.fps
    assert psnr(back.frames, frames) > 33
    assert [p.name for p in tmp_path.iterdir()] == [f"out{suffix}"]


def test_mask_video_is_thresholded_at_half_intensity(tmp_path):
    masks = np.zeros((5, 32, 48, 3), np.uint8)
    masks[:, 8:24, 8:24] = 255
    write_clip(tmp_path / "mask.mp4", masks, Fraction(25))
    read = read_masks(tmp_path / "mask.mp4")
    assert read.shape == (5, 32, 48)
    assert read[:, 10:22, 10:22].all() and not read[:, :, 30:].any()


def test_unreadable_inputs_are_clear_errors(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 50)
    with pytest.raises(RemoverError, match="cannot read video"):
        read_clip(tmp_path / "bad.mp4")
    with pytest.raises(RemoverError, match="video not found"):
        read_clip(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RemoverError, match="no images"):
        read_clip(tmp_path / "empty")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(RemoverError, match="cannot read image"):
        read_masks(tmp_path / "bad.png")


def test_frames_of_different_sizes_are_an_error(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (32, 16)).save(folder / "0.png")
    Image.new("RGB", (16, 16)).save(folder / "1.png")
    with pytest.raises(RemoverError, match="different sizes"):
        read_clip(folder)


def test_output_paths_are_checked_before_any_work(tmp_path):
    with pytest.raises(RemoverError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "out.mp4", (64, 64))
    with pytest.raises(RemoverError, match="unknown output type"):
        check_output_path(tmp_path / "out.gif", (64, 64))
    with pytest.raises(RemoverError, match="even width and height"):
        check_output_path(tmp_path / "out.mp4", (63, 64))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.png").write_bytes(b"")
    with pytest.raises(RemoverError, match="not empty"):
        check_output_path(tmp_path / "full", (64, 64))


def test_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = av.VideoFrame.from_ndarray

    def interrupt_on_third(array, format):  # noqa: A002 - PyAV's keyword
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(array, format=format)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_clip(tmp_path / "out.mp4", np.zeros((6, 32, 32, 3), np.uint8), Fraction(25))
    assert list(tmp_path.iterdir()) == []
