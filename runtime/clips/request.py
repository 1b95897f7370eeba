"""One run of `python -m runtime.run`, as data (`Request`), and doing it (`run_request`): check every
option and the input, decide where the work runs (`Placement`), load the model, remove the object from
the file, and say what happened. The CLI builds a Request from argv; runtime/distributed/launch.py runs
one on every torchrun rank with its own placement."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from runtime.clips.job import fit_to_stages, open_job, remove_file, write_unchanged
from runtime.clips.preview import write_preview
from runtime.clips.stream import WindowRunner
from runtime.errors import RemoverError
from runtime.execution.choices import resolve_device
from runtime.io import ClipInfo, check_output, open_clip, open_masks
from runtime.loading import describe_loaded, load_remover
from runtime.options import MaskOptions, ModelOptions, OutputOptions, PlanOptions, RunOptions
from runtime.pipeline.remover import Remover
from runtime.segment import Prompt, SegmentOptions, check_prompts, describe_segmentation, prompted_mask


@dataclass(frozen=True)
class Request:
    """What one run asks for: the files, and every option (each checked when it was made). `own_size`:
    run at the clip's own size unless a size is given (the demo, whose model was trained at it). With
    `prompts` the mask is made by segmenting the clip first (`mask` is then unused)."""

    video: Path
    mask: Path
    out: Path
    model: ModelOptions = ModelOptions()
    run: RunOptions = RunOptions()
    plan: PlanOptions = field(default_factory=PlanOptions)
    masking: MaskOptions = MaskOptions()
    output: OutputOptions = OutputOptions()
    dry_run: bool = False
    preview: Path | None = None
    own_size: bool = False
    # instead of a mask file: prompts for SAM 2 (runtime/segment), its options, and where to keep its mask
    prompts: tuple[Prompt, ...] = ()
    segment: SegmentOptions | None = None
    save_mask: Path | None = None

    def plan_for(self, info: ClipInfo) -> PlanOptions:
        """The plan options for the opened clip (its own size with `own_size` and no size given)."""
        if self.own_size and self.plan.height is None and self.plan.width is None:
            return replace(self.plan, height=info.height, width=info.width)
        return self.plan


@dataclass(frozen=True)
class Placement:
    """Where a run's work happens: how the model loads and what computes the windows (None: the loaded
    model, in this process). runtime/distributed/launch.py gives torchrun's."""

    load: Callable[[ModelOptions, torch.device | None], Remover] = load_remover
    windows: Callable[[Remover, RunOptions], WindowRunner] | None = None
    note: str = ""  # what the summary adds, e.g. "windows shared by 4 ranks"


# decides the placement once the input is checked, from the plan options and the clip's frame count
Place = Callable[[PlanOptions, int], Placement]


def say(line: str, to_stdout: bool = False) -> None:
    """A line for the person running the command (stderr, so stdout keeps only the result)."""
    print(line, file=sys.stdout if to_stdout else sys.stderr)


def run_request(request: Request, place: Place | None = None) -> str:
    """Do the whole job; return the summary line. The clip, the output and any prompts are checked before
    a model loads; with prompts the clip is segmented first (its mask kept with `save_mask`, else a
    temporary file). `place` (torchrun's rank 0) decides where the work runs once the input is checked."""
    info = open_clip(request.video).info  # bad input fails before the model loads (remove_file opens it again)
    if not (request.dry_run or request.preview):
        inputs = [] if request.prompts else [request.mask]
        check_output(request.out, info, **request.output.writer_arguments(), inputs=inputs)
    if not request.prompts:
        return _remove(request, info, place)
    check_prompts(list(request.prompts), info)
    for line in describe_segmentation(list(request.prompts), request.segment, info):
        say(line, request.dry_run)
    if request.dry_run:
        return "dry run: the windows and crops are planned once the masks exist; nothing written"
    target = request.preview or request.out
    with prompted_mask(
        request.video,
        list(request.prompts),
        request.segment,
        save_mask=request.save_mask,
        work_folder=target.parent,
        overwrite=request.output.overwrite,
        progress=request.run.progress,
        say=say,
    ) as mask:
        return _remove(replace(request, mask=mask), info, place)


def _remove(request: Request, info: ClipInfo, place: Place | None) -> str:
    """The removal once the mask exists: plan, load, run (or draw the plan), say what happened."""
    device = resolve_device(request.model.device)
    options = request.plan_for(info)
    if request.preview and request.model.engine is None:  # the plan needs no model
        return preview(request, options)
    if not request.dry_run and not request.preview and request.run.paste_back and _mask_is_empty(request, info):
        seconds = write_unchanged(request.video, request.mask, request.out, request.output, request.run.progress)
        return f"wrote {request.out} ({info.frame_count} frames) unchanged in {seconds:.1f} s: the mask is empty"

    placement = place(options, info.frame_count) if place else Placement()
    start = time.perf_counter()
    remover = placement.load(request.model, device)
    load_s = time.perf_counter() - start
    say(describe_loaded(remover, request.model))
    if request.preview:
        return preview(request, fit_to_stages(options, remover.stages))
    windows = placement.windows(remover, request.run) if placement.windows else None
    plan, timings = remove_file(
        remover, request.video, request.mask, request.out, options, request.masking, request.output,
        run=request.run, dry_run=request.dry_run, say=lambda line: say(line, request.dry_run), windows=windows,
    )  # fmt: skip
    if request.dry_run:
        return f"dry run: {len(plan.model_windows)} window(s) would run; nothing written"
    stages = {"read": timings.pop("read"), "load": load_s, **timings}
    detail = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items())
    if placement.note:
        detail += f"; {placement.note}"
    out, frames, total = request.out, plan.frame_count, sum(stages.values())
    return f"wrote {out} ({frames} frames) in {total:.1f} s: {detail} ({remover.backends})"


def _mask_is_empty(request: Request, info: ClipInfo) -> bool:
    """Whether no frame's mask selects anything (the model is then not loaded at all)."""
    masks = open_masks(request.mask, info, **request.masking.reader_arguments())
    return not any(mask.any() for mask in masks)


def preview(request: Request, options: PlanOptions) -> str:
    """--preview: the plan drawn on the input; no model runs."""
    target = request.preview
    reader = open_clip(request.video)
    say(f"{request.video}: {reader.info.describe()}")
    check_output(target, reader.info, **request.output.writer_arguments())
    paste_back, progress = request.run.paste_back, request.run.progress
    job = open_job(reader, request.mask, options, request.masking, paste_back=paste_back, progress=progress)
    for line in job.plan.describe():
        say(line)
    write_preview(job, target, request.output, progress)
    return f"wrote the preview {target} ({job.plan.frame_count} frames)"


def run_within_memory(request: Request, place: Place | None = None) -> str:
    """`run_request`, with running out of memory reported as what the user can change."""
    try:
        return run_request(request, place)
    except torch.OutOfMemoryError as exc:
        raise RemoverError("out of memory; try a smaller --height/--width or --window") from exc
