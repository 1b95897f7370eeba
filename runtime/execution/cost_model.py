"""Analytic cost of the model for any shape, and the time it could take at best on published GPUs.

FLOPs count the multiply-adds (x2) of every matrix product, convolution and attention product, as
torch.utils.flop_counter counts them: elementwise work (norms, activations, RoPE, softmax) is left
out; it is a few percent of the total and runs on other units. Minimum bytes are what any
implementation must move through device memory at least once: the weights, the inputs and the
outputs. The floor on a GPU is the roofline bound max(FLOPs / peak FLOP/s, bytes / bandwidth).

The VAE walk mirrors the Wan2.1 VAE's structure (runtime/models/vae.py, diffusers' AutoencoderKLWan):
convolutions see every output frame once, as a causal pass over the whole clip does; the encoder's
quant_conv is counted for the mode's z_dim channels only, the least an encode needs (both the runtime
and diffusers also compute the log-variance half, a few kFLOP per latent position).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from runtime.models.transformer import TransformerConfig
from runtime.models.vae import VAEConfig


@dataclass(frozen=True)
class Cost:
    """FLOPs, parameters and minimum bytes of one piece of work."""

    flops: float
    params: int
    min_bytes: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.params + other.params, self.min_bytes + other.min_bytes)

    def times(self, count: int) -> Cost:
        """`count` runs of this work with the same weights (weights are read once per run)."""
        return Cost(self.flops * count, self.params, self.min_bytes * count)


@dataclass(frozen=True)
class GPUSpec:
    """Published dense peak rates (no sparsity) for 16-bit tensor-core math with fp32 accumulation."""

    name: str
    tensor_tflops: float
    bandwidth_gbs: float
    memory_gb: float
    source: str


GPUS = {
    "RTX 4090": GPUSpec(
        "RTX 4090",
        165.2,
        1008.0,
        24.0,
        "NVIDIA Ada GPU Architecture whitepaper v2.1, appendix table 2: FP16/BF16 tensor with FP32 "
        "accumulate 165.2 TFLOPS dense (330.4 sparse), 1008 GB/s GDDR6X",
    ),
    "A100 SXM4 80GB": GPUSpec(
        "A100 SXM4 80GB",
        312.0,
        2039.0,
        80.0,
        "NVIDIA A100 Tensor Core GPU datasheet: BF16/FP16 tensor 312 TFLOPS dense (624 sparse), 2,039 GB/s HBM2e",
    ),
    "H100 SXM5 80GB": GPUSpec(
        "H100 SXM5 80GB",
        989.4,
        3350.0,
        80.0,
        "NVIDIA H100 Tensor Core GPU datasheet: BF16/FP16 tensor 1,979 TFLOPS with sparsity (989.4 dense), 3.35 TB/s",
    ),
    "H200 SXM 141GB": GPUSpec(
        "H200 SXM 141GB",
        989.4,
        4800.0,
        141.0,
        "NVIDIA H200 Tensor Core GPU datasheet: BF16/FP16 tensor 1,979 TFLOPS with sparsity (989.4 dense), 4.8 TB/s",
    ),
}


def floor_seconds(cost: Cost, gpu: GPUSpec) -> float:
    """The roofline floor: no implementation on `gpu` can do `cost` faster."""
    return max(cost.flops / (gpu.tensor_tflops * 1e12), cost.min_bytes / (gpu.bandwidth_gbs * 1e9))


# --- the transformer --------------------------------------------------------------------------


def dit_forward(
    config: TransformerConfig, latent_shape: tuple[int, int, int], batch: int = 1, element_bytes: int = 2
) -> Cost:
    """One transformer call on latents [batch, in_channels, T', h, w] (`latent_shape` = (T', h, w))."""
    pt, ph, pw = config.patch_size
    frames, height, width = latent_shape
    tokens = (frames // pt) * (height // ph) * (width // pw)
    keys = tokens + config.num_condition_tokens
    dim, ffn, patch = config.inner_dim, config.ffn_dim, math.prod(config.patch_size)

    def linear(n_in: int, n_out: int, rows: int) -> tuple[float, int]:
        """(FLOPs, parameters) of a linear layer applied to `rows` rows."""
        return 2.0 * rows * n_in * n_out, n_in * n_out + n_out

    per_sample = [
        linear(config.in_channels * patch, dim, tokens),  # patch embedding (kernel = stride)
        linear(config.freq_dim, dim, 1),  # timestep MLP and modulation projection
        linear(dim, dim, 1),
        linear(dim, 6 * dim, 1),
        linear(dim, config.out_channels * patch, tokens),  # proj_out
        (0.0, 2 * dim),  # head scale_shift_table
    ]
    block = [
        *(linear(dim, dim, tokens) for _ in range(4)),  # q, k, v, out
        (4.0 * tokens * keys * dim, 8 * dim),  # q k^T and p v over all heads; qk-norm gains, modulation table
        linear(dim, ffn, tokens),
        linear(ffn, dim, tokens),
    ]
    flops = batch * (sum(f for f, _ in per_sample) + config.num_layers * sum(f for f, _ in block))
    params = sum(p for _, p in per_sample) + config.num_layers * sum(p for _, p in block)
    params += 2 * config.num_condition_tokens * dim  # the condition embedding (its keys/values are cached)
    io = batch * frames * height * width * (config.in_channels + config.out_channels)
    return Cost(flops, params, (params + io) * element_bytes)


# --- the VAE ----------------------------------------------------------------------------------


class _Tally:
    """Running FLOPs and parameters of a walk through the VAE."""

    def __init__(self) -> None:
        self.flops = 0.0
        self.params = 0

    def conv(self, c_in: int, c_out: int, kernel: int, positions: int, batch: int, weights: bool = True) -> None:
        """A convolution with `kernel` taps producing `positions` output points per channel."""
        self.flops += 2.0 * batch * positions * c_in * c_out * kernel
        if weights:
            self.params += c_in * c_out * kernel + c_out

    def residual(self, c_in: int, c_out: int, positions: int, batch: int) -> None:
        self.params += c_in + c_out  # the two RMSNorm gains
        self.conv(c_in, c_out, 27, positions, batch)
        self.conv(c_out, c_out, 27, positions, batch)
        if c_in != c_out:
            self.conv(c_in, c_out, 1, positions, batch)

    def mid(self, dim: int, frames: int, pixels: int, batch: int) -> None:
        """Residual block, per-frame single-head attention over the pixels, residual block."""
        self.residual(dim, dim, frames * pixels, batch)
        self.params += dim
        self.conv(dim, 3 * dim, 1, frames * pixels, batch)
        self.flops += 4.0 * batch * frames * pixels * pixels * dim
        self.conv(dim, dim, 1, frames * pixels, batch)
        self.residual(dim, dim, frames * pixels, batch)


def _downsampled(size: int) -> int:
    """Pad right/bottom by 1, then a 3x3 convolution with stride 2."""
    return (size + 1 - 3) // 2 + 1


def vae_encode(config: VAEConfig, frames: int, height: int, width: int, batch: int = 1, element_bytes: int = 2) -> Cost:
    """Encode video [batch, 3, frames, height, width] (frames = 4k + 1) to the latent mode."""
    tally = _Tally()
    dims = [config.base_dim * m for m in (1, *config.dim_mult)]
    t, h, w = frames, height, width
    tally.conv(3, dims[0], 27, t * h * w, batch)
    for level, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(config.num_res_blocks):
            tally.residual(c_in, c_out, t * h * w, batch)
            c_in = c_out
        if level < len(config.dim_mult) - 1:
            h, w = _downsampled(h), _downsampled(w)
            tally.conv(c_out, c_out, 9, t * h * w, batch)
            if config.temperal_downsample[level]:  # the first frame passes; later pairs are merged
                tally.conv(c_out, c_out, 3, (t - 1) // 2 * h * w, batch)
                t = 1 + (t - 1) // 2
    tally.mid(dims[-1], t, h * w, batch)
    tally.params += dims[-1]
    tally.conv(dims[-1], 2 * config.z_dim, 27, t * h * w, batch)
    tally.conv(2 * config.z_dim, config.z_dim, 1, t * h * w, batch, weights=False)  # only the mode's half
    tally.params += (2 * config.z_dim) ** 2 + 2 * config.z_dim  # quant_conv as stored
    io = batch * (3 * frames * height * width + config.z_dim * t * h * w)
    return Cost(tally.flops, tally.params, (tally.params + io) * element_bytes)


def vae_decode(
    config: VAEConfig, latent_frames: int, height: int, width: int, batch: int = 1, element_bytes: int = 2
) -> Cost:
    """Decode latents [batch, z_dim, latent_frames, height, width] to video."""
    tally = _Tally()
    dims = [config.base_dim * m for m in (config.dim_mult[-1], *reversed(config.dim_mult))]
    temporal_upsample = tuple(reversed(config.temperal_downsample))
    t, h, w = latent_frames, height, width
    tally.conv(config.z_dim, config.z_dim, 1, t * h * w, batch)  # post_quant_conv
    tally.conv(config.z_dim, dims[0], 27, t * h * w, batch)
    tally.mid(dims[0], t, h * w, batch)
    for level, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
        if level > 0:
            c_in //= 2
        for _ in range(config.num_res_blocks + 1):
            tally.residual(c_in, c_out, t * h * w, batch)
            c_in = c_out
        if level < len(config.dim_mult) - 1:
            if temporal_upsample[level]:  # every frame but the first becomes two
                tally.conv(c_out, 2 * c_out, 3, (t - 1) * h * w, batch)
                t = 1 + 2 * (t - 1)
            h, w = 2 * h, 2 * w
            tally.conv(c_out, c_out // 2, 9, t * h * w, batch)
    tally.params += dims[-1]
    tally.conv(dims[-1], 3, 27, t * h * w, batch)
    io = batch * (config.z_dim * latent_frames * height * width + 3 * t * h * w)
    return Cost(tally.flops, tally.params, (tally.params + io) * element_bytes)


# --- the pipeline -----------------------------------------------------------------------------


def pipeline_costs(
    transformer: TransformerConfig,
    vae: VAEConfig,
    frames: int,
    height: int,
    width: int,
    steps: int = 6,
    element_bytes: int = 2,
) -> dict[str, Cost]:
    """Cost of each heavy stage for a clip of `frames` (4k + 1) at height x width: the encode of the masked
    and the mask video, `steps` transformer calls, the decode."""
    latent = vae.latent_shape(frames, height, width)
    return {
        "encode": vae_encode(vae, frames, height, width, batch=2, element_bytes=element_bytes),
        "denoise": dit_forward(transformer, latent, element_bytes=element_bytes).times(steps),
        "decode": vae_decode(vae, *latent, element_bytes=element_bytes),
    }


# --- a streamed run's plan: time and memory --------------------------------------------------

# Peak bytes of one streamed VAE pass per pixel of the working frame, per base_dim channel and per
# byte of the element: mostly the causal cache (two frames of every causal layer's input) and one
# frame of activations at full resolution. Measured on the CPU in fp32 with the released VAE
# (base_dim 96): encode 13.4 KB/px at 240x416, 18.5 KB/px at 120x208; decode 16.7 and 20.3 KB/px
# (bench/RESULTS.md); 53 covers the worst of them.
VAE_BYTES_PER_PIXEL_CHANNEL = 53
# fp32 residual stream, modulation and norm temporaries per token, in units of the inner dim
DIT_FP32_COPIES = 4


@dataclass(frozen=True)
class RunEstimate:
    """What a plan will cost: FLOPs of the model work, and peak bytes on the device and the host."""

    flops: float
    device_bytes: int
    host_bytes: int
    weight_bytes: int


def model_bytes(transformer: TransformerConfig, vae: VAEConfig, element_bytes: int) -> int:
    """The weights of both models in the working precision."""
    params = dit_forward(transformer, (1, 2, 2)).params + vae_encode(vae, 1, 16, 16).params
    return (params + vae_decode(vae, 1, 2, 2).params) * element_bytes


def window_device_bytes(
    transformer: TransformerConfig, vae: VAEConfig, frames: int, height: int, width: int, element_bytes: int
) -> int:
    """Peak device bytes of one window beyond the weights: the largest of the encode (with the fp32
    input video and masks on the device), the transformer call, and the decode."""
    pixels = height * width
    vae_peak = VAE_BYTES_PER_PIXEL_CHANNEL * vae.base_dim * pixels * element_bytes
    inputs = frames * pixels * (3 + 1 + 1) * 4
    latent = vae.latent_shape(frames, height, width)
    tokens = math.prod(latent) // math.prod(transformer.patch_size[1:])
    dim = transformer.inner_dim
    dit_peak = tokens * ((transformer.ffn_dim + 6 * dim) * element_bytes + DIT_FP32_COPIES * dim * 4)
    latents = 4 * math.prod(latent) * vae.z_dim * 4
    return max(vae_peak + inputs, dit_peak, vae_peak + frames * pixels * 3 * 4) + latents


def estimate_run(
    windows: list[tuple[int, int, int]],
    transformer: TransformerConfig,
    vae: VAEConfig,
    steps: int,
    element_bytes: int,
    stream_host_bytes: int,
) -> RunEstimate:
    """Cost of running the model on `windows` (padded frames, height, width each)."""
    flops = sum(
        sum(c.flops for c in pipeline_costs(transformer, vae, f, h, w, steps, element_bytes).values())
        for f, h, w in windows
    )
    device = max((window_device_bytes(transformer, vae, f, h, w, element_bytes) for f, h, w in windows), default=0)
    return RunEstimate(flops, device, stream_host_bytes, model_bytes(transformer, vae, element_bytes))


GPU_MARKERS = {
    "4090": GPUS["RTX 4090"],
    "A100": GPUS["A100 SXM4 80GB"],
    "H100": GPUS["H100 SXM5 80GB"],
    "H200": GPUS["H200 SXM 141GB"],
}
ASSUMED_GPU_EFFICIENCY = 0.4  # share of the 16-bit tensor peak a whole run achieves (an assumption, unmeasured)


def achievable_flops(device_name: str, device_type: str, probe_seconds: float = 0.2) -> float:
    """FLOP/s to divide a plan's FLOPs by for a rough time: on a GPU of the table, its published
    peak times ASSUMED_GPU_EFFICIENCY; elsewhere, a float32 matmul measured here for `probe_seconds`
    (convolutions run slower than that, so CPU estimates are optimistic)."""
    for marker, spec in GPU_MARKERS.items():
        if device_type == "cuda" and marker in device_name:
            return spec.tensor_tflops * 1e12 * ASSUMED_GPU_EFFICIENCY
    size = 512
    a = torch.randn(size, size, device=device_type)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < probe_seconds:
        a @ a
        count += 1
    if device_type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - start)
