"""What runs the model, each choice made and validated once here: the device and dtype, the
transformer's fused kernels (Triton or the PyTorch references), the attention backend
(runtime/execution/attention.py) and the compile mode.

On CUDA the fast choices are never trusted blindly: `verified_backends` runs a one-block model of the
loaded model's shape with the chosen kernels and attention against the references (PyTorch kernels,
SDPA's math kernel) on the user's device and dtype. A choice that raises or disagrees beyond the
dtype's tolerance is replaced by the next safer one with one warning line saying what failed. The
verdict is cached per (GPU, library versions, dtype, choice), so the check runs once per machine.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from kernels import TORCH_KERNELS, TRITON_KERNELS, KernelOps, triton_support
from runtime.errors import RemoverError, RemoverWarning
from runtime.execution.attention import MATH, SDPA, AttentionBackend
from runtime.io.outputs import write_atomically
from runtime.models.transformer import RemoverTransformer, TransformerConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KERNELS_ENV = "RUNTIME_KERNELS"
KERNEL_CHOICES = ("auto", "triton", "torch")
# The denoising step's model call, optionally compiled (gpt-fast style: around the model, not in it)
COMPILE_MODES = {"off": None, "inductor": "default", "cuda-graphs": "reduce-overhead"}
# Relative L2 a verified choice may differ from the references by, on the same one-block model in
# the same dtype: rounding differences are far below it, a wrong kernel is O(1) or NaN.
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
CHECK_CACHE_ENV = "RUNTIME_SELF_CHECK_CACHE"  # the verdicts file; default ~/.cache/minimax-remover/self-check.json


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on, checked to exist here: "cpu", "cuda" or "cuda:N" (None: the GPU if there
    is one). Another kind ("meta", "mps", ...) or a GPU this machine lacks is a RemoverError."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise RemoverError(f"unknown device {device!r}: use cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise RemoverError(f"device {device.type!r} cannot run the model: use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RemoverError("CUDA is not available on this machine: use the cpu device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RemoverError(f"there is no {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp16 on GPU (the released weights' dtype, and 10x closer to the fp32 reference than bf16; see
    the README) and fp32 on the CPU unless given ("fp32", "bf16", "fp16" or a torch dtype)."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise RemoverError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_kernels(choice: str | None, device: torch.device) -> KernelOps:
    """The transformer's fused steps: `choice` ("auto", "triton", "torch"), else $RUNTIME_KERNELS, else
    "auto" = Triton on CUDA (when installed), the PyTorch references elsewhere."""
    choice = choice or os.environ.get(KERNELS_ENV) or "auto"
    if choice not in KERNEL_CHOICES:
        raise RemoverError(f"unknown kernels {choice!r} (argument or ${KERNELS_ENV}); choose one of {KERNEL_CHOICES}")
    if choice == "auto":
        compiled = device.type == "cuda" and triton_support.AVAILABLE and not triton_support.INTERPRETED
        return TRITON_KERNELS if compiled else TORCH_KERNELS
    if choice == "torch":
        return TORCH_KERNELS
    if not triton_support.AVAILABLE:
        raise RemoverError("kernels 'triton' need the triton package (pip install triton)")
    if device.type == "cpu" and not triton_support.INTERPRETED:
        raise RemoverError(
            "kernels 'triton' on the CPU run only in Triton's interpreter: start with TRITON_INTERPRET=1 "
            "(slow, meant for tests), or use kernels 'torch'"
        )
    if device.type not in ("cuda", "cpu"):
        raise RemoverError(f"kernels 'triton' need a CUDA device, not {device.type}")
    return TRITON_KERNELS


def check_compile_mode(mode: str, device: torch.device) -> None:
    """A RemoverError unless `mode` is one of COMPILE_MODES and can run on `device`."""
    if mode not in COMPILE_MODES:
        raise RemoverError(f"unknown compile mode {mode!r}; choose one of {sorted(COMPILE_MODES)}")
    if mode == "cuda-graphs" and device.type != "cuda":
        raise RemoverError("compile mode 'cuda-graphs' needs a CUDA device")


# --- the self-check -----------------------------------------------------------------------------


def _probe_model(config: TransformerConfig, device: torch.device, dtype: torch.dtype) -> RemoverTransformer:
    """One block of the model's shape (heads, head dim, condition tokens), seeded random weights."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = RemoverTransformer(replace(config, num_layers=1, ffn_dim=256)).to(device, dtype).eval()
        model.cache_condition_kv()
    return model


def _probe_output(
    model: RemoverTransformer, kernels: KernelOps, attention: AttentionBackend, device: torch.device
) -> torch.Tensor:
    """The probe model's fp32 output on fixed latents (an odd token count: 3 x 3 x 5) with these backends."""
    config = model.config
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, config.in_channels, 3, 6, 10, generator=generator)
    model.use_backends(kernels, attention)
    with torch.inference_mode():
        condition = 0 if config.num_condition_tokens else None
        dtype = model.proj_out.weight.dtype
        out = model(latents.to(device, dtype), torch.tensor([500.0], device=device), condition)
    return out.float()


def _problem(
    model: RemoverTransformer, kernels: KernelOps, attention: AttentionBackend, reference: torch.Tensor
) -> str | None:
    """What went wrong with (kernels, attention) here, or None when they agree with `reference`."""
    device, dtype = model.proj_out.weight.device, model.proj_out.weight.dtype
    try:
        out = _probe_output(model, kernels, attention, device)
    except Exception as exc:  # a compile or launch failure is a verdict, not a crash
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return type(exc).__name__ + (f": {first_line}" if first_line else "")
    if not torch.isfinite(out).all():
        return "non-finite output"
    error = float((out - reference).norm() / reference.norm())
    if error > CHECK_TOLERANCE[dtype]:
        return f"relative error {error:.2g} against the PyTorch reference, tolerance {CHECK_TOLERANCE[dtype]:g}"
    return None


def _versions() -> str:
    found = []
    for package in ("torch", "triton", "flash-attn", "flash_attn_3"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def _cache_path() -> Path:
    if CHECK_CACHE_ENV in os.environ:
        return Path(os.environ[CHECK_CACHE_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "minimax-remover" / "self-check.json"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return (
            f"{torch.cuda.get_device_name(device)} (sm {'.'.join(map(str, torch.cuda.get_device_capability(device)))})"
        )
    return device.type


def verified_backends(
    kernels: KernelOps,
    attention: AttentionBackend,
    config: TransformerConfig,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[KernelOps, AttentionBackend]:
    """`kernels` and `attention` if they agree with the references on a one-block model of `config`'s
    shape on `device` in `dtype`; otherwise the failing one replaced (Triton kernels by the PyTorch
    references; flash-attn by PyTorch's SDPA, SDPA's fused kernels by its math kernel), each with
    one warning line. Verdicts are cached (see CHECK_CACHE_ENV); nothing is checked when both are
    already the references."""
    if kernels is TORCH_KERNELS and attention.name == MATH.name:
        return kernels, attention
    shape = f"heads {config.num_attention_heads}x{config.attention_head_dim}, {config.num_condition_tokens} tokens"
    key = f"{_device_name(device)}; {_versions()}; {dtype}; kernels {kernels.name}; attention {attention.name}; {shape}"
    path = _cache_path()
    try:
        verdicts = json.loads(path.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if key not in verdicts:
        model = _probe_model(config, device, dtype)
        reference = _probe_output(model, TORCH_KERNELS, MATH, device)
        check_kernels, check_attention = kernels is not TORCH_KERNELS, attention.name != MATH.name
        verdicts[key] = {
            "kernels": _problem(model, kernels, MATH, reference) if check_kernels else None,
            "attention": _problem(model, TORCH_KERNELS, attention, reference) if check_attention else None,
        }
        _save(path, verdicts)
    verdict = verdicts[key]
    where = f"on {_device_name(device)} in {str(dtype).removeprefix('torch.')}"
    if verdict["kernels"]:
        message = (
            f"self-check: the {kernels.name} kernels failed {where} ({verdict['kernels']}): using the PyTorch kernels"
        )
        warnings.warn(message, RemoverWarning, stacklevel=2)
        kernels = TORCH_KERNELS
    if verdict["attention"]:
        fallback = SDPA if attention.name.startswith("flash-attn") else MATH
        message = (
            f"self-check: attention {attention.name} failed {where} ({verdict['attention']}): using {fallback.name}"
        )
        warnings.warn(message, RemoverWarning, stacklevel=2)
        if fallback is SDPA:  # checked in turn: its fused kernels may fail too
            fallback = verified_backends(TORCH_KERNELS, SDPA, config, device, dtype)[1]
        attention = fallback
    return kernels, attention


def _save(path: Path, verdicts: dict) -> None:
    """Write the verdicts file atomically (a cache: failing to write it only means checking again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda to: to.write_text(json.dumps(verdicts, indent=1)))
    except OSError:
        pass
