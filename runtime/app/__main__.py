"""`python -m runtime.app [--host 127.0.0.1] [--port 7860] [--weights W] [--checkpoint C] ...`: serve the page.

Every file the app reads, writes or serves lives under one folder (`--workdir`, default a new temporary
folder), removed when the server stops: Gradio's upload cache is put there too, before it is imported.
"""

import argparse
import os
import signal
import sys
from pathlib import Path

from runtime.app.jobs import let_jobs_take_ctrl_c
from runtime.app.segmentation import SegmentSettings
from runtime.app.workspace import AppRoot, Limits
from runtime.errors import RemoverError, exit_code
from runtime.options import DECODER_CHOICES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.app",
        description="Serve the web app: open a clip, click the object, remove it, compare and download.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=7860, help="default 7860")
    parser.add_argument("--weights", help="remover weights (runtime.run --weights); default: the bundled demo")
    parser.add_argument("--device", help="device of the jobs (runtime.run --device); default: cuda if available")
    parser.add_argument("--decoder", choices=DECODER_CHOICES, help="what decodes (runtime.run --decoder); default: vae")
    parser.add_argument("--decoder-weights", help="the light decoder's file or hub id (runtime.run --decoder-weights)")
    segment = parser.add_argument_group("segmentation (SAM 2.1, runtime.segment)")
    segment.add_argument("--checkpoint", help="SAM 2.1 checkpoint: a local .pt or a hub id (default: the small one)")
    segment.add_argument("--model-config", help="its model config (name or YAML path)")
    segment.add_argument("--image-size", type=int, help="SAM's input size (smaller is faster)")
    limits = parser.add_argument_group("uploads")
    limits.add_argument("--max-upload-mb", type=int, default=Limits.max_bytes // 2**20, help="default %(default)s")
    limits.add_argument("--max-frames", type=int, default=Limits.max_frames, help="default %(default)s")
    limits.add_argument("--max-seconds", type=float, default=Limits.max_seconds, help="default %(default)s")
    parser.add_argument("--workdir", help="the app's folder (default: a new temporary folder)")
    return parser.parse_args(argv)


def serve(args: argparse.Namespace) -> str:
    if args.max_upload_mb < 1 or args.max_frames < 1 or args.max_seconds <= 0:
        raise RemoverError("--max-upload-mb, --max-frames and --max-seconds must be positive")
    if args.workdir:
        workdir = Path(args.workdir)
        if workdir.exists() and not workdir.is_dir():
            raise RemoverError(f"--workdir {workdir} is a file: name a new or an empty folder")
        if workdir.is_dir() and any(workdir.iterdir()):
            raise RemoverError(f"--workdir {workdir} is not empty (the app removes it when it stops)")
    root = AppRoot(Path(args.workdir) if args.workdir else None)
    # before gradio is imported: its uploads and caches go inside the root
    os.environ["GRADIO_TEMP_DIR"] = str(root.folder / "gradio")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(root.folder / "gradio" / "examples")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from runtime.app import ui
    from runtime.app.session import AppSettings, Sessions

    limits = Limits(args.max_upload_mb * 2**20, args.max_frames, args.max_seconds)
    settings = AppSettings(
        weights=args.weights,
        device=args.device,
        decoder=args.decoder,
        decoder_weights=args.decoder_weights,
        segment=SegmentSettings(args.checkpoint, args.model_config, args.image_size, args.device),
        limits=limits,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop like Ctrl-C: the folder is removed
    let_jobs_take_ctrl_c()
    page = ui.build(Sessions(root, settings))
    page.queue(default_concurrency_limit=4)
    try:
        try:
            page.launch(
                server_name=args.host,
                server_port=args.port,
                allowed_paths=[str(root.folder)],
                max_file_size=limits.max_bytes,
                ssr_mode=False,
                footer_links=[],
                quiet=True,
                prevent_thread_lock=True,
                **ui.style(),
            )
        except OSError as exc:
            raise RemoverError(f"cannot serve on {args.host}:{args.port}: {exc}") from None
        print(f"serving on http://{args.host}:{args.port} (files in {root.folder})", file=sys.stderr, flush=True)
        page.block_thread()  # until Ctrl-C (or SIGTERM)
    finally:
        page.close()
        root.remove()
    return "stopped"


def main(argv: list[str] | None = None) -> int:
    return exit_code(lambda: serve(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
