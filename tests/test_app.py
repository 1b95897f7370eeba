"""The web app in a real browser: Playwright (from PyPI) drives Debian's Chromium headless against
`python -m runtime.app` started on a free port, as a person would: open the demo, click, plan, run,
play, compare, download, cancel, two pages at once, a bad upload. A screenshot of each step goes to
$PYTEST_ARTIFACTS/app (else a pytest temporary folder; its path is printed).

`make test` installs Chromium when /usr/bin/chromium is missing; without it these tests skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from runtime.demo import DEMO_CLIP, DEMO_MASK
from runtime.io import open_clip, read_clip, read_masks, write_clip

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
EVALUATES = importlib.util.find_spec("runtime.evaluate") is not None
SEGMENTS = all(importlib.util.find_spec(name) for name in ("sam2", "runtime.segment"))
SAM_CONFIG, SAM_INPUT = "configs/sam2.1/sam2.1_hiera_t.yaml", 128  # random-weight tiny SAM 2.1 at a small size
# the jobs (and the reference run) on one thread: tiny models gain nothing from more, and on a shared CPU
# two threads were 8x slower than one (SAM tracking the demo: 46 s against 5.6 s)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
JOB_TIMEOUT_MS = 300_000  # a demo run is ~10 s on a quiet 2-core machine; a busy one can be many times slower
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    base = os.environ.get("PYTEST_ARTIFACTS")
    folder = Path(base) / "app" if base else tmp_path_factory.mktemp("app-screens")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


class Server(NamedTuple):
    url: str
    workdir: Path
    pid: int
    sam: Path | None  # the SAM 2.1 checkpoint it segments with (None: segmentation is not installed)


def random_sam(folder: Path) -> Path:
    """SAM 2.1 tiny with random weights (fixed seed) in the released format, as the segmentation tests make it."""
    import torch

    from runtime.segment.model import build_model, config_file

    torch.manual_seed(0)
    path = folder / "sam2.1-tiny-random.pt"
    torch.save({"model": build_model(config_file(SAM_CONFIG), None).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free port with its own work folder; stopped (and the folder checked gone) at the end."""
    workdir = tmp_path_factory.mktemp("app") / "root"
    port = free_port()
    sam = random_sam(workdir.parent) if SEGMENTS else None
    segment_args = ["--checkpoint", str(sam), "--model-config", SAM_CONFIG, "--image-size", str(SAM_INPUT)]
    # a closed page is noticed within a second or two; nothing is fetched from a model hub
    env = {**os.environ, "GRADIO_HEARTBEAT_INTERVAL": "1", "HF_HUB_OFFLINE": "1", **ONE_THREAD}
    log = (workdir.parent / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.app", "--port", str(port), "--workdir", str(workdir)]
        + (segment_args if sam else []),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the app did not start: {(workdir.parent / 'server.log').read_text()}")
            time.sleep(0.3)
    yield Server(url, workdir, process.pid, sam)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, (workdir.parent / "server.log").read_text()
    assert not workdir.exists(), "the app's folder outlived the server"
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1500}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server.url)
    yield page
    context.close()


def children(pid: int) -> list[str]:
    """The command lines of the processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return found


def shot(page, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


def open_demo(page) -> None:
    page.click("#demo")
    page.wait_for_selector("#clip-info :text('demo clip')")
    page.wait_for_function("document.querySelector('#frame img') && document.querySelector('#frame img').complete")


def status_of(page) -> tuple[str, str]:
    """(state, text) of the job status line."""
    line = page.locator("#status [data-state]")
    if line.count() == 0:
        return "", ""
    return line.first.get_attribute("data-state"), line.first.inner_text()


def start(page, button: str) -> None:
    """Click a job's button and wait until the status is no longer the last job's."""
    _, before = status_of(page)
    page.click(button)
    deadline = time.monotonic() + 60
    while status_of(page)[1] == before and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_status(page, states: set[str], timeout_ms: int = JOB_TIMEOUT_MS) -> tuple[str, str, list[str]]:
    """Poll the status until its state is one of `states`; returns it and every text seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        state, text = status_of(page)
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if state in states:
            return state, text, seen
        time.sleep(0.1)
    raise AssertionError(f"status never reached {states}; seen {seen}")


def shown_pixels(page, selector: str) -> np.ndarray:
    """The RGB pixels of the image the page shows in `selector` (read back through a canvas), once its
    current source has loaded: right after a click the page swaps the image, and one read came while the
    new one was still loading (naturalWidth 0)."""
    flat = page.evaluate(
        """async sel => { const i = document.querySelector(sel); await i.decode();
        const c = document.createElement('canvas');
        c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0);
        return [c.width, c.height, Array.from(g.getImageData(0, 0, c.width, c.height).data)]; }""",
        selector,
    )
    width, height, data = flat
    return np.array(data, dtype=np.uint8).reshape(height, width, 4)[..., :3]


def click_image(page, selector: str, x: float, y: float) -> None:
    """Click pixel (x, y) of the image's own size, wherever the page placed and scaled it."""
    image = page.locator(selector)
    box = image.bounding_box()
    natural = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    page.mouse.click(box["x"] + x * box["width"] / natural[0], box["y"] + y * box["height"] / natural[1])


def set_number(page, selector: str, value: int) -> None:
    """Type `value` into a number box and leave it, again until the box keeps it: typed right after its
    accordion opened, on a busy machine, a value was lost once (the plan ran with the box's default)."""
    box = page.locator(selector)
    for _ in range(20):
        box.fill(str(value))
        box.press("Tab")
        page.wait_for_timeout(250)
        if box.input_value() == str(value):
            return
    raise AssertionError(f"{selector} never kept {value}")


def test_a_text_file_named_mp4_is_a_message_and_the_app_keeps_serving(page, server, artifacts, tmp_path):
    fake = tmp_path / "holiday.mp4"
    fake.write_text("this is not a video\n")
    page.locator("#clip-upload input[type=file]").set_input_files(fake)
    page.get_by_text("cannot read video holiday.mp4").first.wait_for()
    shot(page, artifacts, "01-bad-upload")
    assert "Traceback" not in page.content()
    page.locator(".toast-close").first.click()
    open_demo(page)  # still serving, the same page works


def test_files_outside_the_app_are_not_served(server):
    url = server.url
    for path in ("/etc/passwd", str(ROOT / "setup.py"), str(DEMO_CLIP)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/gradio_api/file={path}", timeout=10)
        assert refused.value.code == 403, path


def test_a_plan_that_cannot_run_says_why(page, artifacts):
    open_demo(page)
    page.get_by_text("Options (runtime.run's").click()
    set_number(page, "#opt-window input", 3)
    set_number(page, "#opt-overlap input", 5)
    start(page, "#plan")
    state, text, _ = wait_status(page, {"failed", "done"})
    shot(page, artifacts, "02-plan-refused")
    assert state == "failed" and "--overlap (5) must be smaller than --window (3)" in text


def test_upload_a_clip_and_its_mask(page, artifacts, tmp_path):
    clip = tmp_path / "street.mp4"
    clip.write_bytes(DEMO_CLIP.read_bytes())
    short = tmp_path / "short_mask.mp4"
    masks = read_clip(DEMO_MASK)
    write_clip(short, masks.frames[:5], masks.fps)
    page.locator("#clip-upload input[type=file]").set_input_files(clip)
    page.wait_for_selector("#clip-info :text('street.mp4: 256x144, 21 frames')")
    page.locator("#mask-upload input[type=file]").set_input_files(short)
    page.get_by_text("the mask video has 5 frames, the video 21").first.wait_for()
    page.locator(".toast-close").first.click()
    page.locator("#mask-upload input[type=file]").set_input_files(DEMO_MASK)
    page.wait_for_selector("#prompt-info :text('mask mask.mp4 for 21 frames')")
    shot(page, artifacts, "03-uploaded-clip-and-mask")


def test_demo_click_plan_run_play_compare_download(page, server, artifacts, tmp_path):
    # the CLI's own result for the demo, the app's download is compared with; made meanwhile, in a process of its own
    reference = tmp_path / "reference.mp4"
    command = [sys.executable, "-m", "runtime.run", "--out", str(reference), "--quiet"]
    cli = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **ONE_THREAD}, stderr=subprocess.PIPE, text=True)
    try:
        _demo_in_the_page(page, artifacts, tmp_path, reference, cli)
    finally:
        cli.kill()
        cli.wait()


def _demo_in_the_page(page, artifacts: Path, tmp_path: Path, reference: Path, cli: subprocess.Popen) -> None:
    open_demo(page)
    shot(page, artifacts, "04-demo-opened")
    # the demo's mask is tinted red on the frame where the object is
    info = open_clip(DEMO_CLIP).info
    mask = read_masks(DEMO_MASK, info)[0]
    rows, cols = np.nonzero(mask)
    shown = shown_pixels(page, "#frame img")
    scale = shown.shape[1] / info.width
    x, y = cols.mean() * scale, rows.mean() * scale
    original = read_clip(DEMO_CLIP).frames[0][int(rows.mean()), int(cols.mean())].astype(int)
    tinted = shown[int(y), int(x)].astype(int)
    assert tinted[0] - tinted[1] > original[0] - original[1] + 40, (tinted, original)

    click_image(page, "#frame img", x, y)
    page.wait_for_function("document.querySelector('#prompt-info').innerText.includes('frame 0')")
    shot(page, artifacts, "05-object-clicked")
    after_click = shown_pixels(page, "#frame img")
    assert (np.abs(after_click.astype(int) - shown.astype(int)).sum(-1) > 60).sum() > 20, "no click mark drawn"

    start(page, "#plan")
    state, _, _ = wait_status(page, {"done", "failed"})
    plan_text = page.inner_text("#plan-text")
    assert state == "done" and "plan: 21 frames of 256x144" in plan_text and "estimate:" in plan_text
    shot(page, artifacts, "06-plan")

    start(page, "#run")
    state, text, seen = wait_status(page, {"done", "failed", "cancelled"})
    assert state == "done", seen
    assert any("removal: denoise" in line for line in seen) and any("window 1/1" in line for line in seen), seen
    page.wait_for_selector("#result video")
    page.wait_for_selector("#download", state="visible")
    playing = page.evaluate(
        """async () => { const v = document.querySelector('#result video'); v.muted = true; await v.play();
        await new Promise(r => setTimeout(r, 600)); return [v.readyState, v.duration, v.currentTime]; }"""
    )
    assert playing[0] >= 2 and playing[1] == pytest.approx(21 / 16, abs=0.07) and playing[2] > 0, playing
    page.wait_for_selector("#compare img")
    if EVALUATES:  # runtime.evaluate's background figures of the result
        assert "Background (outside the dilated mask)" in page.inner_text("#metrics")
    shot(page, artifacts, "07-result")
    page.locator("#result").screenshot(path=artifacts / "07-result-video.png")

    with page.expect_download() as download:
        page.click("#download")
    downloaded = tmp_path / download.value.suggested_filename
    download.value.save_as(downloaded)

    _, errors = cli.communicate(timeout=600)
    assert cli.returncode == 0, errors
    ours, theirs = read_clip(downloaded), read_clip(reference)
    assert ours.info.width == 256 and ours.info.height == 144 and ours.fps == theirs.fps == info.fps
    assert ours.frames.shape == theirs.frames.shape == (21, 144, 256, 3)
    assert np.array_equal(ours.frames, theirs.frames), np.abs(ours.frames.astype(int) - theirs.frames).max()
    assert not np.array_equal(ours.frames, read_clip(DEMO_CLIP).frames)  # it removed something


@pytest.mark.skipif(not SEGMENTS, reason="runtime.segment and sam2 (the [segment] extra) are not installed")
def test_clicks_mask_their_frame_at_once_and_segment_the_whole_clip(
    page, server, artifacts, tmp_path, one_torch_thread
):
    from runtime.segment import Prompt, SegmentOptions, segment_file

    open_demo(page)
    shown = shown_pixels(page, "#frame img")
    scale = shown.shape[1] / 256  # preview pixels per clip pixel
    click_image(page, "#frame img", 128 * scale, 72 * scale)  # object 1: a point on frame 0
    page.wait_for_function("document.querySelector('#prompt-info').innerText.includes('frame 0: 1 object(s)')")
    page.click("#new-object")
    page.wait_for_function("document.querySelector('#prompt-info').innerText.includes('now prompting object 2')")
    frame_0 = page.eval_on_selector("#frame img", "i => i.src")
    page.fill("#frame-index input[type=number]", "10")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#frame-index input[type=number]').value == '10'")
    # frame 10 shown before the click: on a loaded machine a click landed while the image was being
    # replaced and was lost (no select event, so the page never answered it)
    page.wait_for_function(
        "old => { const i = document.querySelector('#frame img'); return i && i.src !== old && i.complete }",
        arg=frame_0,
    )
    page.get_by_label("box corner").check()
    click_image(page, "#frame img", 40 * scale, 20 * scale)  # object 2: a box on frame 10
    page.wait_for_selector("#prompt-info :text('click the opposite corner')")
    click_image(page, "#frame img", 120 * scale, 100 * scale)
    page.wait_for_function("document.querySelector('#prompt-info').innerText.includes('frame 10: 1 object(s)')")
    shot(page, artifacts, "10-clicks-and-a-box")

    start(page, "#propagate")
    state, text, seen = wait_status(page, {"done", "failed", "cancelled"})
    assert state == "done" and "propagated over 21 frames" in text, seen
    page.wait_for_function(
        "document.querySelector('#mask-preview video') && document.querySelector('#mask-preview video').readyState >= 1"
    )
    shot(page, artifacts, "11-mask-propagated")

    # the job used the clicks, mapped to the clip's pixels, and wrote what segment_file writes for them
    job = max(server.workdir.glob("sessions/*/segment-*"), key=lambda folder: folder.stat().st_mtime)
    clicks = json.loads((job / "clicks.json").read_text())
    assert [(c["frame"], c["object_id"], c["kind"]) for c in clicks] == [(0, 1, "point"), (10, 2, "box")]
    assert np.allclose(clicks[0]["coords"], (128, 72), atol=1) and np.allclose(
        clicks[1]["coords"], (40, 20, 120, 100), atol=1
    )
    prompts = [Prompt(c["frame"], c["object_id"], c["kind"], tuple(c["coords"])) for c in clicks]
    options = SegmentOptions(checkpoint=str(server.sam), model_config=SAM_CONFIG, image_size=SAM_INPUT)
    segment_file(DEMO_CLIP, tmp_path / "mask", prompts, options, progress=False, say=lambda line: None)
    info = open_clip(DEMO_CLIP).info
    assert np.array_equal(read_masks(job / "mask", info), read_masks(tmp_path / "mask", info))


def test_two_pages_the_second_queued_and_cancel_leaves_nothing(browser, server, artifacts):
    url, workdir = server.url, server.workdir
    first, second = (browser.new_context(viewport={"width": 1280, "height": 1500}).new_page() for _ in range(2))
    for page in (first, second):
        page.set_default_timeout(60_000)
        page.goto(url)
        open_demo(page)
    start(first, "#run")
    wait_status(first, {"running"})
    start(second, "#run")
    state, text, _ = wait_status(second, {"waiting", "running", "done"})
    assert state == "waiting" and "place 1 in the queue (1 job(s) ahead)" in text, text
    shot(second, artifacts, "08-second-page-queued")

    second.click("#cancel")
    state, text, _ = wait_status(second, {"cancelled", "done", "failed"})
    assert state == "cancelled" and "before it started" in text, text
    first.wait_for_function("document.querySelector('#status').innerText.includes('removal: ')")
    first.click("#cancel")
    state, text, _ = wait_status(first, {"cancelled", "done", "failed"})
    shot(first, artifacts, "09-first-page-cancelled")
    assert state == "cancelled" and "nothing was left behind" in text, text
    sessions = [folder for folder in (workdir / "sessions").iterdir()]
    left = [p for s in sessions for p in s.rglob("*") if p.name.startswith(("result-", ".")) or "partial" in p.name]
    assert not left, left
    assert not children(server.pid), "a job outlived its cancel"
    for page in (first, second):
        page.context.close()


def test_a_closed_page_takes_its_folder_with_it(browser, server):
    url, workdir = server.url, server.workdir
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    before = set((workdir / "sessions").iterdir()) if (workdir / "sessions").exists() else set()
    open_demo(page)
    mine = set((workdir / "sessions").iterdir()) - before
    assert len(mine) == 1
    context.close()
    deadline = time.monotonic() + 30
    while next(iter(mine)).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not next(iter(mine)).exists()
