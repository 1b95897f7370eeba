"""Flow matching for the remover, shared by both transformer stages.

x_t = t * noise + (1 - t) * x0 and the model predicts v = noise - x0, with the timestep 1000 t, as the
runtime's samplers assume. Batches are assembled from a cached `LatentSet` one sample at a time,
each from its own (seed, step, index) generator; a step's random crop size is shared by its batch.
Samples visit the clips epoch by epoch (`epoch_clip`), in an order that depends on (seed, step,
index) alone, so every rank of a run, and a resumed run, agree on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from runtime.models.scheduler import RELEASED_SCHEDULER
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer, TransformerConfig
from runtime.models.vae import WanVAE
from runtime.models.weights import load_transformer, load_vae, save_checkpoint
from training.data import ClipSpec, make_source
from training.latents import (
    LatentSet,
    MaskPool,
    cache_key,
    clip_path,
    encode_clips,
    use_channels_last,
    wait_for_clips,
)
from training.trainer import Distributed, LoopSettings, Trainee, gathered_module, run_steps, sample_rng

CHECKPOINT_DIR = "checkpoint"  # <out>/checkpoint: the released layout the runtime loads


@dataclass(frozen=True)
class DataSettings:
    """The clips a transformer stage trains on (the latent cache is keyed on these and the VAE)."""

    source: str  # synthetic | synthetic-held-out | folder | manifest (see training.data.make_source)
    root: str  # the folder of pairs, or the manifest file
    num_clips: int
    num_frames: int
    height: int
    width: int
    positives_per_clip: int
    random_masks: int
    max_dilation: int
    seed: int
    cache_dir: str


def epoch_clip(seed: int, sample: int, num_clips: int) -> int:
    """The clip of global sample number `sample` (step * batch_size + index): epoch sample // num_clips
    visits every clip once, in a permutation drawn from (seed, epoch)."""
    epoch, position = divmod(sample, num_clips)
    return int(np.random.default_rng([seed, epoch]).permutation(num_clips)[position])


def shifted_sigma(u: float, shift: float) -> float:
    """Map u ~ U(0, 1) through the sampler's time shift, so training visits noise levels as sampling does."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def flow_matching_loss(
    model: Callable[..., Tensor],
    target: Tensor,
    context: Tensor,
    noise: Tensor,
    sigma: Tensor,
    timestep: Tensor,
    condition: Tensor | None,
    hole_weight: float = 0.0,
) -> Tensor:
    """|| model(x_sigma | context, timestep, condition) - (noise - target) ||^2, averaged, each latent
    position weighted 1 + hole_weight where the hole changed it (see hole_positions).

    target and noise [B, z, T, h, w], context [B, 2 z, T, h, w], sigma and timestep [B]."""
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = s * noise + (1.0 - s) * target
    velocity = model(torch.cat([noisy, context], dim=1), timestep, condition)
    error = (velocity.float() - (noise - target)).square()
    if hole_weight == 0.0:
        return error.mean()
    weight = 1.0 + hole_weight * hole_positions(target, context).float()
    return (error * weight).mean() / weight.mean()


HOLE_CHANGE = 0.1  # mean |masked - target| over channels, in normalized latent units, that marks a hole position


def hole_positions(target: Tensor, context: Tensor) -> Tensor:
    """[B, 1, T, h, w] bool: the latent positions where the masked video's latent differs from the
    target's, i.e. where the hole (and the decoder's reach around it) changed the latent."""
    masked = context[:, : target.shape[1]].float()
    return (masked - target.float()).abs().mean(dim=1, keepdim=True) > HOLE_CHANGE


def crop_size(seed: int, step: int, full: tuple[int, int], min_crop: int) -> tuple[int, int]:
    """The latent crop (h, w) of a step: even sizes from min_crop to the full size (0 = no crop)."""
    if min_crop <= 0:
        return full
    rng = sample_rng(seed, step, -1)
    return tuple(int(rng.integers(min(min_crop, n) // 2, n // 2 + 1)) * 2 for n in full)


def random_crop(tensors: list[Tensor], rng: np.random.Generator, size: tuple[int, int]) -> list[Tensor]:
    """The same random spatial window of each [..., h, w] tensor."""
    height, width = tensors[0].shape[-2:]
    top, left = int(rng.integers(0, height - size[0] + 1)), int(rng.integers(0, width - size[1] + 1))
    return [t[..., top : top + size[0], left : left + size[1]] for t in tensors]


def transformer_config(
    num_layers: int, num_attention_heads: int, attention_head_dim: int, ffn_dim: int, num_condition_tokens: int
) -> TransformerConfig:
    """The released architecture at a given size (what a stage config's size keys describe)."""
    return replace(
        RELEASED_TRANSFORMER,
        num_layers=num_layers,
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        ffn_dim=ffn_dim,
        num_condition_tokens=num_condition_tokens,
    )


def new_transformer(
    num_layers: int, num_attention_heads: int, attention_head_dim: int, ffn_dim: int, num_condition_tokens: int
) -> RemoverTransformer:
    """A freshly initialized remover of the released architecture at a given size (for the tiny model)."""
    return RemoverTransformer(
        transformer_config(num_layers, num_attention_heads, attention_head_dim, ffn_dim, num_condition_tokens)
    )


def trainable_transformer(folder: Path, device: torch.device) -> RemoverTransformer:
    """A released-layout transformer folder loaded in fp32, in training mode, with gradients on."""
    return load_transformer(folder, device, torch.float32).train().requires_grad_(True)


def frozen_vae(folder: Path, device: torch.device) -> WanVAE:
    return use_channels_last(load_vae(folder, device, torch.float32))


def prepare_latent_set(data: DataSettings, vae: WanVAE, dist: Distributed) -> LatentSet:
    """The stage's latent set, read lazily from its cache folder (keyed on the data settings and the
    VAE). Each rank first encodes the clips of its share (clip i on rank i % world_size) that the
    folder lacks, so an interrupted encode resumes where it stopped, then polls the folder until the
    other ranks' clips are there (hours apart at scale: longer than a collective's timeout)."""
    settings = {key: value for key, value in asdict(data).items() if key != "cache_dir"}
    folder = Path(data.cache_dir) / f"latents-{cache_key(settings, vae)}"
    share = range(dist.rank, data.num_clips, dist.world_size)
    if not all(clip_path(folder, clip).is_file() for clip in share):
        spec = ClipSpec(data.num_frames, data.height, data.width, data.seed, max_dilation=data.max_dilation)
        pool = MaskPool(make_source(data.source, spec, data.root), data.num_clips, data.random_masks, data.seed)
        encode_clips(vae, pool, share, data.positives_per_clip, folder, dist.device, progress=dist.is_main)
    wait_for_clips(folder, range(data.num_clips), "latents of all ranks", dist.is_main)
    dist.barrier()
    return LatentSet.open(folder, data.num_clips)


def train_and_export(
    config: object,
    trainee: Trainee,
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[int, list[int]], Tensor],
    vae: WanVAE,
    dist: Distributed,
    desc: str,
) -> Path:
    """A transformer stage's steps (resumed from its run folder's state), writing `<out>/checkpoint` in
    the released layout (fp32, with `vae`) at every saved state; returns that folder. `config` is a
    stage config: its out, steps, lr, warmup, log_every, checkpoint_every, batch_size, micro_batch_size."""
    run_dir = Path(config.out)
    folder = run_dir / CHECKPOINT_DIR

    def export(step: int) -> None:
        whole = gathered_module(trainee, dist)
        if whole is not None:
            save_checkpoint(folder, whole, vae, RELEASED_SCHEDULER, torch.float32)

    settings = LoopSettings.of(config, run_dir, desc)
    run_steps(settings, trainee, optimizer, step_loss, dist, on_checkpoint=export)
    return folder
