"""The app's one door to `runtime.segment` (SAM 2.1): masks of one frame for the instant preview
(in the server, one model loaded once, one call at a time), and propagation over the whole clip as a
device job (`python -m runtime.app.segmentation`, a child process like every job).

Clicks are kept as `Click`s in the clip's display pixels; they become `runtime.segment.Prompt`s here.
Without the segmentation extra the app still runs: masks are then uploaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.errors import RemoverError, exit_code
from runtime.io import open_clip

KINDS = ("point", "negative", "box")


@dataclass(frozen=True)
class Click:
    """One prompt: a positive or negative point (x, y) or a box (x0, y0, x1, y1) on `frame`, display pixels."""

    frame: int
    object_id: int
    kind: str
    coords: tuple[float, ...]


@dataclass(frozen=True)
class SegmentSettings:
    """What the server was started with: a SAM 2.1 checkpoint (path or hub id; None: the default),
    its model config, the image size and the device (None: cuda if available)."""

    checkpoint: str | None = None
    model_config: str | None = None
    image_size: int | None = None
    device: str | None = None

    def argv(self) -> list[str]:
        flags = {"--checkpoint": self.checkpoint, "--model-config": self.model_config, "--device": self.device}
        if self.image_size is not None:
            flags["--image-size"] = str(self.image_size)
        return [item for flag, value in flags.items() if value is not None for item in (flag, value)]


def unavailable() -> str | None:
    """Why clicks cannot be segmented here (None when they can)."""
    try:
        import runtime.segment  # noqa: F401
    except ImportError as exc:
        return f"segmentation is not available in this install ({exc}); upload a mask instead"
    return None


def _options(settings: SegmentSettings):  # -> runtime.segment.SegmentOptions
    from runtime.segment import SegmentOptions

    given = {key: value for key, value in asdict(settings).items() if value is not None}
    return SegmentOptions(**given)


def _prompts(clicks: list[Click], scale: tuple[float, float] = (1.0, 1.0)) -> list:
    """The clicks as runtime.segment Prompts, coordinates times (x scale, y scale)."""
    from runtime.segment import Prompt

    sx, sy = scale
    prompts = []
    for click in clicks:
        factors = (sx, sy) * (len(click.coords) // 2)
        coords = tuple(value * factor for value, factor in zip(click.coords, factors, strict=True))
        prompts.append(Prompt(click.frame, click.object_id, click.kind, coords))
    return prompts


class FrameSegmenter:
    """The model for instant previews, loaded on first use, shared by every session (one call at a time)."""

    def __init__(self, settings: SegmentSettings) -> None:
        self.settings = settings
        self._segmenter = None
        self._lock = threading.Lock()

    def masks(self, frame: np.ndarray, clicks: list[Click], scale: tuple[float, float]) -> dict[int, np.ndarray]:
        """Each object's mask on `frame` (its size) from the clicks on it; `scale` maps display pixels to
        `frame`'s pixels."""
        reason = unavailable()
        if reason:
            raise RemoverError(reason)
        from runtime.segment import load_segmenter

        with self._lock:
            if self._segmenter is None:
                self._segmenter = load_segmenter(_options(self.settings))
            return self._segmenter.frame_masks(frame, _prompts(clicks, scale))


def write_clicks(clicks: list[Click], path: Path) -> Path:
    """The clicks as the JSON the propagation job reads."""
    path.write_text(json.dumps([asdict(click) for click in clicks]))
    return path


def read_clicks(path: Path) -> list[Click]:
    return [Click(c["frame"], c["object_id"], c["kind"], tuple(c["coords"])) for c in json.loads(path.read_text())]


def propagation_args(video: Path, clicks_file: Path, mask_out: Path, preview: Path, settings: SegmentSettings) -> list:
    """The arguments of `python -m runtime.app.segmentation` for one propagation job."""
    return ["--video", video, "--clicks", clicks_file, "--out", mask_out, "--preview", preview, *settings.argv()]


def propagate(args: argparse.Namespace) -> str:
    """The propagation job: every frame's mask (union of the objects) into `--out`, the clip with the
    masks tinted into `--preview`."""
    from runtime.segment import check_prompts, segment_file

    settings = SegmentSettings(args.checkpoint, args.model_config, args.image_size, args.device)
    prompts = _prompts(read_clicks(Path(args.clicks)))
    check_prompts(prompts, open_clip(args.video).info)
    segment_file(
        args.video, args.out, prompts, _options(settings), preview=args.preview,
        say=lambda line: print(line, file=sys.stderr),
    )  # fmt: skip
    return f"wrote the mask {args.out}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.app.segmentation", description=propagate.__doc__)
    parser.add_argument("--video", required=True)
    parser.add_argument("--clicks", required=True, help="JSON list of clicks (runtime.app.segmentation.Click)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--preview", required=True)
    parser.add_argument("--checkpoint")
    parser.add_argument("--model-config")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--device")
    args = parser.parse_args(argv)
    return exit_code(lambda: propagate(args))


if __name__ == "__main__":
    sys.exit(main())
