"""Command line: `python -m runtime.run --video CLIP --mask MASK --out OUT.mp4`.

With no --video and no --weights it runs the bundled demo clip with the bundled demo weights.
Problems with the input print one line starting with "error:" and exit with status 2; Ctrl-C exits
with 130; neither leaves an output file behind.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from runtime.clips.job import MaskOptions, OutputOptions, fit_to_stages, open_job, remove_file
from runtime.clips.plan import (
    BLEND_MODES,
    CROP_MODES,
    DEFAULT_CONTEXT,
    DEFAULT_DILATION,
    DEFAULT_FEATHER,
    DEFAULT_MIN_CROP,
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW,
    PlanOptions,
    window_spans,
)
from runtime.clips.preview import write_preview
from runtime.clips.stream import run_shared_windows
from runtime.distributed import parallel
from runtime.errors import RemoverError, exit_code
from runtime.execution.attention import ATTENTION_CHOICES
from runtime.execution.choices import COMPILE_MODES, DTYPES, KERNEL_CHOICES, default_device
from runtime.io import ClipInfo, check_output, open_clip
from runtime.pipeline.remover import Remover

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_CLIP, DEMO_MASK, DEMO_WEIGHTS = DEMO_DIR / "clip.mp4", DEMO_DIR / "mask.mp4", DEMO_DIR / "weights"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.run",
        description="Remove the masked object from a video with MiniMax-Remover.",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument(
        "--video", help="video file (mp4, mov, webm, mkv, ...), folder of frames or one image; default: the demo"
    )
    io.add_argument(
        "--mask",
        help="mask video, folder of mask images, one image for all frames (white or opaque = remove), or a JSON "
        "file of per-frame boxes",
    )
    io.add_argument(
        "--out",
        help="output .mp4/.mov/.mkv/.webm, a new folder for PNGs, or an image file for a one-frame input "
        "(default: <input>_removed.mp4)",
    )
    io.add_argument("--overwrite", action="store_true", help="replace an existing output (like ffmpeg -y)")
    io.add_argument("--codec", help="video codec: h264 (default), h265, vp9 (webm), av1, ffv1, prores")
    io.add_argument("--crf", type=int, help="quality, lower is better (default 17 for h264)")
    io.add_argument("--lossless", action="store_true", help="write frames bit-exact (ffv1 in .mkv)")
    io.add_argument("--mask-threshold", type=int, help="mask level 0-255 above which a pixel is removed")
    io.add_argument("--invert-mask", action="store_true", help="remove where the mask is black")
    io.add_argument("--mask-channel", choices=("auto", "luma", "alpha"), default="auto", help="default: auto")
    io.add_argument(
        "--preview", metavar="FILE", help="write the input with the mask, crops and windows drawn; no model"
    )
    io.add_argument(
        "--dry-run", action="store_true", help="print the plan and its estimated cost, check it fits, and exit"
    )

    plan = parser.add_argument_group("long and high-resolution clips")
    plan.add_argument(
        "--window", type=int, default=DEFAULT_WINDOW, help=f"frames per window (default {DEFAULT_WINDOW}); 0: one pass"
    )
    plan.add_argument(
        "--overlap", type=int, default=DEFAULT_OVERLAP, help=f"frames windows share (default {DEFAULT_OVERLAP})"
    )
    plan.add_argument(
        "--blend",
        choices=BLEND_MODES,
        default="continue",
        help="continue: each window starts from the finished overlap (default); crossfade: independent windows "
        "blended over the overlap",
    )
    plan.add_argument(
        "--crop",
        choices=CROP_MODES,
        default="auto",
        help="process a box around the mask at native resolution (auto: when it is fewer pixels than the whole frame)",
    )
    plan.add_argument(
        "--context",
        type=float,
        default=DEFAULT_CONTEXT,
        help=f"crop margin around the dilated mask, times its longer side (default {DEFAULT_CONTEXT})",
    )
    plan.add_argument(
        "--min-crop",
        type=int,
        default=DEFAULT_MIN_CROP,
        help=f"shortest crop side in working pixels (default {DEFAULT_MIN_CROP})",
    )
    plan.add_argument(
        "--height",
        type=int,
        help="working height, a multiple of 16: the pixel budget of a window (default: 480p keeping the aspect ratio)",
    )
    plan.add_argument("--width", type=int, help="working width, a multiple of 16")
    plan.add_argument(
        "--dilate",
        type=int,
        default=DEFAULT_DILATION,
        help=f"mask dilation in pixels at 480p, scaled up for larger frames (default {DEFAULT_DILATION})",
    )
    plan.add_argument(
        "--feather",
        type=int,
        default=DEFAULT_FEATHER,
        help=f"paste-back blend ramp in pixels at 480p, scaled likewise (default {DEFAULT_FEATHER})",
    )
    plan.add_argument(
        "--no-paste-back",
        action="store_true",
        help="write the raw generation at the working size instead of compositing into the input",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--weights", help="checkpoint folder or single-file transformer repack; default: the bundled demo weights"
    )
    model.add_argument("--vae", help="folder with the VAE (needed with a single-file repack)")
    model.add_argument(
        "--engine",
        help="an engine bundle folder (python -m export.onnx) to run instead of the PyTorch modules; with "
        "--weights, the bundle must have been exported from those weights",
    )
    model.add_argument(
        "--backend",
        choices=("onnxruntime", "tensorrt", "aoti"),
        help="what runs the --engine bundle (default: TensorRT, else AOTInductor on a GPU; ONNX Runtime, else "
        "AOTInductor on the CPU; the first the bundle was built for)",
    )
    model.add_argument("--steps", type=int, default=6, help="sampling steps (default 6)")
    model.add_argument("--sampler", choices=("unipc", "euler"), default="unipc", help="default: unipc, as released")
    model.add_argument("--seed", type=int, default=42)
    model.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    model.add_argument("--dtype", choices=sorted(DTYPES), help="default: fp16 on GPU (see the README), fp32 on CPU")
    model.add_argument(
        "--kernels",
        choices=KERNEL_CHOICES,
        help="transformer's fused steps: Triton or the PyTorch references (default: $RUNTIME_KERNELS or auto)",
    )
    model.add_argument(
        "--attention",
        choices=ATTENTION_CHOICES,
        help="attention backend (default: $RUNTIME_ATTENTION or auto: flash-attn, else fused SDPA, else math)",
    )
    model.add_argument(
        "--compile",
        choices=sorted(COMPILE_MODES),
        default="off",
        help="compile the denoising step's model call (off by default: not yet measured faster)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def resolve_device(name: str | None) -> torch.device | None:
    """A torch device from its name, checked to exist."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RemoverError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RemoverError("CUDA is not available on this machine; use --device cpu")
    return device


def load_remover(
    args: argparse.Namespace, device: torch.device | None, sequence_parallel: bool = False
) -> tuple[Remover, str]:
    """The model the arguments name (weights or an engine bundle) and a line saying what it is;
    `sequence_parallel`: split over the torchrun group."""
    if args.engine is not None:
        if parallel.world_size() > 1:
            raise RemoverError("--engine runs in one process; torchrun splits the PyTorch model (--weights) only")
        options = {"--dtype": args.dtype, "--kernels": args.kernels, "--attention": args.attention}
        given = [flag for flag, value in {**options, "--compile": args.compile != "off"}.items() if value]
        if given:
            raise RemoverError(f"{', '.join(given)}: not with --engine (the bundle fixes precision and backends)")
        remover = Remover.from_bundle(
            args.engine, args.backend, device, weights=args.weights, vae=args.vae, sampler=args.sampler
        )
        source = f"bundle {args.engine}"
    else:
        remover = Remover.from_pretrained(
            args.weights or DEMO_WEIGHTS,
            device,
            args.dtype,
            vae=args.vae,
            sampler=args.sampler,
            kernels=args.kernels,
            attention=args.attention,
            compile_mode=args.compile,
            sequence_parallel=sequence_parallel,
        )
        source = f"weights {args.weights or DEMO_WEIGHTS}"
    return remover, f"{source} on {remover.device} in {str(remover.dtype).removeprefix('torch.')}"


def mask_options(args: argparse.Namespace) -> MaskOptions:
    return MaskOptions(threshold=args.mask_threshold, invert=args.invert_mask, channel=args.mask_channel)


def output_options(args: argparse.Namespace) -> OutputOptions:
    return OutputOptions(codec=args.codec, crf=args.crf, lossless=args.lossless, overwrite=args.overwrite)


def plan_options(args: argparse.Namespace) -> PlanOptions:
    """The plan the arguments ask for, checked."""
    options = PlanOptions(
        window=args.window,
        overlap=args.overlap,
        blend=args.blend,
        crop=args.crop,
        height=args.height,
        width=args.width,
        dilation=args.dilate,
        feather=args.feather,
        context=args.context,
        min_crop=args.min_crop,
    )
    options.check()
    return options


def say(line: str, to_stdout: bool = False) -> None:
    """A line for the person running the command (stderr, so stdout keeps only the result)."""
    print(line, file=sys.stdout if to_stdout else sys.stderr)


def clip_paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The video, mask and output the arguments name (the demo's without --video)."""
    demo = args.video is None
    if demo and args.mask is not None:
        raise RemoverError("--mask needs --video")
    if not demo and args.mask is None:
        raise RemoverError("--video needs --mask")
    video, mask = (DEMO_CLIP, DEMO_MASK) if demo else (Path(args.video), Path(args.mask))
    return video, mask, Path(args.out) if args.out else Path(f"{video.stem}_removed.mp4")


def clip_plan_options(args: argparse.Namespace, info: ClipInfo) -> PlanOptions:
    """`plan_options`, with the demo clip run at its own size (the demo model's)."""
    options = plan_options(args)
    if args.video is None and args.height is None and args.width is None:
        options = replace(options, height=info.height, width=info.width)
    return options


def run(args: argparse.Namespace, before_load: Callable[[PlanOptions, int], int] | None = None) -> str:
    """Do the whole job; return the summary line. `before_load(options, frame_count)` runs once the
    input has been checked, just before the model loads, on rank 0 of a torchrun group; it says how
    the ranks share the clip (`runtime.distributed.parallel`)."""
    video, mask, out = clip_paths(args)
    output, masking = output_options(args), mask_options(args)
    device = resolve_device(args.device)
    progress = not args.quiet
    info = open_clip(video).info  # bad input fails before the model loads (remove_file opens it again)
    options = clip_plan_options(args, info)
    if not (args.dry_run or args.preview):
        check_output(out, info, **output.writer_arguments())
    if args.preview and args.engine is None:  # the plan needs no model
        return preview(video, mask, options, masking, args)

    mode = before_load(options, info.frame_count) if before_load else None
    share = parallel.WindowShare(0, parallel.world_size(), device) if mode == parallel.WINDOWS else None
    start = time.perf_counter()
    remover, loaded = load_remover(args, device, sequence_parallel=mode == parallel.SEQUENCE)
    load_s = time.perf_counter() - start
    say(loaded)
    if args.preview:
        return preview(video, mask, fit_to_stages(options, remover.stages), masking, args)
    plan, timings = remove_file(
        remover, video, mask, out, options, masking, output, steps=args.steps, seed=args.seed,
        paste_back=not args.no_paste_back, progress=progress, dry_run=args.dry_run,
        say=lambda line: say(line, args.dry_run), share=share,
    )  # fmt: skip
    if args.dry_run:
        return f"dry run: {len(plan.model_windows)} window(s) would run; nothing written"
    stages = {"read": timings.pop("read"), "load": load_s, **timings}
    detail = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items())
    if share is not None:
        detail += f"; windows shared by {share.world} ranks"
    return f"wrote {out} ({plan.frame_count} frames) in {sum(stages.values()):.1f} s: {detail} ({remover.backends})"


def preview(video: Path, mask: Path, options: PlanOptions, masking: MaskOptions, args: argparse.Namespace) -> str:
    """--preview: the plan drawn on the input; no model runs."""
    target, output = Path(args.preview), output_options(args)
    reader = open_clip(video)
    say(f"{video}: {reader.info.describe()}")
    check_output(target, reader.info, **output.writer_arguments())
    job = open_job(reader, mask, options, masking, paste_back=not args.no_paste_back, progress=not args.quiet)
    for line in job.plan.describe():
        say(line)
    write_preview(job, target, output, not args.quiet)
    return f"wrote the preview {target} ({job.plan.frame_count} frames)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.showwarning = lambda message, *_: print(f"warning: {message}", file=sys.stderr)
    if parallel.world_size() > 1:
        return exit_code(lambda: run_in_group(args))
    return exit_code(lambda: run_within_memory(args))


def run_within_memory(args: argparse.Namespace, before_load: Callable[[PlanOptions, int], int] | None = None) -> str:
    """`run`, with running out of memory reported as what the user can change."""
    try:
        return run(args, before_load)
    except torch.OutOfMemoryError as exc:
        raise RemoverError("out of memory; try a smaller --height/--width or --window") from exc


def run_in_group(args: argparse.Namespace) -> str:
    """Under `torchrun`: rank 0 does the job as `run` does and tells the others when to load the model
    (after its input checks), how to share the clip, and when to stop; the others load the same model
    and compute their share of each window's denoising, or whole crossfaded windows of their own
    (`runtime.distributed.parallel`). Only rank 0 prints, but for errors."""
    device = parallel.local_device(resolve_device(args.device) or default_device())
    args.device = str(device)
    parallel.join(device)
    if parallel.rank() != 0:
        mode = parallel.wait_to_start(device)
        if mode == parallel.SEQUENCE:
            load_remover(args, device, sequence_parallel=True)[0].serve()
        elif mode == parallel.WINDOWS:
            compute_shared_windows(args, device)
            parallel.wait_for_stop(device)
        parallel.leave()
        return ""

    def start_the_others(options: PlanOptions, frame_count: int) -> int:
        windows = len(window_spans(frame_count, options.window, options.overlap))
        mode = parallel.choose_mode(options.blend, windows, args.dry_run)
        parallel.tell(parallel.START, device, mode=mode)
        return mode

    try:
        result = run_within_memory(args, before_load=start_the_others)
    except parallel.GroupFailed:
        raise  # the others are gone or stuck: nobody to tell
    except BaseException:
        parallel.stop_others(device, together=False)
        raise
    parallel.stop_others(device)
    return result


def compute_shared_windows(args: argparse.Namespace, device: torch.device) -> None:
    """A rank other than 0 sharing crossfaded windows: open the same clip, make the same plan, and
    compute this rank's windows for rank 0 (`runtime.clips.stream.run_shared_windows`)."""
    video, mask, _ = clip_paths(args)
    reader = open_clip(video)
    options = clip_plan_options(args, reader.info)
    remover, _ = load_remover(args, device)
    paste_back = not args.no_paste_back
    job = open_job(reader, mask, options, mask_options(args), paste_back=paste_back, progress=False)
    share = parallel.WindowShare(parallel.rank(), parallel.world_size(), device)
    frames, masks = job.frames(), job.mask_frames()
    run_shared_windows(remover, job.plan, frames, masks, share, steps=args.steps, seed=args.seed, paste_back=paste_back)


if __name__ == "__main__":
    sys.exit(main())
