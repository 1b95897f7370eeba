"""The streamed run (runtime/clips/stream.py) with deterministic stand-in stages: where generated pixels land,
what each window is given, what is written when, and how much is held; and with the fixture's model:
one window is the one-pass pipeline."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from conftest import diamond_dilation
from torch import Tensor

from runtime import Remover
from runtime.clips.plan import make_plan
from runtime.clips.stream import LocalWindows, run_plan
from runtime.models.scheduler import RELEASED_SCHEDULER
from runtime.models.transformer import TransformerConfig
from runtime.models.vae import VAEConfig
from runtime.options import PlanOptions, RunOptions
from runtime.pipeline.coverage import mask_box
from runtime.pipeline.stages import Stages


class CoordinateStages(Stages):
    """Stand-in stages: the encoder records what it is given and returns zeros, the model predicts zero
    velocity (so the sampler returns the seeded noise), and the decoder paints every frame with its own
    coordinates, red = (x + 0.5) / width and green = (y + 0.5) / height, so each generated pixel says
    where in the window it was made; blue is a level drawn from the noise, different in every window."""

    transformer_config = TransformerConfig(
        patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=8, in_channels=48, out_channels=16,
        ffn_dim=8, num_layers=1, freq_dim=8, eps=1e-6, qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    )  # fmt: skip
    vae_config = VAEConfig(
        base_dim=8, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=1, temperal_downsample=(False, True, True),
        latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16,
    )  # fmt: skip

    def __init__(self) -> None:
        self.encoded: list[Tensor] = []  # every video the encoder saw, [3, F, H, W] in [-1, 1]

    def iter_encode(self, videos: Tensor) -> Iterator[Tensor]:
        self.encoded.append(videos[0].clone())
        _, _, frames, height, width = videos.shape
        for _ in range(1 + (frames - 1) // 4):
            yield torch.zeros(videos.shape[0], 16, 1, height // 8, width // 8)

    def velocity(self, model_input: Tensor, timestep: Tensor, condition: Tensor | int | None = None) -> Tensor:
        return torch.zeros_like(model_input[:, :16])

    def iter_decode(self, latents: Tensor) -> Iterator[Tensor]:
        height, width = latents.shape[-2] * 8, latents.shape[-1] * 8
        x = ((torch.arange(width) + 0.5) / width).expand(height, width)
        y = ((torch.arange(height) + 0.5) / height)[:, None].expand(height, width)
        level = torch.tanh(latents.flatten()[0]).expand(height, width)
        picture = torch.stack([x * 2 - 1, y * 2 - 1, level])  # [3, H, W] in [-1, 1]
        for index in range(latents.shape[2]):
            yield picture[None, :, None].expand(1, 3, 1 if index == 0 else 4, height, width)

    @property
    def backends(self) -> str:
        return "stand-in"


def stand_in_remover() -> Remover:
    return Remover(CoordinateStages(), RELEASED_SCHEDULER, device=torch.device("cpu"), dtype=torch.float32)


def clip(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def run(remover, plan, frames, masks, **options):
    written = []
    windows = LocalWindows(remover, RunOptions(progress=False, **options))
    run_plan(plan, ((f, 1000 + i) for i, f in enumerate(frames)), iter(masks),
             lambda image, pts: written.append((image, pts)), windows, progress=False)  # fmt: skip
    return np.stack([image for image, _ in written]), [pts for _, pts in written]


def test_generated_pixels_land_exactly_where_the_crop_box_says():
    frames = clip(9, 270, 480)
    masks = np.zeros((9, 270, 480), bool)
    masks[:, 100:140, 300:350] = True
    plan = make_plan(9, (270, 480), [mask_box(m) for m in masks], PlanOptions(min_crop=64, context=0.5))
    (window,) = plan.windows
    box = window.box
    assert plan.cropped and window.size == (box.height, box.width)  # native resolution: one pixel per pixel
    out, pts = run(stand_in_remover(), plan, frames, masks)
    assert pts == list(range(1000, 1009))
    # where the blend weight is 1 (the mask itself, far inside its dilation) the pixel is the generated one
    ys, xs = np.nonzero(masks[0])
    expected_red = 255 * (xs - box.left + 0.5) / box.width
    expected_green = 255 * (ys - box.top + 0.5) / box.height
    assert np.abs(out[:, ys, xs, 0] - expected_red).max() <= 0.51
    assert np.abs(out[:, ys, xs, 1] - expected_green).max() <= 0.51
    # everything outside the dilated mask is the input, bit for bit
    outside = ~diamond_dilation(masks, window.dilation + 1)  # computed here, not by the dilate under test
    np.testing.assert_array_equal(out[outside], frames[outside])


def test_a_scaled_box_maps_back_over_the_whole_box():
    frames = clip(5, 360, 640)
    masks = np.zeros((5, 360, 640), bool)
    masks[:, 20:340, 20:620] = True  # a big object: the crop is scaled down
    plan = make_plan(5, (360, 640), [mask_box(m) for m in masks], PlanOptions(crop="on", height=96, width=160))
    (window,) = plan.windows
    assert window.size[0] < window.box.height
    out, _ = run(stand_in_remover(), plan, frames, masks)
    box = window.box
    row = out[0, 180, box.left + 40 : box.right - 40, 0].astype(int)  # red grows left to right across the box
    assert (np.diff(row) >= 0).all() and row[0] < 40 and row[-1] > 215


def test_continue_windows_start_from_the_finished_frames_with_their_mask_cleared():
    frames = clip(29, 64, 96)
    masks = np.zeros((29, 64, 96), bool)
    masks[:, 20:40, 30:60] = True
    stages = CoordinateStages()
    remover = Remover(stages, RELEASED_SCHEDULER, device=torch.device("cpu"), dtype=torch.float32)
    options = PlanOptions(window=13, overlap=5, crop="off", height=64, width=96)
    plan = make_plan(29, (64, 96), [mask_box(m) for m in masks], options)
    out, pts = run(remover, plan, frames, masks)
    assert len(out) == 29 and pts == list(range(1000, 1029))
    assert [(w.start, w.stop, w.known) for w in plan.windows] == [(0, 13, 0), (8, 21, 5), (16, 29, 5)]
    # the encoder saw (masked video, mask video) per window; window 2's first 5 frames are window 1's output
    masked_video, mask_video = stages.encoded[2], stages.encoded[3]
    given = ((masked_video[:, :5].permute(1, 2, 3, 0) + 1) * 127.5).round()
    np.testing.assert_array_equal(given.numpy(), out[8:13].astype(np.float32))
    assert (mask_video[:, :5] == -1).all() and (mask_video[:, 5:] == 1).any()


def test_crossfade_blends_the_overlap_linearly():
    frames = clip(21, 64, 96)
    masks = np.zeros((21, 64, 96), bool)
    masks[:, 16:48, 16:80] = True
    options = PlanOptions(window=13, overlap=5, blend="crossfade", crop="off", height=64, width=96)
    plan = make_plan(21, (64, 96), [mask_box(m) for m in masks], options)
    assert [(w.start, w.stop) for w in plan.windows] == [(0, 13), (8, 21)]
    out, _ = run(stand_in_remover(), plan, frames, masks)
    inside = masks[0]
    first, second = out[5][inside].astype(float), out[15][inside].astype(float)  # made by one window only
    assert np.abs(first[:, 2] - second[:, 2]).min() > 10  # the windows' blue levels differ
    for offset in range(5):  # frames 8-12: from the first window's picture to the second's
        weight = (offset + 1) / 6
        expected = first + weight * (second - first)
        assert np.abs(out[8 + offset][inside] - expected).max() <= 1.0


def test_frames_are_written_as_soon_as_final_and_nothing_more_is_held():
    frames = clip(60, 32, 48)
    masks = np.zeros((60, 32, 48), bool)
    masks[:, 8:24, 8:40] = True
    plan = make_plan(
        60, (32, 48), [mask_box(m) for m in masks], PlanOptions(window=13, overlap=5, crop="off", height=32, width=48)
    )
    read = []

    def source():
        for index, frame in enumerate(frames):
            read.append(index)
            yield frame, index

    lead = []
    windows = LocalWindows(stand_in_remover(), RunOptions(progress=False))
    run_plan(plan, source(), iter(masks), lambda image, pts: lead.append(len(read) - pts), windows,
             progress=False)  # fmt: skip
    assert len(lead) == 60 and max(lead) <= 13  # never more than one window read ahead of what was written


@pytest.fixture(scope="module")
def fixture_remover(checkpoint):
    return Remover.from_pretrained(checkpoint, device="cpu")


def test_one_window_is_exactly_the_one_pass_pipeline(fixture_remover, fixture_inputs):
    """Frames already at the working size, no paste-back: the streamed run is the pipeline call itself."""
    frames, masks = fixture_inputs
    small = frames[:, ::15, ::9][:, :16, :48]  # 16x48, a multiple of 16
    small_masks = masks[:, ::15, ::9][:, :16, :48] > 0
    reference = fixture_remover(small, small_masks, height=16, width=48, mask_dilation=1, paste_back=False,
                                progress=False)  # fmt: skip
    options = PlanOptions(window=0, crop="off", height=16, width=48, dilation=1)
    plan = make_plan(9, (16, 48), [mask_box(m) for m in small_masks], options)
    out, _ = run(fixture_remover, plan, small, small_masks, paste_back=False)
    np.testing.assert_array_equal(out, np.round(reference * 255).astype(np.uint8))


def test_non_finite_generation_is_an_error_and_nothing_more_is_written(fixture_remover, fixture_inputs, monkeypatch):
    from runtime import RemoverError

    frames, masks = fixture_inputs
    plan = make_plan(9, frames.shape[1:3], [mask_box(m > 0) for m in masks], PlanOptions(height=32, width=48))
    monkeypatch.setattr(type(fixture_remover), "decode", lambda self, *a, **k: np.full((9, 32, 48, 3), np.nan))
    with pytest.raises(RemoverError, match="the decoded frames hold NaN or infinite values"):
        run(fixture_remover, plan, frames, masks > 0)
