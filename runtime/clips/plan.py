"""The plan of a streamed run: which frames each window holds and which pixels of them the model sees.

A clip longer than `window` frames runs in overlapping windows. In "continue" mode (the default)
each window after the first starts with `overlap` frames the previous window has already finished:
the model sees them as known content (their mask cleared) and generates only what follows, so the
fill carries on from what was written. In "crossfade" mode every window is generated on its own
from the input and the overlapping frames are blended with linear ramps.

Each window processes one box of the native-resolution frames: with cropping, the union of its mask
boxes (dilated) plus a context margin, at native resolution when that fits the working-size budget
and scaled down to fit when it does not; without it, the whole frame at the working size, as the
one-pass pipeline does. Every window of a clip uses the same box size, so the scale (and the
detail the model works at) never jumps between windows. The whole-frame working size is 480p
(`output_size`) but never above the clip's own resolution unless `upscale` (or a size) is given: the
model would work on invented pixels at many times the cost. Mask dilation and the paste-back feather
are given in pixels at 480p and scale up with larger frames: `pixel_unit` native pixels per 480p pixel;
each window holds them in the pixels its masks are dilated at (`runtime.pipeline.composite`).

Boxes are half-open native pixel ranges (top, left, bottom, right) in display orientation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.errors import RemoverError
from runtime.models.vae import RELEASED_VAE, VAEConfig
from runtime.options import PlanOptions
from runtime.pipeline.box import Box
from runtime.pipeline.composite import DEFAULT_RESIZE, Compositing, pixel_unit
from runtime.pipeline.coverage import nearly_full_note
from runtime.pipeline.preprocess import SIZE_MULTIPLE, output_size, padded_frame_count


@dataclass(frozen=True)
class Window:
    """Frames [start, stop) of the clip; the first `known` of them are finished content (continue mode).

    `box` is the native region the model sees, processed at `size` (height, width); None when no frame
    of the window has anything to remove (its frames pass through). `dilation` and `feather` are in
    the pixels the masks are dilated at: native ones with `resize` "reference", working ones with
    "antialias" (see `Compositing`).
    """

    index: int
    start: int
    stop: int
    known: int
    box: Box | None
    size: tuple[int, int]
    dilation: int
    feather: int
    resize: str = DEFAULT_RESIZE

    @property
    def compositing(self) -> Compositing:
        return Compositing(self.resize, self.dilation, self.feather)

    @property
    def frames(self) -> int:
        return self.stop - self.start

    def tokens(self, vae: VAEConfig = RELEASED_VAE, patch: tuple[int, int, int] = (1, 2, 2)) -> int:
        """Transformer tokens of this window (its frames padded to the VAE's k * temporal_factor + 1): the
        latents `vae` makes of it, in patches of `patch` (frames, height, width) latent elements."""
        frames, height, width = vae.latent_shape(padded_frame_count(self.frames, vae.temporal_factor), *self.size)
        return (frames // patch[0]) * (height // patch[1]) * (width // patch[2])


@dataclass(frozen=True)
class Plan:
    """Every window of a clip of `frame_count` frames of `frame_size` (height, width)."""

    frame_count: int
    frame_size: tuple[int, int]
    windows: tuple[Window, ...]
    options: PlanOptions
    cropped: bool
    not_upscaled: tuple[int, int] | None = None  # the 480p size a smaller clip was not upscaled to
    nearly_full: tuple[int, int] | None = None  # (frames, first frame) whose mask covers nearly all of it

    def nearly_full_note(self) -> str | None:
        """One line when masks cover (nearly) whole frames: a mask read wrongly looks like that."""
        if self.nearly_full is None:
            return None
        count, first = self.nearly_full
        return nearly_full_note(count, first, self.frame_count)

    @property
    def model_windows(self) -> tuple[Window, ...]:
        """The windows the model runs on (those with something to remove)."""
        return tuple(w for w in self.windows if w.box is not None)

    def describe(self) -> list[str]:
        """The plan as lines for a person: one summary, then one line per window."""
        height, width = self.frame_size
        o = self.options
        busy = self.model_windows
        if not self.windows:
            return ["plan: nothing to do"]
        mode = f"{o.blend}, overlap {o.overlap}" if len(self.windows) > 1 else "one pass"
        crop = "crop around the mask" if self.cropped else "whole frame"
        lines = [
            f"plan: {self.frame_count} frames of {width}x{height} in {len(self.windows)} window(s) ({mode}); "
            f"{crop}; {len(busy)} window(s) to generate, {len(self.windows) - len(busy)} without mask"
        ]
        if self.not_upscaled is not None:
            lines[0] += (
                f"; at the clip's own resolution, not upscaled to {self.not_upscaled[1]}x{self.not_upscaled[0]} "
                "(--upscale allows it)"
            )
        if self.nearly_full is not None:
            lines.append(f"  note: {self.nearly_full_note()}")
        for w in self.windows:
            frames = f"window {w.index + 1}: frames {w.start}-{w.stop - 1}"
            if w.box is None:
                lines.append(f"  {frames}: no mask, copied")
                continue
            known = f", {w.known} known" if w.known else ""
            scale = (w.size[0] / w.box.height + w.size[1] / w.box.width) / 2
            lines.append(
                f"  {frames}{known}: box {w.box} -> {w.size[1]}x{w.size[0]} (scale {scale:.2f}), "
                f"{w.tokens()} tokens, dilation {w.dilation} px, feather {w.feather} px"
            )
        return lines


def window_spans(frame_count: int, window: int, overlap: int, fixed: bool = False) -> list[tuple[int, int]]:
    """[start, stop) of each window: consecutive windows share `overlap` frames and the new frames are
    spread evenly (a multiple of 4 each where that fits, so windows are 4k+1 frames when the overlap
    is). `fixed`: every window is exactly `window` frames (the last one moved back to end at the clip's
    end, overlapping more); the clip must then have at least `window` frames."""
    if window == 0 or frame_count <= window:
        return [(0, frame_count)]
    most_new = window - overlap
    count = math.ceil((frame_count - overlap) / most_new)
    step = math.ceil((frame_count - overlap) / count)
    if step % 4 and step + (-step % 4) <= most_new:
        step += -step % 4
    if fixed:
        step = most_new
    count = math.ceil((frame_count - overlap) / step)
    spans = [(k * step, min(k * step + step + overlap, frame_count)) for k in range(count)]
    if fixed:
        spans[-1] = (frame_count - window, frame_count)
    return spans


def _clamped(box: Box, frame_size: tuple[int, int]) -> Box:
    height, width = frame_size
    return Box(max(0, box.top), max(0, box.left), min(height, box.bottom), min(width, box.right))


def _placed(center: tuple[float, float], size: tuple[int, int], frame_size: tuple[int, int]) -> Box:
    """A box of `size` centred on `center` (y, x), moved inside the frame."""
    (height, width), (frame_h, frame_w) = size, frame_size
    top = min(max(0, round(center[0] - height / 2)), frame_h - height)
    left = min(max(0, round(center[1] - width / 2)), frame_w - width)
    return Box(top, left, top + height, left + width)


def _round_up(value: float, multiple: int = SIZE_MULTIPLE) -> int:
    return max(multiple, math.ceil(value / multiple) * multiple)


def _round_down(value: float, multiple: int = SIZE_MULTIPLE) -> int:
    return max(multiple, math.floor(value / multiple) * multiple)


def working_size(frame_size: tuple[int, int], options: PlanOptions) -> tuple[int, int]:
    """The whole-frame working size (height, width): --height/--width as given, else 480p keeping the
    aspect ratio (`output_size`), except that a clip smaller than that runs at its own resolution
    (sides rounded down to multiples of 16) unless `options.upscale`."""
    size = output_size(*frame_size, options.height, options.width)
    asked = options.upscale or options.height is not None or options.width is not None
    if asked or (size[0] <= frame_size[0] and size[1] <= frame_size[1]):
        return size
    return _round_down(frame_size[0]), _round_down(frame_size[1])


def crop_size(
    needed: tuple[int, int], frame_size: tuple[int, int], budget: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(native crop size, working size) for a region of at least `needed` (height, width) native pixels.

    Within the budget (working pixels) the crop runs at native resolution: its sides grow to multiples
    of 16 where the frame has room (a side that cannot is scaled by the few pixels the rounding
    needs). Beyond it, the crop is scaled down to fit, keeping its aspect ratio.
    """
    native = tuple(min(n, f) for n, f in zip(needed, frame_size))
    if native[0] * native[1] <= budget:
        grown = tuple(_round_up(n) if _round_up(n) <= f else f for n, f in zip(native, frame_size))
        return grown, tuple(_round_down(n) for n in grown)
    scale = math.sqrt(budget / (native[0] * native[1]))
    return native, tuple(_round_down(n * scale) for n in native)


def make_plan(
    frame_count: int,
    frame_size: tuple[int, int],
    mask_boxes: Sequence[Box | None],
    options: PlanOptions,
) -> Plan:
    """Windows, boxes and working sizes for a clip whose frame i has mask bounding box `mask_boxes[i]`
    (None: nothing to remove in that frame)."""
    if len(mask_boxes) != frame_count:
        raise ValueError(f"{len(mask_boxes)} mask boxes for {frame_count} frames")
    if options.fixed_window and frame_count < options.window:
        raise RemoverError(
            f"the engine bundle runs exactly {options.window} frames per window and the clip has {frame_count}"
        )
    whole_size = working_size(frame_size, options)
    default_size = output_size(*frame_size, options.height, options.width)
    budget = whole_size[0] * whole_size[1]
    unit = pixel_unit(frame_size)
    spans = window_spans(frame_count, options.window, options.overlap, options.fixed_window)
    known = [0] + [
        previous[1] - start if options.blend == "continue" else 0 for previous, (start, _) in zip(spans[:-1], spans[1:])
    ]
    # what each window must generate: the union of its (dilated) mask boxes, beyond the known frames
    regions: list[Box | None] = []
    for (start, stop), skip in zip(spans, known):
        region = None
        for box in mask_boxes[start + skip : stop]:
            if box is not None:
                region = box.union(region)
        regions.append(None if region is None else _clamped(region.grown(options.dilation * unit), frame_size))

    boxes, size, cropped = _crop_boxes(regions, frame_size, whole_size, budget, options)
    windows = []
    for index, ((start, stop), skip, box) in enumerate(zip(spans, known, boxes)):
        scale = size[0] / box.height if box is not None else 1.0
        c = Compositing.scaled(options.resize, frame_size, scale, options.dilation, options.feather)
        windows.append(Window(index, start, stop, skip, box, size, c.dilation, c.feather, c.resize))
    not_upscaled = default_size if default_size != whole_size else None
    return Plan(frame_count, frame_size, tuple(windows), options, cropped, not_upscaled)


def _crop_boxes(
    regions: list[Box | None],
    frame_size: tuple[int, int],
    whole_size: tuple[int, int],
    budget: int,
    options: PlanOptions,
) -> tuple[list[Box | None], tuple[int, int], bool]:
    """(each window's box, the working size, whether the boxes are crops) for the regions to generate."""
    whole_frame = Box(0, 0, *frame_size)
    present = [r for r in regions if r is not None]
    if options.crop == "off" or not present:
        return [whole_frame if r is not None else None for r in regions], whole_size, False
    # one crop size for every window: the largest region plus context, at least min_crop working pixels
    needed = [0, 0]
    for region in present:
        margin = options.context * max(region.height, region.width)
        needed = [max(needed[0], region.height + 2 * margin), max(needed[1], region.width + 2 * margin)]
    native, size = crop_size((math.ceil(needed[0]), math.ceil(needed[1])), frame_size, budget)
    if min(size) < options.min_crop:  # too little context for the model: grow, at the same scale
        grow = options.min_crop / min(size)
        native, size = crop_size((math.ceil(native[0] * grow), math.ceil(native[1] * grow)), frame_size, budget)
    covers_frame = tuple(native) == tuple(frame_size)
    if options.crop == "auto" and (covers_frame or size[0] * size[1] >= whole_size[0] * whole_size[1]):
        return [whole_frame if r is not None else None for r in regions], whole_size, False
    boxes = [
        None if r is None else _placed(((r.top + r.bottom) / 2, (r.left + r.right) / 2), native, frame_size)
        for r in regions
    ]
    return boxes, size, True
