"""Load the model that ModelOptions name: a checkpoint's PyTorch modules or an engine bundle."""

from __future__ import annotations

import torch

from runtime.demo import DEMO_WEIGHTS
from runtime.errors import RemoverError
from runtime.options import ModelOptions
from runtime.pipeline.remover import Remover


def resolve_device(name: str | None) -> torch.device | None:
    """A torch device from its name, checked to exist here (None stays None: the default device)."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RemoverError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RemoverError("CUDA is not available on this machine; use --device cpu")
    return device


def load_remover(options: ModelOptions, device: torch.device | None = None) -> Remover:
    """The Remover `options` name, on `device` (default: options.device, else CUDA when available)."""
    device = device or resolve_device(options.device)
    if options.engine is not None:
        return Remover.from_bundle(
            options.engine,
            options.engine_runtime,
            device,
            weights=options.weights,
            vae=options.vae,
            sampler=options.sampler,
        )
    return Remover.from_pretrained(
        options.weights or DEMO_WEIGHTS,
        device,
        options.dtype,
        vae=options.vae,
        sampler=options.sampler,
        kernels=options.kernels,
        attention=options.attention,
        compile_mode=options.compile,
    )


def describe_loaded(remover: Remover, options: ModelOptions) -> str:
    """The line a run prints once the model is loaded: what it is, where and in which dtype."""
    source = f"bundle {options.engine}" if options.engine else f"weights {options.weights or DEMO_WEIGHTS}"
    return f"{source} on {remover.device} in {str(remover.dtype).removeprefix('torch.')}"
