"""What a plan will cost before it runs: the cost model's figures for it, and the check that it fits
this machine's device and host memory (a RemoverError before any work when it does not)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from runtime.clips.plan import Plan
from runtime.clips.stream import host_bytes
from runtime.execution.cost_model import RunEstimate, achievable_flops, estimate_run
from runtime.execution.memory_fit import GB
from runtime.execution.memory_fit import check_fits as fits_here
from runtime.pipeline.preprocess import padded_frame_count

if TYPE_CHECKING:
    from runtime.pipeline.remover import Remover


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


def check_fits(plan: Plan, device: torch.device, figures: RunEstimate) -> None:
    """A RemoverError, before any work, when the plan cannot fit the device or the host (the check a
    `Remover` call makes too: `runtime.execution.memory_fit`)."""
    biggest = max(plan.model_windows, key=lambda w: w.size[0] * w.size[1] * w.frames, default=None)
    if biggest is not None:
        fits_here(device, figures, (biggest.frames, *biggest.size), plan.frame_size)


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
