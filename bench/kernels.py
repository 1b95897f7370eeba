"""Each fused Triton kernel against its unfused PyTorch reference (the runtime's default path).

    python -m bench.kernels [--size real|tiny] [--dtype bf16|fp32] [--reps 20]
    python -m bench.kernels --compile-only 90     # no GPU needed: compile every kernel for sm_90

On a GPU, the real sizes (B=1, L=32760 = 21 x 30 x 52 tokens of an 81-frame 480x832 clip, 12 heads
x 128, D=1536, 6 condition tokens): milliseconds per call (CUDA events, after warm-up), the speed-up
and the fused kernel's achieved bandwidth over the bytes it must move. On the CPU the kernels run
in Triton's interpreter at tiny sizes, only so this script and the kernels do not rot: those
timings are NOT performance figures. Every run also checks the fused output against the reference.
--compile-only compiles the kernels for a GPU architecture through Triton's ahead-of-time path
(frontend, LLVM, ptxas), which catches errors the interpreter accepts.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

SIZES = {  # (batch, latent grid (frames, rows, columns) after patching, heads, head_dim)
    "real": (1, (21, 30, 52), 12, 128),
    "tiny": (1, (1, 3, 5), 2, 32),
}
NUM_CONDITIONS = 6
EPS = 1e-6
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class Case:
    name: str
    reference: Callable[[], object]
    fused: Callable[[], object]
    bytes_moved: int  # the least traffic the step needs: each input read once, each output written once


def cases(size: str, dtype: torch.dtype, device: torch.device) -> list[Case]:
    """The transformer's fused steps on random inputs of one size."""
    from kernels import TORCH_KERNELS, TRITON_KERNELS
    from runtime.models.transformer import rope_cos_sin

    batch, grid, heads, head_dim = SIZES[size]
    dim, seq_len = heads * head_dim, grid[0] * grid[1] * grid[2]
    element = torch.empty((), dtype=dtype).element_size()
    rows = batch * seq_len * dim * element  # bytes of one [B, L, D] activation

    def randn(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(shape, device=device, dtype=dtype)

    q, k, v, x, y = (randn(batch, seq_len, dim) for _ in range(5))
    weights = (1 + 0.1 * randn(dim), 1 + 0.1 * randn(dim))
    rope = rope_cos_sin(grid, head_dim, device)
    condition_kv = (randn(batch, NUM_CONDITIONS, heads, head_dim), randn(batch, NUM_CONDITIONS, heads, head_dim))
    shift, scale, gate = randn(batch, 6, dim, dtype=torch.float32).chunk(6, dim=1)[:3]
    condition_rows = 2 * batch * NUM_CONDITIONS * dim * element

    def attention_inputs(ops, extra):
        return lambda: ops.attention_inputs(q, k, v, *weights, rope, extra, heads, EPS)

    return [
        Case(
            "attention inputs, no tokens",
            attention_inputs(TORCH_KERNELS, None),
            attention_inputs(TRITON_KERNELS, None),
            4 * rows,
        ),
        Case(
            f"attention inputs + {NUM_CONDITIONS} tokens",
            attention_inputs(TORCH_KERNELS, condition_kv),
            attention_inputs(TRITON_KERNELS, condition_kv),
            6 * rows + 2 * condition_rows,
        ),
        Case(
            "modulated LayerNorm",
            lambda: TORCH_KERNELS.modulated_layer_norm(x, shift, scale, EPS),
            lambda: TRITON_KERNELS.modulated_layer_norm(x, shift, scale, EPS),
            2 * rows,
        ),
        Case(
            "gated residual + modulated LayerNorm",
            lambda: TORCH_KERNELS.residual_modulated_layer_norm(x, y, gate, shift, scale, EPS),
            lambda: TRITON_KERNELS.residual_modulated_layer_norm(x, y, gate, shift, scale, EPS),
            4 * rows,
        ),
        Case(
            "gated residual",
            lambda: TORCH_KERNELS.gated_residual(x, y, gate),
            lambda: TRITON_KERNELS.gated_residual(x, y, gate),
            3 * rows,
        ),
    ]


def milliseconds(function: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Mean time of one call: CUDA events on a GPU, the wall clock on the CPU."""
    for _ in range(warmup):
        function()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(reps):
            function()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / reps
    begin = time.perf_counter()
    for _ in range(reps):
        function()
    return (time.perf_counter() - begin) * 1e3 / reps


def max_difference(fused: object, reference: object) -> float:
    pairs = zip(fused, reference) if isinstance(fused, tuple) else [(fused, reference)]
    return max((a.float() - b.float()).abs().max().item() for a, b in pairs)


def run_benchmark(size: str, dtype: torch.dtype, device: torch.device, reps: int) -> None:
    batch, grid, heads, head_dim = SIZES[size]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, Triton interpreter"
    print(f"# bench.kernels: {where}; B={batch}, L={grid[0] * grid[1] * grid[2]} {grid}, {heads} heads x {head_dim}")
    print(f"# torch {torch.__version__}, dtype {dtype}, {reps} reps")
    if device.type != "cuda":
        print("# NOT a performance measurement: the interpreter only checks that the kernels still run")
    print(f"| {'step':<38} | reference ms | fused ms | speed-up | fused GB/s | max diff |")
    print(f"|{'-' * 40}|-------------:|---------:|---------:|-----------:|---------:|")
    for case in cases(size, dtype, device):
        warmup = 3 if device.type == "cuda" else 0
        reference_ms = milliseconds(case.reference, device, warmup, reps)
        fused_ms = milliseconds(case.fused, device, warmup, reps)
        difference = max_difference(case.fused(), case.reference())
        bandwidth = case.bytes_moved / fused_ms / 1e6
        print(
            f"| {case.name:<38} | {reference_ms:12.3f} | {fused_ms:8.3f} | {reference_ms / fused_ms:7.2f}x "
            f"| {bandwidth:10.1f} | {difference:8.2g} |"
        )


def compile_only(capability: int) -> None:
    """Compile every kernel specialization the runtime launches, for sm_<capability>, without a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import attention_inputs, gated_residual, modulated_layer_norm
    from kernels.triton_support import launch_options

    _, _, heads, head_dim = SIZES["real"]
    dim = heads * head_dim
    block = triton.next_power_of_2(dim)
    fp32_pointers = {"cos", "sin", "gate", "shift", "scale"}
    specializations = [
        (attention_inputs._attention_inputs_kernel, {"HALF_HEAD_DIM": head_dim // 2, "APPEND": True}),
        (attention_inputs._attention_inputs_kernel, {"HALF_HEAD_DIM": head_dim // 2, "APPEND": False}),
        (modulated_layer_norm._modulated_layer_norm_kernel, {"HAS_RESIDUAL": True}),
        (modulated_layer_norm._modulated_layer_norm_kernel, {"HAS_RESIDUAL": False}),
        (gated_residual._gated_residual_kernel, {}),
    ]
    target = GPUTarget("cuda", capability, 32)
    for dtype in ("bf16", "fp16", "fp32"):
        for kernel, constants in specializations:
            constants = {"DIM": dim, "BLOCK": block, **constants}
            signature = {}
            for name in kernel.arg_names:
                if name in constants:
                    signature[name] = "constexpr"
                elif name == "eps":
                    signature[name] = "fp32"
                elif name.endswith("stride") or name in ("seq_len", "num_conditions"):
                    signature[name] = "i64" if name.endswith("stride") else "i32"
                else:
                    signature[name] = "*fp32" if name in fp32_pointers else f"*{dtype}"
            start = time.perf_counter()
            compiled = triton.compile(
                ASTSource(kernel, signature, constants),
                target=target,
                options=launch_options(block),
            )
            flags = ", ".join(f"{k}={v}" for k, v in constants.items() if k not in ("DIM", "BLOCK"))
            print(
                f"sm_{capability} {dtype:<4} {kernel.__name__}({flags}): cubin {len(compiled.asm['cubin'])} bytes "
                f"in {time.perf_counter() - start:.1f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), help="default: real on a GPU, tiny on the CPU")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--reps", type=int, help="default: 20 on a GPU, 1 on the CPU")
    parser.add_argument("--compile-only", type=int, metavar="SM", help="compile for this compute capability (90)")
    args = parser.parse_args()
    # Triton fixes compiled vs interpreted when kernels/ is imported: decide before importing it
    if args.compile_only is not None:
        os.environ["TRITON_INTERPRET"] = "0"
        compile_only(args.compile_only)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    torch.manual_seed(0)
    size = args.size or ("real" if device.type == "cuda" else "tiny")
    reps = args.reps or (20 if device.type == "cuda" else 1)
    with torch.inference_mode():
        run_benchmark(size, DTYPES[args.dtype], device, reps)


if __name__ == "__main__":
    main()
