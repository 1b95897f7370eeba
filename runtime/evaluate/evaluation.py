"""Evaluate one result clip against its input (and a truth where known), streamed a frame at a time.

Regions: the "mask" is the input mask dilated as the runtime dilates it before compositing (`dilation`
pixels at 480p, scaled with the frame as runtime.clips.plan does: `round(dilation * pixel_unit)` native
pixels, 4-connected), so "background" (its complement) is exactly the pixels the composite must keep.

Background SSIM compares the result with the input whose mask region holds the result's pixels, so
windows straddling the mask's edge measure only the background's differences (an exact background has
SSIM 1); SSIM inside the mask (against a truth) uses the frames as they are.

Memory: the current frame of each clip, the previous frame of the result and the reference, their
regions, and the per-frame temporaries of SSIM and the flow (about 20 float32 arrays of a frame's
size: under 0.6 GB at 1080p), whatever the clip's length; per-frame figures add a few numbers a frame.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from runtime.clips.job import MaskOptions
from runtime.clips.plan import DEFAULT_DILATION, PlanOptions, make_plan, pixel_unit
from runtime.clips.stream import mask_box
from runtime.errors import RemoverError
from runtime.evaluate.lpips import Lpips
from runtime.evaluate.metrics import RegionFigures, ssim_map
from runtime.evaluate.temporal import FlowWarp, seam_ratio, transition_change
from runtime.io import ClipReader, open_clip, open_masks
from runtime.pipeline.preprocess import dilate

MIN_SIDE = 11  # the SSIM window


@dataclass
class BackgroundFigures:
    """Outside the dilated mask, the result against the input. psnr_db None: the background is exact."""

    psnr_db: float | None
    ssim: float | None
    max_abs: int
    exact_frames: int


@dataclass
class TruthFigures:
    """The result against the clip without the object: whole frames and inside the dilated mask."""

    psnr_db: float | None
    ssim: float | None
    masked_psnr_db: float | None
    masked_ssim: float | None
    lpips: float | None


@dataclass
class TemporalFigures:
    """Warping error inside the dilated mask (mean absolute levels) of the result and of the reference
    (the truth, else the input), and the seam ratio at the window boundaries (None: one window)."""

    warp_error: float | None
    warp_error_reference: float | None
    reference: str
    seam_ratio: float | None
    window_boundaries: int


@dataclass
class Evaluation:
    """What `evaluate_clip` measured; `per_frame` holds one dict a frame when asked for."""

    frames: int
    background: BackgroundFigures
    truth: TruthFigures | None
    temporal: TemporalFigures | None
    dilation_px: int = 0
    notes: list[str] = field(default_factory=list)
    per_frame: list[dict[str, float | int | None]] | None = None

    def to_json(self) -> dict:
        """The issue's JSON shape (`null` for exact or unmeasured figures), plus dilation_px and notes."""
        return {
            "frames": self.frames,
            "background": asdict(self.background),
            "truth": asdict(self.truth) if self.truth else None,
            "temporal": asdict(self.temporal) if self.temporal else None,
            "dilation_px": self.dilation_px,
            "notes": self.notes,
        }

    def table(self) -> str:
        """The figures as an aligned two-column table for a terminal."""
        rows = [("frames", str(self.frames)), ("mask dilation (px)", str(self.dilation_px))]
        b = self.background
        rows += [
            ("background PSNR (dB)", "exact" if b.psnr_db is None else f"{b.psnr_db:.2f}"),
            ("background SSIM", _number(b.ssim, 4)),
            ("background max |diff|", str(b.max_abs)),
            ("background exact frames", f"{b.exact_frames} / {self.frames}"),
        ]
        if self.truth:
            t = self.truth
            rows += [
                ("truth PSNR (dB)", _number(t.psnr_db, 2, "exact")),
                ("truth SSIM", _number(t.ssim, 4)),
                ("masked PSNR (dB)", _number(t.masked_psnr_db, 2, "exact")),
                ("masked SSIM", _number(t.masked_ssim, 4)),
                ("LPIPS", _number(t.lpips, 4, "skipped")),
            ]
        if self.temporal:
            m = self.temporal
            rows += [
                ("warp error (levels)", _number(m.warp_error, 3)),
                (f"warp error of the {m.reference}", _number(m.warp_error_reference, 3)),
                (f"seam ratio ({m.window_boundaries} boundaries)", _number(m.seam_ratio, 2)),
            ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _number(value: float | None, digits: int, none: str = "-") -> str:
    return none if value is None else f"{value:.{digits}f}"


def _check_like(reader: ClipReader, video: ClipReader, what: str) -> None:
    a, b = reader.info, video.info
    if (a.width, a.height) != (b.width, b.height):
        raise RemoverError(f"the {what} is {a.width}x{a.height} and the video {b.width}x{b.height}")
    if a.frame_count != b.frame_count:
        raise RemoverError(f"the {what} has {a.frame_count} frames and the video {b.frame_count}")


def _frames(reader: ClipReader) -> Iterator[np.ndarray]:
    return (frame.image for frame in reader)


def _aligned(sources: dict[str, Iterator], count: int) -> Iterator[tuple]:
    """One item of each source per frame; a RemoverError when one ends before the others."""
    for index, items in enumerate(itertools.zip_longest(*sources.values())):
        missing = [name for name, item in zip(sources, items) if item is None]
        if missing:
            raise RemoverError(f"the {' and the '.join(missing)} ended after {index} frames (expected {count})")
        yield items


@dataclass
class _Previous:
    result: np.ndarray
    reference: np.ndarray
    truth: np.ndarray | None
    region: np.ndarray


def evaluate_clip(
    result: str | Path,
    video: str | Path,
    mask: str | Path,
    truth: str | Path | None = None,
    *,
    dilation: int = DEFAULT_DILATION,
    mask_options: MaskOptions | None = None,
    progress: bool = True,
    per_frame: bool = False,
    plan_options: PlanOptions | None = None,
    lpips: Lpips | None = None,
) -> Evaluation:
    """Measure the removal in `result` (any clip runtime.run reads or writes) of `mask` from `video`.

    `truth`: the clip without the object (truth figures; else None). `dilation`: the runtime's mask
    dilation in pixels at 480p. `plan_options`: the plan options the result was made with, for the seam
    ratio (default: the runtime's). `lpips`: a loaded model (runtime.evaluate.lpips.load_lpips) or None
    to skip LPIPS. Frame counts or sizes that differ, and masks that do not fit the video, are
    RemoverErrors before any work."""
    mask_options = mask_options or MaskOptions()
    if dilation < 0:
        raise RemoverError(f"the mask dilation must be >= 0, got {dilation}")
    with open_clip(video) as source, open_clip(result) as output:
        info = source.info
        _check_like(output, source, f"result {Path(result).name}")
        if min(info.width, info.height) < MIN_SIDE:
            raise RemoverError(f"frames of {info.width}x{info.height} are too small for SSIM (11x11 windows)")
        masks = open_masks(
            mask, info, threshold=mask_options.threshold, invert=mask_options.invert, channel=mask_options.channel
        )
        clean = open_clip(truth) if truth is not None else None
        try:
            if clean is not None:
                _check_like(clean, source, f"truth {Path(truth).name}")
            return _evaluate(output, source, masks, clean, dilation, progress, per_frame, plan_options, lpips)
        finally:
            if clean is not None:
                clean.close()


def _evaluate(output, source, masks, clean, dilation, progress, per_frame, plan_options, lpips) -> Evaluation:
    info = source.info
    count = info.frame_count
    radius = round(dilation * pixel_unit((info.height, info.width)))
    background, whole, inside = RegionFigures(), RegionFigures(), RegionFigures()
    warp, warp_reference = FlowWarp(), FlowWarp()
    warp_sums = np.zeros(4)  # result sum, count; reference sum, count
    lpips_sum, changes, boxes, rows = 0.0, [], [], []
    previous: _Previous | None = None
    sources = {"result": _frames(output), "video": _frames(source), "mask": iter(masks)}
    if clean is not None:
        sources["truth"] = _frames(clean)
    every = np.ones((info.height, info.width), bool)
    for index, items in enumerate(
        tqdm(_aligned(sources, count), total=count, desc="evaluate", unit="frame", disable=not progress)
    ):
        got, given, raw_mask = items[:3]
        truth_frame = items[3] if clean is not None else None
        boxes.append(mask_box(raw_mask))
        region = dilate(torch.from_numpy(raw_mask)[None], radius)[0].numpy()
        row: dict[str, float | int | None] = {"frame": index}
        keep = np.where(region[..., None], got, given)  # the input with the fill: SSIM sees only the background
        frame = background.add(got, given, ~region, ssim_map(got, keep))
        row.update({f"background_{k}": v for k, v in frame.items()})
        if truth_frame is not None:
            ssim = ssim_map(got, truth_frame)
            frame = whole.add(got, truth_frame, every, ssim)
            row.update({"truth_psnr_db": frame["psnr_db"], "truth_ssim": frame["ssim"]})
            frame = inside.add(got, truth_frame, region, ssim)
            row.update({"masked_psnr_db": frame["psnr_db"], "masked_ssim": frame["ssim"]})
            if lpips is not None:
                row["lpips"] = lpips(got, truth_frame)
                lpips_sum += row["lpips"]
        reference = truth_frame if truth_frame is not None else given
        if previous is not None:
            pair = previous.region | region
            error = warp.error(previous.result, got, pair)
            error_reference = warp_reference.error(previous.reference, reference, pair)
            warp_sums += (*error, *error_reference)
            row["warp_error"] = error[0] / error[1] if error[1] else None
            row["warp_error_reference"] = error_reference[0] / error_reference[1] if error_reference[1] else None
            changes.append(transition_change(previous.result, got, pair, previous.truth, truth_frame))
            row["change"] = changes[-1]
        previous = _Previous(got, reference, truth_frame, region)
        if per_frame:
            rows.append(row)
    if previous is None:
        raise RemoverError(f"{info.path} has no frames")
    frames = index + 1
    truth_figures = None
    if clean is not None:
        truth_figures = TruthFigures(
            whole.psnr_db, whole.ssim, inside.psnr_db, inside.ssim, lpips_sum / frames if lpips else None
        )
    temporal = None
    if frames > 1:
        plan = make_plan(frames, (info.height, info.width), boxes, plan_options or PlanOptions())
        boundaries = len(plan.windows) - 1
        temporal = TemporalFigures(
            warp_sums[0] / warp_sums[1] if warp_sums[1] else None,
            warp_sums[2] / warp_sums[3] if warp_sums[3] else None,
            "truth" if clean is not None else "input",
            seam_ratio(np.array(changes), plan.windows),
            boundaries,
        )
    figures = Evaluation(
        frames,
        BackgroundFigures(background.psnr_db, background.ssim, background.max_abs, background.exact_frames),
        truth_figures,
        temporal,
        radius,
        per_frame=rows if per_frame else None,
    )
    _check_finite(figures)
    return figures


def _check_finite(figures: Evaluation) -> None:
    """A figure that is not finite is a bug or broken input, never a number to report."""
    for group in (figures.background, figures.truth, figures.temporal):
        for name, value in (asdict(group) if group else {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise RemoverError(f"the {name} came out as {value}: the clips are not comparable")
