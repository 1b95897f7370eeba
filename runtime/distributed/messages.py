"""What rank 0 tells the other ranks, as typed messages over broadcasts.

    Start(mode)      load the model and share the clip this way (after rank 0's input checks)
    Denoise(...)     a window's denoising inputs (the transformer split by sequence)
    Stop()           the end (rank 0 is done, or failed)

On the wire: a header of int64 fields [kind, mode, steps, frames, height, width, has_guidance] and the
guidance scale (float64), then for Denoise the noise and context latents; each field means one thing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

from runtime.distributed import rank
from runtime.distributed.group import GroupFailed, broadcast, leave


class Mode(IntEnum):
    """How the ranks share a clip: the transformer split by sequence, or whole windows each (crossfaded
    windows only)."""

    SEQUENCE = 0
    WINDOWS = 1


@dataclass(frozen=True)
class Start:
    mode: Mode


@dataclass(frozen=True)
class Denoise:
    noise: Tensor  # [1, z_dim, T', h, w] fp32
    context: Tensor  # [1, 2 z_dim, T', h, w] in the model's dtype
    steps: int
    guidance_scale: float | None


@dataclass(frozen=True)
class Stop:
    pass


Message = Start | Denoise | Stop
_KINDS = {Stop: 0, Start: 1, Denoise: 2}
_FIELDS = 7


def send(message: Message, device: torch.device) -> None:
    """Rank 0: `message` to every other rank."""
    header = torch.zeros(_FIELDS, dtype=torch.int64)
    guidance = torch.zeros(1, dtype=torch.float64)
    header[0] = _KINDS[type(message)]
    if isinstance(message, Start):
        header[1] = message.mode
    if isinstance(message, Denoise):
        _, _, frames, height, width = message.noise.shape
        has_guidance = message.guidance_scale is not None
        header[2:] = torch.tensor([message.steps, frames, height, width, has_guidance])
        guidance[0] = message.guidance_scale or 0.0
    broadcast(header, device)
    broadcast(guidance, device)
    if isinstance(message, Denoise):
        for tensor in (message.noise, message.context):
            broadcast(tensor.contiguous(), device)


def receive(device: torch.device, z_dim: int = 0, dtype: torch.dtype = torch.float32) -> Message:
    """The other ranks: rank 0's next message (`z_dim` and `dtype`: the latents a Denoise carries)."""
    header = broadcast(torch.zeros(_FIELDS, dtype=torch.int64), device).tolist()
    guidance = float(broadcast(torch.zeros(1, dtype=torch.float64), device)[0])
    kind, mode, steps, frames, height, width, has_guidance = header
    if kind == _KINDS[Start]:
        return Start(Mode(mode))
    if kind == _KINDS[Stop]:
        return Stop()
    noise = broadcast(torch.empty(1, z_dim, frames, height, width), device)
    context = broadcast(torch.empty(1, 2 * z_dim, frames, height, width, dtype=dtype), device)
    return Denoise(noise, context, steps, guidance if has_guidance else None)


def expect_stop(device: torch.device) -> None:
    """The other ranks, after their shared windows: rank 0's Stop (it has received every window)."""
    message = receive(device)
    if not isinstance(message, Stop):
        raise GroupFailed(f"rank {rank()}: expected Stop from rank 0, got {type(message).__name__}")


def stop_others(device: torch.device, together: bool = True) -> None:
    """Rank 0 at the end: Stop to the others (those still there), and leave with them. After a failure
    (`together` False) it does not wait for them: a rank computing shared windows would not come."""
    with contextlib.suppress(GroupFailed):  # a rank that already ended (it failed too) cannot be told
        send(Stop(), device)
    leave(together)
