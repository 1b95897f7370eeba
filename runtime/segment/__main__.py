"""python -m runtime.segment --video CLIP --box X0,Y0,X1,Y1[@FRAME] --out MASK: a mask from prompts."""

from __future__ import annotations

import argparse
import sys
import warnings

from runtime.errors import exit_code
from runtime.segment.files import segment_file
from runtime.segment.options import DEFAULT_CHECKPOINT, DEFAULT_CONFIG, DEFAULT_GROW, SegmentOptions
from runtime.segment.prompts import parse_prompts


def add_prompt_arguments(parser: argparse.ArgumentParser, for_removal: bool = False) -> None:
    """The prompt and model options, shared with runtime.run (which segments instead of reading --mask;
    `for_removal` adds its --save-mask)."""
    group = parser.add_argument_group("segmenting (SAM 2): prompts in display pixels, frame 0 unless @FRAME")
    if for_removal:
        group.add_argument(
            "--save-mask", metavar="FILE", help="keep the mask made from the prompts (a video or folder)"
        )
    group.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1[@FRAME][#OBJECT]")
    group.add_argument("--point", action="append", default=[], metavar="X,Y[@FRAME][#OBJECT]")
    group.add_argument(
        "--negative",
        action="append",
        default=[],
        metavar="X,Y[@FRAME][#OBJECT]",
        help="a click on what is not the object",
    )
    group.add_argument("--prompts", metavar="FILE.json", help="several objects' prompts (docs/segment.md)")
    group.add_argument(
        "--checkpoint", help=f"a SAM 2 .pt ({{'model': state_dict}}) or hub id (default {DEFAULT_CHECKPOINT})"
    )
    group.add_argument(
        "--model-config", default=DEFAULT_CONFIG, help=f"SAM 2 config name or YAML (default {DEFAULT_CONFIG})"
    )
    group.add_argument("--image-size", type=int, help="the model's input size (a multiple of 32; default the config's)")
    group.add_argument(
        "--grow",
        type=int,
        default=DEFAULT_GROW,
        help=f"grow (shrink if negative) each mask by N pixels (default {DEFAULT_GROW})",
    )
    group.add_argument("--keep-holes", action="store_true", help="do not fill holes the masks enclose")


def has_prompts(args: argparse.Namespace) -> bool:
    return bool(args.box or args.point or args.negative or args.prompts)


def segment_options(args: argparse.Namespace) -> SegmentOptions:
    return SegmentOptions(
        checkpoint=args.checkpoint,
        model_config=args.model_config,
        image_size=args.image_size,
        device=args.device,
        grow=args.grow,
        fill_holes=not args.keep_holes,
    )


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
    prompts = parse_prompts(args.box, args.point, args.negative, args.prompts)
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
