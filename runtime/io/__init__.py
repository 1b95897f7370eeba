"""Streaming clip IO: lazy readers, mask sources and frame-by-frame writers (see each module)."""

from runtime.io.color import ColorInfo
from runtime.io.copy import copy_clip
from runtime.io.images import IMAGE_SUFFIXES, image_files
from runtime.io.masks import MaskSource, open_masks, read_masks
from runtime.io.outputs import claim_output, pid_alive, remove_stale_partials, write_atomically
from runtime.io.paths import check_distinct, check_not_input, check_outputs, overlaps, same_file
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
    "check_distinct",
    "check_not_input",
    "check_outputs",
    "check_output",
    "claim_output",
    "copy_clip",
    "image_files",
    "open_clip",
    "open_masks",
    "open_writer",
    "overlaps",
    "pid_alive",
    "read_clip",
    "read_masks",
    "remove_partial_output",
    "remove_stale_partials",
    "same_file",
    "write_atomically",
    "write_clip",
]
