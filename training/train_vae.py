"""Train a small VAE in the Wan2.1 architecture (z_dim 16, fewer channels) on synthetic clips.

    python -m training.train_vae --config training/configs/tiny_vae.json
    torchrun --nproc_per_node N -m training.train_vae --config ...   (DDP)

Random crops of rendered clips go through the causal encoder, a sample of the posterior through
the decoder; the loss is L1 + MSE + a small KL term. Besides natural frames the VAE sees what the
pipeline also encodes: masked frames (grey holes) and mask videos. At the end the per-channel
latent mean and std are measured on full-size clips and written into the VAE's config, and the
VAE is saved in the released layout (`<out>/vae`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from runtime.models.vae import (
    RELEASED_VAE,
    Downsample,
    FrameAttention,
    ResidualBlock,
    TemporalCache,
    Upsample,
    WanVAE,
)
from training.data import ClipSpec, SyntheticSource, random_shape_masks
from training.latents import use_channels_last
from training.synthetic import FAMILIES
from training.trainer import (
    Distributed,
    LoopSettings,
    Trainee,
    run_steps,
    sample_rng,
    save_config,
    save_model_folder,
    stage_main,
    torch_generator,
    wrap_ddp,
)


@dataclass(frozen=True)
class VAETrainConfig:
    out: str  # run folder: state.pt, log.jsonl, vae/
    steps: int
    batch_size: int = 4
    lr: float = 5e-4
    warmup: int = 20
    seed: int = 0
    base_dim: int = 8
    num_res_blocks: int = 1
    # clips are rendered at clip_height x clip_width and cropped to crop x crop
    num_frames: int = 5
    clip_height: int = 80
    clip_width: int = 144
    crop: int = 32
    data_source: str = "synthetic"  # a synthetic family of training.synthetic.FAMILIES
    kl_weight: float = 1e-6
    initial_logvar: float = -8.0  # posterior log-variance at the start: a small-noise start learns far faster
    # the encoder's rows for latent channels 3-15 start at this multiple of PyTorch's init, not the 1 %
    # of block_average_init: with both sides of those channels near zero their gradients are too, and
    # the latent collapses to the three block-average channels
    detail_channel_gain: float = 0.01
    masked_fraction: float = 0.2  # samples that are frames with a grey hole
    mask_video_fraction: float = 0.1  # samples that are mask videos (2 m - 1)
    stats_clips: int = 16  # full-size clips that measure the latent mean and std
    stats_frames: int = 9
    log_every: int = 10
    checkpoint_every: int = 100
    device: str = ""
    threads: int = 0  # CPU threads (0 = PyTorch's default); 1 is far faster on an oversubscribed CPU


class VAEObjective(nn.Module):
    """Reconstruction loss of a posterior sample: L1 + MSE + kl_weight * KL (DDP wraps this)."""

    def __init__(self, vae: WanVAE, kl_weight: float) -> None:
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight

    def forward(self, video: Tensor, noise: Tensor) -> Tensor:
        """video [B, 3, F, H, W] in [-1, 1] (F = 4k + 1); noise [B, z_dim, F', H/8, W/8] for the sample."""
        vae, frames = self.vae, video.shape[2]
        cache = TemporalCache()
        posterior = [vae.posterior_chunk(video[:, :, s], cache) for s in vae.video_chunks(frames, frames - 1)]
        mean, logvar = (torch.cat(parts, dim=2).float() for parts in zip(*posterior))
        z = mean + (0.5 * logvar).exp() * noise
        # the stats are identity while training, so the normalized-latent decode takes z as it is
        cache = TemporalCache()
        first = vae.decode_chunk(z[:, :, :1], cache, clamp=False)
        decoded = torch.cat([first, vae.decode_chunk(z[:, :, 1:], cache, clamp=False)], dim=2)
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        return (decoded - video).abs().mean() + (decoded - video).square().mean() + self.kl_weight * kl


def _pass_through(conv: nn.Module, channels: range, tap: tuple[int, ...], gain: float = 1.0) -> None:
    """conv's output channel i copies input channel i at kernel position `tap` (others untouched)."""
    for i in channels:
        conv.weight[(i, i, *tap)] = gain


def block_average_init(vae: WanVAE, carrier: float = 50.0, scale: float = 0.01) -> None:
    """Start the VAE as a block-average autoencoder instead of from noise (a tiny VAE trained from noise
    for minutes still outputs flat grey: the per-pixel RMS norms make colour a direction, which takes
    long to learn).

    Every convolution keeps 1 % of its random init (none from channel 0); on top, channels 1-3 carry RGB
    through the whole network: residual branches start at zero (their second conv), attention outputs at zero, shortcuts
    and upsamplers copy channels, downsamplers average 2x2 pixels and 2 frames, upsamplers repeat them.
    Channel 0 carries a large constant, so every RMS norm divides by about the same number and the
    following SiLU is nearly linear; the last convolutions undo that scale. At the start latent
    channels 0-2 hold the 8x8x4-block average colour and the decoder repeats it; training adds detail
    through the remaining 13 latent channels and the residual branches."""
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                module.weight.mul_(scale)
                module.weight[:, 0] = 0.0  # the constant carrier feeds nothing but itself
                module.bias.zero_()
        for module in vae.modules():
            if isinstance(module, ResidualBlock):
                module.conv2.weight.zero_()
                if module.conv_shortcut is not None:
                    _pass_through(module.conv_shortcut, range(module.conv_shortcut.in_channels), (0, 0, 0))
            elif isinstance(module, FrameAttention):
                module.proj.weight.zero_()
            elif isinstance(module, Downsample):
                conv = module.resample[1]
                for tap in ((0, 0), (0, 1), (1, 0), (1, 1)):
                    _pass_through(conv, range(conv.in_channels), tap, 0.25)
                if module.time_conv is not None:  # windows [past, x0, x1] -> (x0 + x1) / 2
                    for tap in ((1, 0, 0), (2, 0, 0)):
                        _pass_through(module.time_conv, range(module.time_conv.in_channels), tap, 0.5)
            elif isinstance(module, Upsample):
                conv = module.resample[1]
                _pass_through(conv, range(conv.out_channels), (1, 1))
                if module.time_conv is not None:  # both output frames of a pair copy the input frame
                    dim = module.time_conv.in_channels
                    for i in range(dim):
                        module.time_conv.weight[i, i, 2, 0, 0] = module.time_conv.weight[dim + i, i, 2, 0, 0] = 1.0
        for conv in (vae.quant_conv, vae.post_quant_conv):
            _pass_through(conv, range(conv.in_channels), (0, 0, 0))
        centre = (2, 1, 1)  # a 3x3x3 causal conv: the current frame, the centre pixel
        for conv_in in (vae.encoder.conv_in, vae.decoder.conv_in):
            for c in range(3):
                conv_in.weight[(c + 1, c, *centre)] = 1.0
            conv_in.bias[0] = carrier
        for conv_out in (vae.encoder.conv_out, vae.decoder.conv_out):  # latent channels 0-2 / RGB out
            gain = 2.0 * carrier / conv_out.in_channels**0.5  # undoes the norm (1 / carrier) and SiLU (1 / 2)
            for c in range(3):
                conv_out.weight[(c, c + 1, *centre)] = gain


def open_detail_channels(vae: WanVAE, gain: float) -> None:
    """Re-draw the encoder's output rows of latent channels 3.. (the mean half) at `gain` times their
    default init, so that those channels carry features from the first step. The decoder's columns for
    them stay near zero: the start still decodes the block average, and their gradient is no longer a
    product of two near-zero factors."""
    conv, z_dim = vae.encoder.conv_out, vae.config.z_dim
    rows = torch.empty_like(conv.weight[3:z_dim])
    nn.init.kaiming_uniform_(rows, a=math.sqrt(5))  # nn.Conv3d's own default init
    with torch.no_grad():
        conv.weight[3:z_dim] = gain * rows
        conv.weight[3:z_dim, 0] = 0.0  # the constant carrier channel feeds nothing


def training_video(config: VAETrainConfig, source: SyntheticSource, step: int, index: int) -> Tensor:
    """One training sample [3, F, crop, crop] in [-1, 1]: a random crop of a rendered clip, with or
    without its objects, sometimes with a hole cut out or replaced by its mask video."""
    rng = sample_rng(config.seed, step, index)
    clip = source(step * config.batch_size + index)
    frames = clip.frames if rng.random() < 0.5 else clip.background
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    kind = rng.random()
    if kind < config.masked_fraction + config.mask_video_fraction:
        masks = clip.masks if rng.random() < 0.5 else random_shape_masks(rng, *clip.masks.shape)
        mask = torch.from_numpy(masks).float()
        video = video * (1.0 - mask) if kind < config.masked_fraction else (2.0 * mask - 1.0).expand_as(video)
    top = int(rng.integers(0, config.clip_height - config.crop + 1))
    left = int(rng.integers(0, config.clip_width - config.crop + 1))
    return video[:, :, top : top + config.crop, left : left + config.crop]


@torch.no_grad()
def measure_latent_stats(vae: WanVAE, config: VAETrainConfig, device: torch.device) -> tuple[list, list]:
    """Per-channel mean and std of the (un-normalized) mode latents of full-size training clips."""
    spec = ClipSpec(config.stats_frames, config.clip_height, config.clip_width, seed=config.seed + 1)
    source = SyntheticSource(spec, FAMILIES[config.data_source])
    latents = []
    for index in range(config.stats_clips):
        frames = source(index).frames
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float().to(device) / 127.5 - 1.0
        latents.append(vae.encode(video, frames_per_chunk=config.stats_frames - 1).transpose(0, 1).flatten(1))
    stacked = torch.cat(latents, dim=1).double()
    return stacked.mean(1).tolist(), stacked.std(1).tolist()


def train_vae(config: VAETrainConfig, dist: Distributed) -> Path:
    """Train, measure the latent stats, and write `<out>/vae`; returns that folder."""
    run_dir = Path(config.out)
    if dist.is_main:
        save_config(config, run_dir / "config.json")
    vae_config = replace(
        RELEASED_VAE,
        base_dim=config.base_dim,
        num_res_blocks=config.num_res_blocks,
        latents_mean=(0.0,) * RELEASED_VAE.z_dim,
        latents_std=(1.0,) * RELEASED_VAE.z_dim,
    )
    torch.manual_seed(config.seed)
    vae = WanVAE(vae_config)
    block_average_init(vae)
    open_detail_channels(vae, config.detail_channel_gain)
    with torch.no_grad():  # quant_conv's second half is the log-variance
        vae.quant_conv.bias[vae_config.z_dim :] = config.initial_logvar
    vae = use_channels_last(vae.to(dist.device).train())
    objective = Trainee(vae, wrap_ddp(VAEObjective(vae, config.kl_weight), dist).wrapper)  # state: the VAE's keys
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr, weight_decay=0.0)
    spec = ClipSpec(config.num_frames, config.clip_height, config.clip_width, seed=config.seed)
    source = SyntheticSource(spec, FAMILIES[config.data_source])
    latent_shape = (vae_config.z_dim, *vae_config.latent_shape(config.num_frames, config.crop, config.crop))

    def step_loss(step: int, indices: list[int]) -> Tensor:
        video = torch.stack([training_video(config, source, step, i) for i in indices]).to(dist.device)
        video = video.contiguous(memory_format=torch.channels_last_3d)
        noise = torch.stack(
            [torch.randn(latent_shape, generator=torch_generator(sample_rng(config.seed, step, i, 1))) for i in indices]
        ).to(dist.device)
        return objective(video, noise)

    settings = LoopSettings.of(config, run_dir, "vae")
    run_steps(settings, objective, optimizer, step_loss, dist)

    folder = run_dir / "vae"
    if dist.is_main:
        vae.eval()
        mean, std = measure_latent_stats(vae, config, dist.device)
        vae.config = replace(vae_config, latents_mean=tuple(mean), latents_std=tuple(std))
        save_model_folder(folder, vae, "AutoencoderKLWan")
    dist.barrier()
    return folder


def main() -> None:
    stage_main(__doc__.splitlines()[0], VAETrainConfig, train_vae)


if __name__ == "__main__":
    main()
