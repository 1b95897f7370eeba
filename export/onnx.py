"""`python -m export.onnx`: write an engine bundle of ONNX graphs (and AOTInductor packages with --aoti).

    python -m export.onnx --weights DIR --height 480 --width 832 --frames 81 --out BUNDLE [--dtype fp16]

Each graph (runtime/engines/bundle.py lists them) goes through `torch.export` once; the exported program
is translated to ONNX (torch.onnx, opset 20; 22 for bf16, the first with bf16 convolutions) and,
with --aoti, compiled into an AOTInductor package. Right after it is written every file is run on
the sample inputs (onnxruntime on the CPU, the AOTInductor package through the runtime's loader)
and compared with the PyTorch module: the error is printed, and above the precision's bound the
export fails. The bundle is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from export.aoti import compile_package
from export.graphs import LATENT_FRAMES_AXIS, ExportGraph, constant_rope, dit_graphs, vae_graphs
from kernels import TORCH_KERNELS
from runtime.engines.bundle import GRAPHS, PRECISIONS, Manifest, checkpoint_sha256
from runtime.engines.graph_spec import GraphSpec
from runtime.engines.graphs import open_graph
from runtime.errors import RemoverError, exit_code
from runtime.execution.attention import SDPA
from runtime.execution.choices import DTYPES
from runtime.io.outputs import claim_output, remove_stale_partials, temporary_name
from runtime.models.weights import load_scheduler_config, load_transformer, load_vae, locate_checkpoint
from runtime.pipeline.preprocess import SIZE_MULTIPLE
from runtime.pipeline.samplers import make_sampler

# relative L2 error bounds of a graph against the PyTorch module in the same dtype
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}
OPSETS = {"fp32": 20, "fp16": 20, "bf16": 22}
EXTERNAL_DATA_BYTES = 2 * 1024**3  # protobuf's limit: larger graphs keep their weights in <graph>.onnx.data
# Constant folding skips ops on constants above this many elements that several nodes read, so the
# unrolled sampler keeps one copy of each weight instead of one folded copy per step (onnxscript's
# default, 8192, lets small weights be copied per step).
FOLD_INPUT_SIZE_LIMIT = 1024

Log = Callable[[str], None]


def relative_l2(actual: Tensor, reference: Tensor) -> float:
    """||actual - reference|| / ||reference|| in float64 (the absolute norm for an all-zero reference)."""
    difference = float((actual.double().cpu() - reference.double().cpu()).norm())
    scale = float(reference.double().norm())
    return difference / scale if scale > 0 else difference


def compare(name: str, backend: str, actual: list[Tensor], reference: list[Tensor], precision: str, log: Log) -> dict:
    """Print and bound a graph's error against PyTorch over all its outputs (the worst one counts)."""
    error = max(relative_l2(a, r) for a, r in zip(actual, reference))
    max_abs = max(float((a.cpu().double() - r.cpu().double()).abs().max()) for a, r in zip(actual, reference))
    bound = TOLERANCES[precision]
    log(f"  {name}: {backend} vs PyTorch: relative L2 {error:.2e}, max abs {max_abs:.2e} (bound {bound:.0e})")
    if not error <= bound:
        raise RemoverError(f"{name}: {backend} differs from PyTorch by {error:.2e} relative L2 (bound {bound:.0e})")
    return {"relative_l2": error, "max_abs": max_abs, "bound": bound}


def export_program(graph: ExportGraph, max_latent_frames: int) -> torch.export.ExportedProgram:
    """torch.export the graph; a DiT graph with a dynamic frame axis takes 1 to `max_latent_frames` frames."""
    args = tuple(graph.inputs.values())
    transformer = getattr(graph.module, "transformer", None)
    if transformer is None:  # a VAE graph
        return torch.export.export(graph.module, args)
    dynamic_shapes = None
    if graph.dynamic_axes:
        frames = torch.export.Dim(LATENT_FRAMES_AXIS, min=1, max=max_latent_frames)
        dynamic_shapes = tuple(
            {axis: frames for axis in graph.dynamic_axes[name]} if name in graph.dynamic_axes else None
            for name in graph.inputs
        )
    pt, ph, pw = transformer.config.patch_size
    height, width = args[0].shape[3:]  # latents / noise [1, C, T, h, w]
    with constant_rope(transformer, (max_latent_frames // pt, height // ph, width // pw)):
        return torch.export.export(graph.module, args, dynamic_shapes=dynamic_shapes)


def write_onnx(program: torch.export.ExportedProgram, graph: ExportGraph, path: Path, precision: str) -> None:
    """Translate an exported program to ONNX, fold constants; weights over 2 GB go to external data beside it.

    onnxscript's full optimizer is not run: its rewrite rules take hours on the unrolled sampler of
    the released model (180 transformer blocks), and TensorRT and onnxruntime simplify graphs themselves.
    """
    import onnx_ir
    import onnx_ir.passes.common as passes
    import onnxscript.optimizer

    onnx_program = torch.onnx.export(
        program,
        tuple(graph.inputs.values()),
        input_names=list(graph.inputs),
        output_names=graph.output_names,
        opset_version=OPSETS[precision],
        dynamo=True,
        optimize=False,
        verbose=False,
    )
    model = onnx_program.model
    passes.InlinePass()(model)
    onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True, input_size_limit=FOLD_INPUT_SIZE_LIMIT)
    onnx_ir.passes.Sequential(
        passes.RemoveUnusedNodesPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.DeduplicateInitializersPass(),
        passes.RemoveUnusedOpsetsPass(),
    )(model)
    if graph.dynamic_axes:  # name the one symbolic axis (the exporter calls it s0, s1, ...) as the manifest does
        named = onnx_ir.SymbolicDim(LATENT_FRAMES_AXIS)
        for value in [*model.graph.inputs, *model.graph.outputs]:
            value.shape = onnx_ir.Shape([named if isinstance(d, onnx_ir.SymbolicDim) else d for d in value.shape])
    weight_bytes = sum(p.numel() * p.element_size() for p in graph.module.parameters())
    onnx_program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_BYTES)


def check_onnx(
    path: Path, graph: ExportGraph, spec: GraphSpec, reference: list[Tensor], precision: str, log: Log
) -> dict:
    """Run the ONNX file with onnxruntime on the CPU against PyTorch (bf16: the ONNX checker only,
    as onnxruntime has no bf16 CPU kernels)."""
    if precision == "bf16":
        import onnx

        onnx.checker.check_model(str(path), full_check=True)
        log(f"  {graph.name}: onnx.checker passed; onnxruntime (CPU) has no bf16 kernels, not run")
        return {"onnxruntime": "not run: no bf16 kernels on the CPU", "onnx_checker": "passed"}
    outputs = open_graph("onnxruntime", path, graph.name, spec, torch.device("cpu"))(
        *(x.float().cpu() for x in graph.inputs.values())
    )
    return compare(graph.name, "onnxruntime", outputs, reference, precision, log)


def build_bundle(
    weights: Path,
    out: Path,
    *,
    height: int,
    width: int,
    frames: int,
    precision: str = "fp16",
    vae: Path | None = None,
    dynamic_frames: bool = False,
    aoti: bool = False,
    device: torch.device | None = None,
    sampler: str = "unipc",
    steps: int = 6,
    check: bool = True,
    log: Log = print,
) -> Manifest:
    """Export every graph of `weights` for clips of `frames` frames at height x width into the bundle `out`;
    `check` runs each file against PyTorch as it is written (off: for sizes a CPU cannot run in time)."""
    if precision not in PRECISIONS:
        raise RemoverError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise RemoverError(f"height and width must be positive multiples of {SIZE_MULTIPLE}, got {width}x{height}")
    if out.exists():
        raise RemoverError(f"{out} already exists; choose a new folder for the bundle")
    if not out.parent.is_dir():
        raise RemoverError(f"the folder {out.parent} does not exist")
    device = device or torch.device("cpu")
    paths = locate_checkpoint(weights, vae)
    dtype = DTYPES[precision]
    scheduler = load_scheduler_config(paths.scheduler)
    schedule = make_sampler(sampler, scheduler, steps)
    transformer = load_transformer(paths.transformer, device, dtype)
    transformer.use_backends(TORCH_KERNELS, SDPA)  # the PyTorch path: plain ops ONNX and Inductor trace
    vae_model = load_vae(paths.vae, device, dtype)
    config = vae_model.config
    if frames < 1 or (frames - 1) % config.temporal_factor:
        raise RemoverError(f"frames must be {config.temporal_factor}k+1 (e.g. 81), got {frames}")
    latent_shape = config.latent_shape(frames, height, width)
    latent_text = "x".join(map(str, latent_shape))
    log(f"exporting {weights} for {frames} frames at {width}x{height} (latents {latent_text}) in {precision}")

    graphs = {
        g.name: g
        for g in [
            *vae_graphs(vae_model, height, width),
            *dit_graphs(
                transformer, scheduler, latent_shape, sampler=sampler, steps=steps, dynamic_frames=dynamic_frames
            ),
        ]
    }
    manifest = Manifest(
        checkpoint_sha256=checkpoint_sha256(paths),
        transformer=transformer.config,
        vae=config,
        scheduler=scheduler,
        height=height,
        width=width,
        frames=frames,
        dynamic_frames=dynamic_frames,
        precision=precision,
        sampler=sampler,
        steps=steps,
        timesteps=tuple(int(t) for t in schedule.timesteps),
        sigmas=tuple(schedule.sigmas),
        condition=0 if transformer.config.num_condition_tokens else None,
        graphs={},
        tools=tool_versions(),
    )
    kinds = ["onnx", "aoti"] if aoti else ["onnx"]
    keys = {"onnx": manifest.key("onnx", "any"), "aoti": manifest.key(f"torch {torch.__version__}", device.type)}
    manifest.artifacts = {kind: {"key": keys[kind], "files": {}, "checks": {}} for kind in kinds}
    manifest.artifacts["onnx"]["opset"] = OPSETS[precision]

    with claim_output(out):  # another export of this bundle now is one error line, not a clash
        remove_stale_partials(out)  # what an interrupted export of it left
        staging = temporary_name(out)
        for kind in kinds:
            (staging / kind).mkdir(parents=True)
        try:
            for name in GRAPHS:
                export_graph(graphs[name], manifest, staging, latent_shape[0], check, log)
            manifest.write(staging)
            staging.rename(out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def export_graph(
    graph: ExportGraph, manifest: Manifest, staging: Path, max_latent_frames: int, check: bool, log: Log
) -> None:
    """Export one graph to every artifact kind of the manifest, checking each file as it is written
    (unless `check` is off: then the manifest says so)."""
    start = time.perf_counter()
    program = export_program(graph, max_latent_frames)
    log(f"{graph.name}: torch.export in {time.perf_counter() - start:.1f} s")
    if check:
        start = time.perf_counter()
        reference = graph.reference_outputs()
        log(f"  {graph.name}: PyTorch reference outputs in {time.perf_counter() - start:.1f} s")
    else:  # the output shapes from the traced program, no computation
        reference = [node.meta["val"] for node in program.graph.find_nodes(op="output")[0].args[0]]
    spec = graph.spec(reference)
    manifest.graphs[graph.name] = spec

    for kind, artifacts in manifest.artifacts.items():
        start = time.perf_counter()
        relative = Path(kind) / f"{graph.name}.{'onnx' if kind == 'onnx' else 'pt2'}"
        path = staging / relative
        if kind == "onnx":
            write_onnx(program, graph, path, manifest.precision)
        else:
            compile_package(program, spec, artifacts["key"], path)
        if not check:
            result: dict = {"not_checked": "exported with --no-check"}
        elif kind == "onnx":
            result = check_onnx(path, graph, spec, reference, manifest.precision, log)
        else:
            outputs = open_graph("aoti", path, graph.name, spec, graph_device(graph))(*graph.inputs.values())
            result = compare(graph.name, "aoti", outputs, reference, manifest.precision, log)
        size = sum(f.stat().st_size for f in path.parent.glob(f"{graph.name}.*"))
        log(f"  {relative} ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
        artifacts["files"][graph.name] = str(relative)
        artifacts["checks"][graph.name] = {**result, "bytes": size}


def graph_device(graph: ExportGraph) -> torch.device:
    return next(iter(graph.inputs.values())).device


def tool_versions() -> dict[str, str]:
    """Versions of everything that shaped the bundle's files."""
    import onnx
    import onnxruntime
    import onnxscript

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export.onnx", description="Export an engine bundle (ONNX graphs).")
    parser.add_argument("--weights", required=True, help="checkpoint folder (or single-file repack with --vae)")
    parser.add_argument("--vae", help="folder with the VAE (needed with a single-file repack)")
    parser.add_argument("--height", type=int, default=480, help="working height, a multiple of 16 (default 480)")
    parser.add_argument("--width", type=int, default=832, help="working width, a multiple of 16 (default 832)")
    parser.add_argument("--frames", type=int, default=81, help="frames per clip, 4k+1 (default 81)")
    parser.add_argument("--out", required=True, help="the bundle folder to create")
    parser.add_argument(
        "--dtype", choices=PRECISIONS, default="fp16", help="weights and compute precision (default fp16)"
    )
    parser.add_argument(
        "--dynamic-frames",
        action="store_true",
        help="the transformer graphs take 1 to --frames frames (latent axis dynamic)",
    )
    parser.add_argument("--aoti", action="store_true", help="also compile AOTInductor packages (for the C++ host)")
    parser.add_argument("--device", default="cpu", help="device to export (and compile AOTInductor packages) on")
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip running each file against PyTorch (the manifest records it); for sizes too slow to run here",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> str:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RemoverError("CUDA is not available on this machine; use --device cpu")
        start = time.perf_counter()
        build_bundle(
            Path(args.weights),
            Path(args.out),
            height=args.height,
            width=args.width,
            frames=args.frames,
            precision=args.dtype,
            vae=Path(args.vae) if args.vae else None,
            dynamic_frames=args.dynamic_frames,
            aoti=args.aoti,
            device=device,
            check=not args.no_check,
        )
        return f"wrote {args.out} in {time.perf_counter() - start:.1f} s"

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
