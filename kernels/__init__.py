"""Fused Triton kernels for the transformer's elementwise steps, each beside its PyTorch reference.

The transformer calls these steps through one `KernelOps` table: `TORCH_KERNELS` (the references:
the model's own unfused computation, the default, and the only one that trains) or
`TRITON_KERNELS` (the kernels, as torch.library custom ops with fake implementations, so
torch.compile and torch.export trace them). `runtime.execution.choices.resolve_kernels` picks one.

- attention_inputs: RMSNorm across heads + RoPE on q and k, condition-token K/V appended
- modulated_layer_norm: LayerNorm (no affine) + adaLN modulation, alone or after a gated residual
- gated_residual: x + gate * y
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from kernels import attention_inputs, gated_residual, modulated_layer_norm


@dataclass(frozen=True)
class KernelOps:
    """One implementation of each fused step of a transformer block (same signatures in both)."""

    name: str
    attention_inputs: Callable[..., tuple[Tensor, Tensor, Tensor]]
    modulated_layer_norm: Callable[..., Tensor]
    residual_modulated_layer_norm: Callable[..., tuple[Tensor, Tensor]]
    gated_residual: Callable[..., Tensor]


TORCH_KERNELS = KernelOps(
    "torch",
    attention_inputs.attention_inputs_reference,
    modulated_layer_norm.modulated_layer_norm_reference,
    modulated_layer_norm.residual_modulated_layer_norm_reference,
    gated_residual.gated_residual_reference,
)
TRITON_KERNELS = KernelOps(
    "triton",
    attention_inputs.attention_inputs,
    modulated_layer_norm.modulated_layer_norm,
    modulated_layer_norm.residual_modulated_layer_norm,
    gated_residual.gated_residual,
)
