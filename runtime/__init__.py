"""MiniMax-Remover inference runtime: `from runtime import Remover`."""

from runtime import _moved
from runtime.errors import RemoverError
from runtime.pipeline.remover import Remover

_moved.install()

__all__ = ["Remover", "RemoverError"]
