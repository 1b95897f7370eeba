"""The three heavy stages of the pipeline behind one interface: VAE encode, transformer, VAE decode.

`Remover` strings preprocessing, these stages and paste-back together; only the stages change
implementation: `TorchStages` runs the PyTorch modules, `runtime.engines.bundle.BundleStages` runs the
exported graphs of an engine bundle (ONNX Runtime, TensorRT or AOTInductor). The sampler loop,
`denoise_loop`, exists once: the pipeline runs it over either implementation's `velocity`, and the
exporter traces it to unroll the whole sampler into one graph.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from runtime.models.taehv import TAEHVDecoder
from runtime.models.transformer import RemoverTransformer, TransformerConfig
from runtime.models.vae import VAEConfig, WanVAE
from runtime.pipeline.samplers import FlowSampler

# (model input [B, 3 z_dim, T', h, w], timestep [B]) -> velocity [B, z_dim, T', h, w]
VelocityFn = Callable[[Tensor, Tensor], Tensor]


def denoise_loop(
    velocity: VelocityFn, sampler: FlowSampler, noise: Tensor, context: Tensor, progress: bool = False
) -> Tensor:
    """Run `sampler` from noise [1, z_dim, T', h, w] (fp32) to clean latents (fp32).

    Each step the model sees noisy latents | context latents, both in the context's dtype (the
    model's), and the sampler's update runs in fp32.
    """
    latents = noise
    for timestep in tqdm(sampler.timesteps, desc="denoise", leave=False, disable=not progress):
        model_input = torch.cat([latents.to(context.dtype), context], dim=1)
        latents = sampler.step(velocity(model_input, timestep.to(noise.device, torch.float32).expand(1)), latents)
    return latents


class Stages(ABC):
    """Encode, velocity and decode: the work a `Remover` delegates, whatever runs it."""

    transformer_config: TransformerConfig
    vae_config: VAEConfig

    @abstractmethod
    def iter_encode(self, videos: Tensor) -> Iterator[Tensor]:
        """Stream videos [B, 3, F, H, W] (fp32 in [-1, 1], F = 4k+1) -> normalized latent chunks (fp32)."""

    @abstractmethod
    def velocity(self, model_input: Tensor, timestep: Tensor, condition: Tensor | int | None = None) -> Tensor:
        """The transformer's velocity for model input [B, 3 z_dim, T', h, w] at timestep [B];
        `condition` selects the condition tokens of models that have them (0 remove, 1 regenerate)."""

    @abstractmethod
    def iter_decode(self, latents: Tensor) -> Iterator[Tensor]:
        """Stream normalized latents [1, z_dim, T', h, w] -> video chunks [1, 3, t, H, W] (fp32 in [-1, 1])."""

    def unrolled_sampler(self, sampler: str, num_steps: int) -> Callable[[Tensor, Tensor], Tensor] | None:
        """A single call (noise, context) -> clean latents that runs this whole schedule, if these
        stages have one (an exported graph with the sampler unrolled); None otherwise."""
        return None

    def check_size(self, frames: int, height: int, width: int) -> None:  # noqa: B027 (any size by default)
        """Raise a RemoverError if these stages cannot run a clip of this padded size."""

    @property
    def window_frames(self) -> tuple[int, bool] | None:
        """(frames, exact) a call can take after padding to 4k+1, exactly or at most, or None for any
        length (engine bundles are exported for a frame count)."""
        return None

    @property
    def default_size(self) -> tuple[int, int] | None:
        """The (height, width) a call uses when the caller gives neither (None: derive it from the input)."""
        return None

    @property
    @abstractmethod
    def backends(self) -> str:
        """What runs the stages, for the run summary."""


class TorchStages(Stages):
    """The stages on the PyTorch modules (any shape, condition tokens and guidance supported); with
    `decoder`, a light decoder (runtime/models/taehv.py) decodes instead of the VAE's own."""

    def __init__(self, transformer: RemoverTransformer, vae: WanVAE, decoder: TAEHVDecoder | None = None) -> None:
        self.transformer = transformer
        self.vae = vae
        self.decoder = decoder
        self.transformer_config = transformer.config
        self.vae_config = vae.config

    def iter_encode(self, videos: Tensor) -> Iterator[Tensor]:
        return self.vae.iter_encode(videos)

    def velocity(self, model_input: Tensor, timestep: Tensor, condition: Tensor | int | None = None) -> Tensor:
        return self.transformer(model_input, timestep, condition)

    def iter_decode(self, latents: Tensor) -> Iterator[Tensor]:
        return (self.vae if self.decoder is None else self.decoder).iter_decode(latents)

    @property
    def backends(self) -> str:
        """The transformer's attention backend and kernels: "attention sdpa (flash), kernels torch", and
        ", light decoder" when one decodes."""
        summary = f"attention {self.transformer.attention_backend.name}, kernels {self.transformer.kernels.name}"
        return summary if self.decoder is None else f"{summary}, light decoder"
