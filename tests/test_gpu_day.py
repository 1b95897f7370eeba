"""bench.gpu_day, the offline GPU-day script, and the wheels it carries: kept from rotting without a GPU or
a download. The oracles are the lent machine's package list (bench/gpu_machine_packages.txt, copied from
the device guide), the installed distributions' own metadata and bench.run's own parser."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from bench import gpu_day, run
from bench.gpu_day import WHEELS, Outcome, Step, normalize, run_step, wheel_names, write_section
from bench.workloads import WORKLOADS

REPO = Path(__file__).resolve().parents[1]
# the modules the GPU day's steps import (its step commands' -m modules and what they run in-process)
GPU_PATH = ("runtime", "bench.gpu_day", "bench.gpu_check", "bench.run", "bench.kernels", "bench.reference", "kernels")
# the standard library needs no wheel; the project's own packages travel in the working tree
STDLIB = set(sys.stdlib_module_names)
PROJECT = {"runtime", "kernels", "export", "training", "bench"}


def machine_packages() -> set[str]:
    lines = (REPO / "bench" / "gpu_machine_packages.txt").read_text().splitlines()
    return {normalize(line) for line in lines if line.strip() and not line.startswith("#")}


def test_wheel_list_pins_only_what_the_machine_lacks():
    pins = wheel_names()
    assert pins and all(version for version in pins.values())
    assert not set(pins) & machine_packages(), "carry a package the image has only for another version"
    assert not {name for name in pins if name.startswith(("torch", "nvidia-", "triton"))}, "never torch"


def direct_imports() -> set[str]:
    """The top-level module names the project's own code imports anywhere (its optional paths too)."""
    names = set()
    for folder in ("runtime", "kernels", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - STDLIB - PROJECT


@pytest.mark.slow  # 230 s on the loaded CPU of 2026-12-07 (the import and the metadata scan; not yet profiled)
def test_every_import_of_the_gpu_path_is_on_the_machine_or_in_the_wheels():
    """Import the GPU path in a fresh interpreter; each module it loaded that the project imports itself
    maps (by the installed metadata) to a distribution on the machine's list or among the carried wheels.
    What those distributions need in turn is their image's business, or the next test's for the wheels."""
    probe = textwrap.dedent(f"""
        import importlib, importlib.metadata as md, sys
        for name in {GPU_PATH!r}:
            importlib.import_module(name)
        owners = md.packages_distributions()
        for module in sorted({{m.split(".")[0] for m in sys.modules}}):
            print(module, *owners.get(module, []))
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    have = machine_packages() | set(wheel_names())
    loaded = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    used = {module: dists for module, dists in loaded.items() if module in direct_imports()}
    assert {"torch", "av", "numpy"} <= set(used)
    missing = {module for module, dists in used.items() if not {normalize(d) for d in dists} & have}
    assert not missing, f"the GPU machine lacks {sorted(missing)}: add their wheels to bench/gpu_wheels.txt"


@pytest.mark.skipif(not list(WHEELS.glob("*.whl")), reason="no .whl/ here: make gpu-wheels downloads it")
def test_what_the_carried_wheels_need_is_on_the_machine_or_carried():
    """Each downloaded wheel's own requirements (its METADATA, extras left out) are there without a download."""
    have = machine_packages() | set(wheel_names())
    for wheel in WHEELS.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = archive.read(name).decode()
        for line in metadata.splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line and 'python_version < "3.8"' not in line:
                requirement = re.split(r"[ ;<>=!~\[(]", line.split(":", 1)[1].strip())[0]
                assert normalize(requirement) in have, f"{wheel.name} needs {requirement}"


def test_every_step_command_exists_and_parses(tmp_path):
    """Each step's -m module can be found, its test files exist, and bench.run accepts its arguments."""
    import importlib.util

    for step in gpu_day.steps(tmp_path):
        for command in (step.cuda, step.cpu):
            if command is None or command[0] == "nvidia-smi":
                continue
            module = command[command.index("-m") + 1]
            assert importlib.util.find_spec(module), f"{step.name}: no module {module}"
            assert all((REPO / a).exists() for a in command if a.startswith("tests/")), step.name
            if module == "bench.run":
                args = run.parse_args(command[command.index("-m") + 2 :])
                assert all(w in WORKLOADS for w in args.workloads), step.name
    assert [s.cpu is None for s in gpu_day.steps(tmp_path)][:2] == [True, True]  # nvidia-smi, gpu tests


def test_a_failing_or_slow_step_is_one_line_and_the_next_runs(tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    fail = Step("fails", 30, [sys.executable, "-c", "print('first', flush=True); raise SystemExit('boom')"], None)
    slow = Step("slow", 1.5, [sys.executable, "-c", "import time; time.sleep(60)"], None)
    ok = Step("ok", 30, [sys.executable, "-c", "print('done')"], None)
    outcomes = [run_step(i, s, True, tmp_path, env, 100.0) for i, s in enumerate((fail, slow, ok))]
    assert [o.status for o in outcomes] == ["FAIL", "timeout", "pass"]
    assert outcomes[0].detail.startswith("boom") and outcomes[2].detail.startswith("done")
    assert outcomes[1].seconds == pytest.approx(1.5)
    assert run_step(3, ok, True, tmp_path, env, 0.5).status == "skipped"  # past the deadline: not started
    assert run_step(4, Step("gpu only", 5, ["true"], None), False, tmp_path, env, 100.0).detail == "needs CUDA"


def test_results_section_is_replaced_not_appended(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nkept\n")
    write_section(path, "first")
    write_section(path, "second")
    text = path.read_text()
    assert text.startswith("# Results\n\nkept\n") and "second" in text and "first" not in text
    assert text.count(gpu_day.BEGIN) == 1 and not list(tmp_path.glob("*.tmp"))


def test_summary_names_date_card_and_every_step():
    outcomes = [Outcome("a", "pass", "x | y", 1.0), Outcome("b", "skipped", "needs CUDA", 0.0)]
    text = gpu_day.summary(outcomes, "NVIDIA H100 80GB HBM3", "CUDA", 12.0, 480.0)
    assert "NVIDIA H100 80GB HBM3" in text and "| a | pass | x / y |" in text and "| b | skipped |" in text
