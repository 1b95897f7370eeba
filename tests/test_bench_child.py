"""bench/child.py: a command in a fresh process, its exit status, output, seconds and its own peak resident set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.child import run_child

MB = 2**20
# touches N MB, then prints its own high-water mark (/proc's VmHWM, kB): the known answer
ALLOCATE = """
import re, sys
from pathlib import Path
block = bytearray(int(sys.argv[1]) * 2**20)
block[::4096] = b"x" * len(block[::4096])
print(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
"""


def test_the_peak_is_the_childs_own_not_the_parents():
    """A parent holding 400 MB more than the child ever does: a child spawned straight from it would
    report at least the parent's high-water mark; through the launcher it reports its own."""
    held = bytearray(400 * MB)
    held[::4096] = b"x" * len(held[::4096])  # every page touched: resident in this process
    result = run_child([sys.executable, "-c", ALLOCATE, "150"])
    assert result.returncode == 0, result.stderr
    own_mb = int(result.stdout) / 1024
    assert 150 < own_mb < 250  # the 150 MB block and an interpreter
    assert abs(result.peak_rss_mb - own_mb) < 5, (result.peak_rss_mb, own_mb)


def test_exit_status_output_and_seconds():
    code = "import os, sys, time\nprint('out'); print('err', file=sys.stderr)\nend = time.process_time() + 0.4\n"
    code += "while time.process_time() < end: pass\nsys.exit(3)"
    result = run_child([sys.executable, "-c", code])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.last_line() == "err"
    assert 0.4 <= result.cpu_seconds <= result.seconds + 0.1
    killed = run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
    assert killed.returncode == -signal.SIGTERM


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_timeout_ends_the_whole_tree(tmp_path):
    """The command starts a grandchild and hangs: after the timeout neither is left running."""
    pid_file = tmp_path / "pid"
    code = "import subprocess, sys, time\np = subprocess.Popen(['sleep', '60'])\n"
    code += "open(sys.argv[1], 'w').write(str(p.pid))\ntime.sleep(60)"
    start = time.perf_counter()
    with pytest.raises(subprocess.TimeoutExpired):
        run_child([sys.executable, "-c", code, pid_file], timeout=3)
    assert time.perf_counter() - start < 10
    grandchild = int(pid_file.read_text())
    deadline = time.perf_counter() + 5
    while _running(grandchild) and time.perf_counter() < deadline:
        time.sleep(0.1)
    if _running(grandchild):
        os.kill(grandchild, signal.SIGKILL)
        pytest.fail("the grandchild outlived the timeout")
