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
from pathlib import Path

import numpy as np
import torch

from runtime.attention import ATTENTION_CHOICES
from runtime.errors import RemoverError, exit_code
from runtime.pipeline import COMPILE_MODES, DTYPES, KERNEL_CHOICES, Remover
from runtime.video import check_output_path, read_clip, read_masks, write_clip

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_CLIP, DEMO_MASK, DEMO_WEIGHTS = DEMO_DIR / "clip.mp4", DEMO_DIR / "mask.mp4", DEMO_DIR / "weights"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.run",
        description="Remove the masked object from a video with MiniMax-Remover.",
    )
    parser.add_argument(
        "--video", help="video file (mp4, mov, webm, mkv) or folder of frames; default: the bundled demo"
    )
    parser.add_argument(
        "--mask", help="mask video, folder of mask images, or one image for all frames (white = remove)"
    )
    parser.add_argument(
        "--out", help="output .mp4/.mov/.mkv/.webm file, or a new folder for PNGs (default: <input>_removed.mp4)"
    )
    parser.add_argument(
        "--weights", help="checkpoint folder or single-file transformer repack; default: the bundled demo weights"
    )
    parser.add_argument("--vae", help="folder with the VAE (needed with a single-file repack)")
    parser.add_argument(
        "--engine",
        help="an engine bundle folder (python -m export.onnx) to run instead of the PyTorch modules; with "
        "--weights, the bundle must have been exported from those weights",
    )
    parser.add_argument(
        "--backend",
        choices=("onnxruntime", "tensorrt", "aoti"),
        default="onnxruntime",
        help="what runs the --engine bundle (default onnxruntime)",
    )
    parser.add_argument(
        "--height", type=int, help="working height, a multiple of 16 (default: 480p keeping the aspect ratio)"
    )
    parser.add_argument("--width", type=int, help="working width, a multiple of 16")
    parser.add_argument("--steps", type=int, default=6, help="sampling steps (default 6)")
    parser.add_argument("--sampler", choices=("unipc", "euler"), default="unipc", help="default: unipc, as released")
    parser.add_argument("--dilate", type=int, default=6, help="mask dilation in pixels of the mask (default 6)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument(
        "--kernels",
        choices=KERNEL_CHOICES,
        help="transformer's fused steps: Triton or the PyTorch references (default: $RUNTIME_KERNELS or auto)",
    )
    parser.add_argument(
        "--attention",
        choices=ATTENTION_CHOICES,
        help="attention backend (default: $RUNTIME_ATTENTION or auto: flash-attn, else fused SDPA, else math)",
    )
    parser.add_argument(
        "--compile",
        choices=sorted(COMPILE_MODES),
        default="off",
        help="compile the denoising step's model call (off by default: not yet measured faster)",
    )
    parser.add_argument(
        "--no-paste-back",
        action="store_true",
        help="write the raw generation at the working size instead of compositing into the input",
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


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def run(args: argparse.Namespace) -> str:
    """Do the whole job; return the summary line."""
    demo = args.video is None
    if demo and args.mask is not None:
        raise RemoverError("--mask needs --video")
    if not demo and args.mask is None:
        raise RemoverError("--video needs --mask")
    video, mask = (DEMO_CLIP, DEMO_MASK) if demo else (Path(args.video), Path(args.mask))
    out = Path(args.out) if args.out else Path(f"{video.stem}_removed.mp4")
    device = resolve_device(args.device)

    start = time.perf_counter()
    clip = read_clip(video)
    masks = read_masks(mask)
    check_output_path(out, clip.frames.shape[1:3])
    read_s = time.perf_counter() - start
    height, width = clip.frames.shape[1:3]
    print(f"{video}: {len(clip.frames)} frames, {width}x{height} at {float(clip.fps):g} fps", file=sys.stderr)

    start = time.perf_counter()
    if args.engine is not None:
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
        )
        source = f"weights {args.weights or DEMO_WEIGHTS}"
    load_s = time.perf_counter() - start
    print(f"{source} on {remover.device} in {str(remover.dtype).removeprefix('torch.')}", file=sys.stderr)

    if demo and args.height is None and args.width is None:
        args.height, args.width = height, width  # the demo clip is made at the demo model's size
    result = remover(
        clip.frames,
        masks,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        mask_dilation=args.dilate,
        seed=args.seed,
        paste_back=not args.no_paste_back,
        progress=not args.quiet,
    )
    start = time.perf_counter()
    write_clip(out, to_uint8(result), clip.fps)
    stages = {"read": read_s, "load": load_s, **remover.timings, "write": time.perf_counter() - start}
    detail = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items())
    return f"wrote {out} ({len(result)} frames) in {sum(stages.values()):.1f} s: {detail} ({remover.backends})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.showwarning = lambda message, *_: print(f"warning: {message}", file=sys.stderr)
    return exit_code(lambda: run_within_memory(args))


def run_within_memory(args: argparse.Namespace) -> str:
    """`run`, with running out of memory reported as what the user can change."""
    try:
        return run(args)
    except torch.OutOfMemoryError as exc:
        raise RemoverError("out of memory; try a smaller --height/--width or fewer frames") from exc


if __name__ == "__main__":
    sys.exit(main())
