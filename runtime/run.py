"""Command line: `python -m runtime.run --video CLIP --mask MASK --out OUT.mp4`.

With no --video and no --weights it runs the bundled demo clip with the bundled demo weights.
Problems with the input print one line starting with "error:" and exit with status 2; Ctrl-C exits
with 130; neither leaves an output file behind.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from runtime import distributed
from runtime.clips.request import Request, run_within_memory
from runtime.demo import DEMO_CLIP, DEMO_MASK
from runtime.errors import RemoverError, exit_code
from runtime.execution.host_memory import bound_host_heap
from runtime.options import (
    ATTENTION_CHOICES,
    BLEND_MODES,
    COMPILE_CHOICES,
    CROP_MODES,
    DECODER_CHOICES,
    DEFAULT_CONTEXT,
    DEFAULT_DILATION,
    DEFAULT_FEATHER,
    DEFAULT_MIN_CROP,
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW,
    DTYPE_CHOICES,
    ENGINE_RUNTIMES,
    KERNEL_CHOICES,
    MASK_CHANNELS,
    SAMPLER_CHOICES,
    VAE_DECODER,
    MaskOptions,
    ModelOptions,
    OutputOptions,
    PlanOptions,
    RunOptions,
)
from runtime.pipeline.composite import DEFAULT_RESIZE, RESIZE_MODES
from runtime.segment.cli import add_prompt_arguments, has_prompts, prompts_from_args, segment_options


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
    io.add_argument("--mask-channel", choices=MASK_CHANNELS, default="auto", help="default: auto")
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
        "--upscale", action="store_true", help="run a clip smaller than 480p at 480p (default: at its own size)"
    )
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
        "--resize",
        choices=RESIZE_MODES,
        default=DEFAULT_RESIZE,
        help="how a window is brought to the working size: as the released pipeline (bilinear, masks dilated "
        f"at full resolution) or antialiased (masks dilated at the working size) (default {DEFAULT_RESIZE})",
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
        choices=ENGINE_RUNTIMES,
        help="what runs the --engine bundle (default: TensorRT, else AOTInductor on a GPU; ONNX Runtime, else "
        "AOTInductor on the CPU; the first the bundle was built for)",
    )
    model.add_argument(
        "--decoder",
        choices=DECODER_CHOICES,
        default=VAE_DECODER,
        help="what decodes the latents: the VAE (default) or a light TAEHV decoder, taew2_1 (normalized "
        "latents; also what training.distill_decoder writes) or lighttaew2_1 (raw latents); see docs/usage.md",
    )
    model.add_argument(
        "--decoder-weights",
        help="the light decoder's .safetensors file or a hub id (default: taew2_1 from OzzyGT/taew2_1, "
        "lighttaew2_1 from lightx2v/Autoencoders)",
    )
    model.add_argument("--steps", type=int, default=6, help="sampling steps (default 6)")
    model.add_argument("--sampler", choices=SAMPLER_CHOICES, default="unipc", help="default: unipc, as released")
    model.add_argument("--seed", type=int, default=42)
    model.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    model.add_argument("--dtype", choices=DTYPE_CHOICES, help="default: fp16 on GPU (see the README), fp32 on CPU")
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
        choices=COMPILE_CHOICES,
        default="off",
        help="compile the denoising step's model call (off by default: not yet measured faster)",
    )
    add_prompt_arguments(parser, for_removal=True)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The model the arguments name, checked."""
    return ModelOptions(
        weights=args.weights,
        vae=args.vae,
        engine=args.engine,
        engine_runtime=args.backend,
        device=args.device,
        dtype=args.dtype,
        kernels=args.kernels,
        attention=args.attention,
        compile=args.compile,
        sampler=args.sampler,
        decoder=args.decoder,
        decoder_weights=args.decoder_weights,
    )


def run_options(args: argparse.Namespace) -> RunOptions:
    """What the run does with the model, checked."""
    return RunOptions(steps=args.steps, seed=args.seed, paste_back=not args.no_paste_back, progress=not args.quiet)


def mask_options(args: argparse.Namespace) -> MaskOptions:
    return MaskOptions(threshold=args.mask_threshold, invert=args.invert_mask, channel=args.mask_channel)


def output_options(args: argparse.Namespace) -> OutputOptions:
    return OutputOptions(codec=args.codec, crf=args.crf, lossless=args.lossless, overwrite=args.overwrite)


def plan_options(args: argparse.Namespace) -> PlanOptions:
    """The plan the arguments ask for, checked."""
    return PlanOptions(
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
        upscale=args.upscale,
        resize=args.resize,
    )


def request_from(args: argparse.Namespace) -> Request:
    """The run the arguments ask for, every option checked (the demo's files without --video)."""
    demo, prompted = args.video is None, has_prompts(args)
    if demo and (args.mask is not None or prompted):
        raise RemoverError("--mask and the prompts need --video")
    if prompted and args.mask is not None:
        raise RemoverError("give --mask or prompts (--box, --point, --prompts), not both")
    if not demo and args.mask is None and not prompted:
        raise RemoverError("--video needs --mask, or prompts to segment it from (--box, --point, --prompts)")
    if args.save_mask and not prompted:
        raise RemoverError("--save-mask keeps the mask made from prompts: give --box, --point or --prompts")
    video = DEMO_CLIP if demo else Path(args.video)
    mask = DEMO_MASK if demo else Path(args.mask or "")
    return Request(
        video=video,
        mask=mask,
        out=Path(args.out) if args.out else Path(f"{video.stem}_removed.mp4"),
        model=model_options(args),
        run=run_options(args),
        plan=plan_options(args),
        masking=mask_options(args),
        output=output_options(args),
        dry_run=args.dry_run,
        preview=Path(args.preview) if args.preview else None,
        own_size=demo,
        prompts=tuple(prompts_from_args(args)) if prompted else (),
        segment=segment_options(args) if prompted else None,
        save_mask=Path(args.save_mask) if args.save_mask else None,
    )


def run(args: argparse.Namespace) -> str:
    """Do the whole job the arguments ask for in this process; return the summary line."""
    return run_within_memory(request_from(args))


def main(argv: list[str] | None = None) -> int:
    """The command line in this process: `argv` to options, the job, its exit status (2 and one line for
    bad input)."""
    args = parse_args(argv)
    warnings.showwarning = lambda message, *_: print(f"warning: {message}", file=sys.stderr)
    if distributed.world_size() > 1:  # torchrun: the group's code loads only now
        from runtime.distributed.launch import run_in_group

        return exit_code(lambda: run_in_group(request_from(args)))
    return exit_code(lambda: run(args))


def command() -> int:
    """`python -m runtime.run` and `minimax-remover`: this process's heap bounded (bound_host_heap, which
    a caller that imports `main` keeps out of its own process), then `main()`."""
    bound_host_heap()
    return main()


if __name__ == "__main__":
    sys.exit(command())
