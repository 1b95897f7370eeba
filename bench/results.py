"""A benchmark run as one JSON document: per-workload figures of both sides, ratios, cost model and floors.

Layout (`validate` checks it):
    meta: date, device, dtype, machine, versions, suite, weights, command, wall_s
    ours / reference: the headline pipeline workload's figures (total_s, peak_mem_mb, stages, ...)
    ratios: ours / reference for that workload
    workloads: name -> {kind, description, height, width, points: [{video_frames, latent_frames,
        ours, reference, ratios, cost, floors_s}]}
Every ratio is ours / reference, so below 1 means ours is faster or smaller.
"""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import torch

from bench.workloads import Workload
from runtime.execution import cost_model
from runtime.models.transformer import TransformerConfig
from runtime.models.vae import VAEConfig

ModelConfigs = tuple[TransformerConfig, VAEConfig]

SIDES = ("ours", "reference")
STAGE_ORDER = ("read", "preprocess", "encode", "denoise", "decode", "paste_back", "write")
META_KEYS = {
    "date": str, "device": str, "dtype": str, "machine": dict, "versions": dict, "suite": list, "quick": bool,
    "threads": int, "warmup": int, "repeats": int, "rounds": int, "weights": str, "command": str, "wall_s": float,
}  # fmt: skip
SIDE_KEYS = {"total_s": float, "peak_mem_mb": float, "loaded_mb": float, "load_s": float, "stages": dict}
STAGE_KEYS = {"seconds": float, "peak_mb": float, "above_loaded_mb": float}


def ratios(ours: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """ours / reference for the totals, every stage both have, the mean DiT call, and the peaks (also above
    the memory each loaded model held). CPU-time ratios come along where both sides measured CPU time."""
    out: dict[str, Any] = {
        "total_s": ours["total_s"] / reference["total_s"],
        "peak_mem_mb": ours["peak_mem_mb"] / reference["peak_mem_mb"],
        "peak_above_loaded_mb": _positive(ours["peak_mem_mb"] - ours["loaded_mb"])
        / _positive(reference["peak_mem_mb"] - reference["loaded_mb"]),
        "stages": {},
    }
    if "total_cpu_s" in ours and "total_cpu_s" in reference:
        out["total_cpu_s"] = ours["total_cpu_s"] / reference["total_cpu_s"]
    for name, stage in ours["stages"].items():
        if name in reference["stages"]:
            theirs = reference["stages"][name]
            out["stages"][name] = {
                "seconds": stage["seconds"] / theirs["seconds"],
                "peak_mb": stage["peak_mb"] / theirs["peak_mb"],
                "above_loaded_mb": _positive(stage["above_loaded_mb"]) / _positive(theirs["above_loaded_mb"]),
            }
            if "cpu_s" in stage and "cpu_s" in theirs:
                out["stages"][name]["cpu_s"] = stage["cpu_s"] / theirs["cpu_s"]
    for key in ("dit_steps_s", "dit_steps_cpu_s"):
        if ours.get(key) and reference.get(key):
            out[key.replace("steps", "step")] = _mean(ours[key]) / _mean(reference[key])
    return out


def merge_stages(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's figures from processes that each measured other stages of the same point."""
    merged = dict(parts[0])
    merged["stages"] = {name: stage for part in parts for name, stage in part["stages"].items()}
    merged["total_s"] = sum(part["total_s"] for part in parts)
    if all("total_cpu_s" in part for part in parts):
        merged["total_cpu_s"] = sum(part["total_cpu_s"] for part in parts)
    merged["peak_mem_mb"] = max(part["peak_mem_mb"] for part in parts)
    merged["loaded_mb"] = min(part["loaded_mb"] for part in parts)
    merged["repeat_totals_s"] = [sum(totals) for totals in zip(*(part["repeat_totals_s"] for part in parts))]
    return merged


def combine_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's figures from `rounds` fresh processes measuring the same thing, interleaved with the other
    side's: every time is the median over the rounds, every peak the highest."""
    combined = dict(rounds[0])
    combined["stages"] = {}
    for name in rounds[0]["stages"]:
        stages = [run["stages"][name] for run in rounds]
        combined["stages"][name] = {
            key: (max if key in ("peak_mb", "above_loaded_mb") else statistics.median)(stage[key] for stage in stages)
            for key in stages[0]
        }
    for key in ("total_s", "total_cpu_s", "load_s", "sampler_s"):
        if key in combined:
            combined[key] = statistics.median(run[key] for run in rounds)
    for key in ("dit_steps_s", "dit_steps_cpu_s"):
        if key in combined:
            combined[key] = [statistics.median(values) for values in zip(*(run[key] for run in rounds))]
    for key in ("peak_mem_mb", "load_peak_mb", "dit_step_peak_mb", "nvml_peak_mb"):
        if key in combined:
            combined[key] = max(run[key] for run in rounds)
    combined["loaded_mb"] = min(run["loaded_mb"] for run in rounds)
    combined["repeat_totals_s"] = [total for run in rounds for total in run["repeat_totals_s"]]
    combined["loadavg"] = [load for run in rounds for load in run["loadavg"]]
    combined["rounds"] = len(rounds)
    return combined


def stage_names(*sides: dict[str, Any]) -> list[str]:
    """The stages any of `sides` has, in pipeline order."""
    return [name for name in STAGE_ORDER if any(name in side["stages"] for side in sides)]


def _positive(megabytes: float) -> float:
    """At least 1 MB, so ratios of memory above a baseline stay finite."""
    return max(megabytes, 1.0)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def point_costs(workload: Workload, latent_frames: int, models: ModelConfigs) -> dict[str, cost_model.Cost]:
    """Analytic cost of the heavy stages of one measured point, with 16-bit weights and activations (the
    GPU setting the floors are for, whatever precision the point was measured in)."""
    element_bytes = 2
    transformer, vae = models
    if workload.kind == "pipeline":
        return cost_model.pipeline_costs(
            transformer, vae, workload.frames[0], workload.height, workload.width, workload.steps, element_bytes
        )
    video_frames = 1 + vae.temporal_factor * (latent_frames - 1)
    latent = (latent_frames, workload.height // vae.spatial_factor, workload.width // vae.spatial_factor)
    return {
        "encode": cost_model.vae_encode(vae, video_frames, workload.height, workload.width, 2, element_bytes),
        "decode": cost_model.vae_decode(vae, *latent, element_bytes=element_bytes),
    }


def point_entry(
    workload: Workload, ours: dict[str, Any], reference: dict[str, Any], models: ModelConfigs
) -> dict[str, Any]:
    """One measured point: both sides, their ratios, the cost of each heavy stage and its floor per GPU."""
    costs = point_costs(workload, ours["latent_frames"], models)
    floors = {
        gpu.name: {stage: cost_model.floor_seconds(cost, gpu) for stage, cost in costs.items()}
        for gpu in cost_model.GPUS.values()
    }
    for stages in floors.values():
        stages["total"] = sum(stages.values())
    return {
        "video_frames": ours["video_frames"],
        "latent_frames": ours["latent_frames"],
        "ours": ours,
        "reference": reference,
        "ratios": ratios(ours, reference),
        "cost": {stage: {"flops": c.flops, "min_bytes": c.min_bytes, "params": c.params} for stage, c in costs.items()},
        "floors_s": floors,
    }


def workload_entry(workload: Workload, points: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": workload.kind,
        "description": workload.description,
        "height": workload.height,
        "width": workload.width,
        "steps": workload.steps,
        "points": points,
    }


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gb": round(_meminfo_kb("MemTotal") / 1024**2, 1),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["gpu"] = properties.name
        info["gpu_memory_gb"] = round(properties.total_memory / 1024**3, 1)
        info["driver"] = _nvidia_driver()
    return info


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


def _meminfo_kb(field: str) -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _nvidia_driver() -> str:
    import pynvml  # GPU-only dependency (nvidia-ml-py)

    pynvml.nvmlInit()
    return str(pynvml.nvmlSystemGetDriverVersion())


def assemble(meta: dict[str, Any], workloads: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run document. The headline (the first pipeline workload, else the longest clip of the first
    workload) has its sides and ratios repeated at the top level."""
    pipelines = [name for name, workload in workloads.items() if workload["kind"] == "pipeline"]
    name = pipelines[0] if pipelines else next(iter(workloads))
    main = workloads[name]["points"][-1]
    return {
        "meta": meta,
        "headline": name,
        "ours": main["ours"],
        "reference": main["reference"],
        "ratios": main["ratios"],
        "workloads": workloads,
    }


class SchemaError(ValueError):
    """A run document lacks a field the report and the gates read."""


def validate(run: dict[str, Any]) -> None:
    """Check the fields the report and the gates read; raise SchemaError naming the first missing one."""
    _require(run, "headline", str, "run")
    for key in ("meta", "ours", "reference", "ratios", "workloads"):
        _require(run, key, dict, "run")
    for key, kind in META_KEYS.items():
        _require(run["meta"], key, kind, "meta")
    for side in ("ours", "reference"):
        _check_side(run[side], side)
    for name, workload in run["workloads"].items():
        _require(workload, "kind", str, name)
        _require(workload, "points", list, name)
        if not workload["points"]:
            raise SchemaError(f"{name}: no measured points")
        for index, point in enumerate(workload["points"]):
            where = f"{name}.points[{index}]"
            for side in ("ours", "reference"):
                _require(point, side, dict, where)
                _check_side(point[side], f"{where}.{side}")
            _require(point, "ratios", dict, where)
            _require(point["ratios"], "total_s", float, f"{where}.ratios")
            _require(point, "floors_s", dict, where)


def _check_side(side: dict[str, Any], where: str) -> None:
    for key, kind in SIDE_KEYS.items():
        _require(side, key, kind, where)
    for name, stage in side["stages"].items():
        for key, kind in STAGE_KEYS.items():
            _require(stage, key, kind, f"{where}.stages.{name}")


def _require(mapping: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> None:
    if key not in mapping:
        raise SchemaError(f"{where}: missing {key!r}")
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return
    if not isinstance(value, kinds):
        raise SchemaError(f"{where}.{key}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
