"""`python -m export.tensorrt`: TensorRT engines for a bundle's ONNX graphs, added to the bundle.

    python -m export.tensorrt --bundle BUNDLE [--precision fp16] [--workspace-gb 8] [--timing-cache FILE]

UNVERIFIED: written against the TensorRT 10 Python API documentation; no machine this was written on
has TensorRT or a GPU, so no engine has been built with it yet. Without either it stops with one
line saying which is missing.

Networks are strongly typed (TensorRT 10's recommended mode, the only one in 11): the precision is
the ONNX graph's, so fp16/bf16 engines come from a bundle exported with `--dtype fp16/bf16`, and fp8
engines from graphs that carry FP8 quantize/dequantize nodes (e.g. from NVIDIA ModelOpt; the
exporter here writes none). Each engine gets one optimization profile, exactly the bundle's shapes
(the dynamic frame axis, if any: 1 to the bundle's frame count, tuned at the maximum). Writes
tensorrt/<graph>.plan, the layer report tensorrt/<graph>.layers.json, tensorrt/build.log, and the
engines' key and metadata into manifest.json.
"""

from __future__ import annotations

import argparse
import enum
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from runtime.engines.bundle import GRAPHS, Manifest, read_manifest
from runtime.engines.graph_spec import GraphSpec
from runtime.engines.graphs import import_tensorrt, require_cuda, tensorrt_key
from runtime.errors import RemoverError, exit_code

GIB = 1024**3


class Precision(enum.Enum):
    """Engine precision, with the ONNX graph precision it is built from and the GPU it needs."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"

    @property
    def min_capability(self) -> tuple[int, int]:
        return {"bf16": (8, 0), "fp8": (8, 9)}.get(self.value, (7, 0))


def has_fp8_quantization(onnx_path: Path) -> bool:
    """Whether an ONNX graph quantizes to FP8 anywhere (QuantizeLinear with an FP8 zero point)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    fp8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}
    typed = {i.name: i.data_type for i in model.graph.initializer}
    return any(
        node.op_type == "QuantizeLinear" and len(node.input) > 2 and typed.get(node.input[2]) in fp8
        for node in model.graph.node
    )


def check_precision(precision: Precision, manifest: Manifest, bundle: Path, device: torch.device) -> None:
    """Refuse a precision the bundle's graphs or the GPU cannot give."""
    capability = torch.cuda.get_device_capability(device)
    if capability < precision.min_capability:
        major, minor = precision.min_capability
        raise RemoverError(
            f"{precision.value} engines need a GPU of compute capability {major}.{minor}+, this is {capability}"
        )
    if precision is Precision.FP8:
        if not has_fp8_quantization(bundle / manifest.artifacts["onnx"]["files"]["dit_step"]):
            raise RemoverError(
                "fp8 engines need ONNX graphs with FP8 quantize/dequantize nodes (e.g. from NVIDIA ModelOpt); "
                "this bundle's graphs have none"
            )
    elif precision.value != manifest.precision:
        raise RemoverError(
            f"this bundle's graphs are {manifest.precision}; strongly typed {precision.value} engines need a bundle "
            f"exported with --dtype {precision.value}"
        )


def profile_shapes(spec: GraphSpec, max_frames: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape of every input: the exact shapes, a dynamic axis from 1 to `max_frames`."""
    shapes = {}
    for tensor in spec.inputs:
        low = tuple(1 if isinstance(n, str) else n for n in tensor.shape)
        high = tuple(max_frames if isinstance(n, str) else n for n in tensor.shape)
        shapes[tensor.name] = (low, high, high)
    return shapes


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    spec: GraphSpec,
    max_frames: int,
    *,
    workspace_bytes: int,
    timing_cache: Path,
    log_file: Path,
) -> dict[str, Any]:
    """Parse one ONNX graph, build and serialize its engine; returns the engine's metadata."""
    trt = import_tensorrt()

    class FileLogger(trt.ILogger):
        """TensorRT's messages into the build log (warnings and errors also to stderr)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, message: str) -> None:
            if int(severity) > int(trt.ILogger.Severity.INFO):
                return  # VERBOSE
            with log_file.open("a") as handle:
                handle.write(f"[{severity.name}] {message}\n")
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                print(f"tensorrt: {message}", file=sys.stderr)

    logger = FileLogger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RemoverError(f"TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(spec, max_frames).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - start
    if serialized is None:
        raise RemoverError(f"TensorRT failed to build {onnx_path.name}; see {log_file}")
    engine_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))

    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    inspector = engine.create_engine_inspector()
    layers = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    engine_path.with_suffix(".layers.json").write_text(layers)
    return {
        "build_seconds": build_seconds,
        "engine_bytes": engine_path.stat().st_size,
        "device_memory_bytes": int(engine.device_memory_size_v2),
        "layers": len(json.loads(layers).get("Layers", [])),
    }


def build_engines(
    bundle: Path,
    precision: Precision | None = None,
    *,
    workspace_gb: float = 8.0,
    timing_cache: Path | None = None,
    device: torch.device | None = None,
) -> Manifest:
    """Build an engine for every graph of `bundle` (on `device`, default cuda) and record them in its manifest."""
    device = device or torch.device("cuda")
    import_tensorrt()  # one clear line when TensorRT or the GPU is missing, before any work
    require_cuda(device)
    manifest = read_manifest(bundle)
    if "onnx" not in manifest.artifacts:
        raise RemoverError(f"{bundle} has no ONNX graphs to build engines from")
    precision = precision or Precision(manifest.precision)
    check_precision(precision, manifest, bundle, device)
    tool, gpu = tensorrt_key(device)
    timing_cache = timing_cache or bundle / "tensorrt.timing-cache"
    max_frames = manifest.latent_frames

    staging = bundle / ".tensorrt.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    artifacts: dict[str, Any] = {
        "key": manifest.key(tool, gpu),
        "files": {},
        "engine_precision": precision.value,
        "workspace_bytes": int(workspace_gb * GIB),
        "build_log": "tensorrt/build.log",
        "engines": {},
    }
    try:
        for name in GRAPHS:
            print(f"{name}: building a {precision.value} engine for {gpu} with {tool} ...", flush=True)
            metadata = build_engine(
                bundle / manifest.artifacts["onnx"]["files"][name],
                staging / f"{name}.plan",
                manifest.graphs[name],
                max_frames,
                workspace_bytes=artifacts["workspace_bytes"],
                timing_cache=timing_cache,
                log_file=staging / "build.log",
            )
            print(f"  {metadata['engine_bytes'] / 1e6:.1f} MB in {metadata['build_seconds']:.1f} s", flush=True)
            artifacts["files"][name] = f"tensorrt/{name}.plan"
            artifacts["engines"][name] = metadata
        shutil.rmtree(bundle / "tensorrt", ignore_errors=True)  # engines of an earlier build (another key)
        staging.rename(bundle / "tensorrt")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest.artifacts["tensorrt"] = artifacts
    manifest.tools["tensorrt"] = tool.removeprefix("tensorrt ")
    manifest.write(bundle)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.tensorrt", description="Build TensorRT engines for a bundle."
    )
    parser.add_argument("--bundle", required=True, help="a bundle folder written by python -m export.onnx")
    parser.add_argument(
        "--precision", choices=[p.value for p in Precision], help="engine precision (default: the bundle's graphs')"
    )
    parser.add_argument("--workspace-gb", type=float, default=8.0, help="builder workspace limit in GiB (default 8)")
    parser.add_argument(
        "--timing-cache", help="timing cache file to read and update (default: BUNDLE/tensorrt.timing-cache)"
    )
    parser.add_argument("--device", default="cuda", help="the GPU to build for (default cuda)")
    args = parser.parse_args(argv)

    def command() -> str:
        build_engines(
            Path(args.bundle),
            Precision(args.precision) if args.precision else None,
            workspace_gb=args.workspace_gb,
            timing_cache=Path(args.timing_cache) if args.timing_cache else None,
            device=torch.device(args.device),
        )
        return f"wrote TensorRT engines into {args.bundle}"

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
