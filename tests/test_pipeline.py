"""The whole pipeline: reference parity, frame padding, paste-back, sizes and bad input."""

from __future__ import annotations

import re
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from conftest import PIXEL_TOLERANCE, diamond_dilation, fresh_seed
from PIL import Image

from runtime import Remover, RemoverError
from runtime.errors import RemoverWarning
from runtime.pipeline.preprocess import dilate, output_size, padded_frame_count
from runtime.pipeline.remover import EmptyMaskWarning


@pytest.fixture(scope="module")
def remover(checkpoint):
    return Remover.from_pretrained(checkpoint, device="cpu")


def test_defaults_on_cpu(remover):
    assert remover.device == torch.device("cpu")
    assert remover.dtype == torch.float32


def test_matches_reference_pipeline(remover, expected, fixture_inputs):
    frames, masks = fixture_inputs
    out = remover(frames, masks, height=64, width=96, latents=expected["noise"], paste_back=False, progress=False)
    assert out.dtype == np.float32 and out.shape == (9, 64, 96, 3)
    assert np.abs(out - expected["expected_frames"].numpy()).max() < PIXEL_TOLERANCE


def test_pil_images_are_accepted(remover, expected, fixture_inputs):
    from PIL import Image

    frames, masks = fixture_inputs
    out = remover(
        [Image.fromarray(f) for f in frames],
        [Image.fromarray(m) for m in masks],
        height=64,
        width=96,
        latents=expected["noise"],
        paste_back=False,
        progress=False,
    )
    assert np.abs(out - expected["expected_frames"].numpy()).max() < PIXEL_TOLERANCE


@pytest.mark.parametrize("count", [1, 2, 6, 7])
def test_every_input_frame_gets_an_output_frame(remover, fixture_inputs, count):
    """Counts that are not 4k+1 are padded with the last frame and trimmed back; the padded run is
    the same as running the explicitly padded clip."""
    frames, masks = fixture_inputs[0][:count], fixture_inputs[1][:count]
    out = remover(frames, masks, height=32, width=48, paste_back=False, progress=False)
    assert out.shape == (count, 32, 48, 3)
    padded = padded_frame_count(count)
    repeat = np.r_[np.arange(count), np.full(padded - count, count - 1)]
    explicit = remover(frames[repeat], masks[repeat], height=32, width=48, paste_back=False, progress=False)
    np.testing.assert_array_equal(out, explicit[:count])


@pytest.mark.parametrize("radius", [0, 1, 2, 5])
def test_dilate_is_the_cross_dilation_its_docstring_names(radius):
    """`dilate` against the diamond written in conftest (the oracle the paste-back tests use)."""
    rng = np.random.default_rng(fresh_seed())
    masks = rng.random((3, 17, 23)) < 0.02
    masks[0, 0, 0] = masks[1, -1, -1] = True  # the frame's corners: nothing spills in from outside
    np.testing.assert_array_equal(dilate(torch.from_numpy(masks), radius).numpy(), diamond_dilation(masks, radius))


def test_paste_back_keeps_everything_outside_the_mask_bit_exact(remover, fixture_inputs):
    frames, masks = fixture_inputs
    out = remover(frames, masks, height=64, width=96, progress=False)
    assert out.shape == frames.shape and out.dtype == np.float32
    outside = ~diamond_dilation(masks != 0, 6)  # the default 6 px, computed here
    np.testing.assert_array_equal(out[outside], frames[outside].astype(np.float32) / 255.0)
    inside = masks != 0
    assert np.abs(out[inside] - frames[inside] / 255.0).mean() > 0.01  # the object region was regenerated


def test_empty_mask_returns_the_input_without_running_the_model(remover, fixture_inputs, monkeypatch):
    frames, _ = fixture_inputs
    monkeypatch.setattr(remover.stages, "transformer", None)  # any model call would fail
    with pytest.warns(EmptyMaskWarning, match="empty"):
        out = remover(frames, np.zeros(frames.shape[1:3], np.uint8), progress=False)
    np.testing.assert_array_equal(out, frames.astype(np.float32) / 255.0)


@pytest.mark.parametrize(
    ("frame_size", "expected_hw"),
    [((1080, 1920), (480, 832)), ((1920, 1080), (832, 480)), ((480, 640), (480, 640)), ((540, 972), (480, 864))],
)
def test_default_size_is_480p_keeping_the_aspect_ratio(frame_size, expected_hw):
    assert output_size(*frame_size, None, None) == expected_hw


def test_one_given_side_derives_the_other():
    assert output_size(1080, 1920, 720, None) == (720, 1280)
    assert output_size(1080, 1920, None, 832) == (464, 832)


def test_single_mask_for_all_frames_and_a_proportional_mask_size(remover, fixture_inputs):
    frames, masks = fixture_inputs
    half = masks[0][::2, ::2]  # 216x120: same aspect ratio as the 432x240 frames
    out = remover(frames[:5], half, height=32, width=48, paste_back=False, progress=False)
    assert out.shape == (5, 32, 48, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f, m: (f, m[:8]), "8 masks for 9 frames"),
        (lambda f, m: (f, m[:, :100, :100]), "mask size 100x100 does not match the video's 432x240"),
        (lambda f, m: (f.astype(np.float32), m), "frames must be uint8"),
        (lambda f, m: (f[..., :2], m), "frames must be uint8"),
        (lambda f, m: (f[:0], m[:0]), "no frames"),
    ],
)
def test_bad_input_is_a_clear_error(remover, fixture_inputs, change, message):
    frames, masks = change(*fixture_inputs)
    with pytest.raises(RemoverError, match=message):
        remover(frames, masks, height=32, width=48, progress=False)


@pytest.mark.parametrize(("height", "width"), [(100, 48), (32, 50), (0, 48)])
def test_size_not_a_multiple_of_16_is_an_error(remover, fixture_inputs, height, width):
    with pytest.raises(RemoverError, match="multiples of 16"):
        remover(*fixture_inputs, height=height, width=width, progress=False)


def test_wrong_latents_shape_is_an_error(remover, fixture_inputs):
    with pytest.raises(RemoverError, match="latents must have shape"):
        remover(*fixture_inputs, height=64, width=96, latents=torch.zeros(1, 16, 3, 4, 4), progress=False)


def test_a_negative_stride_view_runs_as_its_copy(remover, fixture_inputs):
    frames, masks = fixture_inputs[0][:2], fixture_inputs[1][:2]
    flipped, flipped_masks = frames[:, ::-1], masks[:, :, ::-1]  # views with negative strides
    options = {"height": 32, "width": 48, "paste_back": True, "progress": False}
    out = remover(flipped, flipped_masks, **options)
    np.testing.assert_array_equal(out, remover(flipped.copy(), flipped_masks.copy(), **options))


def test_numpy_latents_and_the_largest_seed_work(remover, fixture_inputs):
    frames, masks = fixture_inputs[0][:1], fixture_inputs[1][:1]
    options = {"height": 32, "width": 48, "paste_back": False, "progress": False}
    noise = np.random.default_rng(0).standard_normal((1, 16, 1, 4, 6))  # float64, as NumPy makes it
    from_numpy = remover(frames, masks, latents=noise, **options)
    from_torch = remover(frames, masks, latents=torch.from_numpy(noise).float(), **options)
    np.testing.assert_array_equal(from_numpy, from_torch)
    assert np.isfinite(remover(frames, masks, seed=2**63 - 1, **options)).all()
    assert np.isfinite(remover(frames, masks, seed=np.uint64(7), **options)).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f, m: ([], m), "no frames"),
        (lambda f, m: ([f[0], f[1][:100]], m[:2]), r"frames differ in shape: \[240, 432, 3\] first, \[100, 432, 3\]"),
        (lambda f, m: (f, None), "masks must be an array or a list of images, got NoneType"),
        (lambda f, m: (f, []), "no masks"),
        (lambda f, m: (f, [m[0], m[1][:10]]), "masks differ in shape"),
        (lambda f, m: (f, np.where(m > 0, np.nan, 0.0)), "masks hold NaN or infinite values"),
        (lambda f, m: (f, m.astype(str)), "masks must be bool, integer or float"),
    ],
)
def test_bad_python_input_is_a_clear_error(remover, fixture_inputs, change, message):
    frames, masks = change(*fixture_inputs)
    with pytest.raises(RemoverError, match=message):
        remover(frames, masks, height=32, width=48, progress=False)


@pytest.mark.parametrize("seed", [None, -1, 2**63, 2**64, 1.5, "42", True])
def test_a_seed_the_cli_refuses_is_refused_the_same_way(remover, fixture_inputs, seed):
    with pytest.raises(RemoverError, match=r"--seed must be a whole number from 0 to 9223372036854775807"):
        remover(*fixture_inputs, height=32, width=48, seed=seed, progress=False)


@pytest.mark.parametrize("dilation", [float("nan"), -1, 241, 1_000_000, 2.5, None])
def test_a_dilation_the_cli_refuses_is_refused_the_same_way(remover, fixture_inputs, dilation):
    """The bound is the one --dilate has (MAX_DILATION = 240 px, written here: an independent oracle)."""
    with pytest.raises(RemoverError, match=r"mask_dilation must be a whole number of pixels from 0 to 240"):
        remover(*fixture_inputs, height=32, width=48, mask_dilation=dilation, progress=False)


@pytest.mark.parametrize("steps", [0, -2, None])
def test_steps_the_cli_refuses_are_refused_the_same_way(remover, fixture_inputs, steps):
    with pytest.raises(RemoverError, match=r"--steps must be a whole number from 1 to 1000"):
        remover(*fixture_inputs, height=32, width=48, num_inference_steps=steps, progress=False)


def test_a_call_too_big_for_this_host_fails_fast_before_any_work(remover, fixture_inputs, monkeypatch):
    """height=width=16000 (issue 31's OOM at 23.8 GB): the memory check runtime.run's plan makes, one line
    before anything of the working size is made (run_window never starts). The figure (hundreds of GB
    for 9 frames on the CPU) is beyond any host this runs on."""

    def no_work(*args, **kwargs):
        raise AssertionError("the call started its window")

    monkeypatch.setattr(remover, "run_window", no_work)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(RemoverError) as caught:
            remover(*fixture_inputs, height=16000, width=16000, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 3.0
    assert peak < 64 * 2**20  # the working-size video alone would be 9 x 16000 x 16000 x 3 fp32 (27 GB)
    message = str(caught.value)
    frame_h, frame_w = fixture_inputs[0].shape[1:3]
    assert re.fullmatch(
        rf"this plan needs about [\d.]+ GB of host memory \(windows of 9 frames of {frame_w}x{frame_h}, model work on "
        r"9 frames at 16000x16000\) and [\d.]+ GB are available: pass fewer frames, or a smaller height/width",
        message,
    ), message


def test_a_mask_covering_whole_frames_is_one_warning_as_in_a_plan(remover, fixture_inputs):
    """The note runtime.run prints and warns (test_cli), from the call: once, naming the frames."""
    frames, masks = fixture_inputs[0][:5], fixture_inputs[1][:5]
    full = np.ones(masks.shape, np.uint8)
    full[3] = masks[3]  # one frame of the fixture's own mask: 4 of the 5 are covered, from frame 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        remover(frames, full, height=32, width=48, progress=False)
    warned = [str(w.message) for w in caught if issubclass(w.category, RemoverWarning)]
    assert len(warned) == 1, warned
    assert warned[0].startswith("the mask covers 98% or more of 4 of 5 frame(s) (from frame 0)"), warned
    with warnings.catch_warnings():
        warnings.simplefilter("error", RemoverWarning)
        remover(frames, masks, height=32, width=48, progress=False)  # the fixture's own mask: no warning


def test_bad_latents_are_a_clear_error(remover, fixture_inputs):
    frames, masks = fixture_inputs[0][:1], fixture_inputs[1][:1]
    with pytest.raises(RemoverError, match="latents must be a tensor or a NumPy array, got list"):
        remover(frames, masks, height=32, width=48, latents=[0.0], progress=False)
    with pytest.raises(RemoverError, match="latents hold NaN"):
        remover(frames, masks, height=32, width=48, latents=np.full((1, 16, 1, 4, 6), np.nan), progress=False)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("meta", "device 'meta' cannot run the model"),
        ("gpu", "unknown device 'gpu'"),
        ("cuda:64", "no cuda:64|CUDA is not"),
    ],
)
def test_a_device_that_cannot_run_is_a_clear_error_before_loading(checkpoint, device, message):
    with pytest.raises(RemoverError, match=message):
        Remover.from_pretrained(checkpoint, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(checkpoint):
    with pytest.raises(RemoverError, match="CUDA is not available on this machine"):
        Remover.from_pretrained(checkpoint, device="cuda")


@pytest.mark.parametrize("resize", ["reference", "antialias"])
def test_the_call_and_remove_file_give_the_same_pixels(remover, fixture_dir, fixture_inputs, tmp_path, resize):
    """One window pipeline behind both front doors: the same clip, mask and options, the file written
    losslessly (PNG frames), give the same pixels exactly, downscaled to the working size and back."""
    import shutil

    from runtime.clips.job import remove_file
    from runtime.options import PlanOptions, RunOptions

    frames, masks = fixture_inputs
    for kind in ("frame", "mask"):
        (tmp_path / kind).mkdir()
        for path in sorted((fixture_dir / "inputs").glob(f"{kind}_*.png")):
            shutil.copy(path, tmp_path / kind / path.name)
    options = PlanOptions(window=0, crop="off", height=64, width=96, dilation=4, feather=2, resize=resize)
    run = RunOptions(seed=7, progress=False)
    remove_file(remover, tmp_path / "frame", tmp_path / "mask", tmp_path / "out", options, run=run)
    written = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "out").glob("*.png"))])
    called = remover(
        frames, masks, height=64, width=96, mask_dilation=4, feather=2, resize=resize, seed=7, progress=False
    )
    assert written.shape == frames.shape and called.shape == frames.shape
    np.testing.assert_array_equal(written, np.round(called * 255).astype(np.uint8))
    assert (written != frames).mean() > 0.01  # the object region was regenerated, not passed through
