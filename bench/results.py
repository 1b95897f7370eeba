"""A benchmark run as dataclasses: per-workload figures of both sides, ratios, cost model and floors.

`Run.from_dict` reads a saved run (bench/results/*.json) and fails on a missing or mistyped key, by the
dataclasses' own fields (`load`); `to_dict` writes one. Every ratio is ours / reference, so below 1
means ours is faster or smaller. The headline (the first pipeline workload, else the longest clip of
the first workload) has its sides and ratios repeated at the top level.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, Union

import torch

from bench.workloads import Workload
from runtime.execution import cost_model
from runtime.execution.cost_model import Cost
from runtime.models.transformer import TransformerConfig
from runtime.models.vae import VAEConfig

ModelConfigs = tuple[TransformerConfig, VAEConfig]

SIDES = ("ours", "reference")
STAGE_ORDER = ("read", "preprocess", "encode", "denoise", "decode", "paste_back", "write")
T = TypeVar("T")


class ResultsError(ValueError):
    """A saved run lacks a field, or holds one of the wrong type."""


@dataclass
class Stage:
    """One stage of one side: wall seconds, peak memory (also above the loaded models), CPU seconds on a CPU."""

    seconds: float
    peak_mb: float
    above_loaded_mb: float
    cpu_s: float | None = None


@dataclass
class Side:
    """One side's figures at one point (bench.sides measures them in one process; rounds are combined)."""

    side: str
    workload: str
    video_frames: int
    latent_frames: int
    device: str
    dtype: str
    warmup: int
    repeats: int
    load_s: float
    load_peak_mb: float
    loaded_mb: float
    loadavg: list[float]
    stages: dict[str, Stage]
    total_s: float
    peak_mem_mb: float
    repeat_totals_s: list[float]
    total_cpu_s: float | None = None
    dit_steps_s: list[float] | None = None
    dit_steps_cpu_s: list[float] | None = None
    dit_step_peak_mb: float | None = None
    sampler_s: float | None = None
    backends: str | None = None  # ours: the attention and kernels it ran with
    nvml_peak_mb: float | None = None  # GPU: device memory in use at the peak
    rounds: int = 1


@dataclass
class Ratios:
    total_s: float
    peak_mem_mb: float
    peak_above_loaded_mb: float
    stages: dict[str, Stage]  # each figure of each stage both sides have, as a ratio
    total_cpu_s: float | None = None
    dit_step_s: float | None = None
    dit_step_cpu_s: float | None = None


@dataclass
class Point:
    """One measured clip length: both sides, their ratios, the heavy stages' cost and floors per GPU."""

    video_frames: int
    latent_frames: int
    ours: Side
    reference: Side
    ratios: Ratios
    cost: dict[str, Cost]
    floors_s: dict[str, dict[str, float]]  # GPU -> stage (and "total") -> seconds


@dataclass
class WorkloadResult:
    kind: str  # "pipeline" or "vae"
    description: str
    height: int
    width: int
    steps: int
    points: list[Point]

    def __post_init__(self) -> None:
        if not self.points:
            raise ResultsError(f"{self.description or self.kind}: no measured points")


@dataclass
class Machine:
    cpu: str
    cpu_cores: int
    memory_gb: float
    platform: str
    gpu: str | None = None
    gpu_memory_gb: float | None = None
    driver: str | None = None


@dataclass
class Meta:
    date: str
    device: str
    dtype: str
    suite: list[str]
    quick: bool
    warmup: int
    repeats: int
    rounds: int
    threads: int
    weights: str
    machine: Machine
    versions: dict[str, str]
    command: str
    wall_s: float
    ours_options: dict[str, str | None] = field(default_factory=dict)


@dataclass
class Run:
    meta: Meta
    headline: str
    ours: Side
    reference: Side
    ratios: Ratios
    workloads: dict[str, WorkloadResult]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Run:
        return load(cls, data, "run")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def to_dict(value: Any) -> dict[str, Any]:
    """A dataclass as JSON-ready data, leaving out the optional figures a run did not measure (None)."""
    return dataclasses.asdict(value, dict_factory=lambda items: {k: v for k, v in items if v is not None})


def load(cls: type[T], data: Any, where: str) -> T:
    """`cls(**data)`, each field checked against its annotation (nested dataclasses, dicts and lists of
    them, optional fields); raises ResultsError naming the first missing, unknown or mistyped key."""
    if not isinstance(data, dict):
        raise ResultsError(f"{where}: expected an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    if unknown := sorted(set(data) - set(known)):
        raise ResultsError(f"{where}: unknown key {unknown[0]!r}")
    values = {}
    for name, spec in known.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], f"{where}.{name}")
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ResultsError(f"{where}: missing {name!r}")
    return cls(**values)


def _convert(kind: Any, value: Any, where: str) -> Any:
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):  # X | None
        if value is None and type(None) in arguments:
            return None
        return _convert(next(a for a in arguments if a is not type(None)), value, where)
    if dataclasses.is_dataclass(kind):
        return load(kind, value, where)
    if origin is dict and isinstance(value, dict):
        return {key: _convert(arguments[1], item, f"{where}.{key}") for key, item in value.items()}
    if origin is list and isinstance(value, list):
        return [_convert(arguments[0], item, f"{where}[{index}]") for index, item in enumerate(value)]
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str, bool) and type(value) is kind:
        return value
    name = getattr(kind, "__name__", str(kind))
    raise ResultsError(f"{where}: expected {name}, got {value!r}")


def _ratio_of(ours: float | None, reference: float | None) -> float | None:
    return None if ours is None or reference is None else ours / reference


def _positive(megabytes: float) -> float:
    """At least 1 MB, so ratios of memory above a baseline stay finite."""
    return max(megabytes, 1.0)


def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def ratios(ours: Side, reference: Side) -> Ratios:
    """ours / reference for the totals, every stage both have, the mean DiT call, and the peaks (also above
    the memory each loaded model held). CPU-time ratios come along where both sides measured CPU time."""
    stages = {
        name: Stage(
            seconds=stage.seconds / theirs.seconds,
            peak_mb=stage.peak_mb / theirs.peak_mb,
            above_loaded_mb=_positive(stage.above_loaded_mb) / _positive(theirs.above_loaded_mb),
            cpu_s=_ratio_of(stage.cpu_s, theirs.cpu_s),
        )
        for name, stage in ours.stages.items()
        if (theirs := reference.stages.get(name)) is not None
    }
    return Ratios(
        total_s=ours.total_s / reference.total_s,
        peak_mem_mb=ours.peak_mem_mb / reference.peak_mem_mb,
        peak_above_loaded_mb=_positive(ours.peak_mem_mb - ours.loaded_mb)
        / _positive(reference.peak_mem_mb - reference.loaded_mb),
        stages=stages,
        total_cpu_s=_ratio_of(ours.total_cpu_s, reference.total_cpu_s),
        dit_step_s=_ratio_of(_mean(ours.dit_steps_s), _mean(reference.dit_steps_s)),
        dit_step_cpu_s=_ratio_of(_mean(ours.dit_steps_cpu_s), _mean(reference.dit_steps_cpu_s)),
    )


def merge_stages(parts: list[Side]) -> Side:
    """One side's figures from processes that each measured other stages of the same point."""
    cpu = [part.total_cpu_s for part in parts]
    return replace(
        parts[0],
        stages={name: stage for part in parts for name, stage in part.stages.items()},
        total_s=sum(part.total_s for part in parts),
        total_cpu_s=None if None in cpu else sum(cpu),
        peak_mem_mb=max(part.peak_mem_mb for part in parts),
        loaded_mb=min(part.loaded_mb for part in parts),
        repeat_totals_s=[sum(totals) for totals in zip(*(part.repeat_totals_s for part in parts))],
    )


def _each(rounds: list[Any], key: str, combine) -> Any:
    """`combine` over the rounds' `key`, or None where the rounds did not measure it."""
    values = [getattr(run, key) for run in rounds]
    return None if None in values else combine(values)


def combine_rounds(rounds: list[Side]) -> Side:
    """One side's figures from `rounds` fresh processes measuring the same thing, interleaved with the other
    side's: every time is the median over the rounds, every peak the highest."""
    median, highest = statistics.median, max
    stages = {}
    for name in rounds[0].stages:
        runs = [run.stages[name] for run in rounds]
        stages[name] = Stage(
            seconds=_each(runs, "seconds", median),
            peak_mb=_each(runs, "peak_mb", highest),
            above_loaded_mb=_each(runs, "above_loaded_mb", highest),
            cpu_s=_each(runs, "cpu_s", median),
        )
    per_call = lambda values: [median(calls) for calls in zip(*values)]  # noqa: E731
    return replace(
        rounds[0],
        stages=stages,
        **{key: _each(rounds, key, median) for key in ("total_s", "total_cpu_s", "load_s", "sampler_s")},
        **{key: _each(rounds, key, per_call) for key in ("dit_steps_s", "dit_steps_cpu_s")},
        **{key: _each(rounds, key, highest) for key in ("peak_mem_mb", "load_peak_mb", "dit_step_peak_mb")},
        nvml_peak_mb=_each(rounds, "nvml_peak_mb", highest),
        loaded_mb=min(run.loaded_mb for run in rounds),
        repeat_totals_s=[total for run in rounds for total in run.repeat_totals_s],
        loadavg=[load for run in rounds for load in run.loadavg],
        rounds=len(rounds),
    )


def stage_names(*sides: Side) -> list[str]:
    """The stages any of `sides` has, in pipeline order."""
    return [name for name in STAGE_ORDER if any(name in side.stages for side in sides)]


def point_costs(workload: Workload, latent_frames: int, models: ModelConfigs) -> dict[str, Cost]:
    """Analytic cost of the heavy stages of one measured point, with 16-bit weights and activations (the
    GPU setting the floors are for, whatever precision the point was measured in)."""
    element_bytes = 2
    transformer, vae = models
    if workload.kind == "pipeline":
        return cost_model.pipeline_costs(
            transformer, vae, workload.frames[0], workload.height, workload.width, workload.steps, element_bytes
        )
    video_frames = 1 + vae.temporal_factor * (latent_frames - 1)
    latent = vae.latent_shape(video_frames, workload.height, workload.width)
    return {
        "encode": cost_model.vae_encode(vae, video_frames, workload.height, workload.width, 2, element_bytes),
        "decode": cost_model.vae_decode(vae, *latent, element_bytes=element_bytes),
    }


def point_entry(workload: Workload, ours: Side, reference: Side, models: ModelConfigs) -> Point:
    """One measured point: both sides, their ratios, the cost of each heavy stage and its floor per GPU."""
    costs = point_costs(workload, ours.latent_frames, models)
    floors = {
        gpu.name: {stage: cost_model.floor_seconds(cost, gpu) for stage, cost in costs.items()}
        for gpu in cost_model.GPUS.values()
    }
    for stages in floors.values():
        stages["total"] = sum(stages.values())
    return Point(ours.video_frames, ours.latent_frames, ours, reference, ratios(ours, reference), costs, floors)


def workload_entry(workload: Workload, points: list[Point]) -> WorkloadResult:
    return WorkloadResult(workload.kind, workload.description, workload.height, workload.width, workload.steps, points)


def assemble(meta: Meta, workloads: dict[str, WorkloadResult]) -> Run:
    """The run, its headline's sides and ratios repeated at the top."""
    pipelines = [name for name, workload in workloads.items() if workload.kind == "pipeline"]
    name = pipelines[0] if pipelines else next(iter(workloads))
    main = workloads[name].points[-1]
    return Run(meta, name, main.ours, main.reference, main.ratios, workloads)


def machine_info(device: torch.device) -> Machine:
    """What the numbers were measured on."""
    memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    machine = Machine(_cpu_model(), os.cpu_count() or 0, memory_gb, platform.platform())
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        gpu_memory_gb = round(properties.total_memory / 1024**3, 1)
        machine = replace(machine, gpu=properties.name, gpu_memory_gb=gpu_memory_gb, driver=_nvidia_driver())
    return machine


def versions() -> dict[str, str]:
    import diffusers

    out = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__}
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvidia_driver() -> str:
    import pynvml  # GPU-only dependency (nvidia-ml-py)

    pynvml.nvmlInit()
    return str(pynvml.nvmlSystemGetDriverVersion())
