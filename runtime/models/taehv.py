"""TAEHV, a light video decoder for Wan 2.1's latent space (github.com/madebyollin/taehv), decode only.

The published files hold an encoder and a decoder as two module lists whose state-dict keys are
their indices (`decoder.3.conv.0.weight`); only `decoder.*` is read: the DiT keeps the full VAE
encoder's latents. The decoder is 2D convolutions per frame, with three kinds of temporal step:

    soft clamp -> conv -> ReLU -> 3 x [3 MemBlock -> 2x upsample -> TGrow -> conv] -> ReLU -> conv

A MemBlock sees its input frame beside the previous frame's input to the same block (zeros at the
start); a TGrow turns each frame into `stride` frames by a 1x1 conv to `stride` times the channels.
With strides (1, 2, 2) one latent frame becomes 4 frames; the first latent's first 3 are dropped, so
T latent frames decode to 4T - 3 frames, the Wan VAE's count. `iter_decode` streams latent frame by
latent frame with each MemBlock's last input kept in a caller-owned `DecoderMemory`: the same chunks
(1 frame, then 4 per latent) and the same output range ([-1, 1]) as `WanVAE.iter_decode`.

The published families differ in the latents they take: `taew2_1` the normalized latents the DiT
works in; LightX2V's `lighttaew2_1` (same keys and shapes) the raw ones, z * std + mean, with the
VAE's per-channel statistics. Widths and strides are read from the tensors' shapes, so a smaller
decoder distilled for another VAE (`training.distill_decoder`) loads the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from runtime.errors import RemoverError
from runtime.hub import is_hub_id, resolve
from runtime.models.vae import VAEConfig
from runtime.models.weights import load_into, read_safetensors


@dataclass(frozen=True)
class Published:
    """A published decoder family: where its file lives on the hub, and which latents it takes."""

    hub_id: str
    filename: str
    raw_latents: bool  # True: z * std + mean (un-normalized); False: the normalized latents


PUBLISHED = {
    "taew2_1": Published("OzzyGT/taew2_1", "taew2_1.safetensors", raw_latents=False),
    "lighttaew2_1": Published("lightx2v/Autoencoders", "lighttaew2_1.safetensors", raw_latents=True),
}
VAE_DECODER = "vae"
DECODER_CHOICES = (VAE_DECODER, *PUBLISHED)
WHAT = "the light decoder's weights"

# Indices of the layers whose shapes fix the architecture: the input conv, each stage's TGrow and conv.
INPUT_CONV, TGROWS, STAGE_CONVS = 1, (7, 13, 19), (8, 14, 20)


@dataclass(frozen=True)
class TAEHVConfig:
    """The decoder's shape: widths of the input and the three stages, each TGrow's time stride, and,
    for decoders that take raw latents, the VAE statistics that un-normalize them."""

    latent_channels: int = 16
    widths: tuple[int, int, int, int] = (256, 128, 64, 64)
    time_strides: tuple[int, int, int] = (1, 2, 2)
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    @property
    def temporal_factor(self) -> int:
        return self.time_strides[0] * self.time_strides[1] * self.time_strides[2]

    @property
    def spatial_factor(self) -> int:
        return 8  # three 2x upsamplers


# --- layers -------------------------------------------------------------------------------------


def conv3x3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """3 tanh(x / 3): latents far outside the usual range are squashed, not clipped."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3.0) * 3.0


class MemBlock(nn.Module):
    """A residual block over the frame and the previous frame's input (keys conv.0, conv.2, conv.4)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv3x3(2 * width, width), nn.ReLU(), conv3x3(width, width), nn.ReLU(), conv3x3(width, width)
        )

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        return torch.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class TGrow(nn.Module):
    """Each frame [N, C, H, W] -> `stride` frames, earliest first: [N * stride, C, H, W]."""

    def __init__(self, width: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(width, width * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return self.conv(x).reshape(n * self.stride, c, h, w)


class DecoderMemory:
    """What a streamed decode carries from one latent frame to the next: each MemBlock's last input
    frame [B, 1, C, H, W], by layer index (no entry: the start of the video)."""

    def __init__(self) -> None:
        self.last: dict[int, Tensor] = {}


# --- the model ----------------------------------------------------------------------------------


class TAEHVDecoder(nn.Module):
    """Normalized Wan latents [B, z, T, h, w] -> video [B, 3, 4T - 3, 8h, 8w] in [-1, 1], streamed."""

    def __init__(self, config: TAEHVConfig) -> None:
        super().__init__()
        self.config = config
        w, s = config.widths, config.time_strides
        layers: list[nn.Module] = [SoftClamp(), conv3x3(config.latent_channels, w[0]), nn.ReLU()]
        for stage in range(3):
            layers += [MemBlock(w[stage]) for _ in range(3)]
            layers += [nn.Upsample(scale_factor=2), TGrow(w[stage], s[stage]), conv3x3(w[stage], w[stage + 1], False)]
        layers += [nn.ReLU(), conv3x3(w[3], 3)]
        self.decoder = nn.Sequential(*layers)

    def decode_chunk(self, latents: Tensor, memory: DecoderMemory, clamp: bool = True) -> Tensor:
        """Latent frames [B, z, t, h, w] (normalized) -> all their frames [B, 3, 4t, 8h, 8w] in [-1, 1]
        (fp32), continuing the video `memory` holds; `clamp=False` keeps the raw output (distillation,
        so the loss has gradients beyond the range)."""
        z = latents.float()
        if self.config.latents_mean is not None:
            shape = (1, -1, 1, 1, 1)
            mean = torch.tensor(self.config.latents_mean, device=z.device).view(shape)
            z = z * torch.tensor(self.config.latents_std, device=z.device).view(shape) + mean
        batch = z.shape[0]
        x = z.transpose(1, 2).flatten(0, 1).to(self.decoder[1].weight.dtype)  # [B * t, z, h, w]
        for index, layer in enumerate(self.decoder):
            if isinstance(layer, MemBlock):
                frames = x.unflatten(0, (batch, -1))  # [B, t, C, H, W]
                start = memory.last.get(index, torch.zeros_like(frames[:, :1]))
                past = torch.cat([start, frames[:, :-1]], dim=1).flatten(0, 1)
                memory.last[index] = frames[:, -1:]
                x = layer(x, past)
            else:
                x = layer(x)
        video = x.unflatten(0, (batch, -1)).transpose(1, 2).float() * 2.0 - 1.0  # [B, 3, 4t, H, W]
        return video.clamp(-1.0, 1.0) if clamp else video

    def iter_decode(self, latents: Tensor, latents_per_chunk: int = 1) -> Iterator[Tensor]:
        """Stream normalized latents [B, z, T, h, w] -> video chunks [B, 3, t, 8h, 8w] in [-1, 1]: the
        first latent's last frame, then `temporal_factor` frames per latent."""
        memory = DecoderMemory()
        trim = self.config.temporal_factor - 1
        starts = [0, *range(1, latents.shape[2], latents_per_chunk)]
        for start, stop in zip(starts, [*starts[1:], latents.shape[2]]):
            video = self.decode_chunk(latents[:, :, start:stop], memory)
            yield video[:, :, trim:] if start == 0 else video


# --- loading ------------------------------------------------------------------------------------


def config_from_tensors(tensors: dict[str, Tensor], source: str) -> TAEHVConfig:
    """The decoder's widths and strides from the shapes of its `decoder.*` tensors."""
    try:
        first = tensors[f"decoder.{INPUT_CONV}.weight"]
        widths = (first.shape[0], *(tensors[f"decoder.{i}.weight"].shape[0] for i in STAGE_CONVS))
        rows = [tensors[f"decoder.{i}.conv.weight"].shape[0] for i in TGROWS]
    except KeyError as exc:
        raise RemoverError(f"{source} is not a TAEHV decoder file (no tensor {exc})") from None
    if any(row % width for row, width in zip(rows, widths)):
        raise RemoverError(f"{source}: its TGrow layers do not fit its widths {widths}")
    strides = tuple(row // width for row, width in zip(rows, widths))
    return TAEHVConfig(latent_channels=first.shape[1], widths=widths, time_strides=strides)


def decoder_file(name: str, weights: str | Path | None) -> Path:
    """The safetensors file of light decoder `name`: `weights` as a local file or a hub id (the family's
    file in it, else the repository's one .safetensors), or by default the published file on the hub."""
    if name not in PUBLISHED:
        raise RemoverError(f"decoder {name!r}: choose one of {', '.join(DECODER_CHOICES)}")
    family = PUBLISHED[name]
    weights = str(weights) if weights is not None else family.hub_id
    if not is_hub_id(weights):
        path = resolve(weights, None, WHAT)
        if path.is_dir():
            raise RemoverError(f"{WHAT}: {path} is a folder: give its .safetensors file")
        return path
    if weights == family.hub_id:
        return resolve(weights, family.filename, WHAT)
    files = sorted(resolve(weights, None, WHAT).glob("*.safetensors"))
    if len(files) != 1:
        raise RemoverError(f"{WHAT}: the hub repository {weights} holds {len(files)} .safetensors files: give the file")
    return files[0]


def load_light_decoder(name: str, path: Path, vae: VAEConfig, device: torch.device, dtype: torch.dtype) -> TAEHVDecoder:
    """Light decoder `name` ("taew2_1", "lighttaew2_1") from its file (`decoder_file`), checked against
    the VAE whose latents it decodes."""
    tensors = read_safetensors([path], device, dtype)
    decoder_tensors = {key: value for key, value in tensors.items() if key.startswith("decoder.")}
    config = config_from_tensors(decoder_tensors, str(path))
    if config.latent_channels != vae.z_dim:
        raise RemoverError(f"{path} decodes {config.latent_channels}-channel latents; this VAE's have {vae.z_dim}")
    if (config.temporal_factor, config.spatial_factor) != (vae.temporal_factor, vae.spatial_factor):
        raise RemoverError(
            f"{path} upsamples {config.temporal_factor}x in time and {config.spatial_factor}x in space; "
            f"this VAE's latents are {vae.temporal_factor}x and {vae.spatial_factor}x"
        )
    if PUBLISHED[name].raw_latents:
        config = replace(config, latents_mean=vae.latents_mean, latents_std=vae.latents_std)
    with torch.device("meta"):
        model = TAEHVDecoder(config)
    load_into(model, decoder_tensors, str(path))
    return model
