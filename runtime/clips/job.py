"""A clip file in, a clip file out: what `python -m runtime.run` (and each clip of
`python -m runtime.batch`) does, for any length and resolution. `remove_file` is the whole of it:

    open the video and the mask (lazy) -> scan the masks once for their bounding boxes -> plan the
    windows and crops (runtime/clips/plan.py) -> check that the plan fits this machine -> stream the
    windows into the output (runtime/clips/stream.py), or draw the plan (runtime/clips/preview.py)

Nothing is written unless the whole run succeeds: the writer works under a temporary name.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from runtime.clips.estimate import check_fits, describe_estimate, estimate
from runtime.clips.plan import Plan, make_plan
from runtime.clips.plan import working_size as plan_working_size
from runtime.clips.stream import LocalWindows, WindowRunner, run_plan
from runtime.errors import RemoverError, RemoverWarning
from runtime.io import ClipReader, MaskSource, check_output, copy_clip, open_clip, open_masks, open_writer
from runtime.options import MaskOptions, OutputOptions, PlanOptions, RunOptions
from runtime.pipeline.coverage import covers_nearly_all, mask_box
from runtime.pipeline.preprocess import resize_frames, shrink_masks
from runtime.pipeline.remover import EmptyMaskWarning, Remover
from runtime.pipeline.stages import Stages
from runtime.pipeline.timing import Timings


@dataclass
class Job:
    """An opened video and mask and the plan made for them. With `working_size` (no paste-back) the
    frames (resized as the plan's `resize` says) and masks (shrunk by area) are brought to that size as
    they are read, and the plan is made at it."""

    video: ClipReader
    masks: MaskSource
    plan: Plan
    working_size: tuple[int, int] | None = None

    def frames(self) -> Iterator[tuple[np.ndarray, int | None]]:
        """(uint8 [H, W, 3], pts) in order, lazily."""
        for frame in self.video:
            image = frame.image
            if self.working_size is not None:
                antialias = self.plan.options.resize == "antialias"
                image = resize_frames(image[None], self.working_size, torch.device("cpu"), antialias)[0]
            yield image, frame.pts

    def mask_frames(self) -> Iterator[np.ndarray]:
        """bool [H, W] per frame, lazily."""
        return _sized_masks(self.masks, self.working_size)


def _sized_masks(masks: MaskSource, size: tuple[int, int] | None) -> Iterator[np.ndarray]:
    for mask in masks:
        yield mask if size is None else shrink_masks(mask[None], size, torch.device("cpu"))[0]


def fit_to_stages(options: PlanOptions, stages: Stages) -> PlanOptions:
    """The plan options an engine bundle allows: its size (another is an error), whole frames, its frame
    count per window (exactly that many for a static bundle), an overlap of at most half a window."""
    limit = stages.window_frames
    if limit is None:
        return options
    if options.crop == "on":
        raise RemoverError("--crop on needs the PyTorch modules: an engine bundle runs one fixed size")
    frames, exact = limit
    height, width = stages.default_size
    stages.check_size(frames, options.height or height, options.width or width)  # another size: a clear error
    window = options.window if options.window and options.window <= frames else frames
    overlap = min(options.overlap, (window - 1) // 2)  # a short bundle keeps most of each window new
    return replace(options, crop="off", height=height, width=width, window=window, overlap=overlap, fixed_window=exact)


def open_job(
    reader: ClipReader,
    mask: str | Path,
    options: PlanOptions,
    mask_options: MaskOptions = MaskOptions(),
    *,
    paste_back: bool = True,
    progress: bool = True,
) -> Job:
    """Open the mask for the opened video, scan it and make the plan. Without `paste_back` the clip is
    processed (and written) at the working size, whole frames only."""
    masks = open_masks(mask, reader.info, **mask_options.reader_arguments())
    info = reader.info
    frame_size = (info.height, info.width)
    working_size = None
    if not paste_back:
        working_size = plan_working_size(frame_size, options)
        options = replace(options, crop="off", height=working_size[0], width=working_size[1])
        frame_size = working_size
    scan = tqdm(
        _sized_masks(masks, working_size), total=info.frame_count, desc="scan masks", leave=False, disable=not progress
    )
    boxes, full = [], []
    for index, mask in enumerate(scan):
        box = mask_box(mask)
        boxes.append(box)
        if covers_nearly_all(mask, box):
            full.append(index)
    plan = make_plan(info.frame_count, frame_size, boxes, options)
    if full:
        plan = replace(plan, nearly_full=(len(full), full[0]))
        warnings.warn(plan.nearly_full_note(), RemoverWarning, stacklevel=2)
    return Job(reader, masks, plan, working_size)


def run_job(job: Job, out: str | Path, output: OutputOptions, windows: WindowRunner, progress: bool = True) -> Timings:
    """Stream the plan into `out` (committed only when every frame is written), each window made by
    `windows` (`LocalWindows(remover, run)` in one process). Returns the seconds of each stage."""
    if not job.plan.model_windows:
        warnings.warn("the mask is empty: writing the input unchanged", EmptyMaskWarning, stacklevel=2)
    with open_writer(out, job.video.info, **output.writer_arguments(), inputs=[job.masks.path]) as writer:
        return run_plan(job.plan, job.frames(), job.mask_frames(), writer.write, windows, progress)


def remove_file(
    remover: Remover,
    video: str | Path,
    mask: str | Path,
    out: str | Path,
    options: PlanOptions | None = None,
    mask_options: MaskOptions = MaskOptions(),
    output: OutputOptions = OutputOptions(),
    *,
    run: RunOptions = RunOptions(),
    dry_run: bool = False,
    say: Callable[[str], None] = lambda line: None,
    windows: WindowRunner | None = None,
) -> tuple[Plan, dict[str, float]]:
    """Remove the masked object from the clip file `video` into `out`, saying what it does (the clip,
    the plan, the estimate) through `say` before any work. Bad input, a plan that cannot fit and an
    output that exists (without `output.overwrite`) are RemoverErrors before any work. `dry_run`
    stops after the checks and writes nothing. `windows` makes each window (default: `remover`, here,
    with `run`; runtime/distributed shares them over ranks). Returns the plan and the seconds of each
    stage."""
    start = time.perf_counter()
    reader = open_clip(video)
    say(f"{video}: {reader.info.describe()}")
    if not dry_run:
        check_output(out, reader.info, **output.writer_arguments(), inputs=[mask])
    options = fit_to_stages(options or PlanOptions(), remover.stages)
    job = open_job(reader, mask, options, mask_options, paste_back=run.paste_back, progress=run.progress)
    scan_s = time.perf_counter() - start
    for line in job.plan.describe():
        say(line)
    figures = estimate(job.plan, remover, run.steps)
    say(describe_estimate(figures, remover.device))
    check_fits(job.plan, remover.device, figures)
    if dry_run:
        return job.plan, {}
    if not job.plan.model_windows and run.paste_back:
        return job.plan, {"read": scan_s, "copy": write_unchanged(video, mask, out, output, run.progress)}
    timings = run_job(job, out, output, windows or LocalWindows(remover, run), run.progress)
    return job.plan, {"read": scan_s + timings.pop("read", 0.0), **timings}


def write_unchanged(
    video: str | Path, mask: str | Path, out: str | Path, output: OutputOptions, progress: bool = True
) -> float:
    """The clip whose mask is empty, written to `out` unchanged: its streams copied where the container
    takes them (else losslessly), never re-encoded lossily and never through the model. Returns the
    seconds it took."""
    start = time.perf_counter()
    warnings.warn("the mask is empty: writing the input unchanged", EmptyMaskWarning, stacklevel=3)
    copy_clip(video, out, **output.writer_arguments(), inputs=[mask], progress=progress)
    return time.perf_counter() - start
