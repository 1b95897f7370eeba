"""python -m runtime.segment --video CLIP --box X0,Y0,X1,Y1[@FRAME] --out MASK: a mask from prompts."""

from __future__ import annotations

import argparse
import sys
import warnings

from runtime.errors import exit_code
from runtime.segment.cli import add_prompt_arguments, prompts_from_args, segment_options
from runtime.segment.files import segment_file


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.segment", description="Masks of the prompted objects over a whole clip (SAM 2)."
    )
    parser.add_argument("--video", required=True, help="a video file, a folder of frames or one image")
    parser.add_argument(
        "--out", required=True, help="the mask: a video (.mp4, .mkv, ...: lossless) or a folder for PNGs"
    )
    parser.add_argument("--ids", help="also write each pixel's object id as a grey level (0: none)")
    parser.add_argument("--preview", help="also write the clip with the masks tinted")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when there is one)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_prompt_arguments(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    prompts = prompts_from_args(args)
    result = segment_file(
        args.video,
        args.out,
        prompts,
        segment_options(args),
        ids_out=args.ids,
        preview=args.preview,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    return result.describe()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.showwarning = lambda message, *_: print(f"warning: {message}", file=sys.stderr)
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
