"""`python -m runtime.run` under torchrun: rank 0 does the job as one process does and tells the others
when to load the model (after its input checks), how to share the clip, and when to stop; the others
load the same model and compute their share of each window's denoising (sequence.py), or whole
crossfaded windows of their own (windows.py). Only rank 0 prints, but for errors."""

from __future__ import annotations

from dataclasses import replace

import torch

from runtime.clips.job import open_job
from runtime.clips.plan import window_spans
from runtime.clips.request import Placement, Request, run_within_memory
from runtime.clips.stream import LocalWindows
from runtime.distributed import local_device, rank, sequence, world_size
from runtime.distributed.group import GroupFailed, join, leave
from runtime.distributed.messages import Mode, Start, expect_stop, receive, send, stop_others
from runtime.distributed.windows import SharedWindows, compute_own_windows
from runtime.execution.choices import resolve_device
from runtime.io import open_clip
from runtime.loading import load_remover
from runtime.options import PlanOptions, RunOptions
from runtime.pipeline.remover import Remover


def choose_mode(blend: str, windows: int, dry_run: bool = False) -> Mode:
    """WINDOWS when windows are independent (crossfaded) and there are enough for every rank, else
    SEQUENCE (also for a dry run, which computes nothing)."""
    return Mode.WINDOWS if blend == "crossfade" and windows >= world_size() and not dry_run else Mode.SEQUENCE


def run_in_group(request: Request) -> str:
    """This rank's part of the run; rank 0 returns the summary line, the others ""."""
    device = local_device(resolve_device(request.model.device))
    request = replace(request, model=replace(request.model, device=str(device)))
    join(device)
    if rank() != 0:
        message = receive(device)
        if isinstance(message, Start) and message.mode == Mode.SEQUENCE:
            sequence.follow(sequence.split(load_remover(request.model, device)))
        elif isinstance(message, Start):
            compute_shared_windows(request, device)
            expect_stop(device)
        leave()
        return ""

    def place(options: PlanOptions, frame_count: int) -> Placement:
        windows = len(window_spans(frame_count, options.window, options.overlap))
        mode = choose_mode(options.blend, windows, request.dry_run)
        send(Start(mode), device)
        if mode == Mode.SEQUENCE:
            return Placement(load=lambda model, device: sequence.split(load_remover(model, device)))

        def shared(remover: Remover, run: RunOptions) -> SharedWindows:
            return SharedWindows(LocalWindows(remover, run), world_size())

        return Placement(windows=shared, note=f"windows shared by {world_size()} ranks")

    try:
        result = run_within_memory(request, place)
    except GroupFailed:
        raise  # the others are gone or stuck: nobody to tell
    except BaseException:
        stop_others(device, together=False)
        raise
    stop_others(device)
    return result


def compute_shared_windows(request: Request, device: torch.device) -> None:
    """A rank other than 0 sharing crossfaded windows: open the same clip, make the same plan, and
    compute this rank's windows for rank 0."""
    reader = open_clip(request.video)
    options = request.plan_for(reader.info)
    remover = load_remover(request.model, device)
    run = replace(request.run, progress=False)
    job = open_job(reader, request.mask, options, request.masking, paste_back=run.paste_back, progress=False)
    compute_own_windows(remover, job.plan, job.frames(), job.mask_frames(), run, rank(), world_size())
