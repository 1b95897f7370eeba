"""One browser session's work, independent of the page: open a clip, prompt, mask, plan, run, compare.

Every device job (propagation, plan, removal) is a child process of a command-line tool, queued on the
server's one `DeviceQueue`; the async generators here yield `Status` while they wait and work, so the
page can show the place in the queue and the progress, and `cancel` interrupts the session's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.app import drawing
from runtime.app.jobs import ChildJob, DeviceQueue, Progress, Ticket, check_finished
from runtime.app.segmentation import Click, FrameSegmenter, SegmentSettings, propagation_args, write_clicks
from runtime.app.workspace import MASK_SUFFIXES, AppRoot, Limits, Workspace, adopt, read_info
from runtime.demo import DEMO_CLIP, DEMO_MASK
from runtime.errors import RemoverError
from runtime.io import IMAGE_SUFFIXES, open_clip
from runtime.options import PlanOptions

_BOX = re.compile(r"window (\d+): frames (\d+)-(\d+).*?: box (\d+)x(\d+)\+(\d+)\+(\d+)")
PLAYABLE = (".mp4", ".webm")  # what the result is written as: what a browser plays (the clip's own when it is one)


@dataclass(frozen=True)
class RunSettings:
    """The options of the removal a page may change (runtime.run's flags of the same names)."""

    window: int | None = None
    overlap: int | None = None
    blend: str | None = None
    crop: str | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    seed: int | None = None

    @classmethod
    def from_page(cls, *values: float | str | None) -> RunSettings:
        """From the page's fields in field order (numbers come as floats; empty is None; a working
        height or width of 0 is runtime.run's default)."""
        settings = cls(*(int(v) if isinstance(v, float) else (v if v != "" else None) for v in values))
        return replace(settings, height=settings.height or None, width=settings.width or None)

    def plan_options(self, size: tuple[int, int] | None) -> PlanOptions:
        """The PlanOptions runtime.run makes of these flags; `size` (height, width): the working size
        when neither is given (the demo's own size)."""
        given = {name: getattr(self, name) for name in ("window", "overlap", "blend", "crop", "height", "width")}
        if size is not None and self.height is None and self.width is None:
            given["height"], given["width"] = size
        return PlanOptions(**{name: value for name, value in given.items() if value is not None})

    def argv(self) -> list[str]:
        return [item for name, value in vars(self).items() if value is not None for item in (f"--{name}", str(value))]


@dataclass(frozen=True)
class AppSettings:
    """What the server was started with."""

    weights: str | None = None  # runtime.run --weights; None: the bundled demo weights
    device: str | None = None
    decoder: str | None = None  # runtime.run --decoder and --decoder-weights; None: their defaults
    decoder_weights: str | None = None
    segment: SegmentSettings = SegmentSettings()
    limits: Limits = Limits()


@dataclass(frozen=True)
class Status:
    """What a job is doing: waiting at `place` in the queue, running with `progress`, or `done`."""

    state: str  # "waiting", "running", "done", "cancelled"
    text: str
    fraction: float | None = None
    lines: list[str] = field(default_factory=list)  # a finished child's output


@dataclass
class PlanView:
    """The plan's lines and its crop boxes (first frame, last frame, left, top, right, bottom; display pixels)."""

    lines: list[str]
    boxes: list[tuple[int, int, tuple[int, int, int, int]]]


@dataclass
class Result:
    video: Path
    frames: Path  # preview JPEGs of the result
    metrics: dict | None = None


@dataclass
class Session:
    """A workspace and the state of the page: clicks, the object being prompted, a box's first corner,
    the instant masks of prompted frames, the plan, the job and the result."""

    root: AppRoot
    workspace: Workspace
    settings: AppSettings
    queue: DeviceQueue
    segmenter: FrameSegmenter
    clicks: list[Click] = field(default_factory=list)
    object_id: int = 1
    corner: tuple[int, float, float] | None = None  # frame and display point of a box's first corner
    frame_masks: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    plan: PlanView | None = None
    result: Result | None = None
    preview: Path | None = None  # the propagated mask tinted on the clip
    ticket: Ticket | None = None
    job: ChildJob | None = None

    # clip and mask

    def open_upload(self, upload: str | Path) -> str:
        """An uploaded clip becomes the session's clip; returns its description."""
        self._idle()
        source = self.root.check(upload)
        info = read_info(source, self.settings.limits)
        self._reset()
        self.workspace.set_clip(adopt([source], self.workspace, "clip"), info)
        return f"{source.name}: {info.describe()}"

    def open_demo(self) -> str:
        """The bundled demo clip and its mask, copied into the session."""
        self._idle()
        info = read_info(DEMO_CLIP, self.settings.limits)
        self._reset()
        self.workspace.set_clip(self._copied(DEMO_CLIP, "clip"), info, demo=True)
        self.workspace.set_mask(self._copied(DEMO_MASK, "mask"))
        return f"demo clip: {info.describe()}; its mask is loaded (click to make your own)"

    def _copied(self, source: Path, kind: str) -> Path:
        target = self.workspace.folder / self.workspace.next_name(kind) / source.name
        target.parent.mkdir()
        shutil.copyfile(source, target)
        return target

    def upload_mask(self, uploads: list[str | Path]) -> str:
        """A mask video, an image, a boxes JSON, or several images (one per frame, in name order)."""
        info = self.workspace.require_clip()
        self._idle()
        sources = [self.root.check(upload) for upload in uploads]
        if not sources:
            raise RemoverError("choose a mask file")
        for source in sources:
            self.settings.limits.check_size(source)
        if len(sources) == 1 and sources[0].suffix.lower() not in MASK_SUFFIXES:
            raise RemoverError(f"{sources[0].name}: a mask is a video, an image or a .json box file")
        if len(sources) > 1 and any(source.suffix.lower() not in IMAGE_SUFFIXES for source in sources):
            raise RemoverError("several mask files must all be images (one per frame)")
        target = adopt(sources, self.workspace, "mask")
        try:
            self.workspace.set_mask(target)
        except RemoverError:
            self.workspace.drop(target)
            raise
        self.plan = None
        names = ", ".join(source.name for source in sources[:3]) + (" ..." if len(sources) > 3 else "")
        return f"mask {names} for {info.frame_count} frames"

    def _idle(self) -> None:
        """A RemoverError while this page's job runs or waits: its clip and mask must stay as they are."""
        if self.ticket is not None:
            raise RemoverError("this page has a job running or queued; wait for it or cancel it first")

    def _reset(self) -> None:
        """A new clip: the old one's clicks, plan and result go (its files with the result)."""
        if self.result is not None:
            self.workspace.drop(self.result.video)
        self.clicks, self.object_id, self.corner, self.frame_masks = [], 1, None, {}
        self.plan, self.result, self.preview = None, None, None

    # the frame view

    def view(self, index: int) -> np.ndarray:
        """Preview frame `index`: the mask tinted (the instant masks where the frame has clicks), the
        clicks, and the plan's crop box of every window holding the frame."""
        image = self.workspace.frame(index)
        masks = self.frame_masks.get(index)
        image = drawing.tint(image, masks if masks is not None else self.workspace.mask_frame(index))
        sx, sy = self._to_preview()
        shown = [(c.object_id, c.kind, _scaled(c.coords, sx, sy)) for c in self.clicks if c.frame == index]
        if self.corner is not None and self.corner[0] == index:
            shown.append((self.object_id, "point", (self.corner[1] * sx, self.corner[2] * sy)))
        image = drawing.draw_prompts(image, shown)
        if self.plan is not None:
            boxes = [_scaled(box, sx, sy) for first, last, box in self.plan.boxes if first <= index <= last]
            image = drawing.draw_boxes(image, boxes)
        return image

    def _to_preview(self) -> tuple[float, float]:
        info = self.workspace.require_clip()
        height, width = self.workspace.size
        return width / info.width, height / info.height

    # prompts

    def click(self, index: int, x: float, y: float, kind: str) -> str:
        """A click at preview pixel (x, y) of frame `index`: a positive or negative point, or a corner of
        a box (the second corner completes it). Returns what happened; the frame's masks update at once."""
        self.workspace.require_clip()
        if kind not in ("point", "negative", "box"):
            raise RemoverError(f"unknown click kind {kind!r}")
        dx, dy = self.workspace.to_display(x, y)
        if kind == "box":
            if self.corner is None or self.corner[0] != index:
                self.corner = (index, dx, dy)
                return f"box for object {self.object_id}: click the opposite corner"
            _, x0, y0 = self.corner
            self.corner = None
            coords = (min(x0, dx), min(y0, dy), max(x0, dx), max(y0, dy))
            if coords[2] - coords[0] < 1 or coords[3] - coords[1] < 1:
                return "that box is empty; click two opposite corners"
            # one box per object and frame (SAM's rule): a new one replaces the old
            self.clicks = [c for c in self.clicks if (c.frame, c.object_id, c.kind) != (index, self.object_id, "box")]
        else:
            coords = (dx, dy)
        self.clicks.append(Click(index, self.object_id, kind, coords))
        return self._segment_frame(index)

    def _segment_frame(self, index: int) -> str:
        on_frame = [c for c in self.clicks if c.frame == index]
        self.plan = None
        if not on_frame:
            self.frame_masks.pop(index, None)
            return "no clicks on this frame"
        try:
            masks = self.segmenter.masks(self.workspace.frame(index), on_frame, self._to_preview())
        except RemoverError as exc:
            self.frame_masks.pop(index, None)
            return f"{len(on_frame)} click(s) on frame {index} recorded; no instant mask: {exc}"
        self.frame_masks[index] = {obj: np.asarray(mask, dtype=bool) for obj, mask in masks.items()}
        area = sum(int(m.sum()) for m in self.frame_masks[index].values())
        return f"frame {index}: {len(masks)} object(s), {area} preview pixels masked; Propagate to mask the whole clip"

    def undo(self) -> str:
        if self.corner is not None:
            self.corner = None
            return "box corner removed"
        if not self.clicks:
            return "nothing to undo"
        removed = self.clicks.pop()
        return self._segment_frame(removed.frame)

    def clear(self) -> str:
        self.clicks, self.corner, self.frame_masks, self.object_id = [], None, {}, 1
        return "clicks cleared"

    def new_object(self) -> str:
        used = {c.object_id for c in self.clicks}
        if self.object_id in used:
            self.object_id = max(used) + 1
        return f"now prompting object {self.object_id}"

    # device jobs

    async def propagate(self) -> AsyncIterator[Status]:
        """Masks for every frame from the clicks (a device job); the mask becomes the session's."""
        if not self.clicks:
            raise RemoverError("click the object first")
        workspace = self.workspace
        folder = workspace.new_job_dir("segment")
        clicks = write_clicks(self.clicks, folder / "clicks.json")
        mask, preview = folder / "mask", folder / "preview.mp4"
        args = propagation_args(workspace.clip, clicks, mask, preview, self.settings.segment)
        async with _kept_if_done(folder) as done:
            async for status in self._child("runtime.app.segmentation", args, folder, "segmentation"):
                if status.state != "done":
                    yield status
                    continue
                yield Status("running", "reading the mask", 1.0)
                await asyncio.to_thread(workspace.set_mask, mask)
                self.frame_masks, self.plan, self.preview = {}, None, preview
                done.append(True)
                yield Status("done", f"mask propagated over {workspace.info.frame_count} frames", 1.0)

    def _removal_args(self, options: RunSettings, out: Path, dry_run: bool) -> list:
        workspace = self.workspace
        args = ["--video", workspace.clip, "--mask", workspace.require_mask(), "--out", out]
        if self.settings.weights:
            args += ["--weights", self.settings.weights]
        elif (size := self._own_size()) and options.height is None and options.width is None:
            args += ["--height", size[0], "--width", size[1]]
        if self.settings.device:
            args += ["--device", self.settings.device]
        if self.settings.decoder:
            args += ["--decoder", self.settings.decoder]
        if self.settings.decoder_weights:
            args += ["--decoder-weights", self.settings.decoder_weights]
        return args + options.argv() + (["--dry-run"] if dry_run else [])

    async def make_plan(self, options: RunSettings) -> AsyncIterator[Status]:
        """`runtime.run --dry-run`: the plan, its estimate, or the reason it cannot run."""
        self.plan = None
        folder = self.workspace.new_job_dir("plan")
        args = self._removal_args(options, folder / f"result{self._suffix()}", dry_run=True)
        async with _kept_if_done(folder):  # never kept: a dry run writes nothing
            async for status in self._child("runtime.run", args, folder, "planning"):
                if status.state != "done":
                    yield status
                    continue
                folder_of_clip = f"{self.workspace.clip.parent.name}/"  # the clip's own name, as uploaded
                lines = [
                    line.removeprefix(folder_of_clip)
                    for line in status.lines
                    if not line.startswith(("warning:", "weights "))
                ]
                boxes = []
                for line in lines:
                    if match := _BOX.search(line):
                        _, first, last, w, h, left, top = map(int, match.groups())
                        boxes.append((first, last, (left, top, left + w, top + h)))
                self.plan = PlanView(lines, boxes)
                yield Status("done", "plan ready", 1.0)

    def _own_size(self) -> tuple[int, int] | None:
        """The demo clip with the demo weights runs at its own size, as `python -m runtime.run` alone does."""
        if self.workspace.demo and not self.settings.weights:
            return self.workspace.info.height, self.workspace.info.width
        return None

    def _suffix(self) -> str:
        suffix = self.workspace.clip.suffix.lower()
        return suffix if suffix in PLAYABLE else ".mp4"

    async def run(self, options: RunSettings) -> AsyncIterator[Status]:
        """The removal (a device job): the result, its preview frames and, where runtime.evaluate
        exists, its background figures."""
        workspace = self.workspace
        workspace.require_mask()
        self.result = None
        folder = workspace.new_job_dir("result")
        out = folder / f"{workspace.clip.stem}_removed{self._suffix()}"
        args = self._removal_args(options, out, dry_run=False)
        async with _kept_if_done(folder) as done:
            async for status in self._child("runtime.run", args, folder, "removal"):
                if status.state != "done":
                    yield status
                    continue
                yield Status("running", "reading the result", 1.0)
                frames = folder / "frames"
                await asyncio.to_thread(_write_previews, out, frames, workspace.size)
                result = Result(out, frames)
                yield Status("running", "measuring the background", 1.0)
                plan = options.plan_options(self._own_size())
                result.metrics = await asyncio.to_thread(background_figures, out, workspace.clip, workspace.mask, plan)
                self.result = result
                done.append(True)
                yield Status("done", f"done: {out.name}", 1.0)

    async def _child(self, module: str, args: list, folder: Path, what: str) -> AsyncIterator[Status]:
        """Queue, run `python -m module args` in the session's folder (paths relative to it, so what it
        says names no server folder), yield Status while it waits and works; the last is "done" (with the
        child's lines) or "cancelled", after which nothing is left in the job's `folder`. A failure raises
        RemoverError with the child's error line."""
        if self.ticket is not None:
            raise RemoverError("this page already has a job; wait for it or cancel it")
        ticket = self.ticket = Ticket(owner=what)
        job = None
        try:
            async for place in self.queue.wait_turn(ticket):
                ahead = place - 1 + (self.queue.running is not None)
                yield Status("waiting", f"{what}: queued, place {place} in the queue ({ahead} job(s) ahead)")
            if ticket.cancelled:
                yield Status("cancelled", f"{what} cancelled before it started")
                return
            relative = [_relative(arg, self.workspace.folder) for arg in args]
            job = self.job = ChildJob(module, relative, self.workspace.folder)
            await job.start()
            yield Status("running", f"{what}: starting", 0.0)
            async for update in job.updates():
                if isinstance(update, Progress):
                    yield Status("running", f"{what}: {update.describe()}", update.done / max(update.total, 1))
            outcome = await job.finish()
        finally:
            if job is not None:
                await job.stop()  # the page went away mid-job: nothing keeps running
            await self.queue.release(ticket)
            self.ticket, self.job = None, None
        if outcome.cancelled:
            left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
            said = "nothing was left behind" if not left else f"it left {', '.join(left)} (removed)"
            yield Status("cancelled", f"{what} cancelled; {said}")
            return
        check_finished(outcome, what)
        yield Status("done", f"{what} finished", 1.0, outcome.lines)

    def cancel(self) -> str:
        """Stop the session's job: leave the queue, or interrupt the child (it removes its partial output)."""
        if self.ticket is None:
            return "no job to cancel"
        self.ticket.cancelled = True
        if self.job is not None:
            self.job.interrupt()
        return "cancelling"

    # the result

    def compare(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(before, after) preview frames of `index` once there is a result."""
        if self.result is None:
            return None
        info = self.workspace.require_clip()
        index = min(max(index, 0), info.frame_count - 1)
        after = np.asarray(Image.open(self.result.frames / f"{index:06d}.jpg").convert("RGB"))
        return self.workspace.frame(index), after


@contextlib.asynccontextmanager
async def _kept_if_done(folder: Path) -> AsyncIterator[list]:
    """A job's folder, removed unless the body appends to the list it gets (a job that failed, was
    cancelled, or whose page went away keeps nothing)."""
    done: list = []
    try:
        yield done
    finally:
        if not done:
            shutil.rmtree(folder, ignore_errors=True)


def _relative(arg: object, folder: Path) -> str:
    """A path inside `folder` relative to it; anything else as it is."""
    if isinstance(arg, Path) and arg.is_relative_to(folder):
        return str(arg.relative_to(folder))
    return str(arg)


def _scaled(coords: tuple[float, ...], sx: float, sy: float) -> tuple[float, ...]:
    return tuple(value * (sx if i % 2 == 0 else sy) for i, value in enumerate(coords))


def _write_previews(video: Path, folder: Path, size: tuple[int, int]) -> None:
    folder.mkdir()
    height, width = size
    with open_clip(video) as reader:
        for frame in reader:
            image = Image.fromarray(frame.image).resize((width, height), Image.BILINEAR)
            image.save(folder / f"{frame.index:06d}.jpg", quality=90)


def background_figures(result: Path, video: Path, mask: Path, plan: PlanOptions) -> dict | None:
    """runtime.evaluate's background figures of the result against the input, on the region the run's
    plan composites (None where runtime.evaluate is not installed)."""
    try:
        from runtime.evaluate import evaluate_clip
    except ImportError:
        return None
    return evaluate_clip(result, video, mask, progress=False, plan_options=plan).to_json()["background"]


class Sessions:
    """Every browser session's `Session`, by the session id Gradio gives each page, sharing the root
    folder, the device queue and the instant-preview model."""

    def __init__(self, root: AppRoot, settings: AppSettings) -> None:
        self.root, self.settings = root, settings
        self.queue = DeviceQueue()
        self.segmenter = FrameSegmenter(settings.segment)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()  # callbacks of one page can run at once, in Gradio's worker threads

    def get(self, session_id: str) -> Session:
        with self._lock:
            if session_id not in self._sessions:
                workspace = self.root.workspace(session_id)
                self._sessions[session_id] = Session(self.root, workspace, self.settings, self.queue, self.segmenter)
            return self._sessions[session_id]

    async def close(self, session_id: str, wait_s: float = 30.0) -> None:
        """The page went away: cancel its job, wait for it to end (at most `wait_s`), remove its folder."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.cancel()
            for _ in range(int(wait_s / 0.1)):
                if session.ticket is None:
                    break
                await asyncio.sleep(0.1)
        self.root.close(session_id)

    def __len__(self) -> int:
        return len(self._sessions)
