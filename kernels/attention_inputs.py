"""Attention inputs in one pass (the card's kernel): projected q and k -> RMSNorm across heads ->
interleaved RoPE, written as attention-ready q [B, L, heads, d] and K, V [B, L + n, heads, d] with
the n cached condition-token rows appended after the video tokens: no torch.cat, no second pass.

`attention_inputs_reference` is the plain PyTorch computation (the runtime's unfused path, and the
model's definition of these steps); `attention_inputs` runs the Triton kernel behind
torch.library custom ops. The kernel rounds to the activation dtype where the reference does
(after the norm, after the rotation), so in bf16 both agree up to summation order.

V needs no norm and no rotation: without condition tokens it stays the projection's own memory;
with them the kernel copies each V row into the buffer in the same program that writes its K row,
and the programs past the video tokens copy the condition rows (the same traffic as the cat it
replaces, inside the same launch).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.triton_support import block_size, cast_rounded, jit, launch_options, tl, unit_last_stride

# --- the plain PyTorch reference ------------------------------------------------------------


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim with a weight, statistics in fp32; returns x's dtype."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight.float()).to(x.dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3), ... of x [B, L, heads, head_dim] in fp32;
    cos and sin [L, head_dim // 2]."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs.unbind(-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def attention_inputs_reference(
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    q_weight: Tensor,
    k_weight: Tensor,
    rope: tuple[Tensor, Tensor],
    condition_kv: tuple[Tensor, Tensor] | None,
    heads: int,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Projections [B, L, D] -> q [B, L, heads, d], K and V [B, L + n, heads, d].

    q and k get RMSNorm over all of D (weights [D]) and the rotation (`rope` = cos, sin
    [L, d // 2] fp32); `condition_kv` (keys and values [B, n, heads, d], already normed, no RoPE)
    is appended after the video tokens.
    """
    q = rms_norm(q_proj, q_weight, eps).unflatten(-1, (heads, -1))
    k = rms_norm(k_proj, k_weight, eps).unflatten(-1, (heads, -1))
    v = v_proj.unflatten(-1, (heads, -1))
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if condition_kv is not None:
        k, v = torch.cat([k, condition_kv[0]], dim=1), torch.cat([v, condition_kv[1]], dim=1)
    return q, k, v


# --- the Triton kernel ----------------------------------------------------------------------


@jit
def _rms_norm_row(x, weight_ptr, cols, in_row, eps, DIM: tl.constexpr):
    """RMSNorm of one token's row [BLOCK] (fp32, zero past DIM) with the weight over all of DIM."""
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / DIM + eps)
    return x * rstd * tl.load(weight_ptr + cols, mask=in_row, other=0.0).to(tl.float32)


@jit
def _rotate_pairs(x, cos, sin, BLOCK: tl.constexpr):
    """(x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos) for adjacent pairs; cos and sin [BLOCK // 2]."""
    x0, x1 = tl.split(tl.reshape(x, (BLOCK // 2, 2)))
    return tl.reshape(tl.join(x0 * cos - x1 * sin, x0 * sin + x1 * cos), (BLOCK,))


@jit
def _attention_inputs_kernel(
    q_proj,
    k_proj,
    v_proj,
    q_weight,
    k_weight,
    cos,
    sin,
    condition_k,
    condition_v,
    q_out,
    k_out,
    v_out,
    seq_len,
    num_conditions,
    eps,
    q_proj_batch_stride,
    q_proj_row_stride,
    k_proj_batch_stride,
    k_proj_row_stride,
    v_proj_batch_stride,
    v_proj_row_stride,
    condition_k_batch_stride,
    condition_v_batch_stride,
    rope_row_stride,
    DIM: tl.constexpr,
    HALF_HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    APPEND: tl.constexpr,
):
    """Program (row, batch) writes row `row` of K (and V) [B, L + n, D]: a video token (norm, RoPE,
    and its q row) when row < L, else condition token row - L copied from the cache."""
    row = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    in_row = cols < DIM
    kv_row = (batch * (seq_len + num_conditions) + row) * DIM
    if row < seq_len:
        pairs = tl.arange(0, BLOCK // 2)
        rope_offsets = row * rope_row_stride + pairs % HALF_HEAD_DIM
        in_pairs = pairs < DIM // 2
        cos_row = tl.load(cos + rope_offsets, mask=in_pairs, other=0.0)
        sin_row = tl.load(sin + rope_offsets, mask=in_pairs, other=0.0)

        # the reference rounds to the activation dtype after the norm and after the rotation
        q_row = tl.load(q_proj + batch * q_proj_batch_stride + row * q_proj_row_stride + cols, mask=in_row, other=0.0)
        q_row = _rms_norm_row(q_row.to(tl.float32), q_weight, cols, in_row, eps, DIM)
        q_row = cast_rounded(q_row, q_out.dtype.element_ty)
        q_row = _rotate_pairs(q_row.to(tl.float32), cos_row, sin_row, BLOCK)
        tl.store(q_out + (batch * seq_len + row) * DIM + cols, cast_rounded(q_row, q_out.dtype.element_ty), mask=in_row)

        k_row = tl.load(k_proj + batch * k_proj_batch_stride + row * k_proj_row_stride + cols, mask=in_row, other=0.0)
        k_row = _rms_norm_row(k_row.to(tl.float32), k_weight, cols, in_row, eps, DIM)
        k_row = cast_rounded(k_row, k_out.dtype.element_ty)
        k_row = _rotate_pairs(k_row.to(tl.float32), cos_row, sin_row, BLOCK)
        tl.store(k_out + kv_row + cols, cast_rounded(k_row, k_out.dtype.element_ty), mask=in_row)

        if APPEND:
            v_row = tl.load(v_proj + batch * v_proj_batch_stride + row * v_proj_row_stride + cols, mask=in_row)
            tl.store(v_out + kv_row + cols, v_row, mask=in_row)
    else:
        token = row - seq_len
        condition_key = tl.load(condition_k + batch * condition_k_batch_stride + token * DIM + cols, mask=in_row)
        tl.store(k_out + kv_row + cols, condition_key, mask=in_row)
        condition_value = tl.load(condition_v + batch * condition_v_batch_stride + token * DIM + cols, mask=in_row)
        tl.store(v_out + kv_row + cols, condition_value, mask=in_row)


def _launch(
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor | None,
    q_weight: Tensor,
    k_weight: Tensor,
    cos: Tensor,
    sin: Tensor,
    condition_k: Tensor | None,
    condition_v: Tensor | None,
    heads: int,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Allocate q and K (and V when condition tokens are appended); one launch writes all their rows."""
    batch, seq_len, dim = q_proj.shape
    head_dim = dim // heads
    append = condition_k is not None
    num_conditions = condition_k.shape[1] if append else 0
    q_proj, k_proj = unit_last_stride(q_proj), unit_last_stride(k_proj)
    cos, sin = cos.contiguous(), sin.contiguous()
    q = q_proj.new_empty(batch, seq_len, heads, head_dim)
    k = k_proj.new_empty(batch, seq_len + num_conditions, heads, head_dim)
    if append:
        v = v_out = v_proj.new_empty(batch, seq_len + num_conditions, heads, head_dim)
        v_proj = unit_last_stride(v_proj)
        condition_k, condition_v = condition_k.flatten(2), condition_v.flatten(2)  # [B, n, D], rows contiguous
        v_strides = (v_proj.stride(0), v_proj.stride(1), condition_k.stride(0), condition_v.stride(0))
    else:  # V stays the projection: the V and condition pointers are never dereferenced (APPEND=False)
        v = None
        v_proj = condition_k = condition_v = v_out = k
        v_strides = (0, 0, 0, 0)
    block = block_size(dim)
    _attention_inputs_kernel[(seq_len + num_conditions, batch)](
        q_proj,
        k_proj,
        v_proj,
        q_weight,
        k_weight,
        cos,
        sin,
        condition_k,
        condition_v,
        q,
        k,
        v_out,
        seq_len,
        num_conditions,
        eps,
        q_proj.stride(0),
        q_proj.stride(1),
        k_proj.stride(0),
        k_proj.stride(1),
        *v_strides,
        cos.stride(0),
        DIM=dim,
        HALF_HEAD_DIM=head_dim // 2,
        BLOCK=block,
        APPEND=append,
        **launch_options(block),
    )
    return q, k, v


# --- custom ops (opaque to torch.compile / torch.export, traced through their fake versions) ---


@torch.library.custom_op("remover::qk_norm_rope", mutates_args=())
def qk_norm_rope(
    q_proj: Tensor, k_proj: Tensor, q_weight: Tensor, k_weight: Tensor, cos: Tensor, sin: Tensor, heads: int, eps: float
) -> tuple[Tensor, Tensor]:
    """q and k [B, L, heads, d], normed and rotated (the model has no condition tokens)."""
    q, k, _ = _launch(q_proj, k_proj, None, q_weight, k_weight, cos, sin, None, None, heads, eps)
    return q, k


@qk_norm_rope.register_fake
def _(q_proj, k_proj, q_weight, k_weight, cos, sin, heads, eps):
    batch, seq_len, dim = q_proj.shape
    return q_proj.new_empty(batch, seq_len, heads, dim // heads), k_proj.new_empty(batch, seq_len, heads, dim // heads)


@torch.library.custom_op("remover::qk_norm_rope_append_kv", mutates_args=())
def qk_norm_rope_append_kv(
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    q_weight: Tensor,
    k_weight: Tensor,
    cos: Tensor,
    sin: Tensor,
    condition_k: Tensor,
    condition_v: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """q [B, L, heads, d] and K, V [B, L + n, heads, d] with condition keys/values [B, n, heads, d] appended."""
    return _launch(
        q_proj, k_proj, v_proj, q_weight, k_weight, cos, sin, condition_k, condition_v, condition_k.shape[2], eps
    )


@qk_norm_rope_append_kv.register_fake
def _(q_proj, k_proj, v_proj, q_weight, k_weight, cos, sin, condition_k, condition_v, eps):
    batch, seq_len, _ = q_proj.shape
    _, num_conditions, heads, head_dim = condition_k.shape
    kv_shape = (batch, seq_len + num_conditions, heads, head_dim)
    return (
        q_proj.new_empty(batch, seq_len, heads, head_dim),
        k_proj.new_empty(kv_shape),
        v_proj.new_empty(kv_shape),
    )


def attention_inputs(
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    q_weight: Tensor,
    k_weight: Tensor,
    rope: tuple[Tensor, Tensor],
    condition_kv: tuple[Tensor, Tensor] | None,
    heads: int,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The Triton kernel, with the contract of `attention_inputs_reference`."""
    if condition_kv is None:
        q, k = qk_norm_rope(q_proj, k_proj, q_weight, k_weight, *rope, heads, eps)
        return q, k, v_proj.unflatten(-1, (heads, -1))
    return qk_norm_rope_append_kv(q_proj, k_proj, v_proj, q_weight, k_weight, *rope, *condition_kv, eps)
