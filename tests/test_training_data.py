"""Training data: synthetic clips, (video, mask) readers and manifests, mask augmentation, the latent cache, the
epoch order, metrics, baselines."""

from __future__ import annotations

import json
import threading
import time
import weakref
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import relative_error
from PIL import Image

from runtime.errors import RemoverError
from runtime.io import open_clip, read_masks, write_clip
from runtime.io.outputs import temporary_name
from runtime.models.scheduler import RELEASED_SCHEDULER
from runtime.models.vae import RELEASED_VAE, WanVAE
from runtime.pipeline.remover import Remover
from runtime.pipeline.stages import TorchStages
from training.baselines import telea, temporal_median
from training.data import (
    ClipSpec,
    PairSource,
    SyntheticSource,
    discover_pairs,
    make_source,
    random_shape_masks,
    read_manifest,
)
from training.flow import epoch_clip, new_transformer
from training.latents import (
    ClipLatents,
    LatentSet,
    MaskPool,
    clip_path,
    encode_clip,
    encode_clips,
    latent_region,
    wait_for_clips,
)
from training.metrics import masked_ssim, psnr, ssim_map, temporal_psnr
from training.stage1 import stage1_sample
from training.stage_config import Stage1Config
from training.synthetic import render_clip
from training.trainer import Distributed

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
    source = PairSource(pairs, spec)
    for index in range(4):
        sample = source(index)
        assert sample.frames.shape == (5, 32, 48, 3) and sample.frames.dtype == np.uint8
        assert sample.masks.shape == (5, 32, 48) and sample.background is None
        assert np.array_equal(source.masks(index), sample.masks)  # the masks alone, without the video
    assert np.array_equal(source(3).frames, make_source("folder", spec, str(root))(3).frames)


DAVIS_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0, 0, 128] * 252  # what SAM2 writes


def tracker_pair(folder: Path, seed: int, video: str, palette: bool) -> tuple[Path, Path, np.ndarray]:
    """A 6-frame clip (an .mp4 or a folder of PNGs) and its masks as a tracker writes them: one PNG per
    frame (00000.png, ...) whose pixel values are object ids 0 (background), 1, 2; palette or 8-bit gray."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)
    ids = np.zeros((6, 32, 48), dtype=np.uint8)
    for t in range(6):
        ids[t, 4 + t : 14 + t, 5:20] = 1
        ids[t, 20:28, 30 - t : 44 - t] = 2
    folder.mkdir(parents=True)
    write_clip(folder / video, frames, Fraction(25))
    (folder / "masks").mkdir()
    for t, frame_ids in enumerate(ids):
        image = Image.fromarray(frame_ids, "P" if palette else "L")
        if palette:
            image.putpalette(DAVIS_PALETTE)
        image.save(folder / "masks" / f"{t:05d}.png")
    return folder / video, folder / "masks", ids


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_pairs_read_tracker_masks_as_every_nonzero_id(tmp_path, kind):
    a = tracker_pair(tmp_path / "data" / "a", 0, "clip.mp4", palette=True)
    b = tracker_pair(tmp_path / "elsewhere" / "b", 1, "frames", palette=False)
    rows = [("data/a/clip.mp4", "data/a/masks"), (str(b[0]), str(b[1]))]  # relative to the manifest; absolute
    manifest = tmp_path / f"list.{kind}"
    if kind == "csv":
        manifest.write_text("video,mask\n" + "".join(f"{v},{m}\n" for v, m in rows))
    else:
        manifest.write_text("".join(json.dumps({"video": v, "mask": m}) + "\n" for v, m in rows))

    assert read_manifest(manifest) == [a[:2], b[:2]]
    for video, mask, ids in (a, b):
        assert np.array_equal(read_masks(mask, open_clip(video).info), ids != 0)
    source = make_source("manifest", ClipSpec(num_frames=3, height=16, width=24, seed=0), str(manifest))
    for index in range(2):
        clip = source(index)
        assert clip.frames.shape == (3, 16, 24, 3) and clip.masks.any()
        assert np.array_equal(source.masks(index), clip.masks)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("list.csv", "video,mask\na.mp4,masks\nmissing.mp4,masks\n", "list.csv, line 3: the video .*missing.mp4"),
        ("list.csv", "video,mask\na.mp4\n", "list.csv, line 2: expected a video and a mask"),
        ("list.csv", "a.mp4,masks\n", "list.csv: the first line must be the header video,mask"),
        ("list.jsonl", '{"video": "a.mp4", "mask": "masks"}\n{"video": "a.mp4"\n', "list.jsonl, line 2: not JSON"),
        ("list.jsonl", '{"video": "a.mp4", "mask": "gone"}\n', "list.jsonl, line 1: the mask .*gone does not exist"),
        ("list.txt", "a.mp4,masks\n", "a manifest is a .csv"),
    ],
)
def test_a_bad_manifest_row_is_one_error_naming_it(tmp_path, name, text, expected):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "masks").mkdir()
    (tmp_path / name).write_text(text)
    with pytest.raises(RemoverError, match=expected) as caught:
        read_manifest(tmp_path / name)
    assert "\n" not in str(caught.value)


def test_latent_region_groups_frames_as_the_vae_does():
    masks = np.zeros((9, 32, 48), dtype=bool)
    masks[3, 10, 17] = True  # frame 3 -> latent frame 1 (frames 1-4); pixel -> latent (1, 2)
    region = latent_region(masks)
    assert region.shape == (3, 4, 6) and region.sum() == 1 and region[1, 1, 2]


def test_latent_cache_matches_the_pipeline_encoding():
    torch.manual_seed(0)
    vae = WanVAE(replace(RELEASED_VAE, base_dim=8, num_res_blocks=1)).eval()
    source = SyntheticSource(SPEC)
    pool = MaskPool(source, num_clips=3, random_masks=2, seed=0)
    latents = encode_clip(vae, pool, 1, positives=2, device=torch.device("cpu"))
    assert latents.video.shape == (16, 2, 4, 6) and latents.masked.shape == latents.masks.shape == (3, 16, 2, 4, 6)
    assert latents.background is not None and latents.region.shape == (2, 4, 6)
    assert 1 not in pool.borrowed(1, 2)  # a clip never borrows its own masks

    stages = TorchStages(new_transformer(1, 1, 16, 16, 0), vae)
    remover = Remover(stages, RELEASED_SCHEDULER, device=torch.device("cpu"), dtype=torch.float32)
    clip = source(1)
    video = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        expected = remover.encode(video, torch.from_numpy(clip.masks).float())[0]
        lent = pool.masks(pool.borrowed(1, 2)[1], clip.masks.shape)
        borrowed = remover.encode(video, torch.from_numpy(lent).float())[0]
    assert relative_error(latents.context(0).float(), expected) < 2e-3
    assert relative_error(latents.context(2).float(), borrowed) < 2e-3


@pytest.fixture(scope="module")
def tiny_vae() -> WanVAE:
    torch.manual_seed(0)
    return WanVAE(replace(RELEASED_VAE, base_dim=4, num_res_blocks=1)).eval()


def same_latents(a: ClipLatents, b: ClipLatents) -> bool:
    return all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()))


def test_clips_encoded_over_two_ranks_equal_one_rank_and_an_interrupted_encode_resumes(tiny_vae, tmp_path):
    pool = MaskPool(SyntheticSource(SPEC), num_clips=4, random_masks=2, seed=0)
    cpu = torch.device("cpu")

    def encode(folder: Path, clips: range | list[int]) -> list[int]:
        return encode_clips(tiny_vae, pool, clips, 1, folder, cpu, progress=False)

    assert encode(tmp_path / "one", range(4)) == [0, 1, 2, 3]
    assert encode(tmp_path / "two", range(0, 4, 2)) == [0, 2]  # rank 0 of 2
    assert encode(tmp_path / "two", range(1, 4, 2)) == [1, 3]  # rank 1 of 2
    one, two = LatentSet.open(tmp_path / "one", 4), LatentSet.open(tmp_path / "two", 4)
    assert all(same_latents(one.clip(n), two.clip(n)) for n in range(4))
    video = one.clip(3).video  # saved alone, not as a view of its encoding batch
    assert video.untyped_storage().nbytes() == video.nbytes

    resumed = tmp_path / "resumed"
    encode(resumed, [0, 2])
    temporary_name(clip_path(resumed, 1)).write_bytes(b"cut off")  # a file being written when stopped
    written = {n: clip_path(resumed, n).stat().st_mtime_ns for n in (0, 2)}
    assert encode(resumed, range(4)) == [1, 3]
    assert {n: clip_path(resumed, n).stat().st_mtime_ns for n in (0, 2)} == written
    assert all(same_latents(one.clip(n), LatentSet.open(resumed, 4).clip(n)) for n in range(4))
    clip_path(resumed, 3).unlink()
    with pytest.raises(RemoverError, match="lacks 1 clips, e.g. clip 3"):
        LatentSet.open(resumed, 4)


def test_latent_set_holds_a_bounded_number_of_clips(tmp_path):
    for n in range(30):
        fill = torch.full((16, 2, 4, 6), float(n), dtype=torch.float16)
        slots = torch.zeros(3, 16, 2, 4, 6, dtype=torch.float16)
        ClipLatents(fill, None, slots, slots, torch.zeros(2, 4, 6, dtype=torch.bool)).save(clip_path(tmp_path, n))
    latents = LatentSet.open(tmp_path, 30, capacity=3)
    assert len(latents) == 30 and latents.slots == 3 and latents.latent_size == (4, 6)
    alive = []
    for n in [*range(30), *range(29, -1, -1)]:
        clip = latents.clip(n)
        assert float(clip.video[0, 0, 0, 0]) == n
        alive.append(weakref.ref(clip))
        del clip
        assert len({id(ref()) for ref in alive if ref() is not None}) <= 3  # the rest were let go
    assert latents.clip(1) is latents.clip(1) and latents.clip(0) is alive[-1]()  # recent clips are kept


def test_waiting_for_clips_returns_at_once_when_all_are_there_and_polls_for_the_rest(tmp_path, monkeypatch):
    for n in range(3):
        clip_path(tmp_path, n).write_bytes(b"done")
    with monkeypatch.context() as patch:
        patch.setattr(time, "sleep", lambda seconds: pytest.fail("slept although every clip was there"))
        wait_for_clips(tmp_path, range(3), "latents", progress=False)

    folder = tmp_path / "other ranks"  # made by the other ranks, later

    def first() -> None:
        folder.mkdir()
        clip_path(folder, 0).write_bytes(b"done")
        temporary_name(clip_path(folder, 1)).write_bytes(b"half")  # being written: not there yet

    writers = [threading.Timer(0.2, first), threading.Timer(0.5, lambda: clip_path(folder, 1).write_bytes(b"done"))]
    start = time.monotonic()
    for writer in writers:
        writer.start()
    wait_for_clips(folder, range(2), "latents", progress=False, interval=0.05)
    assert time.monotonic() - start >= 0.5 and clip_path(folder, 1).is_file()
    for writer in writers:
        writer.join()


def test_epochs_visit_every_clip_once_in_an_order_that_ignores_the_split():
    num_clips, seed = 7, 5
    order = [epoch_clip(seed, sample, num_clips) for sample in range(3 * num_clips)]
    epochs = [order[e * num_clips : (e + 1) * num_clips] for e in range(3)]
    assert all(sorted(epoch) == list(range(num_clips)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    for batch_size, world_size in ((7, 1), (4, 2), (6, 3)):  # every rank's share of every step
        split = {}
        for step in range(-(-3 * num_clips // batch_size)):
            for rank in range(world_size):
                for index in Distributed(rank, world_size, torch.device("cpu")).shard(batch_size):
                    split[step * batch_size + index] = epoch_clip(seed, step * batch_size + index, num_clips)
        assert [split[sample] for sample in range(3 * num_clips)] == order

    # stage 1 takes its samples' clips in this order
    video = [torch.full((16, 2, 4, 6), float(n)) for n in range(num_clips)]
    slots = torch.zeros(2, 16, 2, 4, 6)
    region = torch.zeros(2, 4, 6, dtype=torch.bool)
    latents = LatentSet(lambda n: ClipLatents(video[n], None, slots, slots, region), num_clips)
    config = Stage1Config(out="x", vae="x", steps=1, batch_size=4, seed=seed)
    taken = [int(stage1_sample(config, latents, s, i, (4, 6))[0][0, 0, 0, 0]) for s in range(5) for i in range(4)]
    assert taken == order[:20]


def test_psnr_and_temporal_psnr_on_known_errors():
    truth = np.zeros((3, 8, 8, 3), dtype=np.float32) + np.arange(3, dtype=np.float32)[:, None, None, None] * 0.1
    region = np.zeros((3, 8, 8), dtype=bool)
    region[:, 2:5, 2:5] = True
    shifted = truth + 0.1 * region[..., None]
    assert psnr(shifted, truth, region) == pytest.approx(20.0)
    assert psnr(shifted, truth, ~region) is None  # exact: no PSNR, as runtime.evaluate reports it
    frozen = np.repeat(truth[:1], 3, axis=0)  # does not change while the truth brightens by 0.1 per frame
    assert temporal_psnr(frozen, truth, region) == pytest.approx(20.0)
    assert temporal_psnr(truth, truth, region) is None


def test_ssim_of_constant_images_has_the_closed_form():
    a, b = 0.3, 0.5
    x, y = np.full((1, 16, 16, 3), a, dtype=np.float32), np.full((1, 16, 16, 3), b, dtype=np.float32)
    expected = (2 * a * b + 0.01**2) / (a * a + b * b + 0.01**2)
    assert ssim_map(x, y).shape == (1, 6, 6)  # the window centres 5 pixels in from the border
    # runtime.evaluate computes SSIM in float32 on the 0..255 scale: the variances of a flat frame 50 levels
    # from its centre cancel to about 1e-5 of SSIM (the former float64 copy in training reached 1e-6)
    assert np.allclose(ssim_map(x, y), expected, rtol=0, atol=2e-5)
    noise = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    assert masked_ssim(noise, noise, np.ones((2, 16, 16), dtype=bool)) == pytest.approx(1.0)
    border = np.zeros((2, 16, 16), dtype=bool)
    border[:, :5] = True
    assert masked_ssim(noise, noise, border) is None  # no window centre lies in it


def test_training_scores_are_runtime_evaluates_figures():
    """Training's PSNR and SSIM on 8-bit frames scaled to [0, 1] are what runtime.evaluate reports on them."""
    from runtime.evaluate.metrics import RegionFigures
    from runtime.evaluate.metrics import ssim_map as frame_ssim_map

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    output = np.clip(truth.astype(np.int16) + rng.integers(-20, 21, truth.shape), 0, 255).astype(np.uint8)
    region = np.zeros((3, 24, 32), dtype=bool)
    region[:, 4:18, 6:25] = True
    figures = RegionFigures()
    for a, b, r in zip(output, truth, region):
        figures.add(a, b, r, frame_ssim_map(a, b))
    scaled_output, scaled_truth = output.astype(np.float32) / 255, truth.astype(np.float32) / 255
    assert psnr(scaled_output, scaled_truth, region) == pytest.approx(figures.psnr_db, rel=1e-9)
    assert masked_ssim(scaled_output, scaled_truth, region) == pytest.approx(figures.ssim, abs=1e-5)


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


def test_the_soft_families_render_their_own_textures_and_motion():
    """The removing model's families: "soft" pans at a constant speed, the held-out "sway" does not."""
    from training.synthetic import FAMILIES

    spec = ClipSpec(12, 32, 48, seed=3, frame_strides=(1,))
    train = SyntheticSource(spec, FAMILIES["synthetic-soft"])(0)
    held_out = SyntheticSource(spec, FAMILIES["synthetic-soft-held-out"])(0)
    assert train.frames.shape == held_out.frames.shape == (12, 32, 48, 3)
    assert not np.array_equal(train.background, held_out.background)

    def shifts(background: np.ndarray) -> list[tuple[int, int]]:  # the integer shift of each frame against the next
        found = []
        for a, b in zip(background[:-1].astype(float), background[1:].astype(float)):
            errors = {
                (dy, dx): np.abs(a[4 + dy : 28 + dy, 4 + dx : 44 + dx] - b[4:28, 4:44]).mean()
                for dy in range(-4, 5)
                for dx in range(-4, 5)
            }
            found.append(min(errors, key=errors.get))
        return found

    linear = shifts(render_clip(7, 12, 32, 48, background="soft", motion="linear").background)
    sway = shifts(render_clip(7, 12, 32, 48, background="soft", motion="sway").background)

    def spread(found: list[tuple[int, int]]) -> int:
        return max(max(axis) - min(axis) for axis in zip(*found))

    assert spread(linear) <= 1  # a constant pan, rounded to whole pixels
    assert spread(sway) >= 2
