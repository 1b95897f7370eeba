"""The segmenter's command-line options, shared by `python -m runtime.segment` and `runtime.run` (which
segments from prompts instead of reading --mask)."""

from __future__ import annotations

import argparse

from runtime.segment.options import DEFAULT_CHECKPOINT, DEFAULT_CONFIG, DEFAULT_GROW, SegmentOptions
from runtime.segment.prompts import Prompt, parse_prompts


def add_prompt_arguments(parser: argparse.ArgumentParser, for_removal: bool = False) -> None:
    """The prompt and model options, shared with runtime.run (which segments instead of reading --mask;
    `for_removal` adds its --save-mask)."""
    group = parser.add_argument_group("segmenting (SAM 2): prompts in display pixels, frame 0 unless @FRAME")
    if for_removal:
        group.add_argument(
            "--save-mask", metavar="FILE", help="keep the mask made from the prompts (a video or folder)"
        )
    group.add_argument(
        "--box", action="append", default=[], metavar="X0,Y0,X1,Y1[@FRAME][#OBJECT]", help="a box around an object"
    )
    group.add_argument(
        "--point", action="append", default=[], metavar="X,Y[@FRAME][#OBJECT]", help="a click on an object (#1 default)"
    )
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


def prompts_from_args(args: argparse.Namespace) -> list[Prompt]:
    """The prompts of --box, --point, --negative and --prompts (one RemoverError line when malformed)."""
    return parse_prompts(args.box, args.point, args.negative, args.prompts)
