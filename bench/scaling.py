"""Scaling over ranks: `python -m bench.scaling --ranks 1 2 4 [--weights released --height 480 --width 832]`.

For each clip length and blend, `torchrun --nproc_per_node R -m runtime.run` on the same synthetic clip
for every R, in one run: the run's own seconds without loading the model (its summary line), the
process tree's wall seconds, and the speed-up over 1 rank. `--blend continue` splits each window's
transformer by sequence (the VAE on rank 0); `--blend crossfade` shares whole windows out. One GPU per
rank on a CUDA machine; on the CPU (gloo, the cores shared by the ranks) the figures only show that
it runs, not how it scales. Results: bench/results/scaling-<device>.json, printed as Markdown.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import torch

from bench.child import run_child, runtime_cli
from bench.footage import write_inputs
from bench.study import RESULTS_DIR, log, markdown_table, save_json
from bench.workloads import WEIGHTS_HELP, resolve_weights
from runtime.errors import RemoverError, exit_code

SUMMARY = re.compile(r"wrote .* in (\S+) s: .*load (\S+) s")


def run_on_ranks(ranks: int, arguments: list[Any]) -> dict[str, float]:
    """`runtime.run ARGUMENTS` under torchrun with `ranks` processes: its seconds without the model
    load, and the wall seconds of the whole process tree (start-up and loading included)."""
    command = runtime_cli(*arguments, "--overwrite", ranks=ranks)
    result = run_child(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    found = SUMMARY.search(result.stdout)
    if result.returncode != 0 or found is None:
        lines = result.stderr.splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        said = errors[-1] if errors else " | ".join(lines[-8:]) or "no output"  # torchrun's own report
        raise RemoverError(f"{ranks} rank(s): the run failed (exit status {result.returncode}): {said}")
    total, load = map(float, found.groups())
    return {"seconds": total - load, "wall_s": result.seconds, "summary": result.stdout.strip()}


def scaling_suite(
    folder: Path, weights: Path, ranks: list[int], lengths: list[int], size: tuple[int, int], window: int, log
) -> dict[str, Any]:
    """Every (length, blend) on every rank count; speed-ups against the first rank count."""
    entries: dict[str, Any] = {}
    for frames in lengths:
        video, mask = write_inputs(folder, frames, size[0], size[1], (size[0] // 4, size[1] // 6))
        for blend in ("continue", "crossfade"):
            common = ["--video", video, "--mask", mask, "--weights", weights, "--out", folder / "out.mp4"]
            common += ["--height", size[0], "--width", size[1], "--crop", "off", "--window", window, "--blend", blend]
            entry = {str(r): run_on_ranks(r, common) for r in ranks}
            base = entry[str(ranks[0])]["seconds"]
            for figures in entry.values():
                figures["speedup"] = base / figures["seconds"]
            entries[f"{frames} frames, {blend}"] = entry
            log(f"{frames} frames, {blend}: " + ", ".join(f"{r} ranks {e['seconds']:.1f} s" for r, e in entry.items()))
    return entries


def table(run: dict[str, Any]) -> str:
    """The run as a Markdown table: seconds (without loading) and speed-up per rank count."""
    ranks = run["ranks"]
    header = ["clip", *(cell for r in ranks for cell in (f"{r} rank(s) s", "speed-up"))]
    rows = [
        [
            name,
            *(cell for r in ranks for cell in (f"{entry[str(r)]['seconds']:.1f}", f"{entry[str(r)]['speedup']:.2f}x")),
        ]
        for name, entry in run["clips"].items()
    ]
    return "\n".join(markdown_table(header, rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts (default 1 2)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[81, 321], help="clip lengths (default 81 321)")
    parser.add_argument("--weights", default="demo", help=WEIGHTS_HELP)
    parser.add_argument("--height", type=int, default=64, help="frame and working height (default 64; 480 on GPUs)")
    parser.add_argument("--width", type=int, default=112, help="frame and working width (default 112; 832 on GPUs)")
    parser.add_argument("--window", type=int, default=81, help="window length (default 81)")
    parser.add_argument("--json", type=Path, help="default: bench/results/scaling-<cpu|gpu>.json")
    args = parser.parse_args(argv)

    def work() -> str:
        weights = resolve_weights(args.weights)
        gpus = torch.cuda.device_count()
        if gpus and max(args.ranks) > gpus:
            raise RemoverError(f"{max(args.ranks)} ranks need as many GPUs; this machine has {gpus}")
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        with tempfile.TemporaryDirectory() as scratch:
            size = (args.height, args.width)
            clips = scaling_suite(Path(scratch), weights, args.ranks, args.lengths, size, args.window, log)
        run = {"date": date.today().isoformat(), "device": device, "weights": args.weights, "ranks": args.ranks}
        run |= {"size": [args.height, args.width], "window": args.window, "clips": clips}
        device_name = "gpu" if torch.cuda.is_available() else "cpu"
        path = save_json(args.json or RESULTS_DIR / f"scaling-{device_name}.json", run)
        print(table(run))
        return f"wrote {path}"

    return exit_code(work)


if __name__ == "__main__":
    sys.exit(main())
