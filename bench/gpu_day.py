"""The first GPU run in one offline command: `python3 -m bench.gpu_day --out DIR` on a lent GPU machine.

It installs the wheels carried in .whl/ (`pip --no-index --no-deps`, into DIR/site; never torch: the
machine's own PyTorch, 2.11 there), then runs the steps below in order of value, each in a fresh
process under its own time budget and all under one deadline (8 minutes by default). A step that fails
or runs out of time is one line, and the next step still runs. Every step's output goes to
DIR/<n>-<step>.log (packed into DIR/steps.tar.gz at the end), the summary to DIR/summary.md and into
bench/RESULTS.md's GPU-day section, with the date and the card.

Without CUDA (`--cpu`, or no GPU found) it is the rehearsal: the same steps at tiny sizes on the CPU,
and a step that cannot run without CUDA says so in its line.
The fixture comes from MINIMAX_SHARED, else shared/ inside the checkout (what travels to the device),
else ../shared beside it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
WHEEL_LIST = Path(__file__).parent / "gpu_wheels.txt"
RESULTS_MD = Path(__file__).parent / "RESULTS.md"
BEGIN, END = "<!-- gpu-day:begin (written by `python3 -m bench.gpu_day`) -->", "<!-- gpu-day:end -->"
DEADLINE_S = 480.0  # the 8 minutes on an H100, everything included
CPU_DEADLINE_S = 1200.0  # the rehearsal: full-size models on a (shared) CPU
CPU_BUDGET_FACTOR = 4  # a step's budget on the CPU, times its GPU budget
NEEDS_CUDA = "needs CUDA"
MIN_STEP_S = 1.0  # a step given less than this before the deadline is skipped, not started
# bench.run options of the issue "faster than the reference" (29): a step each where bench.run has it
LEVER_OPTIONS = ("--decode-region", "--mask-encode", "--decoder")


@dataclass(frozen=True)
class Step:
    """One step: its command on CUDA and in the CPU rehearsal (None: needs CUDA) and its budget."""

    name: str
    budget_s: float
    cuda: list[str] | None
    cpu: list[str] | None


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # pass, FAIL, timeout, skipped
    detail: str
    seconds: float


def shared_folder() -> Path:
    """Where the fixtures are: MINIMAX_SHARED, else the checkout's own shared/ (it travels), else ../shared."""
    if "MINIMAX_SHARED" in os.environ:
        return Path(os.environ["MINIMAX_SHARED"])
    inside = REPO / "shared"
    return inside if (inside / "fixtures").is_dir() else REPO.parent / "shared"


def wheel_names(path: Path = WHEEL_LIST) -> dict[str, str]:
    """gpu_wheels.txt -> {normalized name: version}."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[normalize(name)] = version.strip()
    return pins


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return name.strip().lower().replace("_", "-").replace(".", "-")


def install_wheels(site: Path) -> Outcome:
    """pip install --no-index --no-deps the carried wheels into `site`; exactly the listed ones must be there."""
    start = time.perf_counter()
    wheels = sorted(WHEELS.glob("*.whl"))
    found = {normalize(w.name.split("-")[0]): w.name.split("-")[1] for w in wheels}
    if found != wheel_names():
        detail = f".whl/ holds {found or 'nothing'}, bench/gpu_wheels.txt names {wheel_names()}: run make gpu-wheels"
        return Outcome("install carried wheels", "FAIL", detail, time.perf_counter() - start)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    command += ["--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]
    result = subprocess.run(command, capture_output=True, text=True)
    status = "pass" if result.returncode == 0 else "FAIL"
    detail = last_line(result.stdout + result.stderr) or f"{len(wheels)} wheels into {site}"
    return Outcome("install carried wheels", status, detail, time.perf_counter() - start)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def bench_run(out: Path, tag: str, *args: str) -> list[str]:
    """python -m bench.run writing its figures to out/<tag>.json (never bench/results/)."""
    return python("-m", "bench.run", *args, "--json", str(out / f"{tag}.json"))


def lever_options() -> list[str]:
    """The issue-29 levers bench.run has today (feature detection: its --help names them)."""
    text = subprocess.run(python("-m", "bench.run", "--help"), capture_output=True, text=True, cwd=REPO).stdout
    return [option for option in LEVER_OPTIONS if option in text]


def steps(out: Path) -> list[Step]:
    """The steps in order of value: (name, budget, CUDA command, CPU rehearsal command)."""
    pytest = python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-x")
    on_cuda = ["tests/test_kernels.py", "tests/test_backends.py", "tests/test_attention.py"]
    parity_cuda = python("-m", "bench.gpu_day", "--parity", "cuda", "fp32", "fp16", "bf16")
    released = ("--device", "cuda", "--weights", "released", "--warmup", "1", "--repeats", "1")
    small = ("--device", "cpu", "--warmup", "0", "--repeats", "1", "--rounds", "1")  # full-size models, tiny clip
    pipeline_gpu, pipeline_cpu = "pipeline-480x832x81", "pipeline-64x112x5"
    compile_gpu = ("--workloads", "pipeline-128x224x9", *released)  # compile's cost is per size: the small clip
    result = [
        Step("nvidia-smi", 15, ["nvidia-smi"], None),
        Step("gpu-marked tests", 60, [*pytest, "-m", "gpu", "tests/test_attention.py", "tests/test_tensorrt.py"], None),
        Step(
            "kernel and attention self-check",
            75,
            [*pytest, *on_cuda],
            [*pytest, "-m", "not slow and not gpu", "tests/test_attention.py"],
        ),
        Step(
            "fixture parity fp32/fp16/bf16", 60, parity_cuda, python("-m", "bench.gpu_day", "--parity", "cpu", "fp32")
        ),
        Step(
            "pipeline ours vs reference, per stage, peak memory",
            150,
            bench_run(out, "pipeline", "--workloads", pipeline_gpu, *released),
            bench_run(out, "pipeline", "--workloads", pipeline_cpu, *small),
        ),
        Step(
            "bench.kernels at real sizes",
            30,
            python("-m", "bench.kernels", "--size", "real"),
            python("-m", "bench.kernels", "--size", "tiny"),
        ),
    ]
    for mode in ("off", "inductor", "cuda-graphs"):
        cpu = bench_run(out, f"compile-{mode}", "--workloads", pipeline_cpu, *small, "--compile", mode)
        result.append(
            Step(
                f"compile_mode {mode}",
                45,
                bench_run(out, f"compile-{mode}", *compile_gpu, "--compile", mode),
                None if mode == "cuda-graphs" else cpu,
            )
        )
    for option in lever_options():
        tag = option.strip("-")
        result.append(
            Step(
                f"issue-29 lever {option}",
                45,
                bench_run(out, tag, *compile_gpu, option),
                bench_run(out, tag, "--workloads", pipeline_cpu, *small, option),
            )
        )
    return result


def run_step(index: int, step: Step, cuda: bool, out: Path, env: dict[str, str], left_s: float) -> Outcome:
    """Run one step in its own process group under min(budget, time left); its output to a log file."""
    command = step.cuda if cuda else step.cpu
    if command is None:
        return Outcome(step.name, "skipped", NEEDS_CUDA, 0.0)
    budget = min(step.budget_s * (1 if cuda else CPU_BUDGET_FACTOR), left_s)
    if budget < MIN_STEP_S:
        return Outcome(step.name, "skipped", "no time left before the deadline", 0.0)
    log = out / f"{index:02d}-{'-'.join(step.name.replace('_', '-').replace('/', '-').split()[:3])}.log"
    start = time.perf_counter()
    with open(log, "w") as sink:
        sink.write(f"$ {shlex.join(command)}\n")
        sink.flush()
        try:
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            return Outcome(step.name, "FAIL", f"{type(exc).__name__}: {exc}", 0.0)
        try:
            code = process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return Outcome(step.name, "timeout", f"over its {budget:.0f} s budget; log {log.name}", budget)
    seconds = time.perf_counter() - start
    detail = last_line(log.read_text())
    return Outcome(step.name, "pass" if code == 0 else "FAIL", f"{detail} (log {log.name})", seconds)


def card_line(cuda: bool) -> str:
    """The card and versions, from a child (the parent imports no torch: a broken torch is a step's finding)."""
    probe = (
        "import sys, torch; c = torch.cuda.is_available(); "
        "n = torch.cuda.get_device_name(0) if c else 'no CUDA device (CPU rehearsal)'; "
        "print(f'{n}; torch {torch.__version__}; CUDA {torch.version.cuda}; Python {sys.version.split()[0]}')"
    )
    result = subprocess.run(python("-c", probe), capture_output=True, text=True, cwd=REPO)
    return last_line(result.stdout) or f"torch did not import: {last_line(result.stderr)}"


def cuda_available() -> bool:
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run(python("-c", probe), capture_output=True, cwd=REPO).returncode == 0


def summary(outcomes: list[Outcome], card: str, mode: str, seconds: float, deadline: float) -> str:
    lines = [
        f"## GPU day (`python3 -m bench.gpu_day`): {mode}",
        "",
        f"- date {date.today().isoformat()}; {card}; {seconds:.0f} s of the {deadline:.0f} s deadline",
        "",
        "| step | result | detail | seconds |",
        "|---|---|---|---|",
        *(f"| {o.name} | {o.status} | {o.detail.replace('|', '/')} | {o.seconds:.1f} |" for o in outcomes),
    ]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the gpu-day section of RESULTS.md (appended the first time); temp file then rename."""
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    temp = path.with_suffix(".md.tmp")
    temp.write_text(new)
    temp.replace(path)


def pack(out: Path) -> None:
    """The steps' logs and JSON into out/steps.tar.gz: the device returns at most 8 files from $OUT."""
    loose = sorted(p for p in out.iterdir() if p.suffix in (".log", ".json") and p.name != "console.log")
    with tarfile.open(out / "steps.tar.gz.tmp", "w:gz") as archive:
        for path in loose:
            archive.add(path, arcname=path.name)
    (out / "steps.tar.gz.tmp").replace(out / "steps.tar.gz")
    for path in loose:
        path.unlink()


def parity(device_name: str, dtypes: list[str]) -> int:
    """--parity: the fixture through the whole pipeline per dtype (bench.gpu_check's check), one line each."""
    import torch

    from bench import gpu_check  # torch is imported here, in the step's own process

    gpu_check.FIXTURE = shared_folder() / "fixtures" / "reference-tiny"
    found = gpu_check.fixture_parity(torch.device(device_name), tuple(dtypes), ("auto",), ("off",))
    for step in found:
        print(f"{'pass' if step.passed else 'FAIL'}  {step.name}: {step.detail} ({step.seconds:.1f} s)")
    passed = sum(s.passed for s in found)
    print(f"parity: {passed} of {len(found)} on {device_name} passed")
    return 0 if passed == len(found) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.gpu_day", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the folder every figure and log is written to")
    parser.add_argument("--cpu", action="store_true", help="the CPU rehearsal even where CUDA is there")
    parser.add_argument("--deadline", type=float, help="seconds for everything (default 480 on CUDA, 1200 on the CPU)")
    parser.add_argument("--no-results", action="store_true", help="leave bench/RESULTS.md alone")
    parser.add_argument("--parity", nargs="+", metavar=("DEVICE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.parity:
        return parity(args.parity[0], args.parity[1:])
    if args.out is None:
        parser.error("--out DIR is required")
    start = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    site = out / "site"
    outcomes = [install_wheels(site)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]), PYTHONUNBUFFERED="1")
    env["MINIMAX_SHARED"] = str(shared_folder())
    os.environ.update(PYTHONPATH=env["PYTHONPATH"])  # the probes below see the carried packages too
    cuda = not args.cpu and cuda_available()
    if not cuda:
        env.setdefault("TRITON_INTERPRET", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
    deadline = args.deadline or (DEADLINE_S if cuda else CPU_DEADLINE_S)
    card = card_line(cuda)
    mode = "CUDA" if cuda else "CPU rehearsal (tiny sizes; steps marked 'needs CUDA' run only on a GPU)"
    print(f"gpu-day: {mode}; {card}; figures in {out}", flush=True)
    print(f"{outcomes[0].status:7s} {outcomes[0].name}: {outcomes[0].detail}", flush=True)
    for index, step in enumerate(steps(out), start=1):
        outcome = run_step(index, step, cuda, out, env, deadline - (time.perf_counter() - start))
        outcomes.append(outcome)
        print(f"{outcome.status:7s} {outcome.name}: {outcome.detail} ({outcome.seconds:.1f} s)", flush=True)
    text = summary(outcomes, card, "CUDA" if cuda else "CPU rehearsal", time.perf_counter() - start, deadline)
    (out / "summary.md").write_text(text + "\n")
    if cuda and not args.no_results:  # a rehearsal's tiny figures are not the GPU section's
        write_section(RESULTS_MD, text)
    shutil.rmtree(site, ignore_errors=True)  # not a figure
    pack(out)
    failed = [o for o in outcomes if o.status in ("FAIL", "timeout")]
    print(
        f"gpu-day: {len(outcomes) - len(failed)} of {len(outcomes)} steps passed or skipped; summary {out}/summary.md"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
