"""The runtime's one attention entry point: softmax(q k^T / sqrt(d)) v, no mask, on q [B, Lq, heads, d]
and K, V [B, Lk, heads, d] (Lk = Lq + the condition tokens), through one backend: flash-attn, sdpa or
math. `select_attention` takes the first whose requirements hold ("auto") or the one named, a
RemoverError saying why when it cannot run; RUNTIME_ATTENTION sets the choice when the caller does not.
flash_attn is imported only here, lazily. The backends, their requirements and why the longer K/V needs
no padding: docs/kernels.md.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from runtime.errors import RemoverError

ATTENTION_ENV = "RUNTIME_ATTENTION"
ATTENTION_CHOICES = ("auto", "flash-attn", "sdpa", "math")
FLASH_ATTN_DTYPES = (torch.float16, torch.bfloat16)
PROBE_LENGTH = 125  # query length of the SDPA probe: odd, and >= 64 (old cuDNN's minimum)


@dataclass(frozen=True)
class AttentionBackend:
    """An attention implementation on the [B, L, heads, d] layout, and the name the summary shows."""

    name: str
    run: Callable[[Tensor, Tensor, Tensor], Tensor]


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _math(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    with sdpa_kernel(SDPBackend.MATH):
        return _sdpa(q, k, v)


SDPA = AttentionBackend("sdpa", _sdpa)  # PyTorch picks its kernel per call (the models' default)
MATH = AttentionBackend("math", _math)


def attention(q: Tensor, k: Tensor, v: Tensor, backend: AttentionBackend = SDPA) -> Tensor:
    """q [B, Lq, heads, d], k and v [B, Lk, heads, d] -> [B, Lq, heads, d]."""
    return backend.run(q, k, v)


def select_attention(
    choice: str | None, device: torch.device, dtype: torch.dtype, *, heads: int, head_dim: int, num_conditions: int = 0
) -> AttentionBackend:
    """The attention backend for a model on `device` in `dtype`: `choice` ("auto", "flash-attn",
    "sdpa", "math"), else $RUNTIME_ATTENTION, else "auto"."""
    choice = choice or os.environ.get(ATTENTION_ENV) or "auto"
    if choice not in ATTENTION_CHOICES:
        raise RemoverError(
            f"unknown attention backend {choice!r} (argument or ${ATTENTION_ENV}); choose one of {ATTENTION_CHOICES}"
        )
    if choice in ("auto", "flash-attn"):
        backend, problem = _flash_attn(device, dtype, head_dim)
        if backend is not None:
            return backend
        if choice == "flash-attn":
            raise RemoverError(f"attention 'flash-attn' is not available: {problem}")
    if choice in ("auto", "sdpa"):
        kernel = sdpa_kernel_for(device, dtype, heads=heads, head_dim=head_dim, num_conditions=num_conditions)
        if kernel not in (SDPBackend.MATH, SDPBackend.ERROR):
            return AttentionBackend(f"sdpa ({kernel.name.removesuffix('_ATTENTION').lower()})", _sdpa)
        if choice == "sdpa":
            raise RemoverError(
                f"attention 'sdpa': no fused SDPA kernel takes {dtype} with head_dim {head_dim} on {device} "
                "(PyTorch would fall back to its math kernel); use attention='math'"
            )
    return MATH


def sdpa_kernel_for(
    device: torch.device, dtype: torch.dtype, *, heads: int, head_dim: int, num_conditions: int
) -> SDPBackend:
    """The kernel PyTorch's SDPA dispatch picks for this model's attention: q [1, L, heads, d] and K/V
    [1, L + n, heads, d] buffers, passed as the transposed views `attention` passes."""
    shape = (1, PROBE_LENGTH, heads, head_dim)
    q = torch.empty(shape, device=device, dtype=dtype).transpose(1, 2)
    kv = torch.empty((1, PROBE_LENGTH + num_conditions, heads, head_dim), device=device, dtype=dtype).transpose(1, 2)
    return SDPBackend(torch._fused_sdp_choice(q, kv, kv))


def _flash_attn(device: torch.device, dtype: torch.dtype, head_dim: int) -> tuple[AttentionBackend | None, str]:
    """FlashAttention 3 (Hopper) or 2 if its requirements hold, else None and why not."""
    if device.type != "cuda":
        return None, f"it needs a CUDA device (running on {device.type})"
    if dtype not in FLASH_ATTN_DTYPES:
        return None, f"it needs fp16 or bf16 (the model runs in {dtype})"
    if head_dim % 8 or head_dim > 256:
        return None, f"it needs head_dim a multiple of 8 up to 256 (got {head_dim})"
    if torch.cuda.get_device_capability(device)[0] == 9:
        try:
            return _flash_attn_backend("flash-attn 3", importlib.import_module("flash_attn_interface")), ""
        except ImportError:
            pass  # FA3 is built separately (flash-attention/hopper); FA2 also runs on Hopper
    try:
        return _flash_attn_backend("flash-attn 2", importlib.import_module("flash_attn")), ""
    except ImportError as exc:
        return None, f"the flash_attn package is not installed or does not load ({exc}); pip install flash-attn"


def _flash_attn_backend(name: str, module: object) -> AttentionBackend:
    function = module.flash_attn_func

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = function(q, k, v)  # the [B, L, heads, d] layout is flash-attn's own
        return out[0] if isinstance(out, tuple) else out  # some FA3 releases also return the LSE

    return AttentionBackend(name, run)
