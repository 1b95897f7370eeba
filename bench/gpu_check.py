"""`make gpu-check`: everything that needs a GPU, in one command, and its figures in bench/RESULTS.md.

On a machine with a CUDA GPU, in order (each step's outcome is recorded even when another fails):
1. the GPU-marked tests (`pytest -m gpu`), and the kernel, backend and attention tests, which run on
   CUDA when it is there;
2. the self-check of the fast paths (runtime/execution/choices.py) at the released model's shape, in fp16 and
   bf16, for the Triton kernels and each attention backend that can run;
3. fixture parity on CUDA: the whole pipeline on the reference fixture in fp32, bf16 and fp16, with
   each attention backend and compile mode, against the reference's fp32 frames (fp32: the fixture's
   2e-3; half precision: twice the reference implementation's own error in that dtype, measured on
   the CPU in tests/test_precision.py);
4. `python -m training.measure_step` with training/configs/wan1.3b_stage1.json at one clip a step:
   stage 1's step time, tokens/s and peak memory on this GPU against the memory plan;
5. `python -m bench.run --device cuda`: ours against the reference at 480x832x81 and the rest of the
   GPU suite, re-rendering bench/RESULTS.md.
The figures (GPU, driver, versions, each step) are written between the gpu-check markers of
bench/RESULTS.md. Without a GPU it says so in one line and exits 0. Exit status 1 if a step failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from bench.child import run_child
from bench.results import machine_info, to_dict, versions
from bench.study import write_section
from runtime import Remover
from runtime.errors import RemoverError, RemoverWarning
from runtime.execution.attention import ATTENTION_CHOICES, select_attention
from runtime.execution.choices import COMPILE_MODES, DTYPES, resolve_kernels, verified_backends
from runtime.models.transformer import RELEASED_TRANSFORMER

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("MINIMAX_SHARED", REPO.parent / "shared")) / "fixtures" / "reference-tiny"
RESULTS_MD = Path(__file__).parent / "RESULTS.md"
BEGIN, END = "<!-- gpu-check:begin (written by `make gpu-check`) -->", "<!-- gpu-check:end -->"
# max abs error against the reference's fp32 frames: the fixture's bound in fp32; in half precision
# twice the reference implementation's own error in that dtype (tests/test_precision.py, CPU)
PARITY_BOUND = {"fp32": 2e-3, "fp16": 2 * 3.4e-3, "bf16": 2 * 2.5e-2}


@dataclass
class Step:
    name: str
    passed: bool
    detail: str
    seconds: float


def run_command(name: str, command: list[str]) -> Step:
    """A subprocess step: passed when it exits 0; its last output line is the detail."""
    result = run_child(command, cwd=REPO)
    tail = (result.stdout + result.stderr).strip().splitlines()
    return Step(name, result.returncode == 0, tail[-1] if tail else "", result.seconds)


def self_check(device: torch.device) -> list[Step]:
    """The fast paths at the released model's shape (and with the condition tokens ours has)."""
    steps = []
    kernels = resolve_kernels("auto", device)  # Triton where it is installed
    for dtype_name in ("fp16", "bf16"):
        dtype = DTYPES[dtype_name]
        for attention in ("flash-attn", "sdpa"):
            start = time.perf_counter()
            config = RELEASED_TRANSFORMER
            try:
                backend = select_attention(
                    attention, device, dtype, heads=config.num_attention_heads, head_dim=config.attention_head_dim
                )
            except RemoverError as exc:
                steps.append(Step(f"self-check {attention} {dtype_name}", True, f"not available: {exc}", 0.0))
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RemoverWarning)
                chosen = verified_backends(kernels, backend, config, device, dtype)
            failures = [str(w.message) for w in caught if issubclass(w.category, RemoverWarning)]
            detail = "; ".join(failures) or f"kernels {chosen[0].name}, attention {chosen[1].name} verified"
            steps.append(
                Step(f"self-check {attention} {dtype_name}", not failures, detail, time.perf_counter() - start)
            )
    return steps


def fixture_parity(device: torch.device, dtypes: tuple[str, ...], attentions: tuple[str, ...], modes: tuple[str, ...]):
    """The whole pipeline on the reference fixture per (dtype, attention, compile mode) -> Steps."""
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    inputs = FIXTURE / "inputs"
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted(inputs.glob("frame_*.png"))])
    masks = np.stack([np.asarray(Image.open(p)) for p in sorted(inputs.glob("mask_*.png"))])
    truth = expected["expected_frames"].numpy()
    steps = []
    for dtype in dtypes:
        for attention in attentions:
            for mode in modes:
                name = f"parity {dtype}, attention {attention}, compile {mode}"
                start = time.perf_counter()
                try:
                    remover = Remover.from_pretrained(
                        FIXTURE / "checkpoint", device, dtype, attention=attention, compile_mode=mode
                    )
                    out = remover(
                        frames, masks, height=64, width=96, latents=expected["noise"], paste_back=False, progress=False
                    )
                except RemoverError as exc:
                    steps.append(Step(name, True, f"not available here: {exc}", time.perf_counter() - start))
                    continue
                except Exception as exc:  # a crash is this check's finding
                    steps.append(Step(name, False, f"{type(exc).__name__}: {exc}", time.perf_counter() - start))
                    continue
                error = float(np.abs(out - truth).max())
                passed = error <= PARITY_BOUND[dtype]
                detail = f"max abs {error:.2e} (bound {PARITY_BOUND[dtype]:.1e}; {remover.backends})"
                steps.append(Step(name, passed, detail, time.perf_counter() - start))
    return steps


def write_results(steps: list[Step], device: torch.device, path: Path = RESULTS_MD) -> None:
    """Replace the gpu-check section of RESULTS.md (appended the first time)."""
    machine = ", ".join(f"{key} {value}" for key, value in to_dict(machine_info(device)).items())
    lines = [
        "## GPU check (`make gpu-check`)",
        "",
        f"- date {date.today().isoformat()}; {machine}",
        "- " + ", ".join(f"{name} {version}" for name, version in versions().items()),
        "",
        "| step | result | detail | seconds |",
        "|---|---|---|---|",
        *(f"| {s.name} | {'pass' if s.passed else '**FAIL**'} | {s.detail} | {s.seconds:.1f} |" for s in steps),
    ]
    write_section(path, BEGIN, END, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--skip-bench", action="store_true", help="leave out the 480x832x81 benchmark")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine; nothing to check")
        return 0
    device = torch.device("cuda")
    steps = [run_command("GPU-marked tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu"])]
    # these tests run on CUDA when it is there and on the CPU (Triton's interpreter) when not: here, on CUDA
    on_cuda = ["tests/test_kernels.py", "tests/test_backends.py", "tests/test_attention.py"]
    steps.append(run_command("kernel and backend tests on CUDA", [sys.executable, "-m", "pytest", "-q", *on_cuda]))
    steps += self_check(device)
    attentions = tuple(a for a in ATTENTION_CHOICES if a != "auto")
    steps += fixture_parity(device, tuple(DTYPES), attentions, tuple(COMPILE_MODES))
    training = [sys.executable, "-m", "training.measure_step", "--config", "training/configs/wan1.3b_stage1.json"]
    training += ["--set", "batch_size=1", "--steps", "30"]  # one clip a step: seconds, not minutes
    steps.append(run_command("training step at the released size (training.measure_step)", training))
    if not args.skip_bench:
        steps.append(
            run_command("bench.run --device cuda", [sys.executable, "-m", "bench.run", "--device", "cuda", "--report"])
        )
    write_results(steps, device)
    for step in steps:
        print(f"{'pass' if step.passed else 'FAIL'}  {step.name}: {step.detail} ({step.seconds:.1f} s)")
    failed = [s for s in steps if not s.passed]
    print(f"gpu-check: {len(steps) - len(failed)} of {len(steps)} steps passed; figures in {RESULTS_MD}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
