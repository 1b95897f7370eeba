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

from training.flow import (
    crop_size,
    epoch_clip,
    flow_matching_loss,
    frozen_vae,
    new_transformer,
    prepare_latent_set,
    random_crop,
    shifted_sigma,
    train_and_export,
    trainable_transformer,
)
from training.latents import LatentSet
from training.plan import check_memory, stage_shape
from training.stage_config import Stage1Config
from training.trainer import (
    Distributed,
    prepare_model,
    sample_rng,
    save_config,
    stage_main,
    torch_generator,
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
    clip = latents.clip(epoch_clip(config.seed, step * config.batch_size + index, len(latents)))
    negative = rng.random() < config.negative_fraction
    slot = 0 if negative else int(rng.integers(1, latents.slots))
    condition = 1 if negative or rng.random() < config.condition_dropout else 0
    sigma = shifted_sigma(float(rng.random()), config.timestep_shift)
    target, context = random_crop([clip.video, clip.context(slot)], rng, size)
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
    shape = stage_shape(config, dist.world_size)
    check_memory(config, shape, dist.world_size, dist.device, run_dir if dist.is_main else None, dist.is_main)
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
    trainee = prepare_model(model, config, dist)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    full = latents.latent_size

    def step_loss(step: int, indices: list[int]) -> Tensor:
        size = crop_size(config.seed, step, full, config.min_crop)
        batch = collate([stage1_sample(config, latents, step, i, size) for i in indices])
        batch = batch.to(dist.device)
        timestep = 1000.0 * batch.sigma
        return flow_matching_loss(
            trainee,
            batch.target,
            batch.context,
            batch.noise,
            batch.sigma,
            timestep,
            batch.condition,
            config.hole_weight,
        )

    return train_and_export(config, trainee, optimizer, step_loss, vae, dist, "stage 1")


def main() -> None:
    stage_main(__doc__.splitlines()[0], Stage1Config, train_stage1)


if __name__ == "__main__":
    main()
