"""Stage 2: minimax distillation on curated removals with bad noise, for 6 steps without CFG.

    python -m training.stage2 --config training/configs/tiny_stage2.json
    torchrun --nproc_per_node N -m training.stage2 --config ...   (DDP)

1. Curation: the stage-1 model removes the objects of the stage-1 training clips (its own object masks
   cut out, CFG, ~50 steps, through `runtime.pipeline.Remover.denoise`); a pluggable scorer rates each
   result and the best `keep_fraction` become the targets z_succ.
2. Bad noise, one backward pass per sample: at t = 1 (z_t = eps),
   L(eps) = || u(eps, z_m, m, 1) - (sg(eps) - z_org) ||^2 with z_org the clip WITH its object (the noise
   the model would turn back into the object); g = dL/deps and
   eps* = sqrt(1 - a) eps - sqrt(a) sign(g) |eps'|, a ~ U(0, 1), eps' fresh noise.
3. Training: flow matching from eps* toward z_succ (z*_t = t eps* + (1 - t) z_succ, target eps* - z_succ)
   for a `curated_fraction` (1/3) of the samples, ordinary samples (random masks, random noise, the
   clip as target) for the rest; t is drawn from the timesteps the 6-step sampler visits. No CFG.
   Condition tokens: "positive" (default) keeps the stage-1 positive token, frozen, on every sample, so
   the runtime serves the model with condition 0; "none" drops them as the paper does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from runtime.errors import RemoverError
from runtime.models.transformer import RemoverTransformer
from runtime.pipeline import Remover
from runtime.scheduler import RELEASED_SCHEDULER, make_sampler
from runtime.weights import save_checkpoint
from training.flow import (
    crop_size,
    flow_matching_loss,
    frozen_vae,
    prepare_latent_set,
    random_crop,
    trainable_transformer,
)
from training.latents import LatentSet
from training.stage1 import CHECKPOINT_DIR, Stage1Config
from training.trainer import (
    Distributed,
    LoopSettings,
    load_config,
    run_steps,
    sample_rng,
    save_config,
    stage_main,
    torch_generator,
    wrap_ddp,
)

BAD_NOISE_TIMESTEP = 999.0  # t = 1 (z_t = eps) at the first timestep the sampler uses


@dataclass(frozen=True)
class Stage2Config:
    out: str  # run folder: curated.pt, state.pt, log.jsonl, config.json, checkpoint/
    stage1: str  # the stage-1 run folder: its config.json names the data and the VAE, checkpoint/ the weights
    steps: int
    # curation
    curation_steps: int = 50
    guidance_scale: float = 3.0
    scorer: str = "ground-truth"
    keep_fraction: float = 0.5
    curation_seed: int = 0
    # training
    num_inference_steps: int = 6
    curated_fraction: float = 1 / 3
    bad_noise: bool = True  # False: curated samples get plain random noise (the paper's ablation)
    condition_tokens: str = "positive"  # positive | none
    batch_size: int = 6
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup: int = 20
    seed: int = 0
    min_crop: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    device: str = ""
    threads: int = 0  # CPU threads (0 = PyTorch's default); 1 is far faster on an oversubscribed CPU

    def validate(self, source: str) -> None:
        if self.condition_tokens not in ("positive", "none"):
            raise RemoverError(f"{source}: condition_tokens must be 'positive' or 'none'")
        if self.scorer not in SCORERS:
            raise RemoverError(f"{source}: unknown scorer {self.scorer!r}; choose one of {sorted(SCORERS)}")


# --- curation -----------------------------------------------------------------------------------


def ground_truth_score(latents: LatentSet, clip: int, removal: Tensor) -> float:
    """Agreement with the true background: PSNR (dB, peak 1) of the removal's latents against the
    clip's background latents over the object region. Needs clips with known backgrounds (synthetic)."""
    if latents.background is None:
        raise RemoverError("the ground-truth scorer needs clips whose backgrounds are known (synthetic data)")
    region = latents.region[clip].expand_as(removal)
    error = (removal.float() - latents.background[clip].float())[region].square().mean()
    return float(-10.0 * torch.log10(error.clamp_min(1e-10)))


# A scorer rates one stage-1 removal (normalized latents [z, T, h, w]) of clip `clip`; higher is better.
SCORERS: dict[str, Callable[[LatentSet, int, Tensor], float]] = {"ground-truth": ground_truth_score}


@dataclass
class CuratedSet:
    """The kept stage-1 removals: clip [K] (indices into the latent set), removal [K, z, T, h, w], score [K]."""

    clip: Tensor
    removal: Tensor
    score: Tensor


def curate(config: Stage2Config, stage1_folder: Path, latents: LatentSet, dist: Distributed) -> CuratedSet:
    """Run stage 1 on every clip (clips spread over the ranks), score, keep the best fraction."""
    run_dir = Path(config.out)
    path = run_dir / "curated.pt"
    if not path.is_file():
        remover = Remover.from_pretrained(stage1_folder, dist.device, "fp32")
        score = SCORERS[config.scorer]
        part: dict[str, list] = {"clip": [], "removal": [], "score": []}
        for clip in range(dist.rank, len(latents), dist.world_size):
            noise = torch.randn(
                latents.video[clip].shape, generator=torch_generator(sample_rng(config.curation_seed, 0, clip))
            )
            context = latents.context(clip, 0)[None].to(dist.device, torch.float32)
            removal = remover.denoise(
                noise[None].to(dist.device), context, config.curation_steps, guidance_scale=config.guidance_scale
            )[0].cpu()
            part["clip"].append(clip)
            part["removal"].append(removal.half())
            part["score"].append(score(latents, clip, removal))
        torch.save(part, run_dir / f".curated-rank{dist.rank}.pt")
        dist.barrier()
        if dist.is_main:
            parts = [torch.load(run_dir / f".curated-rank{r}.pt", weights_only=True) for r in range(dist.world_size)]
            clips = torch.tensor([c for p in parts for c in p["clip"]])
            removals = torch.stack([r for p in parts for r in p["removal"]])
            scores = torch.tensor([s for p in parts for s in p["score"]])
            keep = scores.argsort(descending=True)[: max(1, round(config.keep_fraction * len(scores)))]
            torch.save({"clip": clips[keep], "removal": removals[keep], "score": scores[keep]}, path)
            for r in range(dist.world_size):
                (run_dir / f".curated-rank{r}.pt").unlink()
        dist.barrier()
    return CuratedSet(**torch.load(path, weights_only=True))


# --- bad noise ----------------------------------------------------------------------------------


def bad_noise(
    model: RemoverTransformer,
    noise: Tensor,
    original: Tensor,
    context: Tensor,
    condition: Tensor | None,
    alpha: Tensor,
    fresh: Tensor,
) -> Tensor:
    """eps* = sqrt(1 - a) eps - sqrt(a) sign(g) |eps'|: g = dL/deps, L = ||u(eps | context, 1) - (sg(eps) - z_org)||^2.

    One forward and one backward pass (with respect to the noise only, no parameter gradients).
    noise, original (z_org), fresh (eps') [B, z, T, h, w]; context [B, 2 z, T, h, w]; alpha [B]."""
    eps = noise.detach().requires_grad_(True)
    timestep = torch.full((len(eps),), BAD_NOISE_TIMESTEP, device=eps.device)
    velocity = model(torch.cat([eps, context], dim=1), timestep, condition)
    loss = (velocity.float() - (eps.detach() - original)).square().sum()
    (gradient,) = torch.autograd.grad(loss, eps)
    a = alpha.view(-1, 1, 1, 1, 1)
    return (1.0 - a).sqrt() * noise - a.sqrt() * gradient.sign() * fresh.abs()


# --- training -----------------------------------------------------------------------------------


def is_curated(index: int, fraction: float) -> bool:
    """Whether sample `index` of a batch is a curated one: every 1/fraction-th, spread over the batch."""
    return math.floor((index + 1) * fraction) > math.floor(index * fraction)


def stage2_model(stage1_folder: Path, tokens: str, device: torch.device) -> RemoverTransformer:
    """The stage-1 weights to start from; "positive" freezes the condition embedding, "none" drops it."""
    model = trainable_transformer(stage1_folder / "transformer", device)
    if tokens == "positive":
        if not model.config.num_condition_tokens:
            raise RemoverError("condition_tokens='positive' needs a stage-1 model with condition tokens")
        model.condition_embedding.requires_grad_(False)
        return model
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("condition_embedding.")}
    tokenless = RemoverTransformer(replace(model.config, num_condition_tokens=0)).to(device)
    tokenless.load_state_dict(state)
    return tokenless.train()


def train_stage2(config: Stage2Config, dist: Distributed) -> Path:
    """Curate, train, and write `<out>/checkpoint` (released layout, fp32); returns that folder."""
    run_dir = Path(config.out)
    stage1_dir = Path(config.stage1)
    stage1 = load_config(Stage1Config, stage1_dir / "config.json")
    if dist.is_main:
        save_config(config, run_dir / "config.json")
    vae = frozen_vae(Path(stage1.vae), dist.device)
    latents = prepare_latent_set(stage1.data(), vae, dist)
    curated = curate(config, stage1_dir / CHECKPOINT_DIR, latents, dist)

    torch.manual_seed(config.seed)
    model = stage2_model(stage1_dir / CHECKPOINT_DIR, config.condition_tokens, dist.device)
    ddp_model = wrap_ddp(model, dist)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    sampler = make_sampler("unipc", RELEASED_SCHEDULER, config.num_inference_steps)
    sigmas, timesteps = sampler.sigmas[:-1], sampler.timesteps.tolist()
    full = tuple(latents.video.shape[-2:])

    def sample(step: int, index: int, size: tuple[int, int]) -> tuple:
        rng = sample_rng(config.seed, step, index)
        k = int(rng.integers(len(sigmas)))
        if is_curated(index, config.curated_fraction):
            pick = int(rng.integers(len(curated.clip)))
            clip = int(curated.clip[pick])
            tensors = [curated.removal[pick], latents.context(clip, 0), latents.video[clip]]
        else:  # an ordinary sample: a borrowed mask, the clip itself as target
            clip = int(rng.integers(len(latents)))
            slot = int(rng.integers(1, latents.masked.shape[1]))
            tensors = [latents.video[clip], latents.context(clip, slot), latents.video[clip]]
        target, context, original = (t.float() for t in random_crop(tensors, rng, size))
        generator = torch_generator(rng)
        noise, fresh = torch.randn(target.shape, generator=generator), torch.randn(target.shape, generator=generator)
        return target, context, original, noise, fresh, float(rng.random()), sigmas[k], timesteps[k]

    def step_loss(step: int) -> Tensor:
        size = crop_size(config.seed, step, full, config.min_crop)
        indices = list(dist.shard(config.batch_size))
        samples = [sample(step, i, size) for i in indices]
        target, context, original, noise, fresh = (torch.stack(t).to(dist.device) for t in list(zip(*samples))[:5])
        alpha, sigma, timestep = (torch.tensor(t, device=dist.device) for t in list(zip(*samples))[5:])
        condition = torch.zeros(len(indices), dtype=torch.long, device=dist.device)
        condition = condition if config.condition_tokens == "positive" else None
        curated_rows = [row for row, i in enumerate(indices) if is_curated(i, config.curated_fraction)]
        if config.bad_noise and curated_rows:
            rows = torch.tensor(curated_rows, device=dist.device)
            noise = noise.clone()
            noise[rows] = bad_noise(
                model,
                noise[rows],
                original[rows],
                context[rows],
                None if condition is None else condition[rows],
                alpha[rows],
                fresh[rows],
            )
        return flow_matching_loss(ddp_model, target, context, noise, sigma, timestep.float(), condition)

    folder = run_dir / CHECKPOINT_DIR

    def export(step: int) -> None:
        save_checkpoint(folder, model, vae, RELEASED_SCHEDULER, torch.float32)

    settings = LoopSettings(
        run_dir, config.steps, config.lr, config.warmup, config.log_every, config.checkpoint_every, desc="stage 2"
    )
    run_steps(settings, model, optimizer, step_loss, dist, on_checkpoint=export)
    return folder


def main() -> None:
    stage_main(__doc__.splitlines()[0], Stage2Config, train_stage2)


if __name__ == "__main__":
    main()
