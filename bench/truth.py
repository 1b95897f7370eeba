"""Clips with a known truth, from real footage: `python -m bench.truth --out DIR [--seed N]`.

A moving object is cut with its mask out of one real clip (the player of ../shared/data/tennis, whose
masks follow him) and pasted onto another real clip (../shared/data/running_car, brought to the same
size), which is then the truth: outside the pasted mask the composite is the truth bit for bit. The seed
picks where each clip starts, whether the object is mirrored and how far it is moved sideways; the same
seed makes the same clip. Writes DIR/video, DIR/mask and DIR/truth as folders of PNGs (lossless, so the
truth is exact). The shared clips are inputs: nothing of them is kept in the repository.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from runtime.errors import RemoverError, exit_code
from runtime.io import ClipInfo, open_clip, open_masks, open_writer
from runtime.io.color import SRGB
from runtime.pipeline.preprocess import resize_frames, shrink_masks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FPS = Fraction(25)


@dataclass(frozen=True)
class TruthClip:
    """The folders written: the composite to remove from, its mask, and the truth without the object."""

    video: Path
    mask: Path
    truth: Path
    frames: int


def _shifted(image: np.ndarray, shift: int) -> np.ndarray:
    """`image` [H, W, ...] moved `shift` pixels to the right (left if negative), zeros coming in."""
    out = np.zeros_like(image)
    if shift >= 0:
        out[:, shift:] = image[:, : image.shape[1] - shift]
    else:
        out[:, :shift] = image[:, -shift:]
    return out


def make_truth_clip(
    out: str | Path,
    *,
    seed: int = 0,
    frames: int = 21,
    size: tuple[int, int] = (240, 432),
    data: Path = DATA,
    overwrite: bool = False,
) -> TruthClip:
    """Composite the tennis player onto the running car: `frames` frames of `size` (height, width) in
    `out`/video, mask and truth. Streams both clips (a frame of each at a time)."""
    objects, object_masks = data / "tennis" / "frames", data / "tennis" / "masks"
    background = data / "running_car" / "running_car.mp4"
    for path in (objects, object_masks, background):
        if not path.exists():
            raise RemoverError(f"{path} is missing: bench.truth needs ../shared/data (or --data)")
    rng = np.random.default_rng(seed)
    with open_clip(objects) as object_clip, open_clip(background) as background_clip:
        masks = open_masks(object_masks, object_clip.info)
        longest = min(object_clip.info.frame_count, background_clip.info.frame_count)
        if not 2 <= frames <= longest:
            raise RemoverError(f"--frames must be 2 to {longest} (the shorter clip's length), got {frames}")
        object_start = int(rng.integers(0, object_clip.info.frame_count - frames + 1))
        background_start = int(rng.integers(0, background_clip.info.frame_count - frames + 1))
        mirrored = bool(rng.integers(0, 2))
        shift = int(rng.integers(-size[1] // 4, size[1] // 4 + 1))
        out = Path(out)
        info = ClipInfo(background, "images", size[1], size[0], frames, FPS, None, 0, SRGB)  # what is written
        paths = TruthClip(out / "video", out / "mask", out / "truth", frames)
        out.mkdir(parents=True, exist_ok=True)
        cpu = torch.device("cpu")
        people = itertools.islice(zip(object_clip, masks), object_start, object_start + frames)
        scenes = itertools.islice(background_clip, background_start, background_start + frames)
        with (
            open_writer(paths.video, info, overwrite=overwrite) as video,
            open_writer(paths.mask, info, overwrite=overwrite) as mask_out,
            open_writer(paths.truth, info, overwrite=overwrite) as truth,
        ):
            for (person, person_mask), scene in zip(people, scenes):
                image = resize_frames(np.array(person.image[None]), size, cpu, antialias=True)[0]  # writable, for torch
                cut = shrink_masks(person_mask[None], size, cpu)[0]
                if mirrored:
                    image, cut = image[:, ::-1], cut[:, ::-1]
                image, cut = _shifted(image, shift), _shifted(cut, shift)
                clean = resize_frames(np.array(scene.image[None]), size, cpu, antialias=True)[0]
                video.write(np.where(cut[..., None], image, clean))
                mask_out.write(np.repeat(cut[..., None].astype(np.uint8) * 255, 3, axis=-1))
                truth.write(clean)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.truth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for video/, mask/ and truth/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=21)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=432)
    parser.add_argument("--data", type=Path, default=DATA, help="the shared clips (default ../shared/data)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    def work() -> str:
        clip = make_truth_clip(
            args.out, seed=args.seed, frames=args.frames, size=(args.height, args.width), data=args.data,
            overwrite=args.overwrite,
        )  # fmt: skip
        return f"wrote {clip.video}, {clip.mask} and {clip.truth} ({clip.frames} frames)"

    return exit_code(work)


if __name__ == "__main__":
    sys.exit(main())
