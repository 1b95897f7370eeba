"""Whether model work of a given size fits this machine: the one check a run's plan and a `Remover` call
make before any work (a RemoverError naming what to change when it does not)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from runtime.errors import RemoverError
from runtime.execution.cost_model import RunEstimate

GB = 1e9
WORKING_BYTES_PER_PIXEL = 3 + 1 + 3 * 4  # a working-size frame: input (uint8 RGB), mask, generation (fp32 RGB)


@dataclass(frozen=True)
class Remedies:
    """What a person changes when work does not fit: on the device, and on the host."""

    device: str
    host: str


FLAG_REMEDIES = Remedies(
    "use a smaller --height/--width or --window", "use a smaller --window, or a smaller --height/--width"
)
CALL_REMEDIES = Remedies("pass a smaller height/width, or fewer frames", "pass fewer frames, or a smaller height/width")


def working_bytes(frames: int, height: int, width: int) -> int:
    """Host bytes of `frames` frames at the working size (height, width) while the model works on them."""
    return frames * height * width * WORKING_BYTES_PER_PIXEL


def available_host_bytes() -> int | None:
    """Memory the host can still give (MemAvailable on Linux), or None where that is unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(
    device: torch.device,
    figures: RunEstimate,
    window: tuple[int, int, int],
    frame_size: tuple[int, int],
    remedies: Remedies = FLAG_REMEDIES,
) -> None:
    """A RemoverError, before any work, when work costing `figures` cannot fit the device or the host.
    `window` (frames, height, width) is the largest model window, `frame_size` (height, width) the
    native frames it is cut from; `remedies` name what to change (the CLI's flags or a call's arguments)."""
    frames, height, width = window
    shape = f"{frames} frames at {width}x{height}"
    host_need = figures.host_bytes + (figures.device_bytes if device.type == "cpu" else 0)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if figures.device_bytes > free:
            raise RemoverError(
                f"this plan needs about {figures.device_bytes / GB:.1f} GB of GPU memory for a window of {shape}, "
                f"and {free / GB:.1f} GB are free: {remedies.device}"
            )
    host_free = available_host_bytes()
    if host_free is not None and host_need > host_free:
        raise RemoverError(
            f"this plan needs about {host_need / GB:.1f} GB of host memory (windows of {frames} frames of "
            f"{frame_size[1]}x{frame_size[0]}, model work on {shape}) and {host_free / GB:.1f} GB are available: "
            f"{remedies.host}"
        )
