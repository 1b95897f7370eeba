"""Where the app keeps files: one root folder for the whole server, one temporary folder per browser
session inside it, and the checks an upload must pass before anything else reads it.

Every file the app reads or serves is inside the root (`AppRoot.check`); a session's folder is
removed when its page closes (`AppRoot.close`) and the root when the server stops. A session keeps
on disk: the clip (or a copy of the demo), its mask, a JPEG per frame at preview size for scrubbing,
the masks at preview size as packed bits, and each job's output folder. In memory: one frame at a
time, whatever the clip's length.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.errors import RemoverError
from runtime.io import IMAGE_SUFFIXES, ClipInfo, open_clip, open_masks

PREVIEW_SIDE = 640  # longer side of the frames the page shows, larger or smaller (clicks map back to the clip's pixels)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
MASK_SUFFIXES = (*VIDEO_SUFFIXES, *sorted(IMAGE_SUFFIXES), ".json")


@dataclass(frozen=True)
class Limits:
    """What one upload may be: bytes per file, frames, seconds (checked before any other work)."""

    max_bytes: int = 500 * 2**20
    max_frames: int = 1800
    max_seconds: float = 120.0

    def check(self, info: ClipInfo, name: str) -> None:
        """A RemoverError naming the limit `info` passes."""
        if info.frame_count > self.max_frames:
            raise RemoverError(f"{name} has {info.frame_count} frames; this server takes at most {self.max_frames}")
        seconds = float(info.frame_count / info.fps) if info.fps else 0.0
        if seconds > self.max_seconds:
            raise RemoverError(f"{name} lasts {seconds:.0f} s; this server takes at most {self.max_seconds:.0f} s")

    def check_size(self, path: Path) -> None:
        size = path.stat().st_size
        if size > self.max_bytes:
            raise RemoverError(
                f"{path.name} is {size / 2**20:.0f} MB; this server takes files of at most "
                f"{self.max_bytes / 2**20:.0f} MB"
            )


def preview_size(info: ClipInfo) -> tuple[int, int]:
    """(height, width) of the preview frames: the clip's, scaled to PREVIEW_SIDE on the longer side."""
    scale = PREVIEW_SIDE / max(info.width, info.height)
    return max(1, round(info.height * scale)), max(1, round(info.width * scale))


def read_info(path: Path, limits: Limits) -> ClipInfo:
    """The clip at `path`, checked against `limits`; an unreadable file is a RemoverError (one line)."""
    limits.check_size(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bit depth and HDR notes: the run says them again
        try:
            info = open_clip(path).info
        except RemoverError:
            raise
        except Exception as exc:  # a decoder's own exception for a file that is not a video
            raise RemoverError(f"{path.name} is not a video or image this app can read ({exc})") from None
    if info.frame_count < 1:
        raise RemoverError(f"{path.name} holds no frames")
    limits.check(info, path.name)
    return info


@dataclass
class Workspace:
    """One session's folder and what it holds. Frames and masks are stored at preview size; prompts
    and plan boxes are in the clip's display pixels."""

    folder: Path
    info: ClipInfo | None = None
    clip: Path | None = None
    mask: Path | None = None
    demo: bool = False
    jobs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def frames_dir(self) -> Path:
        return self.folder / "frames"

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the preview frames."""
        if self.info is None:
            raise RemoverError("open a clip first")
        return preview_size(self.info)

    def require_clip(self) -> ClipInfo:
        if self.info is None or self.clip is None:
            raise RemoverError("open a clip first (upload one, or the demo)")
        return self.info

    def require_mask(self) -> Path:
        self.require_clip()
        if self.mask is None:
            raise RemoverError("no mask yet: click the object and press Segment, or upload a mask")
        return self.mask

    def next_name(self, kind: str) -> str:
        """A name no file of this session has had: `kind`-N."""
        self.jobs += 1
        return f"{kind}-{self.jobs}"

    def new_job_dir(self, kind: str) -> Path:
        folder = self.folder / self.next_name(kind)
        folder.mkdir()
        return folder

    def set_clip(self, source: Path, info: ClipInfo, demo: bool = False) -> None:
        """Make `source` (a file inside the session folder) the clip: drop the old one's files and
        write its preview frames."""
        for old in (self.frames_dir, self.folder / "mask_bits.npy"):
            _remove(old)
        for old in (self.clip, self.mask):
            if old is not None and old != source:
                self.drop(old)
        self.info, self.clip, self.mask, self.demo = info, source, None, demo
        self.frames_dir.mkdir()
        height, width = self.size
        with open_clip(source) as reader:
            for frame in reader:
                image = Image.fromarray(frame.image).resize((width, height), Image.BILINEAR)
                image.save(self.frames_dir / f"{frame.index:06d}.jpg", quality=90)

    def drop(self, path: Path) -> None:
        """Remove a file of the session with the folder it was put in (`kind-N/`)."""
        _remove(self.folder / path.relative_to(self.folder).parts[0])

    def frame(self, index: int) -> np.ndarray:
        """Preview frame `index`, uint8 [h, w, 3]."""
        info = self.require_clip()
        index = min(max(index, 0), info.frame_count - 1)
        return np.asarray(Image.open(self.frames_dir / f"{index:06d}.jpg").convert("RGB"))

    def set_mask(self, source: Path) -> None:
        """Make `source` (inside the session folder) the mask: read it as runtime.run will (every
        frame, the same rules), store it at preview size. A mask the run would refuse is refused here."""
        info = self.require_clip()
        height, width = self.size
        bits = None
        try:
            for index, mask in enumerate(open_masks(source, info)):
                small = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
                packed = np.packbits(small.reshape(-1))
                if bits is None:
                    bits = np.lib.format.open_memmap(
                        self.folder / "mask_bits.npy", mode="w+", dtype=np.uint8, shape=(info.frame_count, packed.size)
                    )
                bits[index] = packed
        except RemoverError:
            raise
        except Exception as exc:
            raise RemoverError(f"{source.name} is not a mask this app can read ({exc})") from None
        if bits is None:
            raise RemoverError(f"{source.name} holds no mask frames")
        bits.flush()
        if self.mask is not None and self.mask != source:
            self.drop(self.mask)
        self.mask = source

    def mask_frame(self, index: int) -> np.ndarray | None:
        """The mask of frame `index` at preview size, bool [h, w]; None without a mask."""
        if self.mask is None:
            return None
        height, width = self.size
        bits = np.load(self.folder / "mask_bits.npy", mmap_mode="r")
        return np.unpackbits(bits[index])[: height * width].reshape(height, width).astype(bool)

    def to_display(self, x: float, y: float) -> tuple[float, float]:
        """A point on a preview frame in the clip's display pixels."""
        info = self.require_clip()
        height, width = self.size
        return x * info.width / width, y * info.height / height

    def fps(self) -> Fraction:
        return self.require_clip().fps


class AppRoot:
    """The server's folder: one workspace per session, created on first use, removed on close."""

    def __init__(self, folder: Path | None = None) -> None:
        try:
            self.folder = Path(folder or tempfile.mkdtemp(prefix="remover-app-")).resolve()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RemoverError(f"cannot make the app's folder {folder or 'in the temporary folder'}: {exc}") from None
        self._sessions: dict[str, Workspace] = {}
        self._lock = threading.Lock()

    @property
    def sessions_dir(self) -> Path:
        return self.folder / "sessions"

    def workspace(self, session: str) -> Workspace:
        with self._lock:
            if session not in self._sessions:
                self.sessions_dir.mkdir(exist_ok=True)
                folder = Path(tempfile.mkdtemp(prefix="session-", dir=self.sessions_dir))
                self._sessions[session] = Workspace(folder)
            return self._sessions[session]

    def close(self, session: str) -> None:
        """Forget a session and remove its folder."""
        with self._lock:
            workspace = self._sessions.pop(session, None)
        if workspace is not None:
            _remove(workspace.folder)

    def check(self, path: str | Path) -> Path:
        """`path` resolved, refused unless it is inside the root."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.folder):
            raise RemoverError("that file is outside this app's folders")
        return resolved

    def remove(self) -> None:
        _remove(self.folder)


def adopt(uploads: list[Path], workspace: Workspace, kind: str) -> Path:
    """Move uploaded files (checked to be in the root) into a new folder `kind`-N of the session, keeping
    their names (made safe); returns the one file, or the folder of several."""
    folder = workspace.folder / workspace.next_name(kind)
    folder.mkdir()
    for source in uploads:
        shutil.move(source, folder / safe_name(source.name))
    return folder / safe_name(uploads[0].name) if len(uploads) == 1 else folder


def safe_name(name: str) -> str:
    """A file name of letters, digits, '-', '_' and '.' only, not hidden."""
    return re.sub(r"[^\w.-]", "_", Path(name).name).lstrip(".") or "upload"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
