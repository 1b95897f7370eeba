"""Evaluate one result clip against its input (and a truth where known), streamed a frame at a time.

Regions: the "mask" is every pixel the runtime's paste-back may change, found as the stream finds it
from the plan the run made (the same plan options: `plan_options`, default the runtime's, with
`dilation`): for each window producing the frame, the mask cut to the window's box, dilated there by
the window's dilation (with --resize antialias: first brought to its working size by
runtime.pipeline.preprocess.shrink_masks, dilated there and resized back bilinearly as the composite
resizes its blend weights, nonzero). That is the mask dilated by `dilation` pixels at 480p
(4-connected); antialiased and scaled, a little more. "Background"
(its complement) is then exactly the pixels the composite must keep: with the run's options, a result
of runtime.run written losslessly has an exact background. The masks are scanned once for their boxes
before the frames are read, as runtime.run does.

Background SSIM compares the result with the input whose mask region holds the result's pixels, so
windows straddling the mask's edge measure only the background's differences (an exact background has
SSIM 1); SSIM inside the mask (against a truth) uses the frames as they are.

Memory: the current frame of each clip, the previous frame of the result and the reference, their
regions, and the per-frame temporaries of SSIM and the flow (about 20 float32 arrays of a frame's
size: 0.57 GB measured at 1080p with a truth), whatever the clip's length; per-frame figures add a few
numbers a frame. Nothing is held on a GPU (LPIPS runs on the CPU).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from runtime.clips.plan import Plan, Window, make_plan
from runtime.errors import RemoverError
from runtime.evaluate.clip import ClipFeatures
from runtime.evaluate.lpips import Lpips
from runtime.evaluate.metrics import RegionFigures, ssim_map
from runtime.evaluate.temporal import FlowWarp, seam_ratio, transition_change
from runtime.io import ClipReader, MaskSource, open_clip, open_masks
from runtime.options import DEFAULT_DILATION, MaskOptions, PlanOptions
from runtime.pipeline.coverage import mask_box
from runtime.pipeline.preprocess import resize, resize_frames, shrink_masks

MIN_SIDE = 11  # the SSIM window
CPU = torch.device("cpu")


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
    (the truth, else the input), the seam ratio at the window boundaries (None: one window), and TC:
    the mean cosine similarity of consecutive frames' CLIP features, whole frames (None: not measured)."""

    warp_error: float | None
    warp_error_reference: float | None
    reference: str
    seam_ratio: float | None
    window_boundaries: int
    tc: float | None = None
    tc_reference: float | None = None


@dataclass
class Evaluation:
    """What `evaluate_clip` measured; `per_frame` holds one dict a frame when asked for."""

    frames: int
    background: BackgroundFigures
    truth: TruthFigures | None
    temporal: TemporalFigures | None
    dilation_px: int = 0  # the largest dilation of the plan's windows, in their working pixels
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
        rows = [("frames", str(self.frames)), ("mask dilation (working px)", str(self.dilation_px))]
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
                ("TC (CLIP)", _number(m.tc, 4, "skipped")),
                (f"TC of the {m.reference}", _number(m.tc_reference, 4, "skipped")),
            ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _number(value: float | None, digits: int, none: str = "-") -> str:
    return none if value is None else f"{value:.{digits}f}"


def _check_like(reader: ClipReader, video: ClipReader, what: str, same_size: bool = True) -> None:
    a, b = reader.info, video.info
    if same_size and (a.width, a.height) != (b.width, b.height):
        raise RemoverError(f"the {what} is {a.width}x{a.height} and the video {b.width}x{b.height}")
    if a.frame_count != b.frame_count:
        raise RemoverError(f"the {what} has {a.frame_count} frames and the video {b.frame_count}")


def _aligned(sources: dict[str, Iterator], count: int) -> Iterator[tuple]:
    """One item of each source per frame; a RemoverError when one ends before the others."""
    for index, items in enumerate(itertools.zip_longest(*sources.values())):
        missing = [name for name, item in zip(sources, items) if item is None]
        if missing:
            raise RemoverError(f"the {' and the '.join(missing)} ended after {index} frames (expected {count})")
        yield items


@dataclass
class _Inputs:
    """The opened clips, read at the size compared: the video's, or the result's for a result at the
    working size (runtime.run --no-paste-back), the others brought to it as the runtime brings them."""

    result: ClipReader
    video: ClipReader
    masks: MaskSource
    truth: ClipReader | None
    resize: bool
    antialias: bool

    @property
    def size(self) -> tuple[int, int]:
        return self.result.info.height, self.result.info.width

    def _frames(self, reader: ClipReader) -> Iterator[np.ndarray]:
        for frame in reader:
            image = frame.image
            yield resize_frames(np.array(image[None]), self.size, CPU, self.antialias)[0] if self.resize else image

    def mask_frames(self) -> Iterator[np.ndarray]:
        for mask in self.masks:
            yield shrink_masks(mask[None], self.size, CPU)[0] if self.resize else mask

    def frames(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
        """(result, video, mask, truth or None) per frame, lazily."""
        sources = {"result": (f.image for f in self.result), "video": self._frames(self.video)}
        sources["mask"] = self.mask_frames()
        if self.truth is not None:
            sources["truth"] = self._frames(self.truth)
        for items in _aligned(sources, self.result.info.frame_count):
            yield (*items[:3], items[3] if self.truth is not None else None)


def footprint(mask: np.ndarray, window: Window) -> np.ndarray:
    """bool [H, W]: the pixels `window`'s paste-back may change in a frame with `mask` (bool [H, W]), as
    runtime.clips.stream and runtime.pipeline.composite compute it (its dilation by the 3x3 cross, n
    times, is an L1 distance of at most n: found here in one distance transform)."""
    out = np.zeros(mask.shape, bool)
    box = window.box
    if box is None:
        return out
    crop = np.ascontiguousarray(mask[box.top : box.bottom, box.left : box.right])
    dilated_at = shrink_masks(crop[None], window.size, CPU)[0] if window.resize == "antialias" else crop
    if not dilated_at.any():
        return out
    distance = cv2.distanceTransform((~dilated_at).astype(np.uint8), cv2.DIST_L1, 3)
    dilated = torch.from_numpy(distance <= window.dilation).float()[None, None]
    out[box.top : box.bottom, box.left : box.right] = (resize(dilated, crop.shape)[0, 0] > 0).numpy()
    return out


def producers(plan: Plan) -> list[list[Window]]:
    """For each frame, the windows whose output it is (two where crossfaded)."""
    found: list[list[Window]] = [[] for _ in range(plan.frame_count)]
    for window in plan.windows:
        for index in range(window.start + window.known, window.stop):
            found[index].append(window)
    return found


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
    paste_back: bool = True,
    lpips: Lpips | None = None,
    flow: bool = True,
    clip: ClipFeatures | None = None,
) -> Evaluation:
    """Measure the removal in `result` (any clip runtime.run reads or writes) of `mask` from `video`.

    `truth`: the clip without the object (truth figures; else None). `plan_options`: the plan options
    the result was made with (default: the runtime's), for the regions and the seam ratio; `dilation`
    (pixels at 480p) replaces theirs. `paste_back` False: the result is the raw generation at the
    working size (runtime.run --no-paste-back, what the released code returns), and the video, truth
    and masks are brought to its size. `lpips`: a loaded model (runtime.evaluate.lpips.load_lpips) or
    None to skip LPIPS. `flow` False skips the optical flow (the warp errors are None; the costliest
    figure). `clip`: a loaded CLIP image encoder (runtime.evaluate.clip.load_clip) for TC, of the result
    and of the reference, or None to skip it. Frame counts or sizes that differ, and masks that do not
    fit the video, are RemoverErrors before any work."""
    mask_options = mask_options or MaskOptions()
    options = replace(plan_options or PlanOptions(), dilation=dilation)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_clip(video))
        output = stack.enter_context(open_clip(result))
        _check_like(output, source, f"result {Path(result).name}", paste_back)
        size = output.info.height, output.info.width
        if min(size) < MIN_SIDE:
            raise RemoverError(f"frames of {size[1]}x{size[0]} are too small for SSIM (11x11 windows)")
        masks = open_masks(
            mask,
            source.info,
            threshold=mask_options.threshold,
            invert=mask_options.invert,
            channel=mask_options.channel,
        )
        clean = None
        if truth is not None:
            clean = stack.enter_context(open_clip(truth))
            _check_like(clean, source, f"truth {Path(truth).name}")
        if not paste_back:
            options = replace(options, crop="off", height=size[0], width=size[1])
        inputs = _Inputs(output, source, masks, clean, not paste_back, options.resize == "antialias")
        plan = _plan(inputs, options, progress)
        figures = _Figures(plan, clean is not None, lpips, per_frame, flow, clip)
        frames = tqdm(inputs.frames(), total=plan.frame_count, desc="evaluate", unit="frame", disable=not progress)
        for index, (got, given, raw_mask, truth_frame) in enumerate(frames):
            figures.add(index, got, given, raw_mask, truth_frame)
        return figures.finish()


def _plan(inputs: _Inputs, options: PlanOptions, progress: bool) -> Plan:
    """The plan the run made: the masks scanned once for their boxes, as runtime.run does."""
    count = inputs.result.info.frame_count
    scan = tqdm(inputs.mask_frames(), total=count, desc="scan masks", leave=False, disable=not progress)
    boxes = [mask_box(mask) for mask in scan]
    if len(boxes) != count:
        raise RemoverError(f"the mask has {len(boxes)} frames, the video {count}")
    return make_plan(count, inputs.size, boxes, options)


class _Figures:
    """The running sums of every figure, a frame at a time; holds the previous frame for the temporal ones."""

    def __init__(
        self, plan: Plan, with_truth: bool, lpips: Lpips | None, per_frame: bool, flow: bool, clip: ClipFeatures | None
    ) -> None:
        self.plan, self.with_truth, self.lpips, self.flow, self.clip = plan, with_truth, lpips, flow, clip
        self.clip_previous: tuple[torch.Tensor, torch.Tensor] | None = None
        self.tc_sums = np.zeros(2)  # the result's and the reference's summed cosine similarities
        self.made_by = producers(plan)
        self.background, self.whole, self.inside = RegionFigures(), RegionFigures(), RegionFigures()
        self.warp, self.warp_reference = FlowWarp(), FlowWarp()
        self.warp_sums = np.zeros(4)  # result: summed error, values; reference: the same
        self.lpips_sum, self.changes, self.frames = 0.0, [], 0
        self.rows: list[dict] | None = [] if per_frame else None
        self.previous: _Previous | None = None

    def add(self, index: int, got: np.ndarray, given: np.ndarray, mask: np.ndarray, truth: np.ndarray | None) -> None:
        region = np.zeros(mask.shape, bool)
        for window in self.made_by[index]:
            region |= footprint(mask, window)
        row: dict[str, float | int | None] = {"frame": index}
        keep = np.where(region[..., None], got, given)  # the input with the fill: SSIM sees only the background
        row |= {f"background_{k}": v for k, v in self.background.add(got, given, ~region, ssim_map(got, keep)).items()}
        if truth is not None:
            ssim = ssim_map(got, truth)
            frame = self.whole.add(got, truth, np.ones(mask.shape, bool), ssim)
            row |= {"truth_psnr_db": frame["psnr_db"], "truth_ssim": frame["ssim"]}
            frame = self.inside.add(got, truth, region, ssim)
            row |= {"masked_psnr_db": frame["psnr_db"], "masked_ssim": frame["ssim"]}
            if self.lpips is not None:
                row["lpips"] = self.lpips(got, truth)
                self.lpips_sum += row["lpips"]
        reference = truth if truth is not None else given
        previous = self.previous
        if previous is not None:
            pair = previous.region | region
            if self.flow:
                error = self.warp.error(previous.result, got, pair)
                error_reference = self.warp_reference.error(previous.reference, reference, pair)
                self.warp_sums += (*error, *error_reference)
                row["warp_error"] = error[0] / error[1] if error[1] else None
                row["warp_error_reference"] = error_reference[0] / error_reference[1] if error_reference[1] else None
            self.changes.append(transition_change(previous.result, got, pair, previous.truth, truth))
            row["change"] = self.changes[-1]
        if self.clip is not None:
            features = self.clip(got), self.clip(reference)
            if self.clip_previous is not None:
                similarity = [float(a @ b) for a, b in zip(self.clip_previous, features)]
                self.tc_sums += similarity
                row["tc"], row["tc_reference"] = similarity
            self.clip_previous = features
        self.previous = _Previous(got, reference, truth, region)
        self.frames += 1
        if self.rows is not None:
            self.rows.append(row)

    def finish(self) -> Evaluation:
        if self.frames == 0:
            raise RemoverError("the clips have no frames")
        truth = None
        if self.with_truth:
            lpips = self.lpips_sum / self.frames if self.lpips else None
            truth = TruthFigures(self.whole.psnr_db, self.whole.ssim, self.inside.psnr_db, self.inside.ssim, lpips)
        temporal = None
        if self.frames > 1:
            sums = self.warp_sums
            temporal = TemporalFigures(
                sums[0] / sums[1] if sums[1] else None,
                sums[2] / sums[3] if sums[3] else None,
                "truth" if self.with_truth else "input",
                seam_ratio(np.array(self.changes), self.plan.windows),
                len(self.plan.windows) - 1,
                *((self.tc_sums / (self.frames - 1)).tolist() if self.clip is not None else (None, None)),
            )
        b = self.background
        figures = Evaluation(
            self.frames,
            BackgroundFigures(b.psnr_db, b.ssim, b.max_abs, b.exact_frames),
            truth,
            temporal,
            max((w.dilation for w in self.plan.model_windows), default=0),
            per_frame=self.rows,
        )
        _check_finite(figures)
        return figures


def _check_finite(figures: Evaluation) -> None:
    """A figure that is not finite is a bug or broken input, never a number to report."""
    for group in (figures.background, figures.truth, figures.temporal):
        for name, value in (asdict(group) if group else {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise RemoverError(f"the {name} came out as {value}: the clips are not comparable")
