"""The host allocator's policy, each a ratio in one run: `python -m bench.heap [--weights demo|DIR]`.

`python -m runtime.run` in a fresh process (bench/child.py: wall and CPU seconds, peak resident set) on
the same 640x360 clip at two lengths, under the three policies of runtime/execution/host_memory.py:

- default: glibc as it comes (its mmap threshold rises as large blocks are freed);
- fixed: the threshold fixed at 128 KiB for the whole run (frames are given back, but every model
  temporary over 128 KiB is a fresh mapping);
- staged: what the command does, fixed at 128 KiB but 32 MB while the model computes.

Peaks against length say whether host memory stays flat; seconds against `staged` what a policy costs.
Results go to bench/results/heap-<weights>.json and print as the table bench/RESULTS.md quotes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from bench.footage import measure_command, write_inputs
from bench.study import RESULTS_DIR, log, markdown_table, save_json
from bench.workloads import WEIGHTS_HELP, resolve_weights
from runtime.errors import exit_code

POLICIES = ("default", "fixed", "staged")
# argv: POLICY CLI-ARGUMENTS...; runs the CLI's main in this process under POLICY
DRIVER = """
import contextlib, sys
import runtime.clips.stream
from runtime.execution.host_memory import bound_host_heap
from runtime.run import main
policy = sys.argv.pop(1)
if policy != "default":
    bound_host_heap()
if policy == "fixed":
    runtime.clips.stream.model_temporaries_on_heap = contextlib.nullcontext
sys.exit(main(sys.argv[1:]))
"""


def measure(policy: str, args: list[object]) -> dict[str, float]:
    return measure_command([sys.executable, "-c", DRIVER, policy, *args, "--quiet"], f"the run under {policy}")


def table(run: dict) -> str:
    """One row a policy: peak MB at each length and their ratio, seconds and CPU against `staged`."""
    lengths = list(run["frames"])
    header = ["policy", *(f"peak MB, {n} frames" for n in lengths), "peak ratio"]
    header += [f"s at {n} frames (vs staged)" for n in lengths]
    rows = []
    for policy in POLICIES:
        peaks = [run["frames"][n][policy]["peak_mb"] for n in lengths]
        row = [policy, *(f"{p:.0f}" for p in peaks), f"{peaks[-1] / peaks[0]:.3f}x"]
        for n in lengths:
            seconds, staged = run["frames"][n][policy]["seconds"], run["frames"][n]["staged"]["seconds"]
            row.append(f"{seconds:.1f} ({seconds / staged:.2f}x)")
        rows.append(row)
    return "\n".join(markdown_table(header, rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heap", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="demo", help=WEIGHTS_HELP)
    parser.add_argument("--frames", default="81,321", help="clip lengths, comma-separated (default 81,321)")
    parser.add_argument("--json", type=Path, help="default: bench/results/heap-<weights>.json")
    args = parser.parse_args(argv)

    def work() -> str:
        weights = resolve_weights(args.weights)
        started = time.perf_counter()
        run = {"date": date.today().isoformat(), "weights": args.weights, "working size": [64, 112], "frames": {}}
        with tempfile.TemporaryDirectory() as scratch:
            for frames in (int(n) for n in args.frames.split(",")):
                video, mask = write_inputs(Path(scratch), frames, 360, 640, (40, 60))
                cli = ["--video", video, "--mask", mask, "--weights", weights, "--height", 64, "--width", 112]
                cli += ["--crop", "off", "--overwrite", "--out", Path(scratch) / "out.mp4"]
                run["frames"][str(frames)] = entry = {}
                for policy in POLICIES:
                    entry[policy] = measure(policy, cli)
                    log(f"{frames} frames, {policy}: {entry[policy]}")
        run["wall_s"] = time.perf_counter() - started
        path = save_json(args.json or RESULTS_DIR / f"heap-{Path(str(args.weights)).name}.json", run)
        print(table(run))
        return f"wrote {path}"

    return exit_code(work)


if __name__ == "__main__":
    sys.exit(main())
