"""Seams and flicker of the long-clip windows: `python -m bench.seams [--json PATH]`.

How the default blend mode and overlap were chosen. Every configuration runs the same clips through the
streamed pipeline (runtime/clips/stream.py) with the bundled demo model at its trained size (144x256),
windows of 21 frames so that short clips have several, and is compared with one pass over the whole
clip:

- temporal error at the window boundaries against elsewhere: the mean absolute frame-to-frame change
  inside the mask, minus the true change where the clip has ground truth (synthetic clips: a panning
  and a static background), else the raw change (the real clips of ../shared/data). The VAE makes a
  latent of every 4 frames, so the change peaks every 4th frame whatever the windows do: each boundary
  transition is compared with the transitions elsewhere at the same place in that 4-frame cycle (the
  windows start at multiples of 4). "boundary / elsewhere" above 1 means the boundaries flicker more
  (runtime/evaluate/temporal.py measures it, as `python -m runtime.evaluate` reports it: "seam ratio");
- quality inside the mask against the true background (synthetic clips, PSNR in dB);
- cost: frames the model processes per clip frame, and the model's seconds.

The demo model is tiny and fills holes with a blurred average colour, so these figures rank the
windowing schemes (how consistent consecutive windows are), not the released model's quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.clips.plan import make_plan
from runtime.clips.stream import LocalWindows, run_plan
from runtime.demo import DEMO_WEIGHTS
from runtime.errors import exit_code
from runtime.evaluate.temporal import boundary_transitions, seam_ratio, transition_change
from runtime.io import read_clip, read_masks
from runtime.options import PlanOptions, RunOptions
from runtime.pipeline.coverage import mask_box
from runtime.pipeline.preprocess import dilate, resize_frames, shrink_masks
from runtime.pipeline.remover import Remover
from training.synthetic import HELD_OUT_SHAPES, render_clip

HEIGHT, WIDTH, WINDOW = 144, 256, 21
CONFIGS = {
    "one pass": PlanOptions(window=0, crop="off", height=HEIGHT, width=WIDTH),
    **{
        f"{blend} {overlap}": PlanOptions(
            window=WINDOW, overlap=overlap, blend=blend, crop="off", height=HEIGHT, width=WIDTH
        )
        for blend, overlaps in (("continue", (1, 5, 9)), ("crossfade", (5, 9)))
        for overlap in overlaps
    },
}


@dataclass
class TestClip:
    name: str
    frames: np.ndarray  # uint8 [F, H, W, 3] at the working size
    masks: np.ndarray  # bool [F, H, W]
    truth: np.ndarray | None  # the background without the object, where known


def synthetic_clips(frames: int) -> list[TestClip]:
    """A held-out synthetic clip (waves, a triangle or blob), panning and made static."""
    clip = render_clip(11, frames, HEIGHT, WIDTH, background="waves", shapes=HELD_OUT_SHAPES)
    static_background = np.repeat(clip.background[:1], frames, axis=0)
    static = np.where(clip.masks[..., None], clip.with_objects, static_background)
    return [
        TestClip("synthetic, panning", clip.with_objects, clip.masks, clip.background),
        TestClip("synthetic, static", static, clip.masks, static_background),
    ]


def real_clips(data: Path) -> list[TestClip]:
    """The tennis frames and the running car (292 frames), brought to the working size."""
    clips, size, cpu = [], (HEIGHT, WIDTH), torch.device("cpu")
    car = data / "running_car"
    for name, video, mask in (
        ("tennis (70 frames)", data / "tennis" / "frames", data / "tennis" / "masks"),
        ("running_car (292 frames)", car / "running_car.mp4", car / "mask_square.png"),
    ):
        clip = read_clip(video)
        frames = resize_frames(clip.frames, size, cpu, antialias=True)
        masks = shrink_masks(read_masks(mask, clip.info), size, cpu)
        clips.append(TestClip(name, frames, masks, None))
    return clips


def measure(remover: Remover, clip: TestClip, options: PlanOptions) -> dict[str, float]:
    count = len(clip.frames)
    plan = make_plan(count, clip.frames.shape[1:3], [mask_box(m) for m in clip.masks], options)
    written: list[np.ndarray] = []
    start = time.perf_counter()
    timings = run_plan(
        plan, ((f, i) for i, f in enumerate(clip.frames)), iter(clip.masks),
        lambda image, pts: written.append(image), LocalWindows(remover, RunOptions(progress=False)), progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    out = np.stack(written)
    region = dilate(torch.from_numpy(clip.masks), 2).numpy()
    truth = clip.truth if clip.truth is not None else [None] * count
    per_transition = np.array(
        [
            transition_change(out[t], out[t + 1], region[t] | region[t + 1], truth[t], truth[t + 1])
            for t in range(count - 1)
        ]
    )
    seams = sorted(boundary_transitions(plan.windows))
    rest = [t for t in range(count - 1) if t not in seams]
    result = {
        "windows": len(plan.windows),
        "frames_processed_per_frame": sum(w.frames for w in plan.model_windows) / count,
        "model_s": sum(timings.get(stage, 0.0) for stage in ("encode", "denoise", "decode")),
        "total_s": seconds,
        "temporal_error_rest": float(np.nanmean(per_transition[rest])),
    }
    if seams:
        result["temporal_error_boundary"] = float(np.nanmean(per_transition[seams]))
        result["boundary_over_rest"] = seam_ratio(per_transition, plan.windows)
    if clip.truth is not None:
        error = out[clip.masks].astype(np.float32) - clip.truth[clip.masks].astype(np.float32)
        result["psnr_inside_db"] = float(10 * np.log10(255.0**2 / np.mean(error**2)))
    return result


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """A Markdown table per clip."""
    lines = []
    for clip, rows in results.items():
        lines += [
            f"**{clip}**",
            "",
            "| windows | boundary / elsewhere (same phase) | temporal error at boundaries | elsewhere | "
            "PSNR inside (dB) | frames processed per frame | model s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            ratio = f"{r['boundary_over_rest']:.2f}" if r.get("boundary_over_rest") is not None else "-"
            boundary = f"{r['temporal_error_boundary']:.2f}" if "temporal_error_boundary" in r else "-"
            psnr = f"{r['psnr_inside_db']:.2f}" if "psnr_inside_db" in r else "-"
            lines.append(
                f"| {name} ({r['windows']}) | {ratio} | {boundary} | {r['temporal_error_rest']:.2f} | {psnr} | "
                f"{r['frames_processed_per_frame']:.2f} | {r['model_s']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seams", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--frames", type=int, default=101, help="synthetic clip length (default 101)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "seams.json")
    args = parser.parse_args(argv)

    def work() -> str:
        torch.manual_seed(0)
        remover = Remover.from_pretrained(DEMO_WEIGHTS, device="cpu")
        clips = synthetic_clips(args.frames) + (real_clips(args.data) if args.data.is_dir() else [])
        results = {}
        for clip in clips:
            results[clip.name] = {}
            for name, options in CONFIGS.items():
                results[clip.name][name] = measure(remover, clip, options)
                print(f"{clip.name}, {name}: {results[clip.name][name]}", file=sys.stderr, flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(table(results))
        return f"wrote {args.json}"

    return exit_code(work)


if __name__ == "__main__":
    sys.exit(main())
