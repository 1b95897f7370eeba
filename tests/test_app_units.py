"""The app's parts without a browser: progress parsing from real tqdm output, the device queue's order
and cancel, upload limits and path checks, masks stored at preview size, clicks mapped to the clip's
pixels, a child job interrupted like Ctrl-C. (The page itself is tested in a browser: test_app.py.)"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tqdm import tqdm

from runtime.app.jobs import ChildJob, DeviceQueue, Outcome, Progress, Ticket, parse_progress
from runtime.app.session import AppSettings, RunSettings, Session, Sessions, _relative
from runtime.app.workspace import AppRoot, Limits, read_info
from runtime.errors import RemoverError


def tqdm_lines(desc: str, total: int, postfix: str | None = None) -> list[str]:
    """What a tqdm bar writes to a pipe, split at its carriage returns."""
    stream = io.StringIO()
    with tqdm(total=total, desc=desc, file=stream, mininterval=0, miniters=1, ascii=False) as bar:
        for _ in range(total):
            if postfix:
                bar.set_postfix_str(postfix, refresh=False)
            bar.update()
    return [line for line in stream.getvalue().replace("\n", "\r").split("\r") if line.strip()]


def test_progress_is_read_from_real_tqdm_lines():
    updates = [parse_progress(line) for line in tqdm_lines("denoise", 6)]
    assert updates[0] == Progress("denoise", 0, 6) and updates[-1] == Progress("denoise", 6, 6)
    last = parse_progress(tqdm_lines("frames", 21, "window 2/3")[-1])
    assert last == Progress("frames", 21, 21, (2, 3)) and last.describe() == "frames 21/21 (window 2/3)"
    scan = parse_progress(tqdm_lines("scan masks", 4)[-1])
    assert scan == Progress("scan masks", 4, 4)
    for other in ("error: the mask has 3 frames", "plan: 21 frames of 256x144 in 1 window(s)", ""):
        assert parse_progress(other) is None


def test_the_device_queue_is_first_come_first_served_and_a_cancelled_ticket_leaves():
    async def scenario() -> list[str]:
        queue, events = DeviceQueue(), []

        async def job(name: str, ticket: Ticket, hold_s: float) -> None:
            async for place in queue.wait_turn(ticket, poll_s=0.01):
                events.append(f"{name} waits at {place}")
            if ticket.cancelled:
                events.append(f"{name} cancelled")
                return
            events.append(f"{name} runs")
            await asyncio.sleep(hold_s)
            await queue.release(ticket)

        a, b, c = Ticket("a"), Ticket("b"), Ticket("c")
        first = asyncio.create_task(job("a", a, 0.2))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(job("b", b, 0.01))
        await asyncio.sleep(0.02)
        third = asyncio.create_task(job("c", c, 0.01))
        await asyncio.sleep(0.02)
        assert (queue.place(a), queue.place(b), queue.place(c)) == (0, 1, 2)
        b.cancelled = True
        await asyncio.gather(first, second, third)
        assert queue.running is None and not queue.waiting
        return events

    events = asyncio.run(scenario())
    assert events.index("a runs") < events.index("c runs")
    assert "b cancelled" in events and "b runs" not in events
    assert "c waits at 2" in events and "c waits at 1" in events  # moved up when b left


SLOW_JOB = """
import sys, time
from tqdm import tqdm
try:
    for _ in tqdm(range(int(sys.argv[1])), desc="work", mininterval=0):
        time.sleep(0.01)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""


async def interrupted_slow_job(folder: Path, steps: int = 1000) -> tuple[list, Outcome]:
    """SLOW_JOB of `steps` steps of 10 ms as a ChildJob, given Ctrl-C after its third step: what it showed and
    how it ended."""
    module = folder / "slow_job.py"
    module.write_text(SLOW_JOB)
    job = ChildJob("slow_job", [], folder)
    job.argv = [sys.executable, str(module), str(steps)]  # a script, not a module of the package
    await job.start()
    seen = []
    async for update in job.updates():
        seen.append(update)
        if isinstance(update, Progress) and update.done >= 3:
            job.interrupt()  # every update from here on: the child gets one Ctrl-C, not many
    return seen, await job.finish()


def test_a_child_job_interrupted_like_ctrl_c_stops_and_reports_it(tmp_path):
    seen, outcome = asyncio.run(interrupted_slow_job(tmp_path))
    assert any(isinstance(u, Progress) and u.stage == "work" and u.total == 1000 for u in seen)
    assert outcome.cancelled and outcome.returncode == 130 and "interrupted" in outcome.lines


@pytest.mark.parametrize("let_jobs", [True, False])
def test_cancel_stops_a_job_of_a_server_started_with_ctrl_c_ignored(tmp_path, let_jobs):
    """A server that inherited SIGINT ignored (`&` in a script) still cancels its jobs once it lets them take
    Ctrl-C (the server's start does); without that, the job would ignore it too and run to the end."""
    server = f"""
import asyncio, signal, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from runtime.app.jobs import let_jobs_take_ctrl_c
from test_app_units import interrupted_slow_job
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as inherited from the shell
if {let_jobs}:
    let_jobs_take_ctrl_c()
    assert signal.getsignal(signal.SIGINT) != signal.default_int_handler  # the server still ignores Ctrl-C
print(asyncio.run(interrupted_slow_job(Path(sys.argv[1]), steps=200))[1].returncode)
"""
    run = subprocess.run([sys.executable, "-c", server, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == (130 if let_jobs else 0)  # 0: all 200 steps ran, Ctrl-C never reached the job


def test_uploads_past_the_limits_and_non_videos_are_one_line(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(RemoverError, match="cannot read video"):
        read_info(text, Limits())
    with pytest.raises(RemoverError, match="at most 0 MB"):
        read_info(text, Limits(max_bytes=5))
    clip = tmp_path / "frames"
    clip.mkdir()
    for index in range(4):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(clip / f"{index}.png")
    assert read_info(clip / "0.png", Limits()).frame_count == 1
    with pytest.raises(RemoverError, match="4 frames; this server takes at most 3"):
        read_info(clip, Limits(max_frames=3))
    limits = Limits(max_seconds=1.0)
    info = read_info(clip, Limits())
    with pytest.raises(RemoverError, match="lasts 4 s"):
        limits.check(type(info)(**{**vars(info), "fps": Fraction(1)}), "frames")


def test_the_root_refuses_paths_outside_it(tmp_path):
    root = AppRoot(tmp_path / "root")
    inside = root.folder / "sessions" / "a.mp4"
    inside.parent.mkdir()
    inside.write_text("x")
    assert root.check(inside) == inside
    (root.folder / "link").symlink_to("/etc/passwd")
    for outside in ("/etc/passwd", root.folder / ".." / "elsewhere.mp4", root.folder / "link"):
        with pytest.raises(RemoverError, match="outside this app's folders"):
            root.check(outside)
    root.remove()
    assert not root.folder.exists()


class NoModel:
    """A stand-in for the instant-preview model: these tests are about the clicks, not SAM."""

    def masks(self, *args) -> dict:
        raise RemoverError("no model in this test")


@pytest.fixture
def session(tmp_path) -> Session:
    """A session holding a 10-frame 32x64 clip (frames as PNGs) whose preview is 10x its size."""
    root = AppRoot(tmp_path / "root")
    session = Sessions(root, AppSettings()).get("page-1")
    session.segmenter = NoModel()
    clip = tmp_path / "clip"
    clip.mkdir()
    for index in range(10):
        Image.fromarray(np.full((32, 64, 3), 20 * index, np.uint8)).save(clip / f"{index:02d}.png")
    upload = root.folder / "upload" / "clip"
    upload.parent.mkdir()
    clip.rename(upload)
    session.open_upload(upload)
    return session


def test_a_mask_is_stored_at_preview_size_frame_by_frame(session, tmp_path):
    assert session.workspace.size == (320, 640)
    masks = session.workspace.folder.parent.parent / "upload" / "masks"
    masks.mkdir()
    for index in range(10):
        mask = np.zeros((32, 64), np.uint8)
        mask[2 + index : 12 + index, 5:25] = 255
        Image.fromarray(mask).save(masks / f"m{index:02d}.png")
    session.upload_mask(sorted(masks.iterdir()))
    for index in (0, 7):
        expected = np.zeros((320, 640), bool)
        expected[10 * (2 + index) : 10 * (12 + index), 50:250] = True
        assert np.array_equal(session.workspace.mask_frame(index), expected)
    assert np.array_equal(session.view(3)[0, 0], session.workspace.frame(3)[0, 0])  # outside the mask: untinted


def test_clicks_are_kept_in_the_clips_pixels(session):
    assert "no instant mask: no model in this test" in session.click(2, 100.0, 50.0, "point")
    session.click(2, 300.0, 100.0, "box")
    session.click(2, 200.0, 250.0, "box")
    session.new_object()
    session.click(4, 10.0, 20.0, "negative")
    clicks = [(c.frame, c.object_id, c.kind, c.coords) for c in session.clicks]
    assert clicks == [
        (2, 1, "point", (10.0, 5.0)),
        (2, 1, "box", (20.0, 10.0, 30.0, 25.0)),
        (4, 2, "negative", (1.0, 2.0)),
    ]
    session.click(2, 0.0, 0.0, "box")  # object 2's box: object 1's stays
    session.click(2, 10.0, 10.0, "box")
    session.click(2, 20.0, 20.0, "box")  # a second box of object 2 on frame 2 replaces its first
    session.click(2, 30.0, 40.0, "box")
    boxes = [(c.object_id, c.coords) for c in session.clicks if c.kind == "box"]
    assert boxes == [(1, (20.0, 10.0, 30.0, 25.0)), (2, (2.0, 2.0, 3.0, 4.0))]
    session.undo()
    assert len(session.clicks) == 3


def test_page_options_become_runtime_run_flags():
    settings = RunSettings.from_page(0.0, 5.0, "crossfade", None, 0.0, 0.0, 6.0, None)
    assert settings.argv() == ["--window", "0", "--overlap", "5", "--blend", "crossfade", "--steps", "6"]
    assert RunSettings.from_page(*[None] * 8).argv() == []
    assert RunSettings.from_page(None, None, None, "off", 480.0, 832.0, None, 7.0).argv() == [
        "--crop",
        "off",
        "--height",
        "480",
        "--width",
        "832",
        "--seed",
        "7",
    ]


def test_a_job_path_inside_the_session_is_given_relative(session):
    folder = session.workspace.folder
    assert _relative(folder / "result-3" / "x.mp4", folder) == "result-3/x.mp4"
    assert _relative(Path("/elsewhere/w"), folder) == "/elsewhere/w"


def test_the_plan_options_are_runtime_runs(session, tmp_path):
    """The plan the app measures its result with is the one runtime.run makes of the arguments the app
    gives it: the session's own argv, parsed and mapped by runtime.run, for an uploaded clip and for the
    demo run at its own size."""
    from runtime import run
    from runtime.options import PlanOptions

    settings = RunSettings.from_page(0.0, 5.0, "crossfade", None, 0.0, 0.0, 6.0, None)
    assert settings.plan_options(None) == PlanOptions(window=0, overlap=5, blend="crossfade")
    demo = PlanOptions(window=0, overlap=5, blend="crossfade", height=144, width=256)
    assert settings.plan_options((144, 256)) == demo
    sized = RunSettings.from_page(None, None, None, None, 480.0, 832.0, None, None)
    assert sized.plan_options((144, 256)) == PlanOptions(height=480, width=832)

    workspace = session.workspace
    workspace.mask = workspace.clip  # any path: the mask's file plays no part in the plan's options
    pages = [
        settings,
        sized,
        RunSettings.from_page(*[None] * 8),
        RunSettings.from_page(9.0, 2.0, "continue", "off", 0.0, 0.0, 3.0, 7.0),
        RunSettings.from_page(None, None, None, "on", 0.0, 96.0, None, None),
    ]
    for demo_clip in (False, True):
        workspace.demo = demo_clip
        assert session._own_size() == ((32, 64) if demo_clip else None)
        for page in pages:
            argv = [str(arg) for arg in session._removal_args(page, tmp_path / "out.mp4", dry_run=True)]
            assert page.plan_options(session._own_size()) == run.plan_options(run.parse_args(argv)), argv


PEAK_SCRIPT = """
import sys
from pathlib import Path
from runtime.app.workspace import AppRoot
root = AppRoot(Path(sys.argv[1]))
workspace = root.workspace("page")
from runtime.io import open_clip
clip, mask = Path(sys.argv[2]), Path(sys.argv[3])
workspace.set_clip(clip, open_clip(clip).info)
workspace.set_mask(mask)
assert workspace.mask_frame(workspace.info.frame_count - 1).any()
# VmHWM: this process image's peak (ru_maxrss would keep the forking parent's across exec)
print(next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


@pytest.mark.slow
def test_the_server_holds_a_frame_at_a_time_whatever_the_clips_length(tmp_path):
    """Opening a clip and its mask (preview frames, packed masks) in a fresh process: the peak for 41
    frames of 1280x720 is within half the frames' size of the peak for 9 (a leak of each frame fails)."""
    from runtime.io import write_clip

    frame_bytes = 720 * 1280 * 3
    # a gradient with a square moving over it: a leaked frame is 2.6 MB whatever it shows, and smooth frames
    # encode and decode in a fraction of the time of noise (which made this the suite's second slowest test)
    rows, cols = np.mgrid[0:720, 0:1280]
    background = np.stack([rows * 255 // 720, cols * 255 // 1280, (rows + cols) * 255 // 2000], axis=-1)
    peaks = []
    for count in (9, 41):
        frames = np.repeat(background[None].astype(np.uint8), count, axis=0)
        for index in range(count):
            frames[index, 200:400, 300 + 10 * index : 500 + 10 * index] = (240, 30, 30)
        masks = np.zeros_like(frames)
        for index in range(count):
            masks[index, 100 + index : 300 + index, 200:500] = 255
        folder = tmp_path / str(count)
        folder.mkdir()
        write_clip(folder / "clip.mp4", frames, Fraction(25))
        write_clip(folder / "mask.mp4", masks, Fraction(25))
        del frames, masks
        paths = [str(folder / name) for name in ("root", "clip.mp4", "mask.mp4")]
        command = [sys.executable, "-c", PEAK_SCRIPT, *paths]
        run = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
        peaks.append(int(run.stdout.split()[-1]))
    assert peaks[1] - peaks[0] < 0.5 * (41 - 9) * frame_bytes, [peak / 2**20 for peak in peaks]


def test_the_clip_and_mask_stay_while_the_pages_job_runs(session):
    session.ticket = Ticket("removal")  # as while a job waits or runs
    with pytest.raises(RemoverError, match="has a job running or queued"):
        session.open_demo()
    with pytest.raises(RemoverError, match="has a job running or queued"):
        session.upload_mask([session.workspace.clip])
    session.ticket = None
    assert "demo clip" in session.open_demo()


@pytest.mark.parametrize("kind", ["a file", "inside a file", "not empty"])
def test_a_workdir_that_cannot_be_the_apps_folder_is_one_line(tmp_path, capsys, kind):
    """`python -m runtime.app --workdir F` before anything is served or imported: one error line, exit 2."""
    from runtime.app.__main__ import main

    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    workdir = {"a file": taken, "inside a file": taken / "app", "not empty": tmp_path}[kind]
    assert main(["--workdir", str(workdir)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error, error
    assert taken.read_text() == "mine"
