"""The torchrun process group: joining and leaving it, and its failures as one line (GroupFailed).

Failure: collectives time out after $RUNTIME_PARALLEL_TIMEOUT seconds (default 600), and a rank that
dies closes its connections, so the others fail with a RemoverError instead of waiting. Waiting for
rank 0's next message (rank 0 may be reading or running the VAE) has no such limit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from runtime.distributed import rank, world_size
from runtime.errors import RemoverError

TIMEOUT_ENV = "RUNTIME_PARALLEL_TIMEOUT"
IDLE_TIMEOUT = timedelta(days=1)  # how long the other ranks wait for rank 0's next message


def collective_timeout() -> timedelta:
    """How long one collective of the computation may wait for the other ranks."""
    return timedelta(seconds=float(os.environ.get(TIMEOUT_ENV) or 600))


def join(device: torch.device) -> None:
    """Join the `torchrun` group (NCCL on CUDA, gloo on the CPU), once per process."""
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=IDLE_TIMEOUT)


def leave(together: bool = True) -> None:
    """Leave the group, after STOP. `together`: first wait until every rank is leaving, so that no rank
    tears its connections down while another still reads from them (gloo then aborted the process at
    exit now and then); a rank already gone is not waited for."""
    if dist.is_initialized():
        if together:
            with contextlib.suppress(GroupFailed), collective():
                dist.barrier()
        dist.destroy_process_group()


class GroupFailed(RemoverError):
    """The group broke: a rank died, or a collective timed out."""


def broadcast(tensor: Tensor, device: torch.device) -> Tensor:
    """Rank 0's `tensor` on every rank (on `device`), over the default group: no time limit, since rank
    0 may read and run the VAE for long between windows."""
    on_device = tensor.to(device)
    with collective():
        dist.broadcast(on_device, 0)
    return on_device


@contextmanager
def collective() -> Iterator[None]:
    """Turn a collective's failure (a rank died, or did not answer in time) into GroupFailed: one line
    that says what happened, instead of a backend's traceback."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:  # gloo and NCCL report a dead peer or a timeout as RuntimeError (DistError)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GroupFailed(
            f"rank {rank()} of {world_size()}: the run is abandoned: another rank stopped, or did not answer "
            f"within {collective_timeout().total_seconds():.0f} s (${TIMEOUT_ENV}) ({reason})"
        ) from exc
