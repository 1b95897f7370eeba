"""Stage 1: flow-matching training of the remover with contrastive condition tokens.

    python -m training.stage1 --config training/configs/tiny_stage1.json
    torchrun --nproc_per_node N -m training.stage1 --config ...   (DDP)

The target is always the clip itself (z_org); what differs is the hole. Positive samples (token 0,
"remove"): a mask borrowed from another clip or a random shape is cut out, so the model learns to
fill a hole with the real content behind it. Negative samples (token 1, "regenerate"): the clip's
own object masks are cut out, so the model learns to put the object back. Condition dropout: our
condition embedding has only these two rows (a null row would change the released keys), so a
fraction of positive samples is trained with the negative token, which then also learns the plain
fill and serves as the unconditional branch of classifier-free guidance, v = v_neg + g (v_pos - v_neg).
Sampled with CFG and about 50 steps (`training.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from runtime.scheduler import RELEASED_SCHEDULER
from runtime.weights import save_checkpoint
from training.flow import (
    DataSettings,
    crop_size,
    flow_matching_loss,
    frozen_vae,
    new_transformer,
    prepare_latent_set,
    random_crop,
    shifted_sigma,
    trainable_transformer,
)
from training.latents import LatentSet
from training.trainer import (
    Distributed,
    LoopSettings,
    run_steps,
    sample_rng,
    save_config,
    stage_main,
    torch_generator,
    wrap_ddp,
)

CHECKPOINT_DIR = "checkpoint"  # <out>/checkpoint: the released layout the runtime loads


@dataclass(frozen=True)
class Stage1Config:
    out: str  # run folder: state.pt, log.jsonl, config.json, checkpoint/
    vae: str  # VAE folder (config.json + safetensors), e.g. the output of training.train_vae
    steps: int
    init: str = ""  # a transformer folder to start from (training.convert); "" = a fresh model of the size below
    num_layers: int = 4
    num_attention_heads: int = 2
    attention_head_dim: int = 32
    ffn_dim: int = 256
    num_condition_tokens: int = 6
    # data (see training.flow.DataSettings)
    data_source: str = "synthetic"
    data_root: str = ""
    num_clips: int = 32
    num_frames: int = 9
    height: int = 80
    width: int = 144
    positives_per_clip: int = 2
    random_masks: int = 16
    max_dilation: int = 8
    data_seed: int = 1
    cache_dir: str = "runs/cache"
    # optimization
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 50
    seed: int = 0
    negative_fraction: float = 0.5
    condition_dropout: float = 0.1
    timestep_shift: float = 3.0
    min_crop: int = 0  # smallest random latent crop side (0 = whole clips)
    log_every: int = 10
    checkpoint_every: int = 200
    device: str = ""
    threads: int = 0  # CPU threads (0 = PyTorch's default); 1 is far faster on an oversubscribed CPU

    def data(self) -> DataSettings:
        return DataSettings(
            self.data_source,
            self.data_root,
            self.num_clips,
            self.num_frames,
            self.height,
            self.width,
            self.positives_per_clip,
            self.random_masks,
            self.max_dilation,
            self.data_seed,
            self.cache_dir,
        )


@dataclass
class FlowBatch:
    """target [B, z, T, h, w], context [B, 2 z, T, h, w], noise like target, sigma [B], condition [B]."""

    target: Tensor
    context: Tensor
    noise: Tensor
    sigma: Tensor
    condition: Tensor

    def to(self, device: torch.device) -> FlowBatch:
        return FlowBatch(*(t.to(device) for t in (self.target, self.context, self.noise, self.sigma, self.condition)))


def stage1_sample(
    config: Stage1Config, latents: LatentSet, step: int, index: int, size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor, float, int]:
    """One sample: (target, context, noise, sigma, condition) for sample `index` of `step`."""
    rng = sample_rng(config.seed, step, index)
    clip = int(rng.integers(len(latents)))
    negative = rng.random() < config.negative_fraction
    slot = 0 if negative else int(rng.integers(1, latents.masked.shape[1]))
    condition = 1 if negative or rng.random() < config.condition_dropout else 0
    sigma = shifted_sigma(float(rng.random()), config.timestep_shift)
    target, context = random_crop([latents.video[clip], latents.context(clip, slot)], rng, size)
    noise = torch.randn(target.shape, generator=torch_generator(rng))
    return target.float(), context.float(), noise, sigma, condition


def collate(samples: list[tuple]) -> FlowBatch:
    targets, contexts, noises, sigmas, conditions = zip(*samples)
    return FlowBatch(
        torch.stack(targets), torch.stack(contexts), torch.stack(noises), torch.tensor(sigmas), torch.tensor(conditions)
    )


def train_stage1(config: Stage1Config, dist: Distributed) -> Path:
    """Train and write `<out>/checkpoint` (released layout, fp32); returns that folder."""
    run_dir = Path(config.out)
    if dist.is_main:
        save_config(config, run_dir / "config.json")
    vae = frozen_vae(Path(config.vae), dist.device)
    latents = prepare_latent_set(config.data(), vae, dist)
    torch.manual_seed(config.seed)
    if config.init:
        model = trainable_transformer(Path(config.init), dist.device)
    else:
        model = new_transformer(
            config.num_layers,
            config.num_attention_heads,
            config.attention_head_dim,
            config.ffn_dim,
            config.num_condition_tokens,
        ).to(dist.device)
    model.train()
    ddp_model = wrap_ddp(model, dist)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    full = tuple(latents.video.shape[-2:])

    def step_loss(step: int) -> Tensor:
        size = crop_size(config.seed, step, full, config.min_crop)
        batch = collate([stage1_sample(config, latents, step, i, size) for i in dist.shard(config.batch_size)])
        batch = batch.to(dist.device)
        return flow_matching_loss(
            ddp_model, batch.target, batch.context, batch.noise, batch.sigma, 1000.0 * batch.sigma, batch.condition
        )

    folder = run_dir / CHECKPOINT_DIR

    def export(step: int) -> None:
        save_checkpoint(folder, model, vae, RELEASED_SCHEDULER, torch.float32)

    settings = LoopSettings(
        run_dir, config.steps, config.lr, config.warmup, config.log_every, config.checkpoint_every, desc="stage 1"
    )
    run_steps(settings, model, optimizer, step_loss, dist, on_checkpoint=export)
    return folder


def main() -> None:
    stage_main(__doc__.splitlines()[0], Stage1Config, train_stage1)


if __name__ == "__main__":
    main()
