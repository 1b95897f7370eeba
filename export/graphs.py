"""What gets exported: the six bundle graphs as modules with sample inputs (demoDiffusion-style descriptors).

Every graph wraps the one model definition in runtime/models and the one sampler loop in
runtime/pipeline/stages.py; nothing here re-implements the model. Inputs and outputs are fp32 and each
wrapper casts to the weights' dtype exactly where the PyTorch pipeline does, so the graphs compute what
`Remover` computes in that dtype. Graph names, shapes and the cache order are described in
runtime/engines/bundle.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from runtime.engines.bundle import ENCODE_BATCH, NEXT_CHUNK_FRAMES
from runtime.engines.graph_spec import GraphSpec, TensorSpec
from runtime.models.scheduler import SchedulerConfig
from runtime.models.transformer import RemoverTransformer, rope_cos_sin
from runtime.models.vae import TemporalCache, WanVAE
from runtime.pipeline.samplers import make_sampler
from runtime.pipeline.stages import denoise_loop

LATENT_FRAMES_AXIS = "latent_frames"


@dataclass
class ExportGraph:
    """One graph to export: the module, named sample inputs (call order), output names, dynamic axes."""

    name: str
    module: nn.Module
    inputs: dict[str, Tensor]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)  # input -> {axis: name}
    cache_layers: tuple[str, ...] = ()

    def reference_outputs(self) -> list[Tensor]:
        """The PyTorch module's outputs on the sample inputs."""
        with torch.no_grad():
            outputs = self.module(*self.inputs.values())
        return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]

    def spec(self, outputs: list[Tensor]) -> GraphSpec:
        """Names and shapes of the inputs and of `outputs` (dynamic axes by name), for the manifest."""

        def shape(name: str, tensor: Tensor, axes: dict[int, str]) -> TensorSpec:
            return TensorSpec(name, tuple(axes.get(i, n) for i, n in enumerate(tensor.shape)))

        # the DiT graphs' outputs share the inputs' dynamic frame axis, at the same position
        output_axes = next(iter(self.dynamic_axes.values()), {})
        return GraphSpec(
            tuple(shape(n, t, self.dynamic_axes.get(n, {})) for n, t in self.inputs.items()),
            tuple(shape(n, t, output_axes) for n, t in zip(self.output_names, outputs)),
            self.cache_layers,
        )


# --- the transformer ------------------------------------------------------------------------------


class DiTStep(nn.Module):
    """latents [1, 3z, T, h, w] and timestep [1] (fp32) -> velocity [1, z, T, h, w] (fp32)."""

    def __init__(self, transformer: RemoverTransformer, condition: int | None) -> None:
        super().__init__()
        self.transformer = transformer
        self.condition = condition

    def forward(self, latents: Tensor, timestep: Tensor) -> Tensor:
        dtype = self.transformer.proj_out.weight.dtype
        return self.transformer(latents.to(dtype), timestep, self.condition).float()


class DiTSampler(nn.Module):
    """The whole sampler unrolled: noise, masked-video and mask latents [1, z, T, h, w] -> clean latents.

    It runs `runtime.pipeline.stages.denoise_loop`, the loop the pipeline runs; the sampler's schedule and
    update coefficients are Python floats, so tracing bakes them in as constants.
    """

    def __init__(
        self,
        transformer: RemoverTransformer,
        scheduler: SchedulerConfig,
        sampler: str,
        steps: int,
        condition: int | None,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.scheduler = scheduler
        self.sampler = sampler
        self.steps = steps
        self.condition = condition

    def forward(self, noise: Tensor, masked_latents: Tensor, mask_latents: Tensor) -> Tensor:
        dtype = self.transformer.proj_out.weight.dtype
        context = torch.cat([masked_latents.to(dtype), mask_latents.to(dtype)], dim=1)
        sampler = make_sampler(self.sampler, self.scheduler, self.steps)
        return denoise_loop(lambda x, t: self.transformer(x, t, self.condition), sampler, noise, context)


@contextmanager
def constant_rope(transformer: RemoverTransformer, max_grid: tuple[int, int, int]) -> Iterator[None]:
    """While exporting: the rotary tables are fp32 constants of the graph, never computed in it (the
    angles are float64, which TensorRT lacks). Tokens are frame-major, so with a dynamic frame axis
    the tables of T frames are the first T*h*w rows of the tables of `max_grid`."""
    cos, sin = rope_cos_sin(max_grid, transformer.config.attention_head_dim, transformer.proj_out.weight.device)
    transformer.rope = lambda grid, device: (cos[: math.prod(grid)], sin[: math.prod(grid)])
    try:
        yield
    finally:
        del transformer.rope


def dit_graphs(
    transformer: RemoverTransformer,
    scheduler: SchedulerConfig,
    latent_shape: tuple[int, int, int],
    *,
    sampler: str = "unipc",
    steps: int = 6,
    dynamic_frames: bool = False,
) -> list[ExportGraph]:
    """The transformer as one step (`dit_step`) and as the whole sampler unrolled (`dit_sampler`)."""
    device = transformer.proj_out.weight.device
    z_dim = transformer.config.out_channels
    condition = 0 if transformer.config.num_condition_tokens else None
    generator = torch.Generator().manual_seed(0)

    def sample(channels: int) -> Tensor:
        return torch.randn(1, channels, *latent_shape, generator=generator).to(device)

    axes = {2: LATENT_FRAMES_AXIS} if dynamic_frames else {}
    step = ExportGraph(
        "dit_step",
        DiTStep(transformer, condition),
        {"latents": sample(3 * z_dim), "timestep": torch.tensor([937.0], device=device)},
        ["velocity"],
        {"latents": axes} if axes else {},
    )
    unrolled = ExportGraph(
        "dit_sampler",
        DiTSampler(transformer, scheduler, sampler, steps, condition),
        {"noise": sample(z_dim), "masked_latents": sample(z_dim), "mask_latents": sample(z_dim)},
        ["clean_latents"],
        {name: axes for name in ("noise", "masked_latents", "mask_latents")} if axes else {},
    )
    return [step, unrolled]


# --- the VAE --------------------------------------------------------------------------------------


class VAEChunk(nn.Module):
    """One streamed VAE chunk with the causal caches as explicit fp32 inputs and outputs.

    `layers` are the causal layers in the order their caches travel; without `with_cache_inputs`
    this is the first chunk of a clip (no caches in, caches out).
    """

    def __init__(
        self,
        vae: WanVAE,
        chunk: Callable[[Tensor, TemporalCache], Tensor],
        layers: list[nn.Module],
        with_cache_inputs: bool,
    ) -> None:
        super().__init__()
        self.vae = vae
        self.chunk = chunk
        self.layers = layers  # a plain list: the modules are registered under self.vae already
        self.with_cache_inputs = with_cache_inputs

    def forward(self, x: Tensor, *caches: Tensor) -> tuple[Tensor, ...]:
        dtype = self.vae.quant_conv.weight.dtype
        cache = TemporalCache()
        if self.with_cache_inputs:
            cache.frames = {layer: c.to(dtype) for layer, c in zip(self.layers, caches)}
        out = self.chunk(x.to(dtype), cache)
        if list(cache.frames) != self.layers:
            raise RuntimeError("the VAE's causal layers changed between chunks; the cache order no longer holds")
        return (out.float(), *(cache.frames[layer].float() for layer in self.layers))


def vae_graphs(vae: WanVAE, height: int, width: int) -> list[ExportGraph]:
    """Encoder and decoder as first-chunk and next-chunk graphs with explicit caches."""
    device = vae.quant_conv.weight.device
    config = vae.config
    latent_hw = (height // config.spatial_factor, width // config.spatial_factor)
    generator = torch.Generator().manual_seed(0)
    names = {module: name for name, module in vae.named_modules()}
    graphs = []
    for kind, chunk, first, next_ in (
        (
            "encode",
            vae.encode_chunk,
            torch.rand(ENCODE_BATCH, 3, 1, height, width, generator=generator) * 2 - 1,
            torch.rand(ENCODE_BATCH, 3, NEXT_CHUNK_FRAMES, height, width, generator=generator) * 2 - 1,
        ),
        (
            "decode",
            vae.decode_chunk,
            torch.randn(1, config.z_dim, 1, *latent_hw, generator=generator),
            torch.randn(1, config.z_dim, 1, *latent_hw, generator=generator),
        ),
    ):
        dtype = vae.quant_conv.weight.dtype
        cache = TemporalCache()
        with torch.no_grad():
            chunk(first.to(device, dtype), cache)  # the first chunk fixes which layers carry frames, in order
        layers = list(cache.frames)
        cache_inputs = {f"cache_in_{i}": t.float() for i, t in enumerate(cache.frames.values())}
        cache_outputs = [f"cache_out_{i}" for i in range(len(layers))]
        layer_names = tuple(names[layer] for layer in layers)
        io = "video" if kind == "encode" else "latents"
        out = "latents" if kind == "encode" else "video"
        graphs.append(
            ExportGraph(
                f"vae_{kind}_first",
                VAEChunk(vae, chunk, layers, with_cache_inputs=False),
                {io: first.to(device)},
                [out, *cache_outputs],
                cache_layers=layer_names,
            )
        )
        graphs.append(
            ExportGraph(
                f"vae_{kind}_next",
                VAEChunk(vae, chunk, layers, with_cache_inputs=True),
                {io: next_.to(device), **cache_inputs},
                [out, *cache_outputs],
                cache_layers=layer_names,
            )
        )
    return graphs
