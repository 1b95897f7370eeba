"""MiniMax-Remover inference runtime.

from runtime import ModelOptions, load_remover, remove_file
remover = load_remover(ModelOptions(weights="/models/MiniMax-Remover"))
remove_file(remover, "clip.mp4", "mask.mp4", "clean.mp4")      # files of any length and size
remover(frames, masks)                                         # arrays, one pass
"""

from runtime.clips.job import remove_file
from runtime.errors import RemoverError
from runtime.loading import load_remover
from runtime.options import MaskOptions, ModelOptions, OutputOptions, PlanOptions, RunOptions
from runtime.pipeline.remover import Remover

__all__ = [
    "MaskOptions",
    "ModelOptions",
    "OutputOptions",
    "PlanOptions",
    "Remover",
    "RemoverError",
    "RunOptions",
    "load_remover",
    "remove_file",
]
