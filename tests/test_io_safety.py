"""Never lose a file (issue 20): an output is never an input whatever its spelling, a full disk and
SIGTERM/SIGKILL leave nothing behind (or nothing a later run does not clean), two runs on one
output never both write it, and an unwritable output fails before any frame."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from media import encode_video, patch_frames
from PIL import Image

from runtime import RemoverError
from runtime.errors import TERMINATED
from runtime.io import check_output, claim_output, open_clip, open_writer, same_file, write_clip
from runtime.io import writer as writer_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return encode_video(tmp_path / "clip.mp4", patch_frames(4, 32, 32))


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def child(code: str, *args: object) -> subprocess.Popen:
    """A Python process running `code` from the repository root (this tree's `runtime`), stdout piped."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


# --- the output is never an input ---------------------------------------------------------------


def test_same_file_sees_through_spellings(tmp_path, clip):
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.mp4").symlink_to(clip)
    os.link(clip, tmp_path / "hard.mp4")
    for spelling in ("link.mp4", "hard.mp4", "sub/../clip.mp4", "./clip.mp4"):
        assert same_file(tmp_path / spelling, clip), spelling
    assert not same_file(tmp_path / "missing.mp4", clip)
    assert not same_file(tmp_path / "missing.mp4", tmp_path / "missing.mp4")  # nothing to lose


@pytest.mark.parametrize("spelling", ["clip.mp4", "link.mp4", "hard.mp4", "sub/../clip.mp4", "linked/clip.mp4"])
def test_overwrite_never_replaces_the_video(tmp_path, clip, spelling):
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.mp4").symlink_to(clip)
    (tmp_path / "linked").symlink_to(tmp_path)
    os.link(clip, tmp_path / "hard.mp4")
    info = open_clip(clip).info
    before = clip.read_bytes()
    for check in (check_output, open_writer):
        with pytest.raises(RemoverError, match="is the input"):
            check(tmp_path / spelling, info, overwrite=True)
    assert clip.read_bytes() == before


def test_overwrite_never_replaces_the_mask_or_writes_into_an_input_folder(tmp_path, clip):
    info = open_clip(clip).info
    mask = encode_video(tmp_path / "mask.mp4", patch_frames(4, 32, 32))
    with pytest.raises(RemoverError, match="is the input"):
        check_output(tmp_path / "." / "mask.mp4", info, overwrite=True, inputs=[mask])
    frames = tmp_path / "frames"
    write_clip(frames, patch_frames(3, 16, 16), fps=25)
    folder_info = open_clip(frames).info
    for out, how in [(frames, "is the input"), (frames / "00001.png", "is inside"), (frames / "new.mp4", "is inside")]:
        with pytest.raises(RemoverError, match=how):
            check_output(out, folder_info, overwrite=True)
    masks = tmp_path / "masks"
    write_clip(masks, patch_frames(4, 32, 32), fps=25)
    with pytest.raises(RemoverError, match="is inside"):
        check_output(masks / "out.mp4", info, inputs=[masks])
    single = open_clip(frames / "00000.png").info
    with pytest.raises(RemoverError, match="holds the input"):  # a folder output holding the input image
        check_output(frames, single, overwrite=True)
    assert names(frames) == ["00000.png", "00001.png", "00002.png"]


# --- a full disk ------------------------------------------------------------------------------------


class FullDisk:
    """An output container whose writes fail with ENOSPC after `room` muxes, and whose close fails
    again (as FFmpeg's does when it flushes to a full disk): the partial file is on disk by then."""

    def __init__(self, container, room: int) -> None:
        self._container, self._room = container, room

    def mux(self, packets) -> None:
        if self._room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= 1
        self._container.mux(packets)

    def close(self) -> None:
        self._container.close()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str):
        return getattr(self._container, name)


@pytest.mark.parametrize("room", [2, 100])  # full mid-stream, or only when the end is flushed
def test_a_full_disk_is_one_line_and_leaves_no_partial_video(tmp_path, clip, monkeypatch, room):
    real_open = writer_module.av.open

    def open_full(path, mode="r", **options):
        container = real_open(path, mode, **options)
        return FullDisk(container, room) if mode == "w" else container

    monkeypatch.setattr(writer_module.av, "open", open_full)
    frames = patch_frames(6, 32, 32)
    with pytest.raises(RemoverError, match="no space left on the device writing .*out.mp4"):
        with open_writer(tmp_path / "out.mp4", open_clip(clip).info) as writer:
            for frame in frames:
                writer.write(frame)
    assert names(tmp_path) == ["clip.mp4"]


def test_a_full_disk_leaves_no_partial_png_folder(tmp_path, clip, monkeypatch):
    real_save = Image.Image.save
    saved = []

    def save(image, path, *args, **kwargs):
        if len(saved) == 2:
            Path(path).write_bytes(b"\x89PNG half")  # what a full disk leaves: a cut file
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(path)
        return real_save(image, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(RemoverError, match="no space left on the device writing .*frames"):
        with open_writer(tmp_path / "frames", open_clip(clip).info) as writer:
            for frame in patch_frames(4, 32, 32):
                writer.write(frame)
    assert names(tmp_path) == ["clip.mp4"]


# --- the output is checked before any work ----------------------------------------------------------


def test_an_output_that_cannot_be_created_fails_before_any_work(tmp_path, clip):
    info = open_clip(clip).info
    for out in (Path("/proc/out.mp4"), Path("/proc/frames"), Path("/proc/self/out.mkv")):
        with pytest.raises(RemoverError, match=f"cannot write {out}"):
            check_output(out, info)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: only /proc shows it there
            pytest.skip("running as root")
        with pytest.raises(RemoverError, match="cannot write"):
            check_output(locked / "out.mp4", info)
    finally:
        locked.chmod(0o700)
    assert names(tmp_path) == ["clip.mp4", "locked"]


# --- SIGTERM and SIGKILL mid-write ------------------------------------------------------------------

SLOW_WRITER = """
    import sys, time
    from runtime.errors import exit_code
    from runtime.io import open_clip, open_writer

    def work():
        info = open_clip(sys.argv[1]).info
        frame = next(iter(open_clip(sys.argv[1]))).image
        with open_writer(sys.argv[2], info) as writer:
            while not any(".partial-" in path.name for path in writer.target.parent.iterdir()):
                writer.write(frame)  # the encoder holds the first frames back: write until the file is there
            print("writing", flush=True)
            time.sleep(60)

    sys.exit(exit_code(work))
"""


@pytest.mark.parametrize("out", ["out.mp4", "frames"])
def test_sigterm_mid_write_exits_143_and_leaves_nothing(tmp_path, clip, out):
    process = child(SLOW_WRITER, clip, tmp_path / out)
    assert process.stdout.readline() == "writing\n"
    assert any(".partial-" in name for name in names(tmp_path))
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == TERMINATED
    assert names(tmp_path) == ["clip.mp4"]


def test_sigkill_leaves_a_partial_that_the_next_run_removes_but_never_a_live_ones(tmp_path, clip):
    process = child(SLOW_WRITER, clip, tmp_path / "out.mp4")
    assert process.stdout.readline() == "writing\n"
    process.kill()
    process.wait(timeout=30)
    dead = f".out.partial-{process.pid}.mp4"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = f".out.partial-{sleeper.pid}.mp4"
        (tmp_path / live).write_bytes(b"being written")
        (tmp_path / f".other.partial-{process.pid}.mp4").write_bytes(b"another output's")
        assert dead in names(tmp_path)
        check_output(tmp_path / "out.mp4", open_clip(clip).info)
        assert names(tmp_path) == sorted([live, f".other.partial-{process.pid}.mp4", "clip.mp4"])
    finally:
        sleeper.kill()
        sleeper.wait()


# --- two runs on one output -------------------------------------------------------------------------

HOLD_CLAIM = """
    import sys
    from runtime.io import claim_output
    with claim_output(sys.argv[1]):
        print("claimed", flush=True)
        sys.stdin.read()
"""


def test_a_claim_excludes_another_process_until_it_ends_or_dies(tmp_path):
    out = tmp_path / "out.mp4"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD_CLAIM), str(out)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "claimed\n"
    with pytest.raises(RemoverError, match=f"being written by process {holder.pid}"):
        with claim_output(out):
            pass
    info = open_clip(encode_video(tmp_path.parent / f"{tmp_path.name}-clip.mp4", patch_frames(2, 16, 16))).info
    with pytest.raises(RemoverError, match=f"being written by process {holder.pid}"):
        open_writer(out, info)  # a writer claims its output too
    holder.kill()  # SIGKILL: its lock stays, naming a dead pid
    holder.wait()
    assert names(tmp_path) == [".out.mp4.lock"]
    with claim_output(out):
        assert (tmp_path / ".out.mp4.lock").read_text().split()[:2] == [str(os.getpid()), socket.gethostname()]
        with claim_output(out):  # a claim is the process's: claiming again inside it is a no-op
            pass
        assert names(tmp_path) == [".out.mp4.lock"]
    assert names(tmp_path) == []


def test_a_full_disk_never_leaves_a_lock_that_blocks_the_next_run(tmp_path, clip, monkeypatch):
    """With 0 bytes free a file can be created but nothing written in it: the claim is one line, no lock
    stays, and once there is room the next run writes."""
    real_write = os.write

    def full(descriptor, data):
        if ".lock" in os.readlink(f"/proc/self/fd/{descriptor}"):
            raise OSError(errno.ENOSPC, "No space left on device")  # the lock's name is made, its bytes are not
        return real_write(descriptor, data)

    monkeypatch.setattr(os, "write", full)
    info = open_clip(clip).info
    with pytest.raises(RemoverError, match="no space left on the device writing .*out.mp4"):
        open_writer(tmp_path / "out.mp4", info)
    assert names(tmp_path) == ["clip.mp4"]
    monkeypatch.setattr(os, "write", real_write)  # space freed
    with open_writer(tmp_path / "out.mp4", info) as writer:
        writer.write(patch_frames(1, 32, 32)[0])
    assert names(tmp_path) == ["clip.mp4", "out.mp4"]


@pytest.mark.parametrize(
    "record",
    ["", "garbage\n", "{live} {host} 1\n"],  # what an older version left; unreadable; a reused pid
    ids=["empty", "no owner", "reused pid"],
)
def test_a_lock_without_a_live_owner_is_reclaimed(tmp_path, clip, record):
    lock = tmp_path / ".out.mp4.lock"
    lock.write_text(record.format(live=os.getppid(), host=socket.gethostname()))
    check_output(tmp_path / "out.mp4", open_clip(clip).info)  # a run's first check reclaims it
    assert names(tmp_path) == ["clip.mp4"]
    lock.write_text(record.format(live=os.getppid(), host=socket.gethostname()))
    with claim_output(tmp_path / "out.mp4"):  # and so does a claim
        assert lock.read_text().split()[0] == str(os.getpid())
    assert names(tmp_path) == ["clip.mp4"]


def test_a_lock_of_another_host_is_respected_and_named(tmp_path):
    lock = tmp_path / ".out.mp4.lock"
    lock.write_text(f"{os.getpid()} another-host.example 12345\n")
    with pytest.raises(RemoverError, match="being written by process .* on another-host.example") as error:
        with claim_output(tmp_path / "out.mp4"):
            pass
    assert "remove" not in str(error.value)
    assert names(tmp_path) == [".out.mp4.lock"]


RACE = """
    import sys, time
    from runtime.errors import exit_code
    from runtime.io import claim_output, open_clip, open_writer

    def work():
        start = float(sys.argv[3])
        time.sleep(max(0.0, start - time.time()))
        with claim_output(sys.argv[2]):
            info = open_clip(sys.argv[1]).info
            with open_writer(sys.argv[2], info) as writer:
                for frame in open_clip(sys.argv[1]):
                    writer.write(frame.image, frame.pts)
                time.sleep(0.5)
        return "done"

    sys.exit(exit_code(work))
"""


@pytest.mark.slow  # two fresh processes that start together after their imports: about 5 s
def test_two_runs_at_once_write_the_output_once(tmp_path, clip):
    start = time.time() + 2.0  # both start together, after their imports
    runs = [child(RACE, clip, tmp_path / "out.mp4", start) for _ in range(2)]
    codes = sorted(run.wait(timeout=60) for run in runs)
    assert codes == [0, 2]
    assert names(tmp_path) == ["clip.mp4", "out.mp4"]


def test_an_output_that_appears_while_writing_is_never_replaced(tmp_path, clip):
    info = open_clip(clip).info
    for out in (tmp_path / "out.mp4", tmp_path / "frames"):
        with pytest.raises(RemoverError, match="appeared while this run wrote it"):
            with open_writer(out, info) as writer:
                writer.write(patch_frames(1, 32, 32)[0])
                if out.suffix:
                    out.write_bytes(b"another run's result")
                else:
                    out.mkdir()
                    Image.fromarray(patch_frames(1, 8, 8)[0]).save(out / "00000.png")
        if out.suffix:
            assert out.read_bytes() == b"another run's result"
        else:
            assert names(out) == ["00000.png"] and np.asarray(Image.open(out / "00000.png")).shape == (8, 8, 3)
    assert names(tmp_path) == ["clip.mp4", "frames", "out.mp4"]


@pytest.mark.parametrize("system", ["renameat2", "hard links only", "neither"])
def test_publishing_never_replaces_an_existing_output_on_any_filesystem(tmp_path, monkeypatch, system):
    from runtime.io import outputs

    if system != "renameat2":
        monkeypatch.setattr(outputs, "_renameat2", None)
    if system == "neither":

        def no_links(source, target):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(outputs.os, "link", no_links)
    (tmp_path / ".out.partial-1.mp4").write_bytes(b"new")
    (tmp_path / "out.mp4").write_bytes(b"theirs")
    with pytest.raises(RemoverError, match="appeared while this run wrote it"):
        outputs.publish(tmp_path / ".out.partial-1.mp4", tmp_path / "out.mp4", overwrite=False)
    assert (tmp_path / "out.mp4").read_bytes() == b"theirs"
    (tmp_path / "out.mp4").unlink()
    outputs.publish(tmp_path / ".out.partial-1.mp4", tmp_path / "out.mp4", overwrite=False)
    assert names(tmp_path) == ["out.mp4"] and (tmp_path / "out.mp4").read_bytes() == b"new"


# --- a file written whole at once ---------------------------------------------------------------


def test_write_atomically_replaces_the_file_whole_or_leaves_it_as_it_was(tmp_path):
    from runtime.io import write_atomically

    target = tmp_path / "report.json"
    seen = []

    def write(to: Path) -> None:
        seen.append(to.name)
        assert not target.exists()  # the new content goes elsewhere until it is whole
        to.write_text("new")

    write_atomically(target, write)
    assert target.read_text() == "new" and names(tmp_path) == ["report.json"]
    assert seen == [f".report.partial-{os.getpid()}.json"]  # beside the target, named for this process

    def fail(to: Path) -> None:
        to.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, fail)
    assert target.read_text() == "new" and names(tmp_path) == ["report.json"]  # the temporary is gone
