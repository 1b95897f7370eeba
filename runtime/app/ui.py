"""The page (Gradio Blocks): a thin layer over `Session`. Each callback finds its session by the
browser's session id, calls one method and shows what it returns; a RemoverError (or anything
unexpected) becomes a message in the page, never a traceback, and the server keeps serving.
(No `from __future__ import annotations` here: Gradio reads the callbacks' annotations for gr.Request
and gr.SelectData.)"""

import argparse
import functools
import html
import logging
import re
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import gradio as gr

from runtime.app.session import RunSettings, Sessions, Status
from runtime.clips.plan import BLEND_MODES, CROP_MODES
from runtime.errors import RemoverError
from runtime.run import parse_args

log = logging.getLogger("runtime.app")
CLICK_KINDS = {"object (positive point)": "point", "not the object (negative point)": "negative", "box corner": "box"}
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page needs nothing from outside
CSS = """
#status .bar { height: 10px; background: var(--neutral-200); border-radius: 5px; overflow: hidden; }
#status .bar div { height: 100%; background: var(--color-accent); }
"""


def run_defaults() -> argparse.Namespace:
    """runtime.run's defaults, for the page's option fields."""
    return parse_args([])


def style() -> dict:
    """launch()'s theme and css for the page (system fonts: the page loads nothing from outside)."""
    return {"theme": gr.themes.Default(font=FONTS, font_mono=["ui-monospace", "monospace"]), "css": CSS}


def show_error(exc: Exception, root: Path) -> str:
    """The error as a message in the page (a toast titled Error, file names without the server's
    folders); returns its text. Anything but a RemoverError is logged with its traceback."""
    if isinstance(exc, RemoverError):
        message = str(exc)
    else:
        log.error("unexpected error in the app:\n%s", traceback.format_exc())
        message = f"internal error ({type(exc).__name__}: {exc}); the server log has the details"
    message = re.sub(re.escape(str(root)) + r"[^\s'\"]*/", "", message)
    gr.Warning(message, duration=None, title="Error")
    return message


def shown_errors(root: Path) -> Callable[[Callable], Callable]:
    """A callback whose errors are a message in the page; its outputs then stay as they were."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                show_error(exc, root)
                return gr.skip()

        return wrapper

    return decorate


def status_html(status: Status) -> str:
    """The status line and, while a job runs, its progress bar."""
    colour = {"failed": "var(--error-text-color)", "cancelled": "var(--body-text-color-subdued)"}.get(status.state)
    style = f' style="color: {colour}"' if colour else ""
    bar = ""
    if status.fraction is not None and status.state == "running":
        bar = f'<div class="bar"><div style="width: {100 * status.fraction:.0f}%"></div></div>'
    return f'<div data-state="{status.state}"{style}>{html.escape(status.text)}</div>{bar}'


METRIC_NAMES = {
    "psnr_db": "PSNR (dB)",
    "ssim": "SSIM",
    "max_abs": "largest change of a pixel (levels)",
    "exact_frames": "frames whose background is exact",
}


def metrics_markdown(metrics: dict | None) -> str:
    """runtime.evaluate's background figures as a table (PSNR null: nothing changed, "exact")."""
    if not metrics:
        return ""
    rows = []
    for key, value in metrics.items():
        shown = "exact" if value is None and key == "psnr_db" else _number(value)
        rows.append(f"| {METRIC_NAMES.get(key, key)} | {shown} |")
    table = "\n".join(rows)
    return f"**Background (outside the dilated mask) against the input**\n\n| figure | value |\n|---|---|\n{table}"


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def build(sessions: Sessions) -> gr.Blocks:
    """The app's page; `sessions` holds every browser session's work."""
    limits = sessions.settings.limits
    shown = shown_errors(sessions.root.folder)
    with gr.Blocks(title="MiniMax-Remover", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown(
            "# MiniMax-Remover\nOpen a clip, click the object (or upload a mask), check the plan, remove it, "
            f"compare and download. Uploads: at most {limits.max_bytes / 2**20:.0f} MB, {limits.max_frames} frames, "
            f"{limits.max_seconds:.0f} s."
        )
        with gr.Row():
            clip_upload = gr.File(
                label="Upload a clip", file_types=["video", "image"], height=140, elem_id="clip-upload"
            )
            with gr.Column():
                demo = gr.Button("Open the demo clip", elem_id="demo")
                clip_info = gr.Markdown(elem_id="clip-info")
        with gr.Row():
            with gr.Column(scale=3):
                frame = gr.Image(
                    label="Frame (click to prompt)", interactive=False, elem_id="frame", buttons=["fullscreen"]
                )
                index = gr.Slider(0, 1, value=0, step=1, label="Frame", elem_id="frame-index")
            with gr.Column(scale=2):
                kind = gr.Radio(list(CLICK_KINDS), value=next(iter(CLICK_KINDS)), label="A click adds", elem_id="kind")
                with gr.Row():
                    new_object = gr.Button("New object", size="sm", elem_id="new-object")
                    undo = gr.Button("Undo", size="sm", elem_id="undo")
                    clear = gr.Button("Clear clicks", size="sm", elem_id="clear")
                prompt_info = gr.Markdown(elem_id="prompt-info")
                propagate = gr.Button("Segment the whole clip", elem_id="propagate")
                mask_preview = gr.Video(label="Mask over the clip", interactive=False, elem_id="mask-preview")
                mask_upload = gr.File(
                    label="...or upload a mask (video, image(s) or boxes .json)",
                    file_count="multiple",
                    height=140,
                    elem_id="mask-upload",
                )
        cli = run_defaults()
        with gr.Accordion("Options (runtime.run's)", open=False):
            with gr.Row():
                window = gr.Number(cli.window, label="window (frames; 0 = one pass)", precision=0, elem_id="opt-window")
                overlap = gr.Number(cli.overlap, label="overlap (frames)", precision=0, elem_id="opt-overlap")
                blend = gr.Dropdown(list(BLEND_MODES), value=cli.blend, label="blend", elem_id="opt-blend")
                crop = gr.Dropdown(list(CROP_MODES), value=cli.crop, label="crop", elem_id="opt-crop")
            with gr.Row():
                size = "0 = runtime.run's default: 480p keeping the aspect ratio, a smaller clip its own size"
                height = gr.Number(0, label=f"working height ({size})", precision=0, elem_id="opt-height")
                width = gr.Number(0, label="working width (0 = likewise)", precision=0, elem_id="opt-width")
                steps = gr.Number(cli.steps, label="steps", precision=0, elem_id="opt-steps")
                seed = gr.Number(cli.seed, label="seed", precision=0, elem_id="opt-seed")
        options = [window, overlap, blend, crop, height, width, steps, seed]
        with gr.Row():
            plan = gr.Button("Plan", elem_id="plan")
            run = gr.Button("Remove the object", variant="primary", elem_id="run")
            cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
        status = gr.HTML(elem_id="status")
        plan_text = gr.Markdown(elem_id="plan-text")
        with gr.Row():
            result = gr.Video(label="Result", interactive=False, elem_id="result")
            compare = gr.ImageSlider(label="Before / after (this frame)", elem_id="compare")
        with gr.Row():
            download = gr.DownloadButton("Download the result", visible=False, elem_id="download")
            metrics = gr.Markdown(elem_id="metrics")

        def frame_slider(info_frames: int) -> gr.Slider:
            return gr.Slider(0, max(info_frames - 1, 1), value=0, step=1, interactive=info_frames > 1)

        def opened(session, line: str):
            count = session.workspace.info.frame_count
            return (
                None, line, frame_slider(count), session.view(0), session.preview, "", "", None, None,
                gr.DownloadButton(visible=False), "",
            )  # fmt: skip

        opened_outputs = [
            clip_upload, clip_info, index, frame, mask_preview, prompt_info, plan_text, result, compare, download,
            metrics,
        ]  # fmt: skip

        def open_upload(upload: str | None, request: gr.Request):
            if upload is None:
                return (gr.skip(),) * len(opened_outputs)
            session = sessions.get(request.session_hash)
            try:
                return opened(session, session.open_upload(upload))
            except Exception as exc:  # the upload box is emptied, ready for another file
                show_error(exc, sessions.root.folder)
                return (None, *(gr.skip() for _ in opened_outputs[1:]))

        @shown
        def open_demo(request: gr.Request):
            session = sessions.get(request.session_hash)
            return opened(session, session.open_demo())

        clip_upload.upload(open_upload, clip_upload, opened_outputs)
        demo.click(open_demo, None, opened_outputs)

        @shown
        def show(position: float, request: gr.Request):
            session = sessions.get(request.session_hash)
            position = int(position)
            return session.view(position), session.compare(position) or gr.skip()

        index.change(show, index, [frame, compare], trigger_mode="always_last", show_progress="hidden")

        @shown
        def clicked(position: float, click_kind: str, evt: gr.SelectData, request: gr.Request):
            session = sessions.get(request.session_hash)
            x, y = evt.index
            line = session.click(int(position), x, y, CLICK_KINDS[click_kind])
            return session.view(int(position)), line, ""

        frame.select(clicked, [index, kind], [frame, prompt_info, plan_text], show_progress="hidden")

        def prompt_action(method: str) -> Callable:
            @shown
            def action(position: float, request: gr.Request):
                session = sessions.get(request.session_hash)
                line = getattr(session, method)()
                return session.view(int(position)), line

            return action

        for button, method in ((new_object, "new_object"), (undo, "undo"), (clear, "clear")):
            button.click(prompt_action(method), index, [frame, prompt_info], show_progress="hidden")

        def upload_mask(uploads: list[str] | None, position: float, request: gr.Request):
            if not uploads:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            session = sessions.get(request.session_hash)
            try:
                line = session.upload_mask(uploads)
            except Exception as exc:  # the upload box is emptied, ready for another file
                show_error(exc, sessions.root.folder)
                return None, gr.skip(), gr.skip(), gr.skip()
            return None, session.view(int(position)), line, ""

        mask_upload.upload(upload_mask, [mask_upload, index], [mask_upload, frame, prompt_info, plan_text])

        def streamed(work: Callable[..., AsyncIterator[Status]], finish: Callable) -> Callable:
            """An event that runs a session's job: the status while it waits and works, then `finish`'s outputs."""

            async def event(position: float, *values):
                request = values[-1]
                session = sessions.get(request.session_hash)
                try:
                    async for update in work(session, RunSettings.from_page(*values[:-1])):
                        yield (status_html(update), *finish(session, int(position), update))
                except Exception as exc:
                    message = show_error(exc, sessions.root.folder)
                    yield (status_html(Status("failed", message)), *(gr.skip() for _ in finish_outputs[finish]))

            return event

        def after_propagation(session, position: int, update: Status) -> tuple:
            if update.state != "done":
                return gr.skip(), gr.skip(), gr.skip()
            return session.view(position), session.preview, update.text

        def after_plan(session, position: int, update: Status) -> tuple:
            if update.state != "done" or session.plan is None:
                return gr.skip(), gr.skip()
            return session.view(position), "```\n" + "\n".join(session.plan.lines) + "\n```"

        def after_run(session, position: int, update: Status) -> tuple:
            if update.state != "done" or session.result is None:
                return (gr.skip(),) * 4
            video = session.result.video
            return (
                str(video), session.compare(position), gr.DownloadButton(value=str(video), visible=True),
                metrics_markdown(session.result.metrics),
            )  # fmt: skip

        finish_outputs = {
            after_propagation: [frame, mask_preview, prompt_info],
            after_plan: [frame, plan_text],
            after_run: [result, compare, download, metrics],
        }

        propagate.click(
            _job(streamed, lambda session, _: session.propagate(), after_propagation),
            [index, *options],
            [status, *finish_outputs[after_propagation]],
            show_progress="hidden",
            concurrency_limit=None,
        )
        plan.click(
            _job(streamed, lambda session, settings: session.make_plan(settings), after_plan),
            [index, *options],
            [status, *finish_outputs[after_plan]],
            show_progress="hidden",
            concurrency_limit=None,
        )
        run.click(
            _job(streamed, lambda session, settings: session.run(settings), after_run),
            [index, *options],
            [status, *finish_outputs[after_run]],
            show_progress="hidden",
            concurrency_limit=None,
        )

        @shown
        def cancel_job(request: gr.Request):
            gr.Info(sessions.get(request.session_hash).cancel())

        cancel.click(cancel_job, None, None, concurrency_limit=None, show_progress="hidden")

        async def closed(request: gr.Request):
            await sessions.close(request.session_hash)

        page.unload(closed)
    return page


def _job(streamed: Callable, work: Callable, finish: Callable) -> Callable:
    """A Gradio event function (index, options..., request) -> the streamed status and outputs. Its
    parameters are spelled out: Gradio passes the inputs by position and the request by its annotation."""
    event = streamed(work, finish)

    async def handler(
        position: float,
        window: float | None,
        overlap: float | None,
        blend: str | None,
        crop: str | None,
        height: float | None,
        width: float | None,
        steps: float | None,
        seed: float | None,
        request: gr.Request,
    ):
        async for outputs in event(position, window, overlap, blend, crop, height, width, steps, seed, request):
            yield outputs

    return handler
