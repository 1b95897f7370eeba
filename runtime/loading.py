"""Load the model that ModelOptions name: a checkpoint's PyTorch modules or an engine bundle."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from runtime.demo import DEMO_WEIGHTS
from runtime.execution.choices import resolve_device
from runtime.hub import is_hub_id, resolve
from runtime.models.taehv import VAE_DECODER
from runtime.options import ModelOptions
from runtime.pipeline.remover import Remover


def local_weights(name: str | None, what: str) -> str | None:
    """`name` as a local path: itself when it exists or is not a hub id, else the hub snapshot folder of
    that id (from the cache, downloaded when online and missing; runtime/hub.py)."""
    if name is None or Path(name).expanduser().exists() or not is_hub_id(name):
        return name
    return str(resolve(name, None, what))


def load_remover(options: ModelOptions, device: torch.device | None = None) -> Remover:
    """The Remover `options` name, on `device` (default: options.device, else CUDA when available).
    `weights` and `vae` may be hub ids (owner/name)."""
    device = device or resolve_device(options.device)
    options = replace(
        options,
        weights=local_weights(options.weights, "the remover's weights"),
        vae=local_weights(options.vae, "the VAE's weights"),
    )
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
        decoder=options.decoder,
        decoder_weights=options.decoder_weights,
    )


def describe_loaded(remover: Remover, options: ModelOptions) -> str:
    """The line a run prints once the model is loaded: what it is, where and in which dtype."""
    source = f"bundle {options.engine}" if options.engine else f"weights {options.weights or DEMO_WEIGHTS}"
    decoder = "" if options.decoder == VAE_DECODER else f", decoder {options.decoder}"
    return f"{source}{decoder} on {remover.device} in {str(remover.dtype).removeprefix('torch.')}"
