"""Shared test fixtures: the reference fixture and the real clips in ../shared (never copied here)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

# Triton fixes when a kernel is defined (its module imported) whether it compiles for a GPU or runs in
# its NumPy interpreter, so TRITON_INTERPRET must be set before anything imports kernels/: here, for
# the whole session, when there is no GPU (the kernel tests then run on the CPU). Nothing else reads it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (`make test` starts a worker a core) each worker, and what its tests start, computes on
# one thread, so that the workers share the cores instead of contending for each of them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

SHARED = Path(os.environ.get("MINIMAX_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
FIXTURE = SHARED / "fixtures" / "reference-tiny"
DATA = SHARED / "data"
PIXEL_TOLERANCE = 2e-3  # fixture README: whole pipeline within 2e-3 max absolute error per pixel
# a skip reason that means "no GPU here": such a test must carry the gpu mark (make gpu-check runs those)
NO_GPU = re.compile(r"(needs?|requires?|without|no) (a |an )?(cuda|gpu|nvidia)|cuda is not available|has none", re.I)


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests need ../shared (or MINIMAX_SHARED)")
    return path


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return _require(FIXTURE)


@pytest.fixture(scope="session")
def checkpoint(fixture_dir: Path) -> Path:
    return fixture_dir / "checkpoint"


@pytest.fixture(scope="session")
def expected(fixture_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(fixture_dir / "expected.safetensors"))


@pytest.fixture(scope="session")
def fixture_inputs(fixture_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The fixture's frames uint8 [9, 240, 432, 3] and masks uint8 [9, 240, 432]."""
    inputs = fixture_dir / "inputs"
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted(inputs.glob("frame_*.png"))])
    masks = np.stack([np.asarray(Image.open(p)) for p in sorted(inputs.glob("mask_*.png"))])
    return frames, masks


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(DATA)


@pytest.fixture
def tennis(data_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The first 9 tennis frames and masks (links, so nothing is copied)."""
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir(), masks.mkdir()
    for name in sorted(p.name for p in (data_dir / "tennis" / "frames").iterdir())[:9]:
        (frames / name).symlink_to(data_dir / "tennis" / "frames" / name)
        (masks / name).symlink_to(data_dir / "tennis" / "masks" / name)
    return frames, masks


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from more threads, and a shared CPU makes them far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """||actual - reference|| / ||reference|| in float64."""
    actual, reference = actual.double(), reference.double()
    return float((actual - reference).norm() / reference.norm())


def diamond_dilation(masks: np.ndarray, radius: int) -> np.ndarray:
    """bool [F, H, W]: the pixels within city-block distance `radius` of a masked pixel of the same frame,
    by brute force over the offsets of that diamond. It is the documented mask dilation (`radius` passes
    of the 3x3 cross, scipy's binary_dilation, nothing outside the frame) written independently of it,
    for tests that must know where the mask ends without asking the code under test."""
    masks = np.asarray(masks, dtype=bool)
    _, height, width = masks.shape
    out = np.zeros_like(masks)
    for dy in range(-radius, radius + 1):
        reach = radius - abs(dy)
        for dx in range(-reach, reach + 1):  # out[y, x] |= masks[y - dy, x - dx]
            target = out[:, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)]
            target |= masks[:, max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)]
    return out


# Seeds. Tests whose point is coverage (random configurations, exact or property checks that any draw
# must pass) take `fresh_seed()`, new every run, so each run tries new cases. Tests that compare numbers
# against a tolerance take `fixed_seed()`: a new draw adds no code path there, only a chance that CI
# fails on an unlucky one. $RUNTIME_TEST_SEED replaces either (to replay a failure, or to try other
# inputs against a tolerance), and a failing test's report lists the seeds it took.
SEED_ENV = "RUNTIME_TEST_SEED"
_seeds_taken: list[int] = []


def fresh_seed() -> int:
    """A seed new to each run, or $RUNTIME_TEST_SEED."""
    return _take_seed(int.from_bytes(os.urandom(4), "little"))


def fixed_seed() -> int:
    """0, or $RUNTIME_TEST_SEED."""
    return _take_seed(0)


def _take_seed(default: int) -> int:
    seed = int(os.environ.get(SEED_ENV) or default)
    _seeds_taken.append(seed)
    return seed


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _seeds_taken.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """A failing test's report names its seeds. A test that skips for want of a GPU without the gpu mark
    fails: `make gpu-check` selects tests by that mark, so an unmarked one would never run where it could."""
    report = yield
    if report.failed and _seeds_taken:
        seeds = ", ".join(map(str, _seeds_taken))
        replay = f"{SEED_ENV}={_seeds_taken[-1]} pytest '{item.nodeid}'"
        report.sections.append(("seeds", f"this test took seed(s) {seeds}; replay: {replay}"))
    if report.skipped and "gpu" not in item.keywords and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[-1])
        if NO_GPU.search(reason):
            report.outcome = "failed"
            report.longrepr = f"skipped for want of a GPU ({reason}) without @pytest.mark.gpu: add the mark"
    return report


# AOTInductor packages of the six bundle graphs take minutes to compile on 2 CPU cores, about as long
# as the rest of the suite; RUNTIME_TEST_AOTI=0 leaves them out (and the tests that need them: the
# aoti backend, the C++ host) for a quicker local loop. CI runs them.
AOTI_ENV = "RUNTIME_TEST_AOTI"
WITH_AOTI = os.environ.get(AOTI_ENV) != "0"
NEEDS_AOTI = pytest.mark.skipif(not WITH_AOTI, reason=f"{AOTI_ENV}=0: the AOTInductor packages were not compiled")


# The bundle is built once per run, in a child process, by whichever test process collects a test that
# needs it first (under pytest-xdist every worker collects them all). Its folder is chosen by the run's
# first process (the xdist controller, or pytest alone) and reaches the workers in BUNDLE_ENV; the child
# writes `status` there when it ends ("ok", or its error), and the process that started it writes `pid`.
BUNDLE_ENV = "RUNTIME_TEST_BUNDLE_DIR"
BUNDLE_TIMEOUT_S = 1800
WORKER_NICENESS = 10
_BUILD_BUNDLE = """
import sys, traceback
from pathlib import Path
folder = Path(sys.argv[2])
status = "failed before it could say why"
try:
    from export.onnx import build_bundle
    build_bundle(Path(sys.argv[1]), folder / "tiny", height=64, width=96, frames=9, precision="fp32",
                 aoti=sys.argv[3] == "1", log=lambda _: None)
    status = "ok"
except BaseException:
    status = traceback.format_exc()
    raise
finally:
    (folder / "status.part").write_text(status)
    (folder / "status.part").rename(folder / "status")
"""
_bundle_build: dict[str, object] = {}  # the build this process started: its child process and log
_OWNS_BUNDLE_FOLDER = pytest.StashKey[bool]()
_SESSION_NICENESS = pytest.StashKey["int | None"]()
AUTOGROUP = Path("/proc/self/autogroup")


def pytest_configure(config: pytest.Config) -> None:
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # started in the background (`make test &`: the shell ignores Ctrl-C for it, and an ignored signal
        # stays ignored through exec): the children of the Ctrl-C tests would never see their SIGINT. A
        # handler of our own is reset to the default in each child, where Python turns it into KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if BUNDLE_ENV not in os.environ:  # the run's first process; xdist workers inherit the variable
        os.environ[BUNDLE_ENV] = tempfile.mkdtemp(prefix="tiny-bundle-")
        config.stash[_OWNS_BUNDLE_FOLDER] = True
        config.stash[_SESSION_NICENESS] = _autogroup_niceness()


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.stash.get(_OWNS_BUNDLE_FOLDER, False):
        shutil.rmtree(os.environ.pop(BUNDLE_ENV), ignore_errors=True)
        niceness = config.stash.get(_SESSION_NICENESS, None)
        if niceness is not None and niceness != _autogroup_niceness():  # the workers lowered it
            with contextlib.suppress(OSError):  # (a kernel that refuses leaves it lowered: only priority)
                AUTOGROUP.write_text(str(niceness))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with a slow test first, so that the workers of `make test` (a file each at a time, in this order:
    --no-loadscope-reorder) end together; the files with tests that need the tiny bundle last, so that its
    background build overlaps the most work (xdist's own order, most tests first, began with test_export.py,
    and a worker sat 130 s waiting for the build)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    bundle_files = {item.path for item in items if "tiny_bundle" in getattr(item, "fixturenames", ())}
    items.sort(key=lambda item: (item.path in bundle_files, item.path not in slow_files))  # whole files: loadfile


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the tiny bundle in a child process as soon as a test that needs it is collected, unless
    another test process of this run has: its AOTInductor packages compile for minutes, beside the tests."""
    if not any("tiny_bundle" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    _start_bundle_build(Path(os.environ[BUNDLE_ENV]))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _yield_to_the_build()


def _yield_to_the_build() -> None:
    """Lower this worker's priority, and what its tests start, below the bundle's build, so that the build
    keeps a core (114 to 129 s alone; in a parallel run it ended about 125 s in). Where the kernel groups
    processes by session (autogroup), the session's niceness is what counts: the run's first process puts
    back what it was (pytest_unconfigure)."""
    os.nice(WORKER_NICENESS)
    try:
        AUTOGROUP.write_text(str(WORKER_NICENESS))
    except OSError:  # no autogroup here: os.nice does it
        pass


def _autogroup_niceness() -> int | None:
    """This session's scheduling-group niceness ("/autogroup-N nice K"), None without autogroup."""
    try:
        return int(AUTOGROUP.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _start_bundle_build(folder: Path) -> None:
    """The build's child process, unless another process of this run has started it."""
    try:
        (folder / "claimed").mkdir()  # atomic: one process of the run wins
    except FileExistsError:
        return
    command = [sys.executable, "-c", _BUILD_BUNDLE, str(FIXTURE / "checkpoint"), str(folder), str(int(WITH_AOTI))]
    log = (folder / "build.log").open("w")
    repo = Path(__file__).resolve().parents[1]
    # a session of its own: its own scheduling group (autogroup) beside the workers', and one kill ends its compilers
    process = subprocess.Popen(command, cwd=repo, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (folder / "pid").write_text(str(process.pid))
    _bundle_build.update(process=process, log=log)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The build outlives this process's tests (another worker may still need it), unless the run stops."""
    process = _bundle_build.get("process")
    if process is None:
        return
    stopping = exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop or session.shouldfail
    if stopping:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _bundle_build["log"].close()


@pytest.fixture(scope="session")
def tiny_bundle(checkpoint: Path) -> Path:
    """An fp32 engine bundle of the fixture checkpoint for its clip size (9 frames at 96x64): ONNX graphs,
    and AOTInductor packages unless RUNTIME_TEST_AOTI=0; built once a run, in the background from collection on."""
    folder = Path(os.environ[BUNDLE_ENV])
    status, deadline = folder / "status", time.monotonic() + BUNDLE_TIMEOUT_S
    while not status.exists():
        if time.monotonic() > deadline or not _builder_alive(folder):
            if status.exists():  # it ended between the two looks
                break
            log = (folder / "build.log").read_text()[-4000:] if (folder / "build.log").exists() else ""
            pytest.fail(f"building the tiny bundle ended without a result:\n{log}")
        time.sleep(0.5)
    if status.read_text() != "ok":
        pytest.fail(f"building the tiny bundle failed:\n{status.read_text()[-4000:]}")
    return folder / "tiny"


def _builder_alive(folder: Path) -> bool:
    """Whether the build's child process still runs (True until it has written its pid)."""
    process = _bundle_build.get("process")
    if process is not None:
        return process.poll() is None
    pid = folder / "pid"
    if not pid.exists():
        return True
    try:
        os.kill(int(pid.read_text()), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def run_main(main: Callable[[list[str]], int], args: list, capsys) -> tuple[int, str, str]:
    """A CLI's `main(args + ["--quiet"])` in this process: its exit code, stdout and stderr."""
    code = main([str(a) for a in args] + ["--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    """The lines of a CLI's stderr that report an error."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]
