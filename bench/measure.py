"""Clocks and memory probes, and a recorder that splits one pipeline call into timed stages.

Time: device events on a GPU (recorded in stream order, read after one synchronize at the end), the
wall clock on the CPU. Memory: on a GPU the allocator's peak (torch.cuda.max_memory_allocated) and,
polled from NVML, the device memory in use; on the CPU the process's peak resident set (VmHWM), which
Linux lets a process reset (/proc/self/clear_refs), so every stage gets its own clean peak.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

MB = 1024 * 1024


class MemoryProbe(Protocol):
    def reset(self) -> None: ...
    def peak_mb(self) -> float: ...
    def current_mb(self) -> float: ...


class HostMemory:
    """Peak resident set of this process since the last reset (Linux).

    A reset first hands the heap's free pages back to the system (glibc malloc_trim), so a stage's
    peak is what it holds and allocates, not what the allocator kept from earlier stages.
    """

    def __init__(self) -> None:
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: peaks may include memory kept from earlier stages
            self._trim = None

    def reset(self) -> None:
        if self._trim is not None:
            self._trim(0)
        Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        return _status_kb("VmHWM") / 1024

    def current_mb(self) -> float:
        return _status_kb("VmRSS") / 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class CudaMemory:
    """The caching allocator's peak of allocated memory on a device since the last reset."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / MB

    def current_mb(self) -> float:
        return torch.cuda.memory_allocated(self.device) / MB


class NvmlMonitor:
    """Polls the device memory in use (all of it: context, cache, other processes) from a thread."""

    def __init__(self, device: torch.device, interval_s: float = 0.002) -> None:
        import pynvml  # GPU-only dependency (nvidia-ml-py)

        self._nvml = pynvml
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_used_mb = self.used_mb()

    def used_mb(self) -> float:
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / MB

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_used_mb = max(self.peak_used_mb, self.used_mb())
            time.sleep(self._interval)

    def __enter__(self) -> NvmlMonitor:
        self.peak_used_mb = self.used_mb()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_used_mb = max(self.peak_used_mb, self.used_mb())


class WallClock:
    """Wall-clock and process CPU-time stamps. On a shared machine the wall clock also measures the
    neighbours' load; the CPU time (all threads of this process) is the work the code itself did."""

    def stamp(self) -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def elapsed(self, start: tuple[float, float], end: tuple[float, float]) -> float:
        return end[0] - start[0]

    def cpu_elapsed(self, start: tuple[float, float], end: tuple[float, float]) -> float | None:
        return end[1] - start[1]


class CudaClock:
    """CUDA events recorded in stream order; `elapsed` is only read after the work has finished."""

    def stamp(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    def cpu_elapsed(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float | None:
        return None  # the host's CPU time says nothing about the device's work


def clock_and_memory(device: torch.device) -> tuple[WallClock | CudaClock, MemoryProbe]:
    """The clock and memory probe for a device."""
    if device.type == "cuda":
        return CudaClock(), CudaMemory(device)
    return WallClock(), HostMemory()


@dataclass
class Span:
    """A timed interval: `depth` 0 for the pipeline's stages, 1 for work inside one (a DiT step)."""

    name: str
    depth: int
    start: Any
    end: Any = None
    peak_mb: float = 0.0
    seconds: float = 0.0
    cpu_seconds: float | None = None


class StageRecorder:
    """Times consecutive stages (`mark`) and nested spans (`begin`/`end`), with each one's peak memory.

    A stage runs from its mark to the next mark (or `finish`). Peaks nest: before the probe is reset
    at any boundary, the peak so far is folded into every open span, so an outer stage's peak also
    covers the spans inside it.
    """

    def __init__(self, clock: WallClock | CudaClock, memory: MemoryProbe) -> None:
        self.clock, self.memory = clock, memory
        self.spans: list[Span] = []
        self._open: list[Span] = []

    def _fold_and_reset(self) -> None:
        peak = self.memory.peak_mb()
        for span in self._open:
            span.peak_mb = max(span.peak_mb, peak)
        self.memory.reset()

    def _close(self, span: Span) -> None:
        span.end = self.clock.stamp()
        self._fold_and_reset()
        self._open.remove(span)

    def mark(self, name: str) -> None:
        """End the current stage, if any, and start stage `name`."""
        for span in [s for s in self._open if s.depth == 0]:
            self._close(span)
        self._fold_and_reset()
        span = Span(name, 0, self.clock.stamp(), peak_mb=self.memory.current_mb())
        self.spans.append(span)
        self._open.append(span)

    def begin(self, name: str) -> None:
        """Open a span inside the current stage."""
        self._fold_and_reset()
        span = Span(name, 1, self.clock.stamp(), peak_mb=self.memory.current_mb())
        self.spans.append(span)
        self._open.append(span)

    def end(self, name: str) -> None:
        """Close the innermost open span called `name`."""
        span = next(s for s in reversed(self._open) if s.name == name and s.depth == 1)
        self._close(span)

    def finish(self) -> list[Span]:
        """Close everything and return the spans with their durations."""
        for span in list(reversed(self._open)):
            self._close(span)
        for span in self.spans:
            span.seconds = self.clock.elapsed(span.start, span.end)
            span.cpu_seconds = self.clock.cpu_elapsed(span.start, span.end)
        return self.spans

    def entering(self, name: str, function: Callable) -> Callable:
        """`function`, marking stage `name` each time it is called."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.mark(name)
            return function(*args, **kwargs)

        return wrapped

    def time_module_calls(self, module: torch.nn.Module, name: str) -> list[torch.utils.hooks.RemovableHandle]:
        """Record every forward call of `module` as a span `name`; returns the hooks' handles."""
        return [
            module.register_forward_pre_hook(lambda *_: self.begin(name)),
            module.register_forward_hook(lambda *_: self.end(name)),
        ]
