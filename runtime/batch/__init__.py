"""Many clips, unattended: `python -m runtime.batch MANIFEST`.

    manifest.py  the CSV / JSON-lines manifest, each row parsed into the option dataclasses and checked
    pools.py     where workers run (local spawned processes, or Ray actors), behind one interface
    worker.py    a worker: load the model once, run clips, say so in typed events
    dispatch.py  run_batch: skip finished clips, hand the rest to idle workers, retry, clean up
    summary.py   each clip's outcome, the table and the JSON summary
    cli.py       the command line

Each worker loads the model once and takes clips while there are any; a clip that fails, or whose
worker dies, is retried on a fresh worker up to `--retries` times. A clip whose output exists is
skipped, so a rerun after a failure or Ctrl-C does the rest.
"""

from runtime.batch.cli import main
from runtime.batch.dispatch import run_batch
from runtime.batch.manifest import Clip, read_manifest
from runtime.batch.summary import Outcome, Summary

__all__ = ["Clip", "Outcome", "Summary", "main", "read_manifest", "run_batch"]
