"""Real-footage costs, each a ratio in one run: `python -m bench.footage [--weights demo|released|DIR]`.

- length: seconds per frame and peak host memory of `python -m runtime.run` on the same clip at 81, 161
  and 321 frames, in windows (the default) and in one pass (`--window 0`, what the reference does);
- crop: a 1080p clip with an object covering about 2 % of the frame, end to end time and peak memory
  with `--crop auto` (the default) against `--crop off` (the whole frame), at the same 480p budget.

Every run is the CLI in a fresh process (bench/child.py: the whole command's wall and CPU seconds,
process start included, and its peak resident set). The analytic cost model's FLOPs of the released
model at the released setting are printed beside the measured ratios, because a small model on a CPU
spends its time in other places than the 1.3B transformer at 480p does. Results go to
bench/results/footage-<weights>.json and print as the Markdown tables bench/RESULTS.md quotes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from bench.child import run_child, runtime_cli
from bench.study import RESULTS_DIR, log, markdown_table, save_json
from bench.workloads import WEIGHTS_HELP, resolve_weights
from runtime.clips.plan import Box, make_plan
from runtime.errors import RemoverError, exit_code
from runtime.execution.cost_model import pipeline_costs
from runtime.io import write_clip
from runtime.models.transformer import RELEASED_TRANSFORMER
from runtime.models.vae import RELEASED_VAE
from runtime.options import PlanOptions
from runtime.pipeline.preprocess import padded_frame_count

LENGTHS = (81, 161, 321)


def measure_command(argv: list[Any], what: str = "the run") -> dict[str, float]:
    """Run `argv` in a fresh process: its wall and CPU seconds and peak resident set (MB)."""
    child = run_child(argv)
    if child.returncode != 0:
        raise RemoverError(f"{what} failed: {child.last_line()}")
    return {"seconds": child.seconds, "cpu_s": child.cpu_seconds, "peak_mb": child.peak_rss_mb}


def measure_cli(args: list[Any]) -> dict[str, float]:
    """`python -m runtime.run ARGS` in a fresh process (the CLI bounds its own heap: host_memory.py)."""
    return measure_command(runtime_cli(*args))


def textured_clip(frames: int, height: int, width: int, box: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, ...]:
    """A slowly panning texture with a dark box of `box` (height, width) drifting across, and its masks."""
    rng = np.random.default_rng(seed)
    canvas = rng.integers(40, 220, (height // 8 + 8, width // 8 + frames // 4 + 8, 3), dtype=np.uint8)
    canvas = np.repeat(np.repeat(canvas, 8, axis=0), 8, axis=1)
    images = np.empty((frames, height, width, 3), np.uint8)
    masks = np.zeros((frames, height, width, 3), np.uint8)
    for index in range(frames):
        images[index] = canvas[:height, index * 2 : index * 2 + width]
        top, left = height // 3, width // 4 + index
        images[index, top : top + box[0], left : left + box[1]] = 15
        masks[index, top : top + box[0], left : left + box[1]] = 255
    return images, masks


def write_inputs(folder: Path, frames: int, height: int, width: int, box: tuple[int, int]) -> tuple[Path, Path]:
    images, masks = textured_clip(frames, height, width, box)
    video, mask = folder / f"clip-{frames}x{height}.mp4", folder / f"mask-{frames}x{height}.mp4"
    write_clip(video, images, 25)
    write_clip(mask, masks, 25)
    return video, mask


def released_flops(frame_count: int, options: PlanOptions, frame_size=(480, 832), box=None) -> float:
    """The released model's FLOPs (encode, 6 steps, decode) for a plan at 480p."""
    plan = make_plan(frame_count, frame_size, [box] * frame_count, options)
    return sum(
        sum(
            c.flops
            for c in pipeline_costs(RELEASED_TRANSFORMER, RELEASED_VAE, padded_frame_count(w.frames), *w.size).values()
        )
        for w in plan.model_windows
    )


def length_suite(folder: Path, weights: Path, size: tuple[int, int], log) -> dict[str, Any]:
    """Windows against one pass at three clip lengths."""
    entries = {}
    for frames in LENGTHS:
        video, mask = write_inputs(folder, frames, 360, 640, (40, 60))
        common = ["--video", video, "--mask", mask, "--weights", weights, "--height", size[0], "--width", size[1]]
        common += ["--crop", "off", "--overwrite"]
        entry = {}
        for name, extra in (("windows", []), ("one pass", ["--window", 0])):
            figures = measure_cli([*common, *extra, "--out", folder / "out.mp4"])
            figures["s_per_frame"] = figures["seconds"] / frames
            entry[name] = figures
            log(f"length {frames}, {name}: {figures}")
        box = Box(160, 208, 200, 268)
        entry["released_tflop"] = {
            "windows": released_flops(frames, PlanOptions(crop="off"), box=box) / 1e12,
            "one pass": released_flops(frames, PlanOptions(window=0, crop="off"), box=box) / 1e12,
        }
        entries[str(frames)] = entry
    return entries


def crop_suite(folder: Path, weights: Path, frames: int, log) -> dict[str, Any]:
    """A 1080p clip, object about 2 % of the frame: crop (auto) against the whole frame, same budget."""
    video, mask = write_inputs(folder, frames, 1080, 1920, (192, 216))
    common = ["--video", video, "--mask", mask, "--weights", weights, "--overwrite", "--out", folder / "crop.mp4"]
    entry = {}
    for name, extra in (("crop", ["--crop", "auto"]), ("whole frame", ["--crop", "off"])):
        entry[name] = measure_cli([*common, *extra])
        log(f"crop suite, {name}: {entry[name]}")
    box = Box(360, 480, 552, 696 + frames)
    entry["released_tflop"] = {
        "crop": released_flops(frames, PlanOptions(), (1080, 1920), box) / 1e12,
        "whole frame": released_flops(frames, PlanOptions(crop="off"), (1080, 1920), box) / 1e12,
    }
    return entry


def tables(run: dict[str, Any]) -> str:
    """The run as the Markdown tables bench/RESULTS.md quotes."""
    header = ["frames", "windows s/frame", "one pass s/frame", "windows / one pass (time)", "windows peak MB"]
    header += ["one pass peak MB", "released model at 480p: TFLOP windows / one pass"]
    rows = []
    for frames, entry in run["length"].items():
        w, o, f = entry["windows"], entry["one pass"], entry["released_tflop"]
        rows.append(
            [frames, f"{w['s_per_frame']:.3f}", f"{o['s_per_frame']:.3f}", f"{w['seconds'] / o['seconds']:.2f}x"]
            + [f"{w['peak_mb']:.0f}", f"{o['peak_mb']:.0f}"]
            + [f"{f['windows']:.0f} / {f['one pass']:.0f} = {f['windows'] / f['one pass']:.2f}x"]
        )
    c, whole, f = run["crop"]["crop"], run["crop"]["whole frame"], run["crop"]["released_tflop"]
    crop_rows = [
        [name, f"{s['seconds']:.1f}", f"{s['cpu_s']:.1f}", f"{s['peak_mb']:.0f}", f"{tflop:.1f}"]
        for name, s, tflop in (("crop (auto)", c, f["crop"]), ("whole frame", whole, f["whole frame"]))
    ]
    crop_rows.append(
        ["whole / crop"]
        + [f"{whole[key] / c[key]:.2f}x" for key in ("seconds", "cpu_s", "peak_mb")]
        + [f"{f['whole frame'] / f['crop']:.2f}x"]
    )
    crop_header = ["1080p, object 2 % of the frame", "end to end s", "CPU s", "peak MB", "released model TFLOP"]
    return "\n".join([*markdown_table(header, rows), "", *markdown_table(crop_header, crop_rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footage", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="demo", help=WEIGHTS_HELP)
    parser.add_argument("--height", type=int, default=64, help="working height of the length suite (default 64)")
    parser.add_argument("--width", type=int, default=112, help="working width of the length suite (default 112)")
    parser.add_argument("--crop-frames", type=int, default=17, help="frames of the 1080p clip (default 17)")
    parser.add_argument("--json", type=Path, help="default: bench/results/footage-<weights>.json")
    args = parser.parse_args(argv)

    def work() -> str:
        weights = resolve_weights(args.weights)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            run = {
                "date": date.today().isoformat(),
                "weights": args.weights,
                "length": length_suite(folder, weights, (args.height, args.width), log),
                "crop": crop_suite(folder, weights, args.crop_frames, log),
            }
        run["wall_s"] = time.perf_counter() - started
        path = save_json(args.json or RESULTS_DIR / f"footage-{Path(str(args.weights)).name}.json", run)
        print(tables(run))
        return f"wrote {path}"

    return exit_code(work)


if __name__ == "__main__":
    sys.exit(main())
