"""Evaluate removals on held-out synthetic clips against the true background.

    python -m training.evaluate --config training/configs/tiny_eval.json

Held-out clips come from other seeds, another background texture (waves) and other object shapes
(triangles, blobs) than training. Every method fills the same region, the object masks dilated as
the pipeline dilates them: stage 1 (50 steps, CFG), stage 2 (6 steps, no CFG), OpenCV Telea per
frame, and a temporal median fill. The models' raw generations are scored (no paste-back), as the
paper scores background preservation; the baselines keep every pixel outside the region exactly.
Writes `<out>/results.md` (the table) and `<out>/results.json` (per-clip numbers).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.pipeline.preprocess import dilate
from runtime.pipeline.remover import Remover
from training.baselines import telea, temporal_median
from training.data import ClipSpec, TrainingClip, make_source
from training.metrics import masked_ssim, psnr, temporal_psnr
from training.trainer import Distributed, stage_main


@dataclass(frozen=True)
class EvalConfig:
    out: str  # folder for results.md and results.json
    stage1: str  # stage-1 checkpoint folder (released layout)
    stage2: str  # stage-2 checkpoint folder ("" = evaluate stage 1 and the baselines only, e.g. to tune CFG)
    num_clips: int = 8
    num_frames: int = 9
    height: int = 80
    width: int = 144
    seed: int = 1000  # held-out seeds (training uses small ones)
    source: str = "synthetic-held-out"
    stage1_steps: int = 50
    guidance_scale: float = 3.0
    stage2_steps: int = 6
    mask_dilation: int = 6
    noise_seed: int = 42
    telea_radius: int = 5
    device: str = ""
    threads: int = 0  # CPU threads (0 = PyTorch's default); 1 is far faster on an oversubscribed CPU


@dataclass
class Scores:
    """One method on one clip; a PSNR is None where the output matches the truth exactly."""

    psnr_in: float | None
    ssim_in: float | None
    psnr_out: float | None
    tpsnr_in: float | None
    seconds: float


def score(output: np.ndarray, truth: np.ndarray, region: np.ndarray, seconds: float) -> Scores:
    """The metrics of one method on one clip (output and truth float [F, H, W, 3] in [0, 1])."""
    return Scores(
        psnr(output, truth, region),
        masked_ssim(output, truth, region),
        psnr(output, truth, ~region),
        temporal_psnr(output, truth, region),
        seconds,
    )


def model_method(folder: str, steps: int, guidance: float | None, config: EvalConfig, device: torch.device):
    """A removal method running the runtime's pipeline on a checkpoint (raw generation, fp32)."""
    remover = Remover.from_pretrained(folder, device, "fp32")

    def run(clip: TrainingClip) -> np.ndarray:
        return remover(
            clip.frames,
            clip.masks,
            height=config.height,
            width=config.width,
            num_inference_steps=steps,
            mask_dilation=config.mask_dilation,
            seed=config.noise_seed,
            paste_back=False,
            guidance_scale=guidance,
            progress=False,
        )

    return run


def methods(config: EvalConfig, device: torch.device) -> dict[str, Callable[[TrainingClip], np.ndarray]]:
    def region(clip: TrainingClip) -> np.ndarray:
        return dilate(torch.from_numpy(clip.masks), config.mask_dilation).numpy()

    stage1 = model_method(config.stage1, config.stage1_steps, config.guidance_scale, config, device)
    chosen = {f"stage 1 ({config.stage1_steps} steps, CFG {config.guidance_scale:g})": stage1}
    if config.stage2:
        stage2 = model_method(config.stage2, config.stage2_steps, None, config, device)
        chosen[f"stage 2 ({config.stage2_steps} steps, no CFG)"] = stage2
    chosen["OpenCV Telea (per frame)"] = lambda clip: telea(clip.frames, region(clip), config.telea_radius)
    chosen["temporal median fill"] = lambda clip: temporal_median(clip.frames, region(clip), config.telea_radius)
    return chosen


def mean_cell(values: list[float | None], digits: int, exact: str = "exact") -> str:
    """The mean over clips of one figure; clips where it is None (exact) are counted, not averaged in."""
    numbers = [v for v in values if v is not None]
    if not numbers:
        return exact
    text = f"{np.mean(numbers):.{digits}f}"
    return text if len(numbers) == len(values) else f"{text} ({len(values) - len(numbers)} exact)"


def table(results: dict[str, list[Scores]], config: EvalConfig) -> str:
    """The markdown table: means over clips (PSNR of each clip, then averaged; an exact clip is counted
    apart, and a method exact on every clip says so)."""
    lines = [
        f"{config.num_clips} held-out clips ({config.source}), {config.num_frames} frames at "
        f"{config.width}x{config.height}; region = object masks dilated {config.mask_dilation}x.",
        "",
        "| method | PSNR in (dB) | SSIM in | PSNR out (dB) | temporal PSNR in (dB) | s / clip |",
        "|---|---|---|---|---|---|",
    ]
    for name, scores in results.items():

        def cell(field: str, digits: int, exact: str = "exact", scores: list[Scores] = scores) -> str:
            return mean_cell([getattr(s, field) for s in scores], digits, exact)

        lines.append(
            f"| {name} | {cell('psnr_in', 2)} | {cell('ssim_in', 4, 'none')} | "
            f"{cell('psnr_out', 2, 'exact (input kept)')} | {cell('tpsnr_in', 2)} | {cell('seconds', 2)} |"
        )
    return "\n".join(lines) + "\n"


def evaluate(config: EvalConfig, dist: Distributed) -> Path:
    """Run every method on every held-out clip; write the table and the per-clip numbers."""
    spec = ClipSpec(config.num_frames, config.height, config.width, config.seed)
    source = make_source(config.source, spec)
    clips = [source(index) for index in range(config.num_clips)]
    results: dict[str, list[Scores]] = {}
    for name, method in methods(config, dist.device).items():
        results[name] = []
        for clip in clips:
            start = time.perf_counter()
            output = method(clip)
            seconds = time.perf_counter() - start
            truth = clip.background.astype(np.float32) / 255.0
            region = dilate(torch.from_numpy(clip.masks), config.mask_dilation).numpy()
            results[name].append(score(output, truth, region, seconds))
        print(table({name: results[name]}, config).splitlines()[-1], flush=True)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table(results, config))
    per_clip = {name: [s.__dict__ for s in scores] for name, scores in results.items()}
    (out / "results.json").write_text(json.dumps(per_clip, indent=1, default=str) + "\n")
    print(table(results, config))
    return out / "results.md"


def main() -> None:
    stage_main(__doc__.splitlines()[0], EvalConfig, evaluate)


if __name__ == "__main__":
    main()
