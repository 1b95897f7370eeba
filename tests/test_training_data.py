"""Training data: synthetic clips, (video, mask) readers, mask augmentation, the latent cache, metrics, baselines."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import relative_error
from PIL import Image

from runtime.io import write_clip
from runtime.models.vae import RELEASED_VAE, WanVAE
from runtime.pipeline import Remover
from runtime.scheduler import RELEASED_SCHEDULER
from runtime.stages import TorchStages
from training.baselines import telea, temporal_median
from training.data import ClipSpec, FolderSource, SyntheticSource, discover_pairs, make_source, random_shape_masks
from training.flow import new_transformer
from training.latents import build_latent_set, latent_region
from training.metrics import masked_ssim, psnr, ssim_map, temporal_psnr
from training.synthetic import render_clip

SPEC = ClipSpec(num_frames=5, height=32, width=48, seed=3)


def test_synthetic_clips_follow_from_seed_and_index():
    a, b = SyntheticSource(SPEC), SyntheticSource(SPEC)
    first, again, other = a(0), b(0), a(1)
    assert np.array_equal(first.frames, again.frames) and np.array_equal(first.masks, again.masks)
    assert not np.array_equal(first.frames, other.frames)
    held_out = make_source("synthetic-held-out", SPEC)(0)
    assert not np.array_equal(first.background, held_out.background)


def test_objects_cover_exactly_their_masks():
    clip = SyntheticSource(SPEC)(2)
    assert clip.masks.any()
    assert np.array_equal(clip.frames[~clip.masks], clip.background[~clip.masks])
    dilated = SyntheticSource(replace(SPEC, max_dilation=4))
    grown = [dilated(i).masks for i in range(4)]
    assert all(np.all(g >= SyntheticSource(SPEC)(i).masks) for i, g in enumerate(grown))


def test_frame_stride_takes_every_nth_frame_of_the_same_motion():
    long = render_clip(5, 9, 32, 48, frame_stride=1)
    strided = render_clip(5, 5, 32, 48, frame_stride=2)
    assert np.array_equal(strided.with_objects, long.with_objects[::2])
    assert np.array_equal(strided.masks, long.masks[::2])


def test_random_shape_masks_move():
    masks = random_shape_masks(np.random.default_rng(0), 6, 40, 60)
    assert masks.any(axis=(1, 2)).all() and not np.array_equal(masks[0], masks[-1])


def test_folder_source_reads_frame_folders_and_video_files(data_dir, tmp_path):
    root = tmp_path / "root"
    (root / "tennis" / "frames").mkdir(parents=True), (root / "tennis" / "masks").mkdir()
    for kind in ("frames", "masks"):
        for path in sorted((data_dir / "tennis" / kind).iterdir())[:12]:
            (root / "tennis" / kind / path.name).symlink_to(path)
    clip = render_clip(1, 12, 64, 96)
    (root / "made").mkdir()
    write_clip(root / "made" / "clip.mp4", clip.with_objects, Fraction(16))
    Image.fromarray(clip.masks[0].astype(np.uint8) * 255).save(root / "made" / "mask.png")

    pairs = discover_pairs(root)
    assert [p[0].name for p in pairs] == ["clip.mp4", "frames"]
    spec = ClipSpec(num_frames=5, height=32, width=48, seed=0, frame_strides=(1, 2), max_dilation=2)
    source = FolderSource(root, spec)
    for index in range(4):
        sample = source(index)
        assert sample.frames.shape == (5, 32, 48, 3) and sample.frames.dtype == np.uint8
        assert sample.masks.shape == (5, 32, 48) and sample.background is None
    assert np.array_equal(source(3).frames, FolderSource(root, spec)(3).frames)


def test_latent_region_groups_frames_as_the_vae_does():
    masks = np.zeros((9, 32, 48), dtype=bool)
    masks[3, 10, 17] = True  # frame 3 -> latent frame 1 (frames 1-4); pixel -> latent (1, 2)
    region = latent_region(masks)
    assert region.shape == (3, 4, 6) and region.sum() == 1 and region[1, 1, 2]


def test_latent_cache_matches_the_pipeline_encoding():
    torch.manual_seed(0)
    vae = WanVAE(replace(RELEASED_VAE, base_dim=8, num_res_blocks=1)).eval()
    source = SyntheticSource(SPEC)
    latents = build_latent_set(vae, source, 3, positives=1, random_masks=2, seed=0, device=torch.device("cpu"))
    assert latents.video.shape == (3, 16, 2, 4, 6) and latents.masked.shape == (3, 2, 16, 2, 4, 6)
    assert latents.masks.shape[0] == 5 and latents.background is not None
    assert all(latents.mask_index[n, 0] == n and latents.mask_index[n, 1] != n for n in range(3))

    stages = TorchStages(new_transformer(1, 1, 16, 16, 0), vae)
    remover = Remover(stages, RELEASED_SCHEDULER, device=torch.device("cpu"), dtype=torch.float32)
    clip = source(1)
    video = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        expected = remover.encode(video, torch.from_numpy(clip.masks).float())[0]
    assert relative_error(latents.context(1, 0).float(), expected) < 2e-3


def test_psnr_and_temporal_psnr_on_known_errors():
    truth = np.zeros((3, 8, 8, 3), dtype=np.float32) + np.arange(3, dtype=np.float32)[:, None, None, None] * 0.1
    region = np.zeros((3, 8, 8), dtype=bool)
    region[:, 2:5, 2:5] = True
    shifted = truth + 0.1 * region[..., None]
    assert psnr(shifted, truth, region) == pytest.approx(20.0)
    assert psnr(shifted, truth, ~region) == math.inf
    frozen = np.repeat(truth[:1], 3, axis=0)  # does not change while the truth brightens by 0.1 per frame
    assert temporal_psnr(frozen, truth, region) == pytest.approx(20.0)


def test_ssim_of_constant_images_has_the_closed_form():
    a, b = 0.3, 0.5
    x, y = np.full((1, 16, 16, 3), a, dtype=np.float32), np.full((1, 16, 16, 3), b, dtype=np.float32)
    expected = (2 * a * b + 0.01**2) / (a * a + b * b + 0.01**2)
    assert np.allclose(ssim_map(x, y), expected, atol=1e-6)
    noise = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    assert masked_ssim(noise, noise, np.ones((2, 16, 16), dtype=bool)) == pytest.approx(1.0)


def test_baselines_fill_only_the_region_and_median_recovers_a_static_background():
    rng = np.random.default_rng(0)
    background = (rng.random((1, 24, 32, 3)) * 255).astype(np.uint8).repeat(6, axis=0)
    region = np.zeros((6, 24, 32), dtype=bool)
    for t in range(6):
        region[t, 8:16, 2 + 4 * t : 10 + 4 * t] = True  # a box sliding right: every pixel is seen sometime
    frames = background.copy()
    frames[region] = 0
    for method in (telea, temporal_median):
        out = method(frames, region)
        assert np.array_equal(out[~region], frames[~region].astype(np.float32) / 255.0)
        assert not np.array_equal(out[region], frames[region].astype(np.float32) / 255.0)
    np.testing.assert_allclose(temporal_median(frames, region), background / 255.0, atol=1e-6)
