"""A batch worker: load the model once, then run clips on it, in a spawned process (`serve`) or a Ray
actor (`RayWorker`). What a worker says is a typed event (pools.py sends them to the dispatch loop)."""

from __future__ import annotations

import os
import signal
import time
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch

from runtime.batch.manifest import Clip
from runtime.clips.job import remove_file
from runtime.errors import RemoverError
from runtime.io.outputs import claimed_by
from runtime.loading import describe_loaded, load_remover
from runtime.options import ModelOptions
from runtime.pipeline.remover import Remover


@dataclass(frozen=True)
class Attempt:
    """A worker's report of one try at a clip."""

    frames: int | None
    seconds: float
    error: str | None = None
    retry: bool = False  # worth another try (a RemoverError is the input's fault: the same again)
    warnings: tuple[str, ...] = ()
    taken: str | None = None  # not tried: another run wrote (or is writing) the output


@dataclass(frozen=True)
class Ready:
    """A worker loaded the model (`loaded` says what it is) in process `pid`."""

    slot: int
    loaded: str
    pid: int


@dataclass(frozen=True)
class LoadFailed:
    """A worker could not load the model: the batch ends with `message`."""

    slot: int
    message: str


@dataclass(frozen=True)
class Finished:
    """A worker's try at its clip ended (done or failed: `attempt` says)."""

    slot: int
    attempt: Attempt


@dataclass(frozen=True)
class Died:
    """A worker process or actor died (`how`: its exit code or signal)."""

    slot: int
    how: str


Event = Ready | LoadFailed | Finished | Died


def _one_line(text: str) -> str:
    return " ".join(text.split())


def load(model: ModelOptions, device: str, slot: int) -> tuple[Remover | None, Ready | LoadFailed]:
    """The worker's model, and the event that says how loading went."""
    try:
        remover = load_remover(model, torch.device(device))
    except Exception as exc:  # noqa: BLE001 - every load failure ends the batch with its message
        return None, LoadFailed(slot, _one_line(str(exc)))
    return remover, Ready(slot, describe_loaded(remover, model), os.getpid())


def attempt(remover: Remover, clip: Clip) -> Attempt:
    """One try at `clip`: its frames and seconds, or its error (and whether another try may help). An
    output that another run has written or is writing meanwhile is left to it (`taken`)."""
    if (taken := _taken(clip)) is not None:
        return Attempt(None, 0.0, taken=taken)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # the default filters: the CLI's warnings
        try:
            plan, _ = remove_file(
                remover, clip.video, clip.mask, clip.output, clip.plan, clip.masking, clip.encoding, run=clip.run
            )
            error, retry = None, False
        except RemoverError as exc:
            if (taken := _taken(clip)) is not None:  # another run claimed it between the check and the write
                return Attempt(None, time.perf_counter() - start, taken=taken)
            error, retry = str(exc), False
        except torch.OutOfMemoryError:
            error, retry = "out of memory; try a smaller --height/--width or --window", True
        except Exception as exc:  # noqa: BLE001 - any failure is this clip's, never the batch's
            error, retry = f"{type(exc).__name__}: {exc}", True
    said = tuple(_one_line(str(w.message)) for w in caught)
    frames = None if error else plan.frame_count
    return Attempt(frames, time.perf_counter() - start, error and _one_line(error), retry, said)


def _taken(clip: Clip) -> str | None:
    """Why another run has this clip (its output claimed by another live process, or written), or None."""
    if clip.encoding.overwrite:
        return None
    owner = claimed_by(clip.output)
    if owner is not None and owner != os.getpid():
        return f"{clip.output} is being written by another run (process {owner})"
    if clip.output.exists():
        return f"{clip.output} was written by another run meanwhile"
    return None


def serve(conn: Connection, model: ModelOptions, device: str, threads: int | None, slot: int) -> None:
    """A local worker process: load the model, then run each clip sent until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the batch's to handle: it ends the workers
    signal.signal(signal.SIGTERM, _exit)  # ... unwinding them, so a writer removes what it wrote
    if threads:
        torch.set_num_threads(threads)
    remover, event = load(model, device, slot)
    conn.send(event)
    while remover is not None:
        try:
            clip = conn.recv()
        except EOFError:
            return
        conn.send(Finished(slot, attempt(remover, clip)))


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class RayWorker:
    """The state of a Ray actor (the class goes through ray.remote only in RayPool)."""

    def load(self, model: ModelOptions, device: str, slot: int) -> Ready | LoadFailed:
        self.slot = slot
        self.remover, event = load(model, device, slot)
        return event

    def run(self, clip: Clip) -> Finished:
        return Finished(self.slot, attempt(self.remover, clip))
