"""One side of a comparison (ours or the reference) on one workload, measured inside this process.

`bench.run` starts a fresh process for every (side, workload, frame count), so each peak is clean:
the process loads the weights, resets the peak, then runs `warmup` untimed and `repeats` timed calls.
Both sides read the same input files with the same reader and write with the same writer (IO is not
the model's), start from the same initial latents and load the same checkpoint folder.

Stages of a pipeline call, in order: read, preprocess, encode, denoise (one span per DiT step
inside), decode (to frames in [0, 1] on the host), paste_back (ours only), write.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from bench.measure import NvmlMonitor, Span, StageRecorder, clock_and_memory
from bench.reference import ReferencePipeline
from bench.results import STAGE_ORDER, Side, Stage
from bench.workloads import MASK_DILATION, Workload, initial_noise
from runtime.io import read_clip, read_masks, write_clip
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer
from runtime.models.vae import RELEASED_VAE
from runtime.models.weights import load_scheduler_config, load_vae, locate_checkpoint
from runtime.pipeline.composite import to_uint8
from runtime.pipeline.remover import Remover
from runtime.pipeline.stages import TorchStages

DIT_STEP = "dit_step"


def load_side(
    side: str, kind: str, weights: Path, device: torch.device, dtype: torch.dtype, options: dict[str, Any]
) -> Any:
    """The loaded pipeline of one side; for "vae" workloads only its VAE is loaded. `options` are our
    `Remover.from_pretrained` keyword arguments (kernels, attention, compile_mode)."""
    if side == "ours":
        if kind == "pipeline":
            return Remover.from_pretrained(weights, device, dtype, **options)
        paths = locate_checkpoint(weights)
        with torch.device("meta"):  # the VAE stages never touch the transformer: it takes no memory
            transformer = RemoverTransformer(RELEASED_TRANSFORMER)
        vae = load_vae(paths.vae, device, dtype)
        stages = TorchStages(transformer, vae)
        return Remover(stages, load_scheduler_config(paths.scheduler), device=device, dtype=dtype)
    if kind == "pipeline":
        return ReferencePipeline.from_pretrained(weights, device, dtype)
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler

    vae = AutoencoderKLWan.from_pretrained(Path(weights) / "vae", torch_dtype=dtype).to(device).eval()
    scheduler = UniPCMultistepScheduler.from_pretrained(Path(weights) / "scheduler")
    return ReferencePipeline(None, vae, scheduler, device, dtype)


@contextmanager
def instrumented(model: Any, recorder: StageRecorder, paste_back: bool) -> Iterator[None]:
    """Mark a stage whenever the model enters encode, denoise or decode, and time every DiT call; with
    `paste_back`, what follows the decode inside the call is marked as the paste-back."""
    for stage in ("encode", "denoise", "decode"):
        setattr(model, stage, recorder.entering(stage, getattr(type(model), stage).__get__(model)))
    if paste_back:
        decode = model.decode

        def decode_then_paste_back(*args: Any, **kwargs: Any) -> Any:
            frames = decode(*args, **kwargs)
            recorder.mark("paste_back")
            return frames

        model.decode = decode_then_paste_back
    transformer = model.stages.transformer if isinstance(model, Remover) else model.transformer
    handles = recorder.time_module_calls(transformer, DIT_STEP) if transformer is not None else []
    try:
        yield
    finally:
        for stage in ("encode", "denoise", "decode"):
            delattr(model, stage)
        for handle in handles:
            handle.remove()


def pipeline_call(side: str, model: Any, workload: Workload, inputs: tuple[Path, Path]) -> Callable:
    """A function running one timed clip-to-clip job into a recorder."""

    def call(recorder: StageRecorder) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            recorder.mark("read")
            clip = read_clip(inputs[0])
            masks = read_masks(inputs[1], clip.info)
            noise = initial_noise(workload.latent_shape)
            recorder.mark("preprocess")
            options = {"height": workload.height, "width": workload.width, "latents": noise}
            options |= {"num_inference_steps": workload.steps, "mask_dilation": MASK_DILATION}
            if side == "ours":
                result = model(clip.frames, masks, progress=False, **options)
            else:
                result = model(clip.frames, masks, **options)
            recorder.mark("write")
            write_clip(Path(scratch) / "out.mp4", to_uint8(result), clip.fps)

    return call


def vae_call(side: str, model: Any, workload: Workload, latent_frames: int, stage: str) -> Callable:
    """A function running one VAE stage on one clip length: "encode" (the masked video and the mask
    video) or "decode"."""
    generator = torch.Generator().manual_seed(0)
    frames = 1 + RELEASED_VAE.temporal_factor * (latent_frames - 1)
    device, dtype = model.device, model.dtype
    if stage == "decode":
        shape = RELEASED_VAE.latent_shape(frames, workload.height, workload.width)
        latents = torch.randn(1, RELEASED_VAE.z_dim, *shape, generator=generator)
        latents = latents.to(device)
        return lambda recorder: model.decode(latents)
    video = torch.rand(3, frames, workload.height, workload.width, generator=generator) * 2 - 1
    mask = (torch.rand(frames, workload.height, workload.width, generator=generator) < 0.2).float()
    if side == "ours":  # Remover.encode takes fp32 [3, F, H, W] and [F, H, W], as its preprocessing makes them
        arguments = (video.to(device), mask.to(device))
    else:  # the reference's preprocessing makes [1, 3, F, H, W] masked and mask videos in the model dtype
        mask_video = mask[None, None].expand(1, 3, -1, -1, -1)
        arguments = ((video[None] * (1 - mask_video)).to(device, dtype), mask_video.to(device, dtype))
    return lambda recorder: model.encode(*arguments)


def _median(spans: list[Span], attribute: str) -> float | None:
    values = [getattr(span, attribute) for span in spans]
    return None if None in values else statistics.median(values)


def summarize(repeats: list[list[Span]], loaded_mb: float) -> dict[str, Any]:
    """Median wall (and, on the CPU, process CPU) seconds and the highest peak of every stage over the
    timed repeats, also above the memory the loaded model held; the DiT calls one by one (`Side` fields)."""
    stages: dict[str, Stage] = {}
    names = [name for name in STAGE_ORDER if any(s.name == name and s.depth == 0 for s in repeats[0])]
    for name in names:
        spans = [next(s for s in run if s.name == name and s.depth == 0) for run in repeats]
        peak = max(s.peak_mb for s in spans)
        stages[name] = Stage(_median(spans, "seconds"), peak, peak - loaded_mb, _median(spans, "cpu_seconds"))
    totals = [sum(s.seconds for s in run if s.depth == 0) for run in repeats]
    summary: dict[str, Any] = {
        "stages": stages,
        "total_s": statistics.median(totals),
        "peak_mem_mb": max(stage.peak_mb for stage in stages.values()),
        "repeat_totals_s": totals,
    }
    if all(stage.cpu_s is not None for stage in stages.values()):
        summary["total_cpu_s"] = statistics.median(sum(s.cpu_seconds for s in run if s.depth == 0) for run in repeats)
    steps = [[s for s in run if s.name == DIT_STEP] for run in repeats]
    if steps[0]:
        per_step = [[run[i] for run in steps] for i in range(len(steps[0]))]
        summary["dit_steps_s"] = [_median(calls, "seconds") for calls in per_step]
        summary["dit_step_peak_mb"] = max(s.peak_mb for run in steps for s in run)
        summary["sampler_s"] = stages["denoise"].seconds - sum(summary["dit_steps_s"])
        if "total_cpu_s" in summary:
            summary["dit_steps_cpu_s"] = [_median(calls, "cpu_seconds") for calls in per_step]
    return summary


def measure_side(
    side: str,
    workload: Workload,
    frames: int,
    *,
    weights: Path,
    device: torch.device,
    dtype: torch.dtype,
    inputs: tuple[Path, Path] | None,
    stage: str | None,
    warmup: int,
    repeats: int,
    options: dict[str, Any] | None = None,
) -> Side:
    """Load one side, run `warmup` + `repeats` calls, and return its figures. A "pipeline"
    workload runs the whole job on `inputs`; a "vae" workload runs `stage` on `frames` latent frames.
    `options` go to our `Remover.from_pretrained` (default: its own defaults)."""
    clock, memory = clock_and_memory(device)
    loadavg_before = os.getloadavg()
    start = time.perf_counter()
    memory.reset()
    model = load_side(side, workload.kind, weights, device, dtype, options or {})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    load_s, load_peak_mb, loaded_mb = time.perf_counter() - start, memory.peak_mb(), memory.current_mb()
    if workload.kind == "pipeline":
        call = pipeline_call(side, model, workload, inputs)
    else:
        call = vae_call(side, model, workload, frames, stage)
    monitor = NvmlMonitor(device) if device.type == "cuda" else nullcontext()
    runs = []
    with torch.inference_mode(), monitor:
        for index in range(warmup + repeats):
            recorder = StageRecorder(clock, memory)
            with instrumented(model, recorder, paste_back=side == "ours" and workload.kind == "pipeline"):
                call(recorder)
                spans = recorder.finish()
            if index >= warmup:
                runs.append(spans)
    pipeline = workload.kind == "pipeline"
    return Side(
        side=side,
        workload=workload.name,
        video_frames=frames if pipeline else 1 + 4 * (frames - 1),
        latent_frames=workload.latent_shape[0] if pipeline else frames,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        warmup=warmup,
        repeats=repeats,
        load_s=load_s,
        load_peak_mb=load_peak_mb,
        loaded_mb=loaded_mb,
        loadavg=[loadavg_before[0], os.getloadavg()[0]],
        backends=model.backends if side == "ours" and pipeline else None,
        nvml_peak_mb=monitor.peak_used_mb if device.type == "cuda" else None,
        **summarize(runs, loaded_mb),
    )
