"""Streaming clip IO: lazy readers, mask sources and frame-by-frame writers (see each module)."""

from runtime.io.color import ColorInfo
from runtime.io.images import IMAGE_SUFFIXES, image_files
from runtime.io.masks import MaskSource, open_masks, read_masks
from runtime.io.reader import Clip, ClipInfo, ClipReader, Frame, StreamInfo, open_clip, read_clip
from runtime.io.writer import ClipWriter, check_output, open_writer, remove_partial_output, write_clip

__all__ = [
    "IMAGE_SUFFIXES",
    "Clip",
    "ClipInfo",
    "ClipReader",
    "ClipWriter",
    "ColorInfo",
    "Frame",
    "MaskSource",
    "StreamInfo",
    "check_output",
    "image_files",
    "open_clip",
    "open_masks",
    "open_writer",
    "remove_partial_output",
    "read_clip",
    "read_masks",
    "write_clip",
]
