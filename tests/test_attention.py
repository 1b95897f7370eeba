"""Attention backends: selection, requirement errors, numerics against an explicit softmax, and the
K/V layout (length L + n) that keeps the fast kernels eligible."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import fixed_seed
from torch.nn.attention import SDPBackend

from kernels import TORCH_KERNELS, TRITON_KERNELS, triton_support
from runtime.errors import RemoverError
from runtime.execution.attention import (
    ATTENTION_ENV,
    MATH,
    SDPA,
    _flash_attn_backend,
    attention,
    sdpa_kernel_for,
    select_attention,
)
from runtime.models.transformer import rope_cos_sin

CPU = torch.device("cpu")


def softmax_attention(q, k, v):
    """The oracle: explicit scores and softmax in float64, [B, L, heads, d] layout."""
    scores = torch.einsum("blhd,bmhd->bhlm", q.double(), k.double()) / math.sqrt(q.shape[-1])
    return torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v.double())


@pytest.mark.parametrize("backend", [SDPA, MATH], ids=lambda b: b.name)
def test_backends_compute_softmax_attention_with_extra_keys(backend):
    seed = fixed_seed()
    torch.manual_seed(seed)
    q = torch.randn(2, 35, 3, 16)
    k, v = torch.randn(2, 41, 3, 16), torch.randn(2, 41, 3, 16)  # 35 video + 6 condition keys
    out = attention(q, k, v, backend)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), softmax_attention(q, k, v), atol=1e-5, rtol=1e-5, msg=f"seed {seed}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("num_conditions", [0, 6])
def test_auto_on_the_cpu_is_fused_sdpa_whatever_the_token_count(dtype, num_conditions, monkeypatch):
    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    backend = select_attention("auto", CPU, dtype, heads=12, head_dim=128, num_conditions=num_conditions)
    assert backend.name == "sdpa (flash)"


def attention_buffers(kernels, num_conditions):
    """q, K, V exactly as a block hands them to `attention` (odd L = 15, 3 heads of 16)."""
    heads, head_dim, grid = 3, 16, (1, 3, 5)
    projections = [torch.randn(2, 15, heads * head_dim) for _ in range(3)]
    weights = [torch.ones(heads * head_dim)] * 2
    condition_kv = None
    if num_conditions:
        condition_kv = tuple(torch.randn(2, num_conditions, heads, head_dim) for _ in range(2))
    rope = rope_cos_sin(grid, head_dim, CPU)
    return kernels.attention_inputs(*projections, *weights, rope, condition_kv, heads, 1e-6)


@pytest.mark.parametrize("num_conditions", [0, 6])
@pytest.mark.parametrize("kernels", [TORCH_KERNELS, TRITON_KERNELS], ids=lambda k: k.name)
def test_kv_buffers_keep_the_layout_fast_kernels_require(kernels, num_conditions):
    """Last stride 1, head stride d, token stride heads * d, batch stride length * heads * d, offset 0:
    the dense layout cuDNN's SDPA requires and FA2/FA3 read directly; the length L + n is free."""
    if kernels is TRITON_KERNELS and not (triton_support.AVAILABLE and triton_support.INTERPRETED):
        pytest.skip("the Triton kernels need TRITON_INTERPRET=1 on the CPU (set by conftest without a GPU)")
    q, k, v = attention_buffers(kernels, num_conditions)
    assert k.shape[1] == v.shape[1] == q.shape[1] + num_conditions
    for tensor in (q, k, v):
        length, heads, head_dim = tensor.shape[1:]
        assert tensor.stride() == (length * heads * head_dim, heads * head_dim, head_dim, 1)
        assert tensor.storage_offset() == 0
    chosen = SDPBackend(torch._fused_sdp_choice(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))
    assert chosen == SDPBackend.FLASH_ATTENTION


def test_sdpa_probe_names_the_kernel_pytorch_picks():
    assert sdpa_kernel_for(CPU, torch.float32, heads=2, head_dim=16, num_conditions=6) == SDPBackend.FLASH_ATTENTION
    with torch.nn.attention.sdpa_kernel(SDPBackend.MATH):
        assert sdpa_kernel_for(CPU, torch.float32, heads=2, head_dim=16, num_conditions=6) == SDPBackend.MATH
        assert select_attention("auto", CPU, torch.float32, heads=2, head_dim=16) is MATH
        with pytest.raises(RemoverError, match="no fused SDPA kernel"):
            select_attention("sdpa", CPU, torch.float32, heads=2, head_dim=16)


def test_requested_backends_and_the_environment_variable(monkeypatch):
    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    assert select_attention("math", CPU, torch.float32, heads=2, head_dim=16) is MATH
    assert select_attention("sdpa", CPU, torch.float32, heads=2, head_dim=16).name == "sdpa (flash)"
    monkeypatch.setenv(ATTENTION_ENV, "math")
    assert select_attention(None, CPU, torch.float32, heads=2, head_dim=16) is MATH
    assert select_attention("sdpa", CPU, torch.float32, heads=2, head_dim=16).name == "sdpa (flash)"  # argument wins
    monkeypatch.setenv(ATTENTION_ENV, "fast")
    with pytest.raises(RemoverError, match=r"unknown attention backend 'fast' \(argument or \$RUNTIME_ATTENTION\)"):
        select_attention(None, CPU, torch.float32, heads=2, head_dim=16)


def test_flash_attn_on_the_cpu_is_a_clear_error():
    with pytest.raises(RemoverError, match="'flash-attn' is not available: it needs a CUDA device"):
        select_attention("flash-attn", CPU, torch.bfloat16, heads=12, head_dim=128)


def test_flash_attn_wrapper_passes_the_layout_through_and_drops_an_lse():
    """flash_attn_func takes [B, L, heads, d] as is; some FA3 releases return (out, lse)."""
    q, k, v = torch.randn(1, 5, 2, 8), torch.randn(1, 11, 2, 8), torch.randn(1, 11, 2, 8)
    for returns_lse in (False, True):

        def flash_attn_func(q, k, v, returns_lse=returns_lse):
            out = softmax_attention(q, k, v).float()
            return (out, torch.zeros(1)) if returns_lse else out

        backend = _flash_attn_backend("flash-attn test", SimpleNamespace(flash_attn_func=flash_attn_func))
        torch.testing.assert_close(backend.run(q, k, v), attention(q, k, v, MATH))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn and fused SDPA numerics need a CUDA device")
@pytest.mark.parametrize("num_conditions", [0, 6])
def test_gpu_backends_agree_with_math(num_conditions):
    device, dtype = torch.device("cuda"), torch.bfloat16
    q = torch.randn(1, 1023, 12, 128, device=device, dtype=dtype)
    k, v = (torch.randn(1, 1023 + num_conditions, 12, 128, device=device, dtype=dtype) for _ in range(2))
    expected = softmax_attention(q, k, v)
    for choice in ("auto", "sdpa", "math"):
        backend = select_attention(choice, device, dtype, heads=12, head_dim=128, num_conditions=num_conditions)
        assert backend.name != "math" or choice == "math"
        error = (attention(q, k, v, backend).double() - expected).abs().max().item()
        assert error < 2e-2, f"{backend.name}: {error}"
