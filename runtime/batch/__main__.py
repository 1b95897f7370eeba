"""`python -m runtime.batch MANIFEST`: see runtime/batch/cli.py."""

import sys

from runtime.batch.cli import main
from runtime.execution.host_memory import bound_host_heap

bound_host_heap()  # the process's allocator: the command's, not a caller's that imports main
sys.exit(main())
