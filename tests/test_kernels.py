"""Each Triton kernel against its PyTorch reference: compiled on a GPU, or in Triton's interpreter on
the CPU (conftest.py sets TRITON_INTERPRET=1 for the session when there is no GPU).

Inputs are drawn from a fixed seed (conftest.py: Seeds; the seed is in every failure message); sequence lengths are odd
and the model dim is not a power of two, so the kernels' masks matter. Every output is allocated
poisoned (NaN) by the kernel's own torch.empty, so an element a kernel forgets to write fails.
fp32 must match the reference to fp32 rounding. bf16 is judged against the exact (fp32) result: the
kernel's error may be at most BF16_ERROR_FACTOR times the bf16 reference's own error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import fixed_seed, relative_error

from kernels import TORCH_KERNELS, TRITON_KERNELS, triton_support
from kernels.attention_inputs import qk_norm_rope, qk_norm_rope_append_kv
from kernels.gated_residual import gated_residual
from kernels.modulated_layer_norm import modulated_layer_norm, residual_modulated_layer_norm
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer, rope_cos_sin
from runtime.models.weights import load_transformer

REPO = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if not triton_support.AVAILABLE:
    pytest.skip("triton is not installed (pip install -e .[test])", allow_module_level=True)
if DEVICE.type == "cpu" and not triton_support.INTERPRETED:
    pytest.skip("no GPU and TRITON_INTERPRET=1 was not set before kernels/ was imported", allow_module_level=True)

EPS = 1e-6
# flash-attention's rule: at most 2x the error of the same-dtype PyTorch computation. (The kernels
# round to nearest even in the interpreter too, see triton_support.cast_rounded, so this holds there.)
BF16_ERROR_FACTOR = 2.0
# (grid whose product is the odd sequence length L, heads, head_dim): D = 48 is no power of two
SHAPES = [((1, 3, 5), 3, 16), ((3, 1, 7), 2, 32)]


@pytest.fixture(autouse=True)
def poisoned_outputs():
    """With deterministic algorithms on, torch.empty fills floats with NaN (fill_uninitialized_memory);
    warn_only, so cuBLAS (the model tests' matmuls on a GPU) warns instead of refusing to run."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert torch.empty(8, device=DEVICE).isnan().all(), "output poisoning is not active"
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.fixture
def seed() -> int:
    value = fixed_seed()
    torch.manual_seed(value)
    return value


def check(actual: torch.Tensor, reference: torch.Tensor, exact: torch.Tensor, what: str) -> None:
    """`actual` (kernel) against `reference` (PyTorch, same dtype) and `exact` (fp32 computation)."""
    assert actual.shape == reference.shape and actual.dtype == reference.dtype, what
    assert not actual.isnan().any(), f"{what}: {int(actual.isnan().sum())} elements never written"
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, reference, msg=lambda m: f"{what}: {m}")
        return
    kernel_error = (actual.double() - exact.double()).abs().max().item()
    reference_error = (reference.double() - exact.double()).abs().max().item()
    assert kernel_error <= BF16_ERROR_FACTOR * reference_error + 1e-6, (
        f"{what}: max error {kernel_error:.3g} vs the bf16 reference's {reference_error:.3g}"
    )


def draw_attention_inputs(grid, heads, head_dim, num_conditions, batch, dtype):
    dim = heads * head_dim
    seq_len = grid[0] * grid[1] * grid[2]
    projections = [torch.randn(batch, seq_len, dim, device=DEVICE).to(dtype) for _ in range(3)]
    weights = [(0.5 + torch.rand(dim, device=DEVICE)).to(dtype) for _ in range(2)]
    rope = rope_cos_sin(grid, head_dim, DEVICE)
    condition_kv = None
    if num_conditions:
        # the model's cache indexed by condition: one row per sample, here drawn for two conditions
        cached = [torch.randn(2, num_conditions, heads, head_dim, device=DEVICE).to(dtype) for _ in range(2)]
        conditions = torch.tensor([1, 0, 1][:batch], device=DEVICE)
        condition_kv = (cached[0][conditions], cached[1][conditions])
    return projections, weights, rope, condition_kv


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("num_conditions", [0, 6])
@pytest.mark.parametrize(("grid", "heads", "head_dim"), SHAPES)
def test_attention_inputs(seed, dtype, num_conditions, grid, heads, head_dim):
    (q_proj, k_proj, v_proj), (q_weight, k_weight), rope, condition_kv = draw_attention_inputs(
        grid, heads, head_dim, num_conditions, 2, dtype
    )
    args = (q_proj, k_proj, v_proj, q_weight, k_weight, rope, condition_kv, heads, EPS)
    actual = TRITON_KERNELS.attention_inputs(*args)
    reference = TORCH_KERNELS.attention_inputs(*args)
    exact_condition_kv = None if condition_kv is None else tuple(t.float() for t in condition_kv)
    exact = TORCH_KERNELS.attention_inputs(
        *(t.float() for t in (q_proj, k_proj, v_proj, q_weight, k_weight)), rope, exact_condition_kv, heads, EPS
    )
    seq_len = q_proj.shape[1]
    for name, a, r, e in zip("qkv", actual, reference, exact):
        check(a, r, e, f"{name} (seed {seed})")
    # V and the condition rows are copies: bit-exact
    assert torch.equal(actual[2], reference[2]), f"seed {seed}"
    assert torch.equal(actual[1][:, seq_len:], reference[1][:, seq_len:]), f"seed {seed}"


def test_attention_inputs_read_strided_projections(seed):
    """Projections that are column slices of a fused [B, L, 3D] output (row stride 3D)."""
    grid, heads, head_dim = (1, 3, 5), 3, 16
    (_, _, v_proj), (q_weight, k_weight), rope, condition_kv = draw_attention_inputs(
        grid, heads, head_dim, 6, 1, torch.float32
    )
    fused = torch.randn(1, 15, 3 * heads * head_dim, device=DEVICE)
    q_proj, k_proj = fused[..., : heads * head_dim], fused[..., heads * head_dim : 2 * heads * head_dim]
    args = (q_proj, k_proj, v_proj, q_weight, k_weight, rope, condition_kv, heads, EPS)
    for a, r in zip(TRITON_KERNELS.attention_inputs(*args), TORCH_KERNELS.attention_inputs(*args)):
        torch.testing.assert_close(a, r, msg=lambda m: f"seed {seed}: {m}")


def draw_modulation(batch, dim):
    """shift, scale, gate [B, 1, D] fp32, as the blocks slice them from [B, 6, D] (batch stride 6 D)."""
    return (0.5 * torch.randn(batch, 6, dim, device=DEVICE)).chunk(6, dim=1)[:3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("seq_len", "dim"), [(35, 48), (21, 64)])
def test_modulated_layer_norm(seed, dtype, seq_len, dim):
    # the first block's input is the patch embedding's transposed view (its last dim is strided)
    x = (3.0 + 2.0 * torch.randn(2, dim, seq_len, device=DEVICE)).to(dtype).transpose(1, 2)
    shift, scale, _ = draw_modulation(2, dim)
    check(
        modulated_layer_norm(x, shift, scale, EPS),
        TORCH_KERNELS.modulated_layer_norm(x, shift, scale, EPS),
        TORCH_KERNELS.modulated_layer_norm(x.float(), shift, scale, EPS),
        f"seed {seed}",
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("seq_len", "dim"), [(35, 48), (21, 64)])
def test_residual_modulated_layer_norm(seed, dtype, seq_len, dim):
    x, y = (torch.randn(2, seq_len, dim, device=DEVICE).to(dtype) for _ in range(2))
    shift, scale, gate = draw_modulation(2, dim)
    actual = residual_modulated_layer_norm(x, y, gate, shift, scale, EPS)
    reference = TORCH_KERNELS.residual_modulated_layer_norm(x, y, gate, shift, scale, EPS)
    exact = TORCH_KERNELS.residual_modulated_layer_norm(x.float(), y.float(), gate, shift, scale, EPS)
    for name, a, r, e in zip(("stream", "normed"), actual, reference, exact):
        check(a, r, e, f"{name} (seed {seed})")
    if dtype == torch.bfloat16:  # the norm must see the stream as stored (rounded), like the reference
        torch.testing.assert_close(actual[1], TORCH_KERNELS.modulated_layer_norm(actual[0], shift, scale, EPS))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("seq_len", "dim"), [(35, 48), (21, 64)])
def test_gated_residual(seed, dtype, seq_len, dim):
    x, y = (torch.randn(2, seq_len, dim, device=DEVICE).to(dtype) for _ in range(2))
    _, _, gate = draw_modulation(2, dim)
    check(
        gated_residual(x, y, gate),
        TORCH_KERNELS.gated_residual(x, y, gate),
        TORCH_KERNELS.gated_residual(x.float(), y.float(), gate),
        f"seed {seed}",
    )


def test_custom_ops_trace_through_their_fake_implementations(seed):
    """opcheck: schema, fake-tensor (torch.compile / export) and AOT dispatch with dynamic shapes."""
    torch.use_deterministic_algorithms(False)  # opcheck's dynamic-shape path re-allocates freely
    (q_proj, k_proj, v_proj), (q_weight, k_weight), (cos, sin), (cond_k, cond_v) = draw_attention_inputs(
        (1, 3, 5), 3, 16, 6, 2, torch.float32
    )
    x, y = torch.randn(2, 15, 48, device=DEVICE), torch.randn(2, 15, 48, device=DEVICE)
    shift, scale, gate = draw_modulation(2, 48)
    cases = [
        (qk_norm_rope, (q_proj, k_proj, q_weight, k_weight, cos, sin, 3, EPS)),
        (qk_norm_rope_append_kv, (q_proj, k_proj, v_proj, q_weight, k_weight, cos, sin, cond_k, cond_v, EPS)),
        (modulated_layer_norm, (x, shift, scale, EPS)),
        (residual_modulated_layer_norm, (x, y, gate, shift, scale, EPS)),
        (gated_residual, (x, y, gate)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


# --- the whole transformer through the Triton path ------------------------------------------


@pytest.mark.slow
def test_transformer_on_the_fixture_through_triton(checkpoint, expected):
    model = load_transformer(checkpoint / "transformer", DEVICE, torch.float32)
    latents, timestep = expected["dit_input"].to(DEVICE), expected["dit_timestep"].to(DEVICE)
    with torch.no_grad():
        unfused = model(latents, timestep)
        model.use_backends(TRITON_KERNELS)
        fused = model(latents, timestep)
    assert not fused.isnan().any()
    assert relative_error(fused.cpu(), expected["dit_output"]) < 1e-4  # the fixture's fp32 tolerance
    assert relative_error(fused, unfused) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_transformer_with_condition_tokens_through_triton(seed, dtype):
    """A random config with 6 condition tokens, a batch of the two conditions, odd L = 3 x 1 x 5."""
    config = replace(
        RELEASED_TRANSFORMER,
        num_attention_heads=3,
        attention_head_dim=16,
        ffn_dim=40,
        num_layers=2,
        num_condition_tokens=6,
    )
    model = RemoverTransformer(config).to(DEVICE).eval()
    model.cache_condition_kv()
    latents, timestep = torch.randn(2, 48, 3, 2, 10, device=DEVICE), torch.tensor([700.0, 80.0], device=DEVICE)
    conditions = torch.tensor([0, 1], device=DEVICE)
    with torch.no_grad():
        exact = model(latents, timestep, conditions)
        model.to(dtype).cache_condition_kv()
        unfused = model(latents.to(dtype), timestep, conditions)
        model.use_backends(TRITON_KERNELS)
        fused = model(latents.to(dtype), timestep, conditions)
    assert not fused.isnan().any(), f"seed {seed}"
    if dtype == torch.float32:
        assert relative_error(fused, unfused) < 1e-5, f"seed {seed}"
    else:
        error, reference_error = relative_error(fused, exact), relative_error(unfused, exact)
        assert error <= BF16_ERROR_FACTOR * reference_error, f"seed {seed}: {error:.3g} vs {reference_error:.3g}"


# --- the GPU build and the benchmark, checked from the CPU -------------------------------------


@pytest.mark.slow
def test_kernels_compile_for_hopper():
    """Triton's ahead-of-time path (frontend, LLVM, ptxas) for sm_90: catches what the interpreter
    accepts but the compiler rejects (e.g. a variable typed differently in two branches)."""
    result = run_module("bench.kernels", "--compile-only", "90")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("sm_90") == 15  # 5 specializations x (bf16, fp16, fp32)


@pytest.mark.slow
def test_kernel_benchmark_runs():
    """Tiny sizes in the interpreter on the CPU (labelled as no measurement), real sizes on a GPU."""
    result = run_module("bench.kernels", "--dtype", "bf16")
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("NOT a performance measurement" in result.stdout) == (DEVICE.type == "cpu")
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    assert len(rows) == 5
    # a gross-error guard (the kernel tests hold the numerics): a bf16 ulp at |x| ~ 10 is 0.06
    assert all(float(row.split("|")[-2]) < 0.5 for row in rows), result.stdout


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TRITON_DEFAULT_FP_FUSION": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=600
    )
