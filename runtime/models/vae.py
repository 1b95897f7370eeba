"""The Wan2.1 video VAE (diffusers `AutoencoderKLWan` key layout), streamed over time.

Encode and decode run chunk by chunk: the first chunk is one frame (video frame or latent frame),
later chunks are whole latent frames (4 video frames each by default). Every causal layer keeps
the last input frames it needs in a caller-owned `TemporalCache`, so activations never hold more
than one chunk and peak memory does not grow with the clip's length. Streaming computes exactly
what a causal pass over the whole clip computes.

Inside a chunk, the layers at the video's frame rate also run depth first, `frames_per_step` frames
at a time (`depth_first`): the encoder's layers before its first temporal downsampler, and in the
decoder each frame a temporal upsampler makes goes through all later layers before the next. That
is exact for the same reason. At 72 px high and more a step is one frame, which holds one frame of
activations at the high resolutions instead of four; below, a step is a latent frame's 4 video frames
(faster there, and small). What stays between steps is the cache itself (the last frames of every
causal layer's input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.errors import RemoverError
from runtime.models.config import ANY


@dataclass(frozen=True)
class VAEConfig:
    """The keys of vae/config.json that shape the computation."""

    base_dim: int
    z_dim: int
    dim_mult: tuple[int, ...]
    num_res_blocks: int
    temperal_downsample: tuple[bool, ...]  # sic: the released key's spelling
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]

    # Keys released or newer diffusers files carry, with the only values this model supports.
    IGNORED_KEYS = {
        "attn_scales": [],
        "dropout": 0.0,
        "is_residual": False,
        "in_channels": 3,
        "out_channels": 3,
        "patch_size": None,
        "decoder_base_dim": None,
        "scale_factor_temporal": ANY,
        "scale_factor_spatial": ANY,
        "clip_output": ANY,
    }

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T', h, w) of the latents of `frames` video frames of height x width pixels: the first frame is
        one latent frame, each `temporal_factor` after it another; each `spatial_factor` pixels one."""
        return (
            1 + (frames - 1) // self.temporal_factor,
            height // self.spatial_factor,
            width // self.spatial_factor,
        )

    def validate(self, source: str) -> None:
        """Reject configs whose shapes do not fit together."""
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise RemoverError(f"{source}: temperal_downsample needs {len(self.dim_mult) - 1} entries")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise RemoverError(f"{source}: latents_mean and latents_std need z_dim={self.z_dim} entries")


# The released VAE (Wan2.1) and its latent statistics.
RELEASED_VAE = VAEConfig(
    base_dim=96,
    z_dim=16,
    dim_mult=(1, 2, 4, 4),
    num_res_blocks=2,
    temperal_downsample=(False, True, True),
    latents_mean=(-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921),
    latents_std=(2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160),
)  # fmt: skip


class TemporalCache:
    """The frames each causal layer carries from one chunk to the next (one cache per video pass).

    A layer with no entry is at the start of the video. After the first chunk every layer has an
    entry of a fixed shape, so the cache can also travel as explicit graph inputs and outputs.
    """

    def __init__(self) -> None:
        self.frames: dict[nn.Module, Tensor] = {}


# --- layers -------------------------------------------------------------------------------------


class CausalConv3d(nn.Conv3d):
    """Conv3d that only looks back in time: it sees `kernel_t - 1` earlier frames, zeros before the
    first frame, and pads space symmetrically."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int | tuple[int, int, int], spatial_padding: int = 0):
        super().__init__(in_dim, out_dim, kernel, padding=(0, spatial_padding, spatial_padding))
        self.context = self.kernel_size[0] - 1

    def forward(self, x: Tensor, cache: TemporalCache) -> Tensor:
        if self.context:
            past = cache.frames.get(self)
            x = F.pad(x, (0, 0, 0, 0, self.context, 0)) if past is None else torch.cat([past, x], dim=2)
            cache.frames[self] = x[:, :, -self.context :].clone()
        if on_cpu_onednn(x):
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation, 1
            )
        return super().forward(x)


def on_cpu_onednn(x: Tensor) -> bool:
    """Whether a conv3d on x should call oneDNN directly. PyTorch's CPU conv3d picks its native path,
    single-threaded at batch 1 and 2-6x slower per FLOP, whenever batch x channels x frames x height <=
    20480: at 120x208 the encoder's 96 -> 192 conv at 60 px and every mid-block conv at 15 px, one frame
    and its 2 cached frames at a time, fall under it (the reference's 4-frame steps do not). oneDNN gives
    the same result within fp32 rounding (tests/test_vae.py). Only for fp32 CPU inference in eager mode:
    autograd, tracing, export and compile get the ordinary op."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.is_available()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not torch.onnx.is_in_onnx_export()
    )


class ChannelRMSNorm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma, statistics in fp32 (the Wan VAE's RMS_norm)."""

    def __init__(self, dim: int, spatial_dims: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))

    def forward(self, x: Tensor) -> Tensor:
        return (F.normalize(x.float(), dim=1) * self.scale).to(x.dtype) * self.gamma


class ResidualBlock(nn.Module):
    """(RMSNorm, SiLU, causal 3x3x3 conv) twice, plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(in_dim, 3)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, spatial_padding=1)
        self.norm2 = ChannelRMSNorm(out_dim, 3)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, spatial_padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: Tensor, cache: TemporalCache) -> Tensor:
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x, cache)
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return h + shortcut


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame separately."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = ChannelRMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, frames, height, width = x.shape
        frames_2d = x.transpose(1, 2).reshape(batch * frames, channels, height, width)
        qkv = self.to_qkv(self.norm(frames_2d)).flatten(2).transpose(1, 2)  # [BT, HW, 3C]
        q, k, v = qkv[:, None].chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2)
        out = self.proj(out.reshape(batch * frames, channels, height, width))
        return x + out.reshape(batch, frames, channels, height, width).transpose(1, 2)


class MidBlock(nn.Module):
    """Residual block, frame attention, residual block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([FrameAttention(dim)])

    def forward(self, x: Tensor, cache: TemporalCache) -> Tensor:
        x = self.resnets[0](x, cache)
        return self.resnets[1](self.attentions[0](x), cache)


def per_frame(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2D layer to every frame of x [B, C, T, H, W]."""
    batch, _, frames, _, _ = x.shape
    y = layer(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (batch, frames)).transpose(1, 2)


# --- streaming inside a chunk -------------------------------------------------------------------

# Frames at least this high go through the layers at the video's frame rate one at a time; lower ones
# a latent frame's worth (4 video frames) at a time. PyTorch's CPU conv3d takes its slow native path,
# about 3x slower per frame than oneDNN, where batch x channels x frames x height <= 20480: one frame
# with its 2 cached frames of the released VAE's 96 channels falls under that below 72 px, 4 frames
# do not. Measured (released VAE, fp32, 1 thread, CPU s of 2 encodes of 5 frames + 1 decode of 2
# latent frames, 4 at a time vs 1): 56x96 6.5 vs 9.9, 64x112 9.8 vs 14.3, 72x128 11.0 vs 10.5,
# 96x160 16.6 vs 15.9, 128x224 33.0 vs 30.5. Below it 4 frames of activations are little memory.
SINGLE_FRAME_MIN_HEIGHT = 72

Layer = Callable[[Tensor], Tensor]


def frames_per_step(height: int, temporal_factor: int) -> int:
    """How many frames of `height` px `depth_first` takes at a time: 1, or a latent frame's worth."""
    return 1 if height >= SINGLE_FRAME_MIN_HEIGHT else temporal_factor


def depth_first(layers: Sequence[Layer], x: Tensor, frames: int) -> Tensor:
    """Run layers that keep or multiply the frame count on x [B, C, T, H, W], `frames` frames at a time:
    each step, and each group of `frames` a layer makes of it, goes through all later layers before
    the next. The result of whole-chunk calls, holding `frames` frames of activations instead of T."""
    if x.shape[2] > frames:
        return torch.cat([depth_first(layers, step, frames) for step in x.split(frames, dim=2)], dim=2)
    for index, layer in enumerate(layers):
        x = layer(x)
        if x.shape[2] > frames:
            return depth_first(layers[index + 1 :], x, frames)
    return x


class Downsample(nn.Module):
    """Halve height and width; with `temporal`, also halve time (the first frame passes through alone)."""

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def downscale(self, x: Tensor) -> Tensor:
        """The spatial half, frame by frame."""
        return per_frame(self.resample, x)

    def halve_time(self, x: Tensor, cache: TemporalCache) -> Tensor:
        """The temporal half (identity when not temporal)."""
        if self.time_conv is None:
            return x
        past = cache.frames.get(self.time_conv)
        cache.frames[self.time_conv] = x[:, :, -1:].clone()
        if past is None:  # first chunk: one frame, kept as it is
            return x
        return self.time_conv(torch.cat([past, x], dim=2))

    def forward(self, x: Tensor, cache: TemporalCache) -> Tensor:
        return self.halve_time(self.downscale(x), cache)


class Upsample(nn.Module):
    """Double height and width (output width dim // 2); with `temporal`, also double time except
    for the first frame, which passes through alone."""

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        # nearest 2x equals diffusers' "nearest-exact" at an integer scale, and exports everywhere
        self.resample = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(dim, dim // 2, 3, padding=1)
        )
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1)) if temporal else None

    def double_time(self, x: Tensor, cache: TemporalCache) -> Tensor:
        """The temporal half (identity when not temporal)."""
        if self.time_conv is None:
            return x
        if self.time_conv not in cache.frames:  # first chunk: one frame; later frames start from zeros
            batch, channels, _, height, width = x.shape
            cache.frames[self.time_conv] = x.new_zeros(batch, channels, self.time_conv.context, height, width)
            return x
        pairs = self.time_conv(x, cache).unflatten(1, (2, -1))  # [B, 2, C, T, H, W]
        return pairs.permute(0, 2, 3, 1, 4, 5).flatten(2, 3)  # interleave -> [B, C, 2T, H, W]

    def upscale(self, x: Tensor) -> Tensor:
        """The spatial half, frame by frame."""
        return per_frame(self.resample, x)


class UpBlock(nn.Module):
    """num_res_blocks + 1 residual blocks, then an optional upsampler."""

    def __init__(self, in_dim: int, out_dim: int, num_resnets: int, upsample: str | None) -> None:
        super().__init__()
        dims = [in_dim] + [out_dim] * num_resnets
        self.resnets = nn.ModuleList(ResidualBlock(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.upsamplers = None
        if upsample is not None:
            self.upsamplers = nn.ModuleList([Upsample(out_dim, temporal=upsample == "3d")])

    def layers(self, cache: TemporalCache) -> list[Layer]:
        """The block as a sequence of one-input layers on `cache` (the decoder runs them depth first)."""
        layers: list[Layer] = [partial(resnet, cache=cache) for resnet in self.resnets]
        if self.upsamplers is not None:
            layers += [partial(self.upsamplers[0].double_time, cache=cache), self.upsamplers[0].upscale]
        return layers


class Encoder(nn.Module):
    """Video [B, 3, T, H, W] -> distribution parameters [B, 2 z_dim, T', H/8, W/8], one chunk at a time."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        self.temporal_factor = config.temporal_factor
        self.conv_in = CausalConv3d(3, dims[0], 3, spatial_padding=1)
        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level < len(config.dim_mult) - 1:
                blocks.append(Downsample(out_dim, temporal=config.temperal_downsample[level]))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = ChannelRMSNorm(dims[-1], 3)
        self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, 3, spatial_padding=1)
        # the down blocks before the first downsampler that halves time run at the video's frame rate
        self.full_rate_blocks = next(
            (i for i, block in enumerate(blocks) if isinstance(block, Downsample) and block.time_conv is not None),
            len(blocks),
        )

    def forward(self, x: Tensor, cache: TemporalCache) -> Tensor:
        full_rate, reduced_rate = self.down_blocks[: self.full_rate_blocks], self.down_blocks[self.full_rate_blocks :]

        # 1. At the video's frame rate, depth first: the input conv, the blocks before the first
        #    downsampler that halves time, and that downsampler's spatial half
        layers: list[Layer] = [partial(layer, cache=cache) for layer in (self.conv_in, *full_rate)]
        if reduced_rate:
            layers.append(reduced_rate[0].downscale)
        x = depth_first(layers, x, frames_per_step(x.shape[3], self.temporal_factor))

        # 2. At lower frame rates, the whole chunk at once: that downsampler's temporal half, the later blocks
        if reduced_rate:
            x = reduced_rate[0].halve_time(x, cache)
        for block in reduced_rate[1:]:
            x = block(x, cache)

        # 3. Mid block, output norm and conv
        x = self.mid_block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class Decoder(nn.Module):
    """Latents [B, z_dim, T', h, w] -> video [B, 3, T, 8h, 8w] (unclamped), one chunk at a time."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        dims = [config.base_dim * m for m in (config.dim_mult[-1], *reversed(config.dim_mult))]
        temporal_upsample = tuple(reversed(config.temperal_downsample))
        self.temporal_factor, self.spatial_factor = config.temporal_factor, config.spatial_factor
        self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, spatial_padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if level > 0:
                in_dim //= 2  # the previous upsampler halves the width
            upsample = None
            if level < len(config.dim_mult) - 1:
                upsample = "3d" if temporal_upsample[level] else "2d"
            blocks.append(UpBlock(in_dim, out_dim, config.num_res_blocks + 1, upsample))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = ChannelRMSNorm(dims[-1], 3)
        self.conv_out = CausalConv3d(dims[-1], 3, 3, spatial_padding=1)

    def output(self, x: Tensor, cache: TemporalCache) -> Tensor:
        """The last layer: RMSNorm, SiLU, causal conv to RGB."""
        return self.conv_out(F.silu(self.norm_out(x)), cache)

    def forward(self, z: Tensor, cache: TemporalCache) -> Tensor:
        # every layer keeps or multiplies the frame count: all of them run depth first
        layers: list[Layer] = [partial(self.conv_in, cache=cache), partial(self.mid_block, cache=cache)]
        for block in self.up_blocks:
            layers += block.layers(cache)
        layers.append(partial(self.output, cache=cache))
        return depth_first(layers, z, frames_per_step(z.shape[3] * self.spatial_factor, self.temporal_factor))


# --- the model ----------------------------------------------------------------------------------


class WanVAE(nn.Module):
    """Encode videos in [-1, 1] to normalized latents (the distribution's mode) and decode them back."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.post_quant_conv = nn.Conv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)

    def latent_stats(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std [1, z_dim, 1, 1, 1] (fp32) that normalize the latents."""
        mean = torch.tensor(self.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
        return mean, torch.tensor(self.config.latents_std, device=device).view(1, -1, 1, 1, 1)

    def posterior_chunk(self, video: Tensor, cache: TemporalCache) -> tuple[Tensor, Tensor]:
        """One chunk of video [B, 3, t, H, W] -> the latent distribution's un-normalized mean and
        log-variance [B, z_dim, t', H/8, W/8] (VAE training samples from it; inference uses the mean)."""
        mean, logvar = self.quant_conv(self.encoder(video, cache)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode_chunk(self, video: Tensor, cache: TemporalCache) -> Tensor:
        """One chunk of video [B, 3, t, H, W] -> normalized mode latents [B, z_dim, t', H/8, W/8]."""
        mode, _ = self.posterior_chunk(video, cache)
        mean, std = self.latent_stats(video.device)
        return (mode.float() - mean) / std

    def decode_chunk(self, latents: Tensor, cache: TemporalCache, clamp: bool = True) -> Tensor:
        """One chunk of normalized latents -> video in [-1, 1] (fp32); `clamp=False` keeps the raw
        decoder output (VAE training, so the loss has gradients beyond the range)."""
        mean, std = self.latent_stats(latents.device)
        z = latents.float() * std + mean
        z = self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype))
        video = self.decoder(z, cache).float()
        return video.clamp(-1.0, 1.0) if clamp else video

    def video_chunks(self, num_frames: int, frames_per_chunk: int | None = None) -> list[slice]:
        """Frame slices of a streamed encode: the first frame alone, then whole latent frames."""
        step = frames_per_chunk or self.config.temporal_factor
        if step % self.config.temporal_factor:
            raise ValueError(f"frames_per_chunk must be a multiple of {self.config.temporal_factor}")
        if (num_frames - 1) % self.config.temporal_factor:
            raise RemoverError(f"the VAE needs {self.config.temporal_factor}k+1 frames, got {num_frames}")
        return [slice(0, 1)] + [slice(s, min(s + step, num_frames)) for s in range(1, num_frames, step)]

    def iter_encode(self, video: Tensor, frames_per_chunk: int | None = None) -> Iterator[Tensor]:
        """Stream video [B, 3, T, H, W] (T = 4k+1, in [-1, 1]) -> latent chunks, first chunk first."""
        cache = TemporalCache()
        dtype = self.quant_conv.weight.dtype
        for frames in self.video_chunks(video.shape[2], frames_per_chunk):
            yield self.encode_chunk(video[:, :, frames].to(dtype), cache)

    def iter_decode(self, latents: Tensor, latents_per_chunk: int = 1) -> Iterator[Tensor]:
        """Stream normalized latents [B, z_dim, T', h, w] -> video chunks [B, 3, t, 8h, 8w] in [-1, 1]."""
        cache = TemporalCache()
        starts = [0, *range(1, latents.shape[2], latents_per_chunk)]
        for start, stop in zip(starts, [*starts[1:], latents.shape[2]]):
            yield self.decode_chunk(latents[:, :, start:stop], cache)

    def encode(self, video: Tensor, frames_per_chunk: int | None = None) -> Tensor:
        """Whole-clip convenience over iter_encode: [B, 3, T, H, W] -> [B, z_dim, T', H/8, W/8] (fp32)."""
        return torch.cat(list(self.iter_encode(video, frames_per_chunk)), dim=2)

    def decode(self, latents: Tensor, latents_per_chunk: int = 1) -> Tensor:
        """Whole-clip convenience over iter_decode into one preallocated fp32 tensor."""
        batch, _, latent_frames, height, width = latents.shape
        factor, spatial = self.config.temporal_factor, self.config.spatial_factor
        video = torch.empty(
            batch, 3, 1 + factor * (latent_frames - 1), height * spatial, width * spatial, device=latents.device
        )
        start = 0
        for chunk in self.iter_decode(latents, latents_per_chunk):
            video[:, :, start : start + chunk.shape[2]] = chunk
            start += chunk.shape[2]
        return video
