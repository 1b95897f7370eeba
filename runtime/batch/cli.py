"""The batch's command line: `python -m runtime.batch MANIFEST [options]`.

Exit status: 0 when no clip failed, 1 when some did, 2 for a bad manifest or argument (before any
model loads), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from runtime.batch.dispatch import run_batch
from runtime.batch.manifest import CLIP_COLUMNS, MODEL_COLUMNS, flag, model_options, read_manifest
from runtime.batch.summary import is_summary
from runtime.errors import exit_code
from runtime.io import check_outputs


def parse_batch_args(argv: list[str] | None) -> argparse.Namespace:
    """The batch's own options, the model options and the per-clip defaults (as given: read and checked
    by the manifest's columns, runtime/batch/manifest.py)."""
    parser = argparse.ArgumentParser(
        prog="python -m runtime.batch",
        description="Remove objects from many clips: one model load per worker, failed clips retried, "
        "finished ones skipped when run again.",
        epilog="Exit status: 0 when no clip failed, 1 when any failed, 2 for a bad manifest or argument, 130 on "
        "Ctrl-C. Options mean what they mean for python -m runtime.run (see its --help).",
    )
    parser.add_argument("manifest", help="CSV with a header row, or JSON lines (.jsonl): video, mask, output, options")
    batch = parser.add_argument_group("batch")
    batch.add_argument("--workers", type=_count(1), help="worker processes or actors (default: one a GPU, else 1)")
    batch.add_argument("--address", help="run on Ray: auto, ray://HOST:PORT, or local (start Ray here)")
    batch.add_argument(
        "--retries", type=_count(0), default=1, help="more tries for a failed clip (default 1; bad input: none)"
    )
    batch.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    model = parser.add_argument_group("model, for every clip")
    clip = parser.add_argument_group("per-clip defaults (a row's column overrides them)")
    for name, column in (*MODEL_COLUMNS.items(), *CLIP_COLUMNS.items()):
        group = model if name in MODEL_COLUMNS else clip
        if column.switch:
            group.add_argument(flag(name), action="store_true", default=argparse.SUPPRESS, help=column.help)
        else:
            group.add_argument(flag(name), metavar=name.upper(), default=argparse.SUPPRESS, help=column.help)
    return parser.parse_args(argv)


def _count(least: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        if text.isdigit() and int(text) >= least:
            return int(text)
        raise argparse.ArgumentTypeError(f"expected a whole number of at least {least}, got {text!r}")

    return count


def main(argv: list[str] | None = None) -> int:
    """The command line: the summary table on stdout, everything else on stderr; the exit status."""
    args = parse_batch_args(argv)
    warnings.showwarning = lambda message, *_: print(f"warning: {message}", file=sys.stderr)
    given = vars(args)
    failed = False

    def work() -> str:
        nonlocal failed
        model = model_options({name: given[name] for name in MODEL_COLUMNS if name in given})
        clips = read_manifest(args.manifest, {name: given[name] for name in CLIP_COLUMNS if name in given})
        inputs = [args.manifest, *(path for clip in clips for path in (clip.video, clip.mask, clip.output))]
        resumed = bool(args.json) and is_summary(args.json)  # a rerun replaces the report it wrote
        check_outputs([args.json], inputs, overwrite=bool(given.get("overwrite")) or resumed)
        summary = run_batch(
            clips, model, workers=args.workers, address=args.address, retries=args.retries, progress=not args.quiet
        )
        if args.json:
            summary.write_json(args.json)
        failed = bool(summary.failed)
        return summary.table()

    code = exit_code(work)
    return 1 if code == 0 and failed else code
