"""One clip on several processes under `torchrun`: the transformer split by sequence (sequence.py) or
whole windows each (windows.py), rank 0 telling the others what to do in typed messages (messages.py);
launch.py runs `python -m runtime.run` that way. Only this file is loaded by a single-process run (for
`world_size`): the rest, and torch.distributed's process groups, load when torchrun asks for them."""

from __future__ import annotations

import os

import torch


def world_size() -> int:
    """The number of processes `torchrun` started ($WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank ($RANK; 0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: its own GPU ($LOCAL_RANK) when `device` is CUDA."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
