"""The gated residual x + gate * y in one pass (fp32 math, result in the residual stream's dtype).

The residual after attention is fused into the LayerNorm + modulation that follows it
(kernels/modulated_layer_norm.py); this standalone kernel is the one after the feed-forward,
whose consumer is the next block's norm.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.triton_support import block_size, cast_rounded, jit, launch_options, tl, unit_last_stride


def gated_residual_reference(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """x [B, L, D] + gate [B, 1, D] (fp32) * y [B, L, D], computed in fp32; returns x's dtype."""
    return (x.float() + y.float() * gate).to(x.dtype)


@jit
def gated_residual_row(x_ptr, y_ptr, gate_ptr, cols, in_row):
    """x + gate * y for one row in fp32 (the three pointers already at the row)."""
    x = tl.load(x_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
    return x + y * tl.load(gate_ptr + cols, mask=in_row, other=0.0)


@jit
def _gated_residual_kernel(
    x,
    y,
    gate,
    out,
    seq_len,
    x_batch_stride,
    x_row_stride,
    y_batch_stride,
    y_row_stride,
    gate_batch_stride,
    DIM: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (row, batch) writes one row of out [B, L, D]."""
    row = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    in_row = cols < DIM
    result = gated_residual_row(
        x + batch * x_batch_stride + row * x_row_stride,
        y + batch * y_batch_stride + row * y_row_stride,
        gate + batch * gate_batch_stride,
        cols,
        in_row,
    )
    tl.store(out + (batch * seq_len + row) * DIM + cols, cast_rounded(result, out.dtype.element_ty), mask=in_row)


@torch.library.custom_op("remover::gated_residual", mutates_args=())
def gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """The Triton kernel, with the contract of `gated_residual_reference`."""
    x, y, gate = unit_last_stride(x), unit_last_stride(y), unit_last_stride(gate)
    batch, seq_len, dim = x.shape
    out = torch.empty((batch, seq_len, dim), dtype=x.dtype, device=x.device)
    block = block_size(dim)
    _gated_residual_kernel[(seq_len, batch)](
        x,
        y,
        gate,
        out,
        seq_len,
        x.stride(0),
        x.stride(1),
        y.stride(0),
        y.stride(1),
        gate.stride(0),
        DIM=dim,
        BLOCK=block,
        **launch_options(block),
    )
    return out


@gated_residual.register_fake
def _(x, y, gate):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)
