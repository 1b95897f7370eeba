"""MiniMax-Remover inference runtime: `from runtime import Remover`."""

from runtime.errors import RemoverError
from runtime.pipeline import Remover

__all__ = ["Remover", "RemoverError"]
