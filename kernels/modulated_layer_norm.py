"""LayerNorm without affine fused with the adaLN modulation, x_hat * (1 + scale) + shift:
one read of x, one write of the modulated activations; statistics and math in fp32, the result in
the activation dtype.

The variant with a residual first adds the gated branch that precedes the norm in the block
(x + gate * y), writes that new residual stream and normalizes it in the same program, so the
stream is read once instead of twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.gated_residual import gated_residual_reference, gated_residual_row
from kernels.triton_support import block_size, cast_rounded, jit, launch_options, tl, unit_last_stride


def modulated_layer_norm_reference(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """LayerNorm of x [B, L, D] over D in fp32 (no affine), times (1 + scale) plus shift ([B, 1, D]
    fp32); returns x's dtype."""
    return (F.layer_norm(x.float(), (x.shape[-1],), eps=eps) * (1 + scale) + shift).to(x.dtype)


def residual_modulated_layer_norm_reference(
    x: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """The residual stream x + gate * y (x's dtype) and its modulated LayerNorm."""
    x = gated_residual_reference(x, y, gate)
    return x, modulated_layer_norm_reference(x, shift, scale, eps)


@jit
def _modulated_layer_norm_kernel(
    x,
    y,
    gate,
    shift,
    scale,
    x_out,
    h_out,
    seq_len,
    eps,
    x_batch_stride,
    x_row_stride,
    y_batch_stride,
    y_row_stride,
    gate_batch_stride,
    shift_batch_stride,
    scale_batch_stride,
    DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    """Program (row, batch) normalizes one row of x (after adding its gated residual) into h_out."""
    row = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    in_row = cols < DIM
    out_row = (batch * seq_len + row) * DIM
    x_row = x + batch * x_batch_stride + row * x_row_stride
    if HAS_RESIDUAL:
        y_row = y + batch * y_batch_stride + row * y_row_stride
        stream = gated_residual_row(x_row, y_row, gate + batch * gate_batch_stride, cols, in_row)
        stream = cast_rounded(stream, x_out.dtype.element_ty)  # the stream is stored, and normalized, in its dtype
        tl.store(x_out + out_row + cols, stream, mask=in_row)
        values = stream.to(tl.float32)
    else:
        values = tl.load(x_row + cols, mask=in_row, other=0.0).to(tl.float32)
    mean = tl.sum(values, axis=0) / DIM
    centered = tl.where(in_row, values - mean, 0.0)
    normed = centered * tl.rsqrt(tl.sum(centered * centered, axis=0) / DIM + eps)
    row_scale = tl.load(scale + batch * scale_batch_stride + cols, mask=in_row, other=0.0)
    row_shift = tl.load(shift + batch * shift_batch_stride + cols, mask=in_row, other=0.0)
    tl.store(
        h_out + out_row + cols, cast_rounded(normed * (1 + row_scale) + row_shift, h_out.dtype.element_ty), mask=in_row
    )


def _launch(
    x: Tensor, y: Tensor | None, gate: Tensor | None, shift: Tensor, scale: Tensor, eps: float
) -> tuple[Tensor | None, Tensor]:
    has_residual = y is not None
    x, shift, scale = unit_last_stride(x), unit_last_stride(shift), unit_last_stride(scale)
    batch, seq_len, dim = x.shape
    h = torch.empty((batch, seq_len, dim), dtype=x.dtype, device=x.device)
    if has_residual:
        y, gate = unit_last_stride(y), unit_last_stride(gate)
        stream = torch.empty_like(h)
        residual_strides = (y.stride(0), y.stride(1), gate.stride(0))
    else:  # the residual pointers are never dereferenced (HAS_RESIDUAL=False)
        y = gate = stream = x
        residual_strides = (0, 0, 0)
    block = block_size(dim)
    _modulated_layer_norm_kernel[(seq_len, batch)](
        x,
        y,
        gate,
        shift,
        scale,
        stream,
        h,
        seq_len,
        eps,
        x.stride(0),
        x.stride(1),
        *residual_strides,
        shift.stride(0),
        scale.stride(0),
        DIM=dim,
        BLOCK=block,
        HAS_RESIDUAL=has_residual,
        **launch_options(block),
    )
    return (stream if has_residual else None), h


@torch.library.custom_op("remover::modulated_layer_norm", mutates_args=())
def modulated_layer_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """The Triton kernel, with the contract of `modulated_layer_norm_reference`."""
    return _launch(x, None, None, shift, scale, eps)[1]


@modulated_layer_norm.register_fake
def _(x, shift, scale, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("remover::residual_modulated_layer_norm", mutates_args=())
def residual_modulated_layer_norm(
    x: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """The Triton kernel, with the contract of `residual_modulated_layer_norm_reference`."""
    return _launch(x, y, gate, shift, scale, eps)


@residual_modulated_layer_norm.register_fake
def _(x, y, gate, shift, scale, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty(x.shape, dtype=x.dtype, device=x.device)
