"""The peak of live tensor memory on any device, the CPU's stand-in for torch.cuda.max_memory_allocated."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """The peak of the bytes held by live tensor storages while the mode is on: every storage an
    operation reads or writes is counted once from then until it is freed (the CPU's stand-in for
    torch.cuda.max_memory_allocated)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _track(self, value: object) -> None:
        if not isinstance(value, torch.Tensor) or is_traceable_wrapper_subclass(value):
            return  # a DTensor's memory is its local tensor's, which the operations on it show
        storage = value.untyped_storage()
        key = storage.data_ptr()
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for value in tree_leaves((args, kwargs)):
            self._track(value)
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            self._track(value)
        return out
