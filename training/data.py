"""Training clips: (video, mask) pairs from a folder or a manifest, and synthetic clips with ground truth.

Every source hands out `TrainingClip`s by index, each drawn with its own seeded generator, so a
clip depends only on (seed, index): any process of a distributed run can make any clip, and a
rerun makes the same ones. Windows of `num_frames` frames are taken at a random frame stride and
cropped at random; masks are augmented by random dilation, and random moving shapes serve as
masks with no object under them (the positive samples of stage 1). A source also makes a clip's
masks alone (`masks(index)`), without decoding its video, for the masks lent to other clips.

Masks are read by `runtime.io.open_masks`, so a tracker's output works as it is: a folder of PNGs per
clip (`00000.png`, ...), palette PNGs whose pixel values are object ids (SAM2, DAVIS) or 8-bit id
images included: every pixel that is not background (id 0, drawn black) is object.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from runtime.errors import RemoverError
from runtime.io import IMAGE_SUFFIXES, ClipInfo, open_clip, open_masks
from runtime.pipeline.preprocess import dilate, resize
from training.synthetic import FAMILIES, TRAIN_SHAPES, Family, object_mask

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}
SOURCES = (*FAMILIES, "folder", "manifest")


@dataclass
class TrainingClip:
    """frames uint8 [F, H, W, 3], object masks bool [F, H, W], and the frames without the objects
    (uint8 [F, H, W, 3]) where they are known (synthetic clips), else None."""

    frames: np.ndarray
    masks: np.ndarray
    background: np.ndarray | None = None


class ClipSource(Protocol):
    """What the latent cache reads: clip `index`, and its object masks alone (the same masks)."""

    def __call__(self, index: int) -> TrainingClip: ...

    def masks(self, index: int) -> np.ndarray: ...


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
    """Rendered clips with the true background, drawn from a `Family` (training.synthetic.FAMILIES)."""

    def __init__(self, spec: ClipSpec, family: Family = FAMILIES["synthetic"]) -> None:
        self.spec = spec
        self.family = family

    def __call__(self, index: int) -> TrainingClip:
        spec = self.spec
        rng = clip_rng(spec.seed, index)
        clip = self.family.render(
            int(rng.integers(2**31)),
            spec.num_frames,
            spec.height,
            spec.width,
            num_objects=int(rng.integers(1, 3)),
            frame_stride=int(rng.choice(spec.frame_strides)),
        )
        masks = dilate_masks(clip.masks, int(rng.integers(0, spec.max_dilation + 1)))
        return TrainingClip(clip.with_objects, masks, clip.background)

    def masks(self, index: int) -> np.ndarray:
        """Clip `index`'s masks (rendered with the clip: synthetic frames cost no decoding)."""
        return self(index).masks


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


def _manifest_rows(path: Path) -> list[tuple[int, object]]:
    """(line number, row) of a CSV manifest (rows as dicts by the header) or a JSONL one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RemoverError(f"cannot read the manifest {path}: {exc}") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"video", "mask"} <= set(reader.fieldnames):
            raise RemoverError(f"{path}: the first line must be the header video,mask")
        return [(reader.line_num, row) for row in reader]
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise RemoverError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        return rows
    raise RemoverError(f"a manifest is a .csv (header video,mask) or .jsonl file, not {path}")


def read_manifest(path: Path) -> list[tuple[Path, Path]]:
    """(video, mask) pairs listed in a CSV file (header `video,mask`) or a JSONL file (one
    {"video": ..., "mask": ...} a line); relative paths are relative to the manifest's folder. A
    malformed row, or one naming a file that does not exist, is an error naming its line."""
    path = Path(path)
    pairs = []
    for number, row in _manifest_rows(path):
        entries = [row.get(key) for key in ("video", "mask")] if isinstance(row, dict) else []
        if len(entries) != 2 or not all(isinstance(e, str) and e.strip() for e in entries):
            raise RemoverError(f'{path}, line {number}: expected a video and a mask ({{"video": ..., "mask": ...}})')
        files = [path.parent / e.strip() for e in entries]
        for name, file in zip(("video", "mask"), files):
            if not file.exists():
                raise RemoverError(f"{path}, line {number}: the {name} {file} does not exist")
        pairs.append((files[0], files[1]))
    if not pairs:
        raise RemoverError(f"the manifest {path} lists no (video, mask) pairs")
    return pairs


@dataclass(frozen=True)
class Window:
    """Where a clip lies in its pair: source `frames`, scaled to `size` (h, w), cropped at (`top`,
    `left`), masks dilated `dilation` times."""

    frames: range
    size: tuple[int, int]
    top: int
    left: int
    dilation: int


class PairSource:
    """Windows of real (video, mask) pairs: a random stride and start, a random scale that keeps the
    crop inside the frame, a random crop; clip `index` uses pair `index % len(pairs)`.

    Nothing is kept between clips: a clip decodes its pair up to the window's last frame and scales
    and crops each window frame as it comes, so host memory is one decoded source frame (and its
    fp32 copy) plus the clip, however many and however long the pairs. `masks(index)` reads the
    same masks as `self(index).masks` without decoding the video (its first frame, to probe it)."""

    def __init__(self, pairs: list[tuple[Path, Path]], spec: ClipSpec) -> None:
        self.pairs = pairs
        self.spec = spec

    def window(self, index: int, info: ClipInfo) -> Window:
        """Clip `index`'s window of a video described by `info` (drawn from the clip's generator)."""
        spec = self.spec
        rng = clip_rng(spec.seed, index)
        count = info.frame_count
        strides = [s for s in spec.frame_strides if (spec.num_frames - 1) * s < count]
        if not strides:
            raise RemoverError(f"{info.path} has {count} frames, fewer than the {spec.num_frames} a window needs")
        stride = int(rng.choice(strides))
        start = int(rng.integers(0, count - (spec.num_frames - 1) * stride))
        # scale so the crop fits, up to 1.5x more than the smallest scale that does
        smallest = max(spec.height / info.height, spec.width / info.width)
        scale = smallest * rng.uniform(1.0, 1.5)
        size = (max(spec.height, round(info.height * scale)), max(spec.width, round(info.width * scale)))
        top = int(rng.integers(0, size[0] - spec.height + 1))
        left = int(rng.integers(0, size[1] - spec.width + 1))
        dilation = int(rng.integers(0, spec.max_dilation + 1))
        return Window(range(start, start + (spec.num_frames - 1) * stride + 1, stride), size, top, left, dilation)

    def _place(self, image: Tensor, window: Window) -> Tensor:
        """fp32 [C, H, W] scaled and cropped to [C, height, width]."""
        scaled = resize(image[None], window.size)[0]
        return scaled[:, window.top : window.top + self.spec.height, window.left : window.left + self.spec.width]

    def _frame(self, image: np.ndarray, window: Window) -> np.ndarray:
        placed = self._place(torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1), window)
        return placed.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    def _masks(self, mask: Path, info: ClipInfo, window: Window) -> np.ndarray:
        taken = islice(open_masks(mask, info), window.frames.start, window.frames.stop, window.frames.step)
        masks = [self._place(torch.from_numpy(m.astype(np.float32))[None], window)[0] > 0.5 for m in taken]
        return dilate_masks(torch.stack(masks).numpy(), window.dilation)

    def __call__(self, index: int) -> TrainingClip:
        video, mask = self.pairs[index % len(self.pairs)]
        with open_clip(video) as reader:
            window = self.window(index, reader.info)
            masks = self._masks(mask, reader.info, window)  # checked against the video before decoding it
            taken = islice(reader, window.frames.start, window.frames.stop, window.frames.step)
            frames = [self._frame(frame.image, window) for frame in taken]
        if len(frames) < len(window.frames):
            raise RemoverError(f"{video} decoded to fewer frames than the {reader.info.frame_count} it states")
        return TrainingClip(np.stack(frames), masks)

    def masks(self, index: int) -> np.ndarray:
        """Clip `index`'s object masks, bool [F, H, W], read without decoding its video."""
        video, mask = self.pairs[index % len(self.pairs)]
        with open_clip(video) as reader:
            info = reader.info
        return self._masks(mask, info, self.window(index, info))


def make_source(kind: str, spec: ClipSpec, root: str = "") -> ClipSource:
    """A clip source by config name: a synthetic family (training.synthetic.FAMILIES), "folder" (`root` is a folder
    of pairs, see `discover_pairs`) or "manifest" (`root` is a .csv or .jsonl file, see `read_manifest`)."""
    if kind in FAMILIES:
        return SyntheticSource(spec, FAMILIES[kind])
    if kind in ("folder", "manifest"):
        if not root:
            raise RemoverError(f"a {kind} source needs data_root")
        return PairSource(discover_pairs(Path(root)) if kind == "folder" else read_manifest(Path(root)), spec)
    raise RemoverError(f"unknown data source {kind!r}; choose one of {', '.join(SOURCES)}")
