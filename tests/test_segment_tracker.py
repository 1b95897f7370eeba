"""The propagation logic with a stand-in for SAM 2 whose masks are known: two squares moving with known
motion, prompted on different frames. Checks the order of the passes, the directions and frame
indices, that the memory bank holds only the last frames the model reads, the union and id outputs,
the mask's round trip through runtime.io.open_masks, and the finishing of masks (grow, shrink, holes)."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

import runtime.segment.files as segment_files
from runtime.errors import RemoverError
from runtime.io import open_clip, open_masks, read_clip, write_clip
from runtime.segment import Prompt, Segmenter, SegmentOptions, describe_segmentation, segment_file, tracker
from runtime.segment.__main__ import main
from runtime.segment.postprocess import finish_mask

FRAMES, SIZE = 12, 64
MEMORY = 3  # the stand-in reads the last 3 tracked frames


def square_a(frame: int) -> tuple[slice, slice]:
    """Object 1: a 10x10 square moving right 2 px a frame (red)."""
    return slice(10, 20), slice(4 + 2 * frame, 14 + 2 * frame)


def square_b(frame: int) -> tuple[slice, slice]:
    """Object 2: an 8x8 square moving down 3 px a frame (green), far from object 1."""
    return slice(4 + 3 * frame, 12 + 3 * frame), slice(50, 58)


def known_mask(square: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[square] = True
    return mask


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames = np.zeros((FRAMES, SIZE, SIZE, 3), np.uint8)
    for frame in range(FRAMES):
        frames[frame][square_a(frame)] = (250, 0, 0)
        frames[frame][square_b(frame)] = (0, 250, 0)
    path = tmp_path_factory.mktemp("tracker") / "clip"
    write_clip(path, frames, Fraction(25))  # PNGs: the pixels come back exactly
    return path


class StandIn:
    """A tracker whose masks follow from the frames: a prompt takes the bright pixels in its box or of
    the colour under its point; a tracked frame takes the bright blobs that touch the previous frame's
    mask (in the direction of travel), which must be in the memory bank. Every call is recorded."""

    image_size = SIZE
    memory_frames = MEMORY

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def features(self, image: np.ndarray) -> np.ndarray:
        self.calls.append(("features",))
        return image

    def conditioned(self, image: np.ndarray, frame: int, points: np.ndarray, labels: np.ndarray, count: int) -> dict:
        bright = image.max(axis=2) > 128
        if labels[0] == 2:  # a box: its corners
            (x0, y0), (x1, y1) = points[:2].round().astype(int)
            region = np.zeros_like(bright)
            region[y0:y1, x0:x1] = True
            mask = bright & region
        else:
            x, y = points[0].astype(int)
            mask = image[..., int(image[y, x].argmax())] > 128
        channel = int(image[mask][0].argmax())
        self.calls.append(("prompt", frame, channel + 1))
        return {"pred_masks": self._logits(mask), "mask": mask, "object": channel + 1}

    def tracked(self, image: np.ndarray, frame: int, bank: dict, count: int, reverse: bool) -> dict:
        (cond,) = {out["object"] for out in bank["cond_frame_outputs"].values()}
        remembered = sorted(bank["non_cond_frame_outputs"])
        self.calls.append(("track", frame, cond, reverse, remembered))
        previous = frame + 1 if reverse else frame - 1
        memory = bank["non_cond_frame_outputs"].get(previous) or bank["cond_frame_outputs"].get(previous)
        blobs, _ = ndimage.label(image.max(axis=2) > 128)
        touching = np.unique(blobs[ndimage.binary_dilation(memory["mask"], iterations=4) & (blobs > 0)])
        mask = np.isin(blobs, touching[touching > 0])
        return {"pred_masks": self._logits(mask), "mask": mask, "object": cond}

    @staticmethod
    def _logits(mask: np.ndarray) -> torch.Tensor:
        return torch.where(torch.from_numpy(mask), 10.0, -10.0)[None, None]


PROMPTS = [
    Prompt(4, 1, "box", (3 + 2 * 4, 9, 15 + 2 * 4, 21)),  # around object 1 on frame 4
    Prompt(7, 2, "point", (54, 4 + 3 * 7 + 4)),  # on object 2 on frame 7
]
EXACT = SegmentOptions(grow=0, fill_holes=False)


def test_passes_directions_memory_and_masks(clip: Path) -> None:
    stand_in = StandIn()
    masks = list(Segmenter(stand_in, EXACT).track(clip, PROMPTS, progress=False))

    assert len(masks) == FRAMES
    for frame, by_object in enumerate(masks):
        assert sorted(by_object) == [1, 2]
        assert np.array_equal(by_object[1], known_mask(square_a(frame))), f"object 1, frame {frame}"
        assert np.array_equal(by_object[2], known_mask(square_b(frame))), f"object 2, frame {frame}"

    prompts = [call[1:] for call in stand_in.calls if call[0] == "prompt"]
    assert prompts == [(4, 1), (7, 2)]  # both before any tracking
    tracks = [call[1:] for call in stand_in.calls if call[0] == "track"]
    backward = [(frame, obj) for frame, obj, reverse, _ in tracks if reverse]
    forward = [(frame, obj) for frame, obj, reverse, _ in tracks if not reverse]
    assert stand_in.calls.index(("prompt", 7, 2)) < stand_in.calls.index(
        next(c for c in stand_in.calls if c[0] == "track")
    )
    assert backward == [(f, o) for f in range(6, -1, -1) for o in (1, 2) if f < (4, 7)[o - 1]]
    assert forward == [(f, o) for f in range(5, FRAMES) for o in (1, 2) if f > (4, 7)[o - 1]]
    assert tracks.index(next(t for t in tracks if not t[2])) == len(backward)  # all backward first
    for frame, _, reverse, remembered in tracks:  # only the last MEMORY frames in the direction of travel
        window = range(frame + 1, frame + MEMORY + 1) if reverse else range(frame - MEMORY, frame)
        assert len(remembered) <= MEMORY and set(remembered) <= set(window), (frame, reverse, remembered)
    # image features once a frame and pass: 2 prompted frames, 7 backward, 7 forward (5 to 11)
    assert stand_in.calls.count(("features",)) == 2 + 7 + 7


def test_prompts_on_first_and_last_frames(clip: Path) -> None:
    prompts = [Prompt(0, 1, "point", (8, 15)), Prompt(FRAMES - 1, 2, "box", (49, 3 + 3 * 11, 59, 13 + 3 * 11))]
    stand_in = StandIn()
    masks = list(Segmenter(stand_in, EXACT).track(clip, prompts, progress=False))
    for frame, by_object in enumerate(masks):
        assert np.array_equal(by_object[1], known_mask(square_a(frame)))
        assert np.array_equal(by_object[2], known_mask(square_b(frame)))
    tracks = [call[1:4] for call in stand_in.calls if call[0] == "track"]
    assert tracks == [(f, 2, True) for f in range(10, -1, -1)] + [(f, 1, False) for f in range(1, FRAMES)]


def test_segment_file_union_ids_preview_round_trip(clip: Path, tmp_path: Path) -> None:
    segmenter = Segmenter(StandIn(), EXACT)
    mask_out, ids_out, preview = tmp_path / "mask.mp4", tmp_path / "ids", tmp_path / "preview.mp4"
    result = segment_file(
        clip,
        mask_out,
        PROMPTS,
        EXACT,
        segmenter=segmenter,
        ids_out=ids_out,
        preview=preview,
        progress=False,
        say=lambda line: None,
    )
    assert result.frames == FRAMES and result.objects == {1: FRAMES, 2: FRAMES}
    with open_clip(clip) as reader:
        read_back = list(open_masks(mask_out, reader.info))  # as runtime.run --mask reads it
    ids = read_clip(ids_out).frames[..., 0]
    for frame in range(FRAMES):
        a, b = known_mask(square_a(frame)), known_mask(square_b(frame))
        assert np.array_equal(read_back[frame], a | b), frame
        assert np.array_equal(ids[frame], a * 1 + b * 2), frame
    tinted = read_clip(preview).frames.astype(int)
    original = read_clip(clip).frames.astype(int)
    assert tinted.shape == original.shape
    union = np.stack([known_mask(square_a(f)) | known_mask(square_b(f)) for f in range(FRAMES)])
    away = ~ndimage.binary_dilation(union, iterations=3)  # lossy coding blurs a little around the edges
    # the tint is only on the masks: away from them the preview is the clip up to the encoder's noise (a few
    # pixels reach 11 levels from run to run, as frame threads split the encode differently)
    assert np.abs(tinted - original)[away].mean() < 1 and np.percentile(np.abs(tinted - original)[away], 99.9) <= 8
    assert np.abs(tinted - original)[union].mean() > 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids", "mask.mp4", "preview.mp4"]


def test_error_midway_leaves_nothing(clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the forward pass: no output, no partial file, no temporary spill files."""
    spills = tmp_path / "tmp"
    spills.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spills))
    out = tmp_path / "out"
    out.mkdir()

    class Failing(StandIn):
        def tracked(self, *args: Any, **kwargs: Any) -> dict:
            if len(self.calls) > 8:
                raise KeyboardInterrupt
            return super().tracked(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        segment_file(
            clip,
            out / "mask.mp4",
            PROMPTS,
            EXACT,
            segmenter=Segmenter(Failing(), EXACT),
            preview=out / "p",
            progress=False,
            say=lambda line: None,
        )
    assert list(out.iterdir()) == [] and list(spills.iterdir()) == []


def test_a_full_disk_while_spilling_is_one_line_and_leaves_nothing(
    clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m runtime.segment` when the frames it spills fill the disk: exit 2, one error line, no
    traceback, no output and no scratch left."""

    class Full(io.BufferedRandom):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path: object, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return Full(io.FileIO(path, "w+b")) if mode == "w+b" else open(path, mode, *args, **kwargs)

    monkeypatch.setattr(tracker, "open", full_open, raising=False)
    monkeypatch.setattr(segment_files, "load_segmenter", lambda options: Segmenter(StandIn(), EXACT))
    out = tmp_path / "out"
    out.mkdir()
    code = main(["--video", str(clip), "--out", str(out / "mask.mp4"), "--box", "11,9,23,21@4", "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1, error
    assert error[0].startswith("error: no space left on the device writing ")
    assert list(out.iterdir()) == []


def test_scratch_left_by_a_dead_process_is_removed_by_the_next_run(clip: Path, tmp_path: Path) -> None:
    """SIGKILL leaves a run's `.segment-<pid>-*` scratch; the next run beside it removes it, never a
    live process's."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".segment-{dead_pid}-abcd1234"
    stale.mkdir()
    (stale / "frames").write_bytes(b"3 MB a frame")
    live = tmp_path / f".segment-{os.getppid()}-efgh5678"
    live.mkdir()
    segment_file(
        clip, tmp_path / "mask.mp4", PROMPTS, EXACT, segmenter=Segmenter(StandIn(), EXACT), progress=False,
        say=lambda line: None,
    )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "mask.mp4"])


def test_existing_output_is_kept(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.mp4"
    out.write_bytes(b"mine")
    with pytest.raises(RemoverError, match="--overwrite"):
        segment_file(clip, out, PROMPTS, EXACT, segmenter=Segmenter(StandIn(), EXACT), progress=False)
    assert out.read_bytes() == b"mine"


def test_two_outputs_that_are_one_file_are_refused_whatever_the_spelling(clip: Path, tmp_path: Path) -> None:
    """The mask and the preview hard links of one existing file: with --overwrite the second would replace
    the first (resolving the names does not see it; the shared check compares files)."""
    out = tmp_path / "mask.mkv"
    out.write_bytes(b"mine")
    os.link(out, tmp_path / "preview.mkv")
    with pytest.raises(RemoverError, match="are the same file"):
        segment_file(
            clip, out, PROMPTS, EXACT, segmenter=Segmenter(StandIn(), EXACT), preview=tmp_path / "preview.mkv",
            overwrite=True, progress=False,
        )  # fmt: skip
    assert out.read_bytes() == b"mine"


def test_frame_masks_one_frame(clip: Path) -> None:
    frame = read_clip(clip).frames[7]
    prompts = [Prompt(7, 1, "point", (20 + 2 * 7, 12)), Prompt(7, 2, "box", (49, 24, 59, 34))]
    stand_in = StandIn()
    segmenter = Segmenter(stand_in, EXACT)
    masks = segmenter.frame_masks(frame, prompts)
    assert np.array_equal(masks[1], known_mask(square_a(7)))
    assert np.array_equal(masks[2], known_mask(square_b(7)))
    assert np.array_equal(segmenter.frame_masks(frame.copy(), prompts[1:])[2], masks[2])  # another click
    assert stand_in.calls.count(("features",)) == 1  # the same frame's features, kept
    segmenter.frame_masks(read_clip(clip).frames[8], prompts[:1])
    assert stand_in.calls.count(("features",)) == 2


def test_finish_mask_grow_shrink_holes() -> None:
    dot = np.zeros((21, 21), bool)
    dot[10, 10] = True
    y, x = np.mgrid[:21, :21]
    assert np.array_equal(finish_mask(dot, 3, fill_holes=False), (y - 10) ** 2 + (x - 10) ** 2 <= 9)
    square = np.zeros((20, 20), bool)
    square[5:15, 5:15] = True
    assert np.array_equal(finish_mask(square, -2, fill_holes=False), np.pad(np.ones((6, 6), bool), 7))
    edge = np.zeros((10, 10), bool)
    edge[:, :4] = True  # touching the frame's edge: shrinking does not eat from the edge
    assert finish_mask(edge, -1, fill_holes=False)[:, :3].all()
    ring = square.copy()
    ring[8:12, 8:12] = False
    assert np.array_equal(finish_mask(ring, 0, fill_holes=True), square)
    assert np.array_equal(finish_mask(ring, 0, fill_holes=False), ring)


def test_describe_segmentation(clip: Path) -> None:
    with open_clip(clip) as reader:
        lines = describe_segmentation(PROMPTS, SegmentOptions(image_size=512, grow=-2), reader.info)
    assert lines == [
        "segment: SAM 2 (configs/sam2.1/sam2.1_hiera_s.yaml, the default facebook/sam2.1-hiera-small) at 512 px, "
        "on the best device",
        "  object 1: box 11,9,23,21 on frame 4; tracked forward over 4-11, backward over 3-0",
        "  object 2: point 54,29 on frame 7; tracked forward over 7-11, backward over 6-0",
        "  masks shrunk 2 px, holes filled",
        "  8 frame(s) up to the last prompt go to disk beside the output: 6 MB at 512 px",
    ]
