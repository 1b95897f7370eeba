"""Ours against the reference, stage by stage: `python -m bench.run [--device cpu|cuda] [--quick] [--json PATH]`.

Every (side, workload, clip length) runs in a fresh process, so each side's peak memory is its own.
Both sides load the same checkpoint (by default random weights of the released shapes, cached under
~/.cache) and read the same rendered clip. The run is written as JSON (bench/results.py describes
it); `--report` then re-renders the tables and the chart of bench/RESULTS.md from bench/results/.

    python -m bench.run --quick --threads 1      # CPU-sized (about 20 minutes on 2 shared cores)
    python -m bench.run --device cuda --report   # the released 480x832x81 setting and the rest
    python -m bench.run --workloads vae-240x416 --frames 3 --stages decode --rounds 1 --json /tmp/vae.json
                                                 # one VAE stage at one clip length: its peak, quickly
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import torch

from bench import results
from bench.child import run_child
from bench.results import SIDES, Meta, Run, Side
from bench.study import RESULTS_DIR, log, save_json
from bench.workloads import SUITES, WORKLOADS, default_weights_dir, ensure_random_checkpoint, write_pipeline_inputs
from runtime.errors import RemoverError, exit_code
from runtime.execution.attention import ATTENTION_CHOICES
from runtime.execution.choices import COMPILE_MODES, DTYPES, KERNEL_CHOICES
from runtime.models.config import read_config
from runtime.models.transformer import TransformerConfig
from runtime.models.vae import VAEConfig
from runtime.models.weights import locate_checkpoint

VAE_STAGES = ("encode", "decode")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--quick", action="store_true", help="the CPU-sized suite (a few minutes on a CPU)")
    parser.add_argument("--json", type=Path, help="where to write the run (default: bench/results/<suite>.json)")
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), help="instead of the suite")
    parser.add_argument("--frames", type=int, nargs="+", help="VAE workloads: these latent frame counts instead")
    parser.add_argument("--stages", nargs="+", choices=VAE_STAGES, help="VAE workloads: only these stages")
    parser.add_argument("--weights", type=Path, help="a released-layout checkpoint (default: random, cached)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="both sides; default fp16 on GPU (as released), fp32 on CPU"
    )
    parser.add_argument("--warmup", type=int, help="untimed calls before measuring (default: 1 on GPU, 0 on CPU)")
    parser.add_argument("--repeats", type=int, help="timed calls per process (default: 3 on GPU, 1 on CPU)")
    parser.add_argument(
        "--rounds", type=int, help="fresh processes per side, interleaved, medians reported (default: 1 GPU, 3 CPU)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads per measurement process (default: torch's)")
    parser.add_argument("--kernels", choices=KERNEL_CHOICES, help="ours: from_pretrained's (default auto)")
    parser.add_argument("--attention", choices=ATTENTION_CHOICES, help="ours: from_pretrained's (default auto)")
    parser.add_argument(
        "--compile", choices=sorted(COMPILE_MODES), default="off", help="ours: compile the step's model call"
    )
    parser.add_argument("--report", action="store_true", help="then re-render bench/RESULTS.md from bench/results/")
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "WORKLOAD", "FRAMES"), help=argparse.SUPPRESS)
    parser.add_argument("--inputs", nargs=2, type=Path, metavar=("VIDEO", "MASKS"), help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=VAE_STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.command = " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)])
    return args


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the defaults that depend on the device; refuse a device this machine does not have."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RemoverError("CUDA is not available on this machine; use --device cpu")
    gpu = args.device == "cuda"
    args.dtype = args.dtype or ("fp16" if gpu else "fp32")
    args.warmup = (1 if gpu else 0) if args.warmup is None else args.warmup
    args.repeats = (3 if gpu else 1) if args.repeats is None else args.repeats
    args.rounds = (1 if gpu else 3) if args.rounds is None else args.rounds
    if args.warmup < 0 or min(args.repeats, args.rounds, args.threads or 1) < 1:
        raise RemoverError("--warmup must be >= 0; --repeats, --rounds and --threads >= 1")
    return args


def ours_options(args: argparse.Namespace) -> dict[str, str | None]:
    """Our side's `Remover.from_pretrained` options (None: its own default)."""
    return {"kernels": args.kernels, "attention": args.attention, "compile_mode": args.compile}


def child_command(
    args: argparse.Namespace, side: str, workload: str, frames: int, inputs: Any, stage: str | None
) -> list[str]:
    command = [sys.executable, "-m", "bench.run", "--child", side, workload, str(frames), "--device", args.device]
    command += ["--dtype", args.dtype, "--weights", str(args.weights), "--warmup", str(args.warmup)]
    command += ["--repeats", str(args.repeats), "--compile", args.compile]
    for option in ("threads", "kernels", "attention"):
        if getattr(args, option):
            command += [f"--{option}", str(getattr(args, option))]
    if inputs is not None:
        command += ["--inputs", str(inputs[0]), str(inputs[1])]
    if stage is not None:
        command += ["--stage", stage]
    return command


def measure_in_child(command: list[str]) -> Side:
    """Run one measurement process; its last stdout line is the side's figures as JSON."""
    child = run_child(command)
    if child.returncode != 0:
        raise RemoverError(f"measurement failed ({' '.join(command[3:7])}): {child.last_line()}")
    return results.load(Side, json.loads(child.stdout.strip().splitlines()[-1]), "measurement")


def model_configs(weights: Path) -> results.ModelConfigs:
    """The transformer and VAE configs of a released-layout checkpoint, for the cost model."""
    paths = locate_checkpoint(weights)
    transformer = read_config(
        TransformerConfig, paths.transformer / "config.json", ignored=TransformerConfig.IGNORED_KEYS
    )
    return transformer, read_config(VAEConfig, paths.vae / "config.json", ignored=VAEConfig.IGNORED_KEYS)


def progress_line(side: str, workload: str, frames: int, pipeline: bool, figures: Side) -> str:
    stages = ", ".join(
        f"{name} {stage.seconds:.1f}"
        + (f" (cpu {stage.cpu_s:.1f})" if stage.cpu_s is not None else "")
        + f" +{stage.above_loaded_mb:.0f} MB"
        for name, stage in figures.stages.items()
    )
    unit = "frames" if pipeline else "latent frames"
    return (
        f"{side:>9} {workload} ({frames} {unit}): {figures.total_s:.1f} s [{stages}], peak "
        f"{figures.peak_mem_mb:.0f} MB (stages: seconds, CPU seconds, peak above the loaded model)"
    )


def run_suite(args: argparse.Namespace, names: tuple[str, ...], log=print) -> Run:
    """Measure both sides on every workload of `names`."""
    started = time.perf_counter()
    models = model_configs(args.weights)
    entries: dict[str, results.WorkloadResult] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            workload = WORKLOADS[name]
            if args.frames:
                note = f" Measured here at {', '.join(map(str, args.frames))} latent frames only."
                workload = replace(workload, frames=tuple(args.frames), description=workload.description + note)
            inputs = None
            if workload.kind == "pipeline":
                folder = Path(scratch) / name
                folder.mkdir()
                inputs = write_pipeline_inputs(workload, folder)
            points = []
            # the VAE's stages each in a fresh process, so a stage's peak is its own
            stages = [None] if workload.kind == "pipeline" else args.stages or VAE_STAGES
            for frames in workload.frames:
                rounds: dict[str, list[Side]] = {side: [] for side in SIDES}
                for index in range(args.rounds):  # sides alternate, so a drifting load hits both alike
                    for side in SIDES if index % 2 == 0 else SIDES[::-1]:
                        commands = [child_command(args, side, name, frames, inputs, stage) for stage in stages]
                        parts = [measure_in_child(command) for command in commands]
                        rounds[side].append(results.merge_stages(parts))
                        log(progress_line(side, name, frames, inputs is not None, rounds[side][-1]))
                sides = {side: results.combine_rounds(runs) for side, runs in rounds.items()}
                points.append(results.point_entry(workload, sides["ours"], sides["reference"], models))
            entries[name] = results.workload_entry(workload, points)
    device = torch.device(args.device)
    meta = Meta(
        date=date.today().isoformat(),
        device=args.device,
        dtype=args.dtype,
        suite=list(names),
        quick=args.quick,
        warmup=args.warmup,
        repeats=args.repeats,
        rounds=args.rounds,
        threads=args.threads or torch.get_num_threads(),
        ours_options=ours_options(args),
        weights=str(args.weights) if args.weights != default_weights_dir() else "random, released shapes (seed 0)",
        machine=results.machine_info(device),
        versions=results.versions(),
        command=args.command,
        wall_s=time.perf_counter() - started,
    )
    return results.assemble(meta, entries)


def default_json_path(args: argparse.Namespace) -> Path:
    """bench/results/<device>[-quick].json for a suite, <device>-custom.json for chosen workloads."""
    suffix = "-custom" if args.workloads else "-quick" if args.quick else ""
    return RESULTS_DIR / f"{args.device}{suffix}.json"


def measure(args: argparse.Namespace) -> None:
    """Measure one side (as a child process) or the chosen suite; write its JSON (and the report)."""
    args = resolve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        from bench.sides import measure_side  # imports diffusers: only where a side is measured

        side, name, frames = args.child
        figures = measure_side(
            side, WORKLOADS[name], int(frames), weights=args.weights, device=torch.device(args.device),
            dtype=DTYPES[args.dtype], inputs=args.inputs, stage=args.stage, warmup=args.warmup,
            repeats=args.repeats, options=ours_options(args),
        )  # fmt: skip
        print(json.dumps(results.to_dict(figures)))
        return
    names = tuple(args.workloads) if args.workloads else SUITES[(args.device, args.quick)]
    if (args.frames or args.stages) and any(WORKLOADS[name].kind != "vae" for name in names):
        raise RemoverError("--frames and --stages apply to VAE workloads only; choose them with --workloads")
    if args.frames and min(args.frames) < 1:
        raise RemoverError("--frames counts latent frames: 1 or more")
    if args.device == "cpu" and any(WORKLOADS[name].gpu_only for name in names):
        raise RemoverError("the full-size workloads need a GPU; choose others with --workloads")
    if args.weights is None:
        args.weights = ensure_random_checkpoint(default_weights_dir())
    run = run_suite(args, names, log=log)
    path = save_json(args.json or default_json_path(args), run.to_dict())
    print(f"wrote {path}: ours {run.ours.total_s:.1f} s vs reference {run.reference.total_s:.1f} s")
    if args.report:
        from bench.report import update_results

        print(f"updated {update_results()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_code(lambda: measure(args))


if __name__ == "__main__":
    sys.exit(main())
