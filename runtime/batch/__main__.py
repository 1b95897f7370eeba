"""`python -m runtime.batch MANIFEST`: see runtime/batch/cli.py."""

import sys

from runtime.batch.cli import main

sys.exit(main())
