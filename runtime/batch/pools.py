"""Where batch workers run, behind one interface (`Pool`): local processes started with spawn, one per
device (`LocalPool`), or Ray actors (`RayPool`). A pool starts its workers, gives them clips, and
reports what they say or their death as events (worker.py)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Collection
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

import torch

import runtime.batch.worker as worker
from runtime.batch.manifest import Clip
from runtime.batch.worker import Died, Event
from runtime.errors import RemoverError
from runtime.execution.choices import resolve_device
from runtime.options import ModelOptions

NO_RAY = "--address needs Ray: pip install 'minimax-remover-runtime[ray]'"


class Pool(Protocol):
    """Workers that each hold the model: `devices` (one a worker), `where` (for the batch's first line)."""

    devices: list[str]
    where: str

    def submit(self, slot: int, clip: Clip) -> None:
        """Give an idle, loaded worker a clip; its result is a later event."""

    def next_event(self) -> Event:
        """The next thing a worker says, or its death; waits for it."""

    def restart(self, slot: int) -> None:
        """Replace a dead worker with a fresh one (it sends Ready once it has loaded the model)."""

    def close(self, idle: Collection[int]) -> None:
        """End the workers (those not `idle` may be mid-clip)."""


class LocalPool:
    """Worker processes started with `spawn`, one per device in `devices`, each talked to over a pipe."""

    def __init__(self, model: ModelOptions, devices: list[str]) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._model, self.devices = model, devices
        cpus = sum(d == "cpu" for d in devices)
        self._threads = max(1, (os.cpu_count() or 1) // cpus) if cpus else None
        self._workers = [self._spawn(slot) for slot in range(len(devices))]
        self.where = f"{len(devices)} local worker process(es) on {', '.join(devices)}"

    def _spawn(self, slot: int) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        ours, theirs = self._context.Pipe()
        args = (theirs, self._model, self.devices[slot], self._threads, slot)
        process = self._context.Process(target=worker.serve, args=args, daemon=True, name=f"batch-worker-{slot + 1}")
        process.start()
        theirs.close()
        return process, ours

    def submit(self, slot: int, clip: Clip) -> None:
        with contextlib.suppress(OSError):  # a dead worker: its death is the next event
            self._workers[slot][1].send(clip)

    def next_event(self) -> Event:
        handles = {h: slot for slot, (p, conn) in enumerate(self._workers) for h in (conn, p.sentinel)}
        slot = handles[wait(list(handles))[0]]
        process, conn = self._workers[slot]
        with contextlib.suppress(EOFError, OSError):
            if conn.poll():
                return conn.recv()
        process.join()
        code = process.exitcode or 0
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return Died(slot, f"the worker process died ({how})")

    def restart(self, slot: int) -> None:
        self._workers[slot][1].close()
        self._workers[slot] = self._spawn(slot)

    def close(self, idle: Collection[int]) -> None:
        """Idle workers read the end of their pipe and return, the others get SIGTERM (killed if that has
        not ended them in 10 s)."""
        for slot, (process, conn) in enumerate(self._workers):
            conn.close()
            if slot not in idle:
                process.terminate()
        for process, _ in self._workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


def import_ray() -> Any:
    """The ray module, or a RemoverError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise RemoverError(NO_RAY) from None
    return ray


class RayPool:
    """Ray actors holding a Remover each (`num_gpus=1` where the cluster has GPUs, else `num_cpus=1`),
    with LocalPool's events. `address`: auto, ray://host:port, or local (a Ray instance started here)."""

    def __init__(self, model: ModelOptions, address: str, workers: int | None, limit: int) -> None:
        ray = self._ray = import_ray()
        self._model = model
        if address == "local":
            cpus = max(os.cpu_count() or 1, workers or 1)
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        gpu = model.device != "cpu" and gpus > 0
        if model.device and model.device.startswith("cuda") and not gpu:
            ray.shutdown()
            raise RemoverError(f"--device {model.device}: the Ray cluster at {address} has no GPU")
        self.devices = ["cuda" if gpu else "cpu"] * min(workers or gpus or 1, limit)
        self._actor = (ray.remote(num_gpus=1) if gpu else ray.remote(num_cpus=1))(worker.RayWorker)
        self._actors: list[Any] = [None] * len(self.devices)
        self._calls: dict[Any, int] = {}
        for slot in range(len(self.devices)):
            self.restart(slot)
        self.where = f"{len(self.devices)} Ray actor(s) at {address}, each with 1 {'GPU' if gpu else 'CPU'}"

    def submit(self, slot: int, clip: Clip) -> None:
        self._calls[self._actors[slot].run.remote(clip)] = slot

    def next_event(self) -> Event:
        [ref], _ = self._ray.wait(list(self._calls), num_returns=1)
        slot = self._calls.pop(ref)
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayActorError as exc:
            return Died(slot, f"the worker actor died ({(str(exc).splitlines() or ['no reason given'])[0]})")

    def restart(self, slot: int) -> None:
        if self._actors[slot] is not None:
            self._ray.kill(self._actors[slot])
        self._actors[slot] = self._actor.remote()
        self._calls[self._actors[slot].load.remote(self._model, self.devices[slot], slot)] = slot

    def close(self, idle: Collection[int]) -> None:
        for actor in self._actors:
            if actor is not None:
                self._ray.kill(actor)
        self._ray.shutdown()


def local_devices(device: str | None, workers: int | None) -> list[str]:
    """One worker per visible GPU (or `workers`, spread over them), else `workers` (default 1) on the
    CPU; a named device gets all the workers."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return [gpus[i % len(gpus)] for i in range(workers or len(gpus))]
    return [str(resolved)] * (workers or 1)
