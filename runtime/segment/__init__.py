"""Masks from clicks and boxes: SAM 2.1 (the optional extra [segment]) tracks prompted objects over a
clip, forward and backward from any frame, streamed so memory does not grow with the clip's length.

    prompts = parse_prompts(boxes=["40,30,120,200@12"])
    segment_file("clip.mp4", "mask.mp4", prompts, SegmentOptions())

`python -m runtime.segment` is the command line; docs/segment.md the user's guide.
"""

from runtime.segment.files import SegmentResult, describe_segmentation, prompted_mask, segment_file
from runtime.segment.options import SegmentOptions
from runtime.segment.prompts import Prompt, check_prompts, parse_prompts
from runtime.segment.segmenter import Segmenter, load_segmenter

__all__ = [
    "Prompt",
    "SegmentOptions",
    "SegmentResult",
    "Segmenter",
    "check_prompts",
    "describe_segmentation",
    "load_segmenter",
    "parse_prompts",
    "prompted_mask",
    "segment_file",
]
