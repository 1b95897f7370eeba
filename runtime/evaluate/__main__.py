"""`python -m runtime.evaluate`: measure a removal (see docs/evaluate.md).

    python -m runtime.evaluate --result OUT --video IN --mask MASK [--truth CLEAN] [--json FILE]
        [--per-frame FILE.csv] [--plot FILE.png]
    python -m runtime.evaluate --manifest clips.csv [--json FILE]

Prints a table; bad input is one `error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from runtime.errors import RemoverError, RemoverWarning, exit_code
from runtime.evaluate.clip import PAPER_MODEL, load_clip
from runtime.evaluate.evaluation import Evaluation, evaluate_clip
from runtime.evaluate.lpips import load_lpips
from runtime.evaluate.manifest import ManifestClip, aggregate, describe_aggregate, evaluate_manifest, read_manifest
from runtime.evaluate.report import plot, write_csv, write_json
from runtime.io import check_outputs
from runtime.options import (
    BLEND_MODES,
    CROP_MODES,
    DEFAULT_CONTEXT,
    DEFAULT_DILATION,
    DEFAULT_MIN_CROP,
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW,
    MaskOptions,
    PlanOptions,
)
from runtime.pipeline.composite import DEFAULT_RESIZE, RESIZE_MODES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtime.evaluate", description=__doc__.splitlines()[0])
    clips = parser.add_argument_group("what to measure (one clip, or --manifest)")
    clips.add_argument("--result", type=Path, help="the removal's output (any clip runtime.run reads)")
    clips.add_argument("--video", type=Path, help="the input clip")
    clips.add_argument("--mask", type=Path, help="its mask (any mask runtime.run reads)")
    clips.add_argument("--truth", type=Path, help="the clip without the object, where known")
    clips.add_argument("--manifest", type=Path, help="a .csv or .jsonl of result, video, mask[, truth, name]")
    out = parser.add_argument_group("reports")
    out.add_argument("--json", type=Path, help="write the figures as JSON")
    out.add_argument("--per-frame", type=Path, help="write every frame's figures as CSV (one clip)")
    out.add_argument("--plot", type=Path, help="draw the per-frame figures as a PNG (one clip)")
    out.add_argument("--overwrite", action="store_true", help="replace existing report files")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    how = parser.add_argument_group("how the result was made: runtime.run's plan options (the regions, the seams)")
    how.add_argument("--dilate", type=int, default=DEFAULT_DILATION, help="mask dilation at 480p (the runtime's)")
    how.add_argument("--mask-threshold", type=int, help="as runtime.run")
    how.add_argument("--invert-mask", action="store_true", help="as runtime.run")
    how.add_argument("--mask-channel", choices=("auto", "luma", "alpha"), default="auto", help="as runtime.run")
    how.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="the run's --window")
    how.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="the run's --overlap")
    how.add_argument("--blend", choices=BLEND_MODES, default="continue", help="the run's --blend")
    how.add_argument("--crop", choices=CROP_MODES, default="auto", help="the run's --crop")
    how.add_argument("--context", type=float, default=DEFAULT_CONTEXT, help="the run's --context")
    how.add_argument("--min-crop", type=int, default=DEFAULT_MIN_CROP, help="the run's --min-crop")
    how.add_argument("--height", type=int, help="the run's working --height")
    how.add_argument("--width", type=int, help="the run's working --width")
    how.add_argument("--resize", choices=RESIZE_MODES, default=DEFAULT_RESIZE, help="the run's --resize")
    how.add_argument(
        "--no-paste-back",
        action="store_true",
        help="the result is the raw generation at the working size (runtime.run --no-paste-back): compare at its size",
    )
    how.add_argument("--lpips-backbone", type=Path, help="torchvision's AlexNet checkpoint (default: torch hub cache)")
    how.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    how.add_argument(
        "--tc-model",
        help=f"measure TC with this open_clip checkpoint: a folder or a cached hub id (the paper's: {PAPER_MODEL})",
    )
    return parser.parse_args(argv)


def _check_arguments(args: argparse.Namespace) -> None:
    single = [args.result, args.video, args.mask]
    if args.manifest is not None:
        if any(p is not None for p in (*single, args.truth)):
            raise RemoverError("give either --manifest or --result/--video/--mask, not both")
        if args.per_frame or args.plot:
            raise RemoverError("--per-frame and --plot are for one clip, not a manifest")
        clips = read_manifest(args.manifest)
        inputs = [args.manifest, *(p for c in clips for p in (c.result, c.video, c.mask, c.truth) if p is not None)]
    elif None in single:
        raise RemoverError("give --result, --video and --mask (or --manifest)")
    else:
        inputs = [p for p in (*single, args.truth) if p is not None]
    check_outputs([args.json, args.per_frame, args.plot], inputs, args.overwrite)


def _evaluator(args: argparse.Namespace, notes: list[str]):
    model = None
    if not args.no_lpips and (args.truth is not None or args.manifest is not None):  # LPIPS needs a truth
        model, skipped = load_lpips(args.lpips_backbone)
        notes += [skipped] if skipped else []
    masking = MaskOptions(args.mask_threshold, args.invert_mask, args.mask_channel)
    windows = PlanOptions(
        window=args.window, overlap=args.overlap, blend=args.blend, crop=args.crop, height=args.height,
        width=args.width, dilation=args.dilate, context=args.context, min_crop=args.min_crop, resize=args.resize,
    )  # fmt: skip
    tc_model = load_clip(args.tc_model) if args.tc_model else None

    def evaluate(clip: ManifestClip, per_frame: bool = False) -> Evaluation:
        uses_lpips = model is not None and clip.truth is not None
        figures = evaluate_clip(
            clip.result, clip.video, clip.mask, clip.truth, dilation=args.dilate, mask_options=masking,
            progress=not args.quiet, per_frame=per_frame, plan_options=windows, paste_back=not args.no_paste_back,
            lpips=model if uses_lpips else None, clip=tc_model,
        )  # fmt: skip
        if clip.truth is not None:
            figures.notes += notes
        return figures

    return evaluate


def run(args: argparse.Namespace) -> str:
    _check_arguments(args)
    notes: list[str] = []
    evaluate = _evaluator(args, notes)
    if args.manifest is not None:
        evaluations = evaluate_manifest(args.manifest, evaluate)
        document = aggregate(evaluations)
        for name, figures in evaluations.items():
            print(f"== {name}\n{figures.table()}\n")
        print("== " + "\n".join(describe_aggregate(document["aggregate"])))
    else:
        clip = ManifestClip(args.result.name, args.result, args.video, args.mask, args.truth)
        figures = evaluate(clip, per_frame=bool(args.per_frame or args.plot))
        document = figures.to_json()
        print(figures.table())
        if args.per_frame:
            write_csv(args.per_frame, figures.per_frame)
        if args.plot:
            plot(args.plot, figures.per_frame, f"{args.result.name} against {args.video.name}")
    for line in dict.fromkeys(notes):
        print(line, file=sys.stderr)
    if args.json:
        write_json(args.json, document)
    written = [str(p) for p in (args.json, args.per_frame, args.plot) if p]
    return f"wrote {', '.join(written)}" if written else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", RemoverWarning)
        warnings.showwarning = lambda message, *rest: print(f"warning: {message}", file=sys.stderr)
        return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
