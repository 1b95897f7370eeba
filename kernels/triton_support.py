"""Triton when it is installed, and whether its kernels run compiled (GPU) or interpreted (CPU).

Triton is optional (the `gpu` and `test` extras): without it the kernel modules still import, so
their PyTorch references (the runtime's default path) work everywhere, and asking for the Triton
kernels is a clear error where the runtime selects them.

Triton decides when a kernel is *defined* (`@triton.jit`, i.e. when its module is imported) whether
launches compile for the GPU or run in its NumPy interpreter (`TRITON_INTERPRET=1`), so
`INTERPRETED` is fixed at import time as well. Only interpreted kernels can run on CPU tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install (e.g. macOS): the PyTorch path needs no Triton
    triton = None
    tl = None

FunctionT = TypeVar("FunctionT", bound=Callable)

AVAILABLE = triton is not None
INTERPRETED = AVAILABLE and bool(triton.knobs.runtime.interpret)
# The interpreter casts fp32 -> bf16 by truncating; the GPU rounds to nearest even (what PyTorch does).
_ROUND_BF16_BY_HAND = tl.constexpr(INTERPRETED) if AVAILABLE else INTERPRETED


def jit(fn: FunctionT) -> FunctionT:
    """`triton.jit`, or the function unchanged when Triton is missing (it is then never launched)."""
    return triton.jit(fn) if AVAILABLE else fn


@jit
def cast_rounded(x, dtype: tl.constexpr):
    """fp32 x -> dtype, rounding to nearest even: a plain cast on the GPU. In the interpreter the bf16
    rounding is done on the bits first, so CPU tests see the numerics the GPU produces."""
    if _ROUND_BF16_BY_HAND and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        x = (bits & 0xFFFF0000).to(tl.float32, bitcast=True)
    return x.to(dtype)


def block_size(n: int) -> int:
    """The power-of-two block that covers `n` elements (Triton's aranges are powers of two)."""
    return triton.next_power_of_2(n)


def launch_options(block: int) -> dict[str, object]:
    """Compile options of the row kernels: 8 warps for rows of 2048 elements (D = 1536) and more, and
    no FMA contraction, so each product is rounded as in the PyTorch reference (Triton 3.10's default)."""
    return {"num_warps": 8 if block >= 2048 else 4, "enable_fp_fusion": False}


def unit_last_stride(x: Tensor) -> Tensor:
    """x itself when its last dim is contiguous (what the row kernels index), else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()
