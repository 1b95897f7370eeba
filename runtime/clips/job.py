"""A clip file in, a clip file out: what `python -m runtime.run` (and each clip of
`python -m runtime.batch`) does, for any length and resolution. `remove_file` is the whole of it:

    open the video and the mask (lazy) -> scan the masks once for their bounding boxes -> plan the
    windows and crops (runtime/plan.py) -> check that the plan fits this machine -> stream the
    windows into the output (runtime/stream.py), or draw the plan (runtime/preview.py)

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

from runtime.clips.plan import Plan, PlanOptions, make_plan
from runtime.clips.stream import host_bytes, mask_box, run_plan
from runtime.distributed.parallel import WindowShare
from runtime.errors import RemoverError
from runtime.execution.cost_model import RunEstimate, achievable_flops, estimate_run
from runtime.io import ClipReader, MaskSource, check_output, open_clip, open_masks, open_writer
from runtime.pipeline.preprocess import output_size, padded_frame_count, resize_frames, shrink_masks
from runtime.pipeline.remover import EmptyMaskWarning, Remover
from runtime.pipeline.stages import Stages

GB = 1e9


@dataclass(frozen=True)
class MaskOptions:
    """How mask files become masks (see runtime/io/masks.py)."""

    threshold: int | None = None
    invert: bool = False
    channel: str = "auto"


@dataclass(frozen=True)
class OutputOptions:
    """How the result is encoded (see runtime/io/writer.py)."""

    codec: str | None = None
    crf: int | None = None
    lossless: bool = False
    overwrite: bool = False

    def writer_arguments(self) -> dict:
        return {"codec": self.codec, "crf": self.crf, "lossless": self.lossless, "overwrite": self.overwrite}


@dataclass
class Job:
    """An opened video and mask and the plan made for them. With `working_size` (no paste-back) the
    frames and masks are brought to that size as they are read, and the plan is made at it."""

    video: ClipReader
    masks: MaskSource
    plan: Plan
    working_size: tuple[int, int] | None = None

    def frames(self) -> Iterator[tuple[np.ndarray, int | None]]:
        """(uint8 [H, W, 3], pts) in order, lazily."""
        for frame in self.video:
            image = frame.image
            if self.working_size is not None:
                image = resize_frames(image[None], self.working_size, torch.device("cpu"))[0]
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
    options.check()
    masks = open_masks(
        mask, reader.info, threshold=mask_options.threshold, invert=mask_options.invert, channel=mask_options.channel
    )
    info = reader.info
    frame_size = (info.height, info.width)
    working_size = None
    if not paste_back:
        working_size = output_size(*frame_size, options.height, options.width)
        options = replace(options, crop="off", height=working_size[0], width=working_size[1])
        frame_size = working_size
    scan = tqdm(
        _sized_masks(masks, working_size), total=info.frame_count, desc="scan masks", leave=False, disable=not progress
    )
    boxes = [mask_box(m) for m in scan]
    return Job(reader, masks, make_plan(info.frame_count, frame_size, boxes, options), working_size)


def estimate(job: Job, remover: Remover, steps: int) -> RunEstimate:
    """The cost model's figures for running `job.plan` on `remover`."""
    factor = remover.stages.vae_config.temporal_factor
    windows = [(padded_frame_count(w.frames, factor), *w.size) for w in job.plan.model_windows]
    element_bytes = torch.finfo(remover.dtype).bits // 8
    return estimate_run(
        windows,
        remover.stages.transformer_config,
        remover.stages.vae_config,
        steps,
        element_bytes,
        host_bytes(job.plan),
    )


def available_host_bytes() -> int | None:
    """Memory the host can still give (MemAvailable on Linux), or None where that is unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(job: Job, remover: Remover, figures: RunEstimate) -> None:
    """A RemoverError, before any work, when the plan cannot fit the device or the host."""
    plan, device = job.plan, remover.device
    biggest = max(plan.model_windows, key=lambda w: w.size[0] * w.size[1] * w.frames, default=None)
    if biggest is None:
        return
    shape = f"{biggest.frames} frames at {biggest.size[1]}x{biggest.size[0]}"
    host_need = figures.host_bytes + (figures.device_bytes if device.type == "cpu" else 0)
    host_free = available_host_bytes()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if figures.device_bytes > free:
            raise RemoverError(
                f"this plan needs about {figures.device_bytes / GB:.1f} GB of GPU memory for a window of {shape}, "
                f"and {free / GB:.1f} GB are free: use a smaller --height/--width or --window"
            )
    if host_free is not None and host_need > host_free:
        height, width = plan.frame_size
        raise RemoverError(
            f"this plan needs about {host_need / GB:.1f} GB of host memory (windows of {biggest.frames} frames of "
            f"{width}x{height}, model work on {shape}) and {host_free / GB:.1f} GB are available: use a smaller "
            "--window, or a smaller --height/--width"
        )


def run_job(
    job: Job,
    remover: Remover,
    out: str | Path,
    output: OutputOptions = OutputOptions(),
    *,
    steps: int = 6,
    seed: int = 42,
    progress: bool = True,
    share: WindowShare | None = None,
) -> dict[str, float]:
    """Stream the plan into `out` (committed only when every frame is written), with the other ranks'
    windows from them if `share`. Returns the seconds of each stage."""
    if not job.plan.model_windows:
        warnings.warn("the mask is empty: writing the input unchanged", EmptyMaskWarning, stacklevel=2)
    with open_writer(out, job.video.info, **output.writer_arguments()) as writer:
        return run_plan(
            remover,
            job.plan,
            job.frames(),
            job.mask_frames(),
            writer.write,
            steps=steps,
            seed=seed,
            paste_back=job.working_size is None,
            progress=progress,
            share=share,
        )


def describe_estimate(figures: RunEstimate, device: torch.device) -> str:
    """The estimate line a run prints: FLOPs, a rough time on this device, and the memory figures."""
    rate = achievable_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else "", device.type)
    seconds = figures.flops / rate
    roughly = f"roughly {seconds:.0f} s" if seconds >= 1 else "under a second"
    return (
        f"estimate: {figures.flops / 1e12:.2f} TFLOP of model work, {roughly} here; "
        f"peak memory about {figures.device_bytes / GB:.2f} GB on the device beyond the "
        f"{figures.weight_bytes / GB:.2f} GB of weights, {figures.host_bytes / GB:.2f} GB of frames on the host"
    )


def remove_file(
    remover: Remover,
    video: str | Path,
    mask: str | Path,
    out: str | Path,
    options: PlanOptions | None = None,
    mask_options: MaskOptions = MaskOptions(),
    output: OutputOptions = OutputOptions(),
    *,
    steps: int = 6,
    seed: int = 42,
    paste_back: bool = True,
    progress: bool = True,
    dry_run: bool = False,
    say: Callable[[str], None] = lambda line: None,
    share: WindowShare | None = None,
) -> tuple[Plan, dict[str, float]]:
    """Remove the masked object from the clip file `video` into `out`, saying what it does (the clip,
    the plan, the estimate) through `say` before any work. Bad input, a plan that cannot fit and an
    output that exists (without `output.overwrite`) are RemoverErrors before any work. `dry_run`
    stops after the checks and writes nothing. `share`: rank 0 of a torchrun group sharing the windows
    (`runtime.distributed.parallel.WindowShare`). Returns the plan and the seconds of each stage."""
    start = time.perf_counter()
    reader = open_clip(video)
    say(f"{video}: {reader.info.describe()}")
    if not dry_run:
        check_output(out, reader.info, **output.writer_arguments())
    options = fit_to_stages(options or PlanOptions(), remover.stages)
    job = open_job(reader, mask, options, mask_options, paste_back=paste_back, progress=progress)
    scan_s = time.perf_counter() - start
    for line in job.plan.describe():
        say(line)
    figures = estimate(job, remover, steps)
    say(describe_estimate(figures, remover.device))
    check_fits(job, remover, figures)
    if dry_run:
        return job.plan, {}
    timings = run_job(job, remover, out, output, steps=steps, seed=seed, progress=progress, share=share)
    return job.plan, {"read": scan_s + timings.pop("read", 0.0), **timings}
