"""What a plan will cost before it runs: the cost model's figures for it, and the check that it fits
this machine's device and host memory (a RemoverError before any work when it does not)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from runtime.clips.plan import Plan
from runtime.clips.stream import host_bytes
from runtime.errors import RemoverError
from runtime.execution.cost_model import RunEstimate, achievable_flops, estimate_run
from runtime.pipeline.preprocess import padded_frame_count

if TYPE_CHECKING:
    from runtime.pipeline.remover import Remover

GB = 1e9


def estimate(plan: Plan, remover: Remover, steps: int) -> RunEstimate:
    """The cost model's figures for running `plan` on `remover`."""
    factor = remover.stages.vae_config.temporal_factor
    windows = [(padded_frame_count(w.frames, factor), *w.size) for w in plan.model_windows]
    element_bytes = torch.finfo(remover.dtype).bits // 8
    return estimate_run(
        windows,
        remover.stages.transformer_config,
        remover.stages.vae_config,
        steps,
        element_bytes,
        host_bytes(plan),
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


def check_fits(plan: Plan, device: torch.device, figures: RunEstimate) -> None:
    """A RemoverError, before any work, when the plan cannot fit the device or the host."""
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
