"""Training clips: (video, mask) pairs from folders or video files, and synthetic clips with ground truth.

Every source hands out `TrainingClip`s by index, each drawn with its own seeded generator, so a
clip depends only on (seed, index): any process of a distributed run can make any clip, and a
rerun makes the same ones. Windows of `num_frames` frames are taken at a random frame stride and
cropped at random; masks are augmented by random dilation, and random moving shapes serve as
masks with no object under them (the positive samples of stage 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.errors import RemoverError
from runtime.io import IMAGE_SUFFIXES, read_clip, read_masks
from runtime.preprocess import dilate, resize
from training.synthetic import HELD_OUT_SHAPES, TRAIN_SHAPES, object_mask, render_clip

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}


@dataclass
class TrainingClip:
    """frames uint8 [F, H, W, 3], object masks bool [F, H, W], and the frames without the objects
    (uint8 [F, H, W, 3]) where they are known (synthetic clips), else None."""

    frames: np.ndarray
    masks: np.ndarray
    background: np.ndarray | None = None


@dataclass(frozen=True)
class ClipSpec:
    """What a source makes: windows of `num_frames` at `height` x `width`, seeded from `seed`."""

    num_frames: int
    height: int
    width: int
    seed: int
    frame_strides: tuple[int, ...] = (1, 2)
    max_dilation: int = 0  # object masks are dilated by a random 0..max_dilation iterations


def clip_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of clip `index` (and of an independent `stream` of it)."""
    return np.random.default_rng([seed, index, stream])


def dilate_masks(masks: np.ndarray, iterations: int) -> np.ndarray:
    """bool [F, H, W] dilated with the 3x3 cross `iterations` times (the pipeline's dilation)."""
    if iterations == 0:
        return masks
    return dilate(torch.from_numpy(np.ascontiguousarray(masks)), iterations).numpy()


def random_shape_masks(
    rng: np.random.Generator, num_frames: int, height: int, width: int, shapes: tuple[str, ...] = TRAIN_SHAPES
) -> np.ndarray:
    """bool [F, H, W]: one or two random shapes drifting and turning across the frames."""
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for _ in range(rng.integers(1, 3)):
        shape = str(rng.choice(list(shapes)))
        radii = rng.uniform(0.1, 0.3, size=2) * min(height, width)
        center = rng.uniform(0, 1, size=2) * np.array([height, width])
        velocity = rng.uniform(-0.03, 0.03, size=2) * np.array([height, width])
        angle, spin = rng.uniform(0, np.pi), rng.uniform(-0.1, 0.1)
        for t in range(num_frames):
            masks[t] |= object_mask(shape, height, width, center + t * velocity, radii, angle + t * spin)
    return masks


class SyntheticSource:
    """Rendered clips with the true background: `background` and `shapes` pick the training or the
    held-out family (see training.synthetic)."""

    def __init__(self, spec: ClipSpec, background: str = "noise", held_out_shapes: bool = False) -> None:
        self.spec = spec
        self.background = background
        self.shapes = HELD_OUT_SHAPES if held_out_shapes else TRAIN_SHAPES

    def __call__(self, index: int) -> TrainingClip:
        spec = self.spec
        rng = clip_rng(spec.seed, index)
        clip = render_clip(
            int(rng.integers(2**31)),
            spec.num_frames,
            spec.height,
            spec.width,
            num_objects=int(rng.integers(1, 3)),
            background=self.background,
            shapes=self.shapes,
            frame_stride=int(rng.choice(spec.frame_strides)),
        )
        masks = dilate_masks(clip.masks, int(rng.integers(0, spec.max_dilation + 1)))
        return TrainingClip(clip.with_objects, masks, clip.background)


def discover_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(video, mask) pairs under `root`: each subfolder holds either `frames/` and `masks/` image
    folders, or a video file and a mask (video, image folder or one still image) whose name has "mask"."""
    pairs = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        if (folder / "frames").is_dir() and (folder / "masks").is_dir():
            pairs.append((folder / "frames", folder / "masks"))
            continue
        entries = sorted(folder.iterdir())
        videos = [p for p in entries if p.suffix.lower() in VIDEO_SUFFIXES and "mask" not in p.name.lower()]
        readable = VIDEO_SUFFIXES | IMAGE_SUFFIXES
        masks = [p for p in entries if "mask" in p.name.lower() and (p.is_dir() or p.suffix.lower() in readable)]
        if len(videos) == 1 and len(masks) == 1:
            pairs.append((videos[0], masks[0]))
    if not pairs:
        raise RemoverError(f"no (video, mask) pairs under {root}: expected <name>/frames + masks or a video + mask")
    return pairs


class FolderSource:
    """Windows of real (video, mask) pairs: a random stride and start, a random scale that keeps the
    crop inside the frame, a random crop; clip `index` uses pair `index % len(pairs)`."""

    def __init__(self, root: Path, spec: ClipSpec) -> None:
        self.spec = spec
        self.pairs = discover_pairs(root)
        self._loaded: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _pair(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        if number not in self._loaded:
            video, mask = self.pairs[number]
            clip = read_clip(video)
            self._loaded[number] = (clip.frames, read_masks(mask, clip.info))  # checked against the video
        return self._loaded[number]

    def __call__(self, index: int) -> TrainingClip:
        spec = self.spec
        rng = clip_rng(spec.seed, index)
        frames, masks = self._pair(index % len(self.pairs))
        strides = [s for s in spec.frame_strides if (spec.num_frames - 1) * s < len(frames)]
        if not strides:
            raise RemoverError(f"a clip has {len(frames)} frames, fewer than the {spec.num_frames} a window needs")
        stride = int(rng.choice(strides))
        start = int(rng.integers(0, len(frames) - (spec.num_frames - 1) * stride))
        window = slice(start, start + (spec.num_frames - 1) * stride + 1, stride)
        # scale so the crop fits, up to 1.5x more than the smallest scale that does
        height, width = frames.shape[1:3]
        smallest = max(spec.height / height, spec.width / width)
        scale = smallest * rng.uniform(1.0, 1.5)
        size = (max(spec.height, round(height * scale)), max(spec.width, round(width * scale)))
        video = resize(torch.from_numpy(frames[window]).permute(0, 3, 1, 2).float(), size)
        mask = resize(torch.from_numpy(np.ascontiguousarray(masks[window])).float()[:, None], size)[:, 0] > 0.5
        top = int(rng.integers(0, size[0] - spec.height + 1))
        left = int(rng.integers(0, size[1] - spec.width + 1))
        crop = (slice(None), slice(top, top + spec.height), slice(left, left + spec.width))
        video = video.permute(0, 2, 3, 1)[crop].round().clamp(0, 255).to(torch.uint8).numpy()
        mask = dilate_masks(mask[crop].numpy(), int(rng.integers(0, spec.max_dilation + 1)))
        return TrainingClip(video, mask)


def make_source(kind: str, spec: ClipSpec, root: str = "") -> SyntheticSource | FolderSource:
    """A clip source by config name: "synthetic", "synthetic-held-out" or "folder" (reads `root`)."""
    if kind == "synthetic":
        return SyntheticSource(spec)
    if kind == "synthetic-held-out":
        return SyntheticSource(spec, background="waves", held_out_shapes=True)
    if kind == "folder":
        if not root:
            raise RemoverError("a folder source needs data_root")
        return FolderSource(Path(root), spec)
    raise RemoverError(f"unknown data source {kind!r}; choose synthetic, synthetic-held-out or folder")
