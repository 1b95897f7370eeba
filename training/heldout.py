"""Held-out synthetic clips as files, so the product's own commands run and score them.

    python -m training.heldout --out runs/heldout                      # clips, truths, baselines
    python -m runtime.batch runs/heldout/ours.batch.csv --weights W --crop off --lossless
    python -m runtime.evaluate --manifest runs/heldout/ours.csv --no-lpips --json ours.json
    python -m runtime.evaluate --manifest runs/heldout/telea.csv --no-lpips --json telea.json

Each clip i gets `clip_i/{video,mask,truth}` (PNG folders: lossless, so the truth is exact) and the
classical baselines' results `clip_i/{telea,median}`, which fill the mask dilated as the runtime
dilates it (DEFAULT_DILATION) and keep every other pixel. Written: `ours.batch.csv` (a runtime.batch
manifest whose outputs are `clip_i/ours.mkv`) and one runtime.evaluate manifest per method
(`ours.csv`, `telea.csv`, `median.csv`), so every method is scored by the same code on the same region.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from runtime.errors import exit_code
from runtime.io import ClipInfo, open_writer
from runtime.io.color import SRGB
from runtime.pipeline.composite import DEFAULT_DILATION
from runtime.pipeline.preprocess import dilate
from training.baselines import telea, temporal_median
from training.data import ClipSpec, make_source

BASELINES = {"telea": telea, "median": temporal_median}


def write_frames(path: Path, frames: np.ndarray) -> None:
    """uint8 [F, H, W, 3] as a folder of PNGs."""
    info = ClipInfo(path, "images", frames.shape[2], frames.shape[1], len(frames), Fraction(25), None, 0, SRGB)
    with open_writer(path, info) as writer:
        for frame in frames:
            writer.write(frame)


def write_heldout(out: Path, source: str, clips: int, frames: int, height: int, width: int, seed: int) -> str:
    """Write the clips, their truths, the baselines and the manifests; returns a summary line."""
    clip_source = make_source(source, ClipSpec(frames, height, width, seed))
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {name: [] for name in ("ours", *BASELINES)}  # evaluate manifests
    batch_rows = []
    for index in range(clips):
        clip = clip_source(index)
        folder = out / f"clip_{index}"
        folder.mkdir(exist_ok=True)
        mask = np.repeat(clip.masks[..., None].astype(np.uint8) * 255, 3, axis=-1)
        for name, data in (("video", clip.frames), ("mask", mask), ("truth", clip.background)):
            write_frames(folder / name, data)
        region = dilate(torch.from_numpy(clip.masks), DEFAULT_DILATION).numpy()
        for name, baseline in BASELINES.items():
            write_frames(folder / name, np.round(baseline(clip.frames, region) * 255).astype(np.uint8))
        clip_name = f"clip_{index}"
        inputs = f"{clip_name}/video,{clip_name}/mask"
        results = {"ours": f"{clip_name}/ours.mkv", **{name: f"{clip_name}/{name}" for name in BASELINES}}
        batch_rows.append(f"{inputs},{results['ours']}")
        for name, result in results.items():
            rows[name].append(f"{result},{inputs},{clip_name}/truth,{clip_name}")
    (out / "ours.batch.csv").write_text("\n".join(["video,mask,output", *batch_rows]) + "\n")
    for name, lines in rows.items():
        (out / f"{name}.csv").write_text("\n".join(["result,video,mask,truth,name", *lines]) + "\n")
    return f"wrote {clips} held-out {source} clips ({frames} frames at {width}x{height}) and manifests to {out}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.heldout", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="a new folder")
    parser.add_argument("--source", default="synthetic-soft-held-out", help="a family of training.synthetic")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=80)
    parser.add_argument("--width", type=int, default=144)
    parser.add_argument("--seed", type=int, default=1000, help="held-out seeds (training uses small ones)")
    args = parser.parse_args(argv)
    return exit_code(
        lambda: write_heldout(args.out, args.source, args.clips, args.frames, args.height, args.width, args.seed)
    )


if __name__ == "__main__":
    sys.exit(main())
