"""Colour: what a video's tags say (or what players assume when it has none), and the conversions
between its YUV and 8-bit RGB that use exactly those values.

swscale converts an untagged frame with BT.601 and tags nothing on the way out; players assume
BT.709 for HD. So both directions here pass the matrix and range explicitly, and the writer tags
what it used. Names are FFmpeg's (`ffprobe` prints the same): matrices "bt709", "smpte170m" (BT.601),
"bt2020nc", ...; ranges "tv" (limited, 16-235) and "pc" (full, 0-255).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import av
import numpy as np
from av.video.codeccontext import VideoCodecContext
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, Interpolation

from runtime.errors import RemoverWarning

# AVColorSpace code of a matrix tag -> (FFmpeg's name, the swscale matrix that converts it)
MATRICES = {
    0: ("rgb", None),  # stored as RGB: no matrix
    1: ("bt709", Colorspace.ITU709),
    4: ("fcc", Colorspace.FCC),
    5: ("bt470bg", Colorspace.ITU601),
    6: ("smpte170m", Colorspace.ITU601),
    7: ("smpte240m", Colorspace.SMPTE240M),
    9: ("bt2020nc", Colorspace.BT2020),
    10: ("bt2020c", Colorspace.BT2020),  # constant luminance, converted as non-constant: close, not exact
}
UNSPECIFIED = 2  # the AVColorSpace code of an untagged clip
MATRIX_CODES = {name: code for code, (name, _) in MATRICES.items()}
SWS_MATRICES = {name: matrix for name, matrix in MATRICES.values()}
RANGES = {"tv": ColorRange.MPEG, "pc": ColorRange.JPEG}
HDR_TRANSFERS = {"smpte2084": "PQ", "arib_std_b67": "HLG"}
# bilinear chroma upsampling at full horizontal resolution with exact rounding: within half a level of
# the exact conversion, where swscale's fast path is up to 2 levels off
CONVERSION = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


@dataclass(frozen=True)
class ColorInfo:
    """How a clip's pixels encode colour. `tagged` is False when the input stated no matrix: the values
    are then what players assume (BT.709 for HD, BT.601 below)."""

    matrix: str  # YUV matrix: "bt709", "smpte170m" (BT.601), "bt2020nc", ...; "rgb" when stored as RGB
    range: str  # "tv" (limited) or "pc" (full)
    primaries: str  # "bt709", "smpte170m", "bt2020", ... (PyAV's ColorPrimaries names, lower case)
    transfer: str  # "bt709", "iec61966_2_1" (sRGB), "smpte2084" (PQ), "arib_std_b67" (HLG), ...
    bit_depth: int = 8
    tagged: bool = True

    @property
    def hdr(self) -> bool:
        """True for the PQ and HLG transfers."""
        return self.transfer in HDR_TRANSFERS

    def describe(self) -> str:
        """E.g. "bt709 tv range", "bt2020nc tv range 10-bit HDR PQ", "smpte170m tv range (untagged)", "sRGB"."""
        if self.matrix == "rgb":
            text = "sRGB" if self.transfer == "iec61966_2_1" else "RGB"
        else:
            text = f"{self.matrix} {self.range} range"
        if self.bit_depth > 8:
            text += f" {self.bit_depth}-bit"
        if self.hdr:
            text += f" HDR {HDR_TRANSFERS[self.transfer]}"
        return text if self.tagged or self.matrix == "rgb" else f"{text} (untagged)"


SRGB = ColorInfo("rgb", "pc", "bt709", "iec61966_2_1", tagged=False)  # what image files hold


def _assumed(width: int, height: int) -> str:
    """What players assume for an untagged clip: BT.709 for HD, BT.601 (smpte170m) below."""
    return "bt709" if height >= 720 or width >= 1280 else "smpte170m"


def _enum_name(enum: type[ColorPrimaries] | type[ColorTrc], code: int) -> str | None:
    """The lower-case name of a primaries or transfer code; None for unspecified or unknown codes."""
    try:
        member = enum(code)
    except ValueError:
        return None
    return None if member.name == "UNSPECIFIED" else member.name.lower()


def frame_color(frame: av.VideoFrame) -> ColorInfo:
    """The colour of a decoded frame: its tags, with what players assume for the missing ones."""
    pixel_format = frame.format
    assumed = _assumed(frame.width, frame.height)
    bit_depth = max(component.bits for component in pixel_format.components)
    primaries = _enum_name(ColorPrimaries, frame.color_primaries) or assumed
    transfer = _enum_name(ColorTrc, frame.color_trc) or assumed
    if pixel_format.is_rgb or pixel_format.has_palette:
        return ColorInfo("rgb", "pc", primaries, transfer, bit_depth, frame.colorspace == MATRIX_CODES["rgb"])
    matrix = MATRICES.get(frame.colorspace, (None,))[0]
    if matrix == "rgb":  # an RGB tag on YUV pixels says nothing usable
        matrix = None
    elif matrix is None and frame.colorspace != UNSPECIFIED:
        warnings.warn(
            f"colour matrix {frame.colorspace} is not supported: decoding as {assumed}", RemoverWarning, stacklevel=4
        )
    if frame.color_range == ColorRange.JPEG or pixel_format.name.startswith("yuvj"):
        color_range = "pc"
    else:
        color_range = "tv"  # tagged limited, or untagged: what every player assumes for YUV
    return ColorInfo(matrix or assumed, color_range, primaries, transfer, bit_depth, tagged=matrix is not None)


def to_rgb(frame: av.VideoFrame, color: ColorInfo) -> np.ndarray:
    """A decoded frame as uint8 [H, W, 3] RGB, converted with `color`'s matrix and range."""
    if color.matrix == "rgb":
        return frame.reformat(format="rgb24", interpolation=CONVERSION).to_ndarray()
    matrix = SWS_MATRICES[color.matrix]
    return frame.reformat(
        format="rgb24",
        src_colorspace=matrix,
        dst_colorspace=matrix,
        src_color_range=RANGES[color.range],
        dst_color_range=ColorRange.JPEG,
        interpolation=CONVERSION,
    ).to_ndarray()


def output_color(source: ColorInfo, rgb_encoding: bool) -> ColorInfo:
    """The colour a video written from `source`'s frames is encoded and tagged with: the source's own,
    8-bit. RGB sources (images) become BT.709 limited-range YUV, the convention players expect; an RGB
    encoding (the lossless ones) stores full-range RGB with the source's primaries and transfer."""
    if rgb_encoding:
        return replace(source, matrix="rgb", range="pc", bit_depth=8, tagged=True)
    if source.matrix == "rgb":
        return ColorInfo("bt709", "tv", "bt709", "bt709")
    return replace(source, bit_depth=8, tagged=True)


def from_rgb(image: np.ndarray, color: ColorInfo, pixel_format: str) -> av.VideoFrame:
    """uint8 [H, W, 3] RGB as a frame of `pixel_format`, converted with `color`'s matrix and range."""
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    if color.matrix == "rgb":
        return frame.reformat(format=pixel_format)
    return frame.reformat(
        format=pixel_format,
        dst_colorspace=SWS_MATRICES[color.matrix],
        dst_color_range=RANGES[color.range],
        interpolation=CONVERSION,
    )


def tag(codec_context: VideoCodecContext, color: ColorInfo) -> None:
    """Write `color` into an encoder's tags (the bitstream's VUI and the container's colour box)."""
    codec_context.colorspace = MATRIX_CODES[color.matrix]
    codec_context.color_range = RANGES[color.range]
    codec_context.color_primaries = ColorPrimaries[color.primaries.upper()]
    codec_context.color_trc = ColorTrc[color.transfer.upper()]
