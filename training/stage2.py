"""Stage 2: minimax distillation on curated removals with bad noise, for 6 steps without CFG.

    python -m training.stage2 --config training/configs/tiny_stage2.json
    torchrun --nproc_per_node N -m training.stage2 --config ...   (DDP)

1. Curation: the stage-1 model removes the objects of the stage-1 training clips (its own object masks
   cut out, CFG, ~50 steps, through `runtime.pipeline.remover.Remover.denoise`), all of them or a seeded subset
   of `curation_clips`; a pluggable scorer rates each result and the best `keep_fraction` become the
   targets z_succ. Files: `<out>/curated/clip-NNNNNN.pt` (a removal and its score, one per curated
   clip) and `<out>/curated/kept.json` (the kept clips and their scores).
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

import functools
import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from runtime.errors import RemoverError
from runtime.io.outputs import write_atomically
from runtime.models.scheduler import RELEASED_SCHEDULER
from runtime.models.transformer import RemoverTransformer
from runtime.pipeline.remover import Remover
from runtime.pipeline.samplers import make_sampler
from training.flow import (
    CHECKPOINT_DIR,
    crop_size,
    epoch_clip,
    flow_matching_loss,
    frozen_vae,
    prepare_latent_set,
    random_crop,
    train_and_export,
    trainable_transformer,
)
from training.latents import LatentSet, clip_path, wait_for_clips
from training.plan import check_memory, stage_shape
from training.stage_config import Stage1Config, Stage2Config
from training.trainer import (
    Distributed,
    load_config,
    prepare_model,
    sample_rng,
    save_config,
    stage_main,
    torch_generator,
)

BAD_NOISE_TIMESTEP = 999.0  # t = 1 (z_t = eps) at the first timestep the sampler uses


# --- curation -----------------------------------------------------------------------------------


def ground_truth_score(latents: LatentSet, clip: int, removal: Tensor) -> float:
    """Agreement with the true background: PSNR (dB, peak 1) of the removal's latents against the
    clip's background latents over the object region. Needs clips with known backgrounds (synthetic)."""
    known = latents.clip(clip)
    if known.background is None:
        raise RemoverError("the ground-truth scorer needs clips whose backgrounds are known (synthetic data)")
    region = known.region.expand_as(removal)
    error = (removal.float() - known.background.float())[region].square().mean()
    return float(-10.0 * torch.log10(error.clamp_min(1e-10)))


# A scorer rates one stage-1 removal (normalized latents [z, T, h, w]) of clip `clip`; higher is better.
SCORERS: dict[str, Callable[[LatentSet, int, Tensor], float]] = {"ground-truth": ground_truth_score}


CURATION_DIR = "curated"  # in the run folder: clip-NNNNNN.pt per curated clip, and the kept index
KEPT_INDEX = "kept.json"


def curation_clips(seed: int, num_clips: int, count: int) -> list[int]:
    """The clips to curate, in increasing order: the first `count` (0 = all) of a permutation drawn from
    `seed`, so a larger count keeps a smaller one's clips (and their curated files)."""
    if count > num_clips:
        raise RemoverError(f"curation_clips is {count}, but the stage-1 data has only {num_clips} clips")
    return sorted(int(clip) for clip in np.random.default_rng(seed).permutation(num_clips)[: count or num_clips])


def write_kept_index(folder: Path, clips: list[int], keep_fraction: float) -> None:
    """Write `kept.json` in `folder`: the best `keep_fraction` of the curated `clips` by score, best first
    (ties: the lower clip first). Reads the scores alone (the files are memory-mapped, not read whole)."""
    scores = {clip: float(torch.load(clip_path(folder, clip), mmap=True, weights_only=True)["score"]) for clip in clips}
    kept = sorted(clips, key=lambda clip: (-scores[clip], clip))[: max(1, round(keep_fraction * len(clips)))]
    index = {"clip": kept, "score": [scores[clip] for clip in kept]}
    write_atomically(folder / KEPT_INDEX, lambda to: to.write_text(json.dumps(index)))


class CuratedSet:
    """The kept removals of a curation folder: `clip` and `score` (best first) from its index, and each
    removal read from its file when asked for. Host memory: the index (a clip number and a score per
    kept clip) and at most `capacity` removals (fp16, 4.2 MB each for 81 frames at 480x832), however
    many were kept."""

    def __init__(self, folder: Path, capacity: int = 4) -> None:
        index = json.loads((folder / KEPT_INDEX).read_text())
        self.clip: list[int] = index["clip"]
        self.score: list[float] = index["score"]
        self._removal = functools.lru_cache(maxsize=capacity)(
            lambda clip: torch.load(clip_path(folder, clip), map_location="cpu", weights_only=True)["removal"]
        )

    def removal(self, clip: int) -> Tensor:
        """Clip `clip`'s removal, fp16 [z, T, h, w] (read on first use, kept while recently used)."""
        return self._removal(clip)


def curate(config: Stage2Config, stage1_folder: Path, latents: LatentSet, dist: Distributed) -> CuratedSet:
    """Run stage 1 on the `curation_clips` clips (spread over the ranks), score, keep the best fraction.

    Each removal is saved with its score as `<out>/curated/clip-NNNNNN.pt` as soon as it is made, so an
    interrupted curation resumes with the clips it lacks; the ranks poll the folder for each other's
    files, then rank 0 writes the kept index from the scores. Host memory while curating: the stage-1
    model, one clip's latents and one removal (see `CuratedSet` for training)."""
    folder = Path(config.out) / CURATION_DIR
    clips = curation_clips(config.curation_seed, len(latents), config.curation_clips)
    todo = [clip for clip in clips[dist.rank :: dist.world_size] if not clip_path(folder, clip).is_file()]
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
        remover = Remover.from_pretrained(stage1_folder, dist.device, "fp32")
        score = SCORERS[config.scorer]
        for clip in tqdm(todo, desc="curate", unit="clip", disable=not dist.is_main):
            known = latents.clip(clip)
            generator = torch_generator(sample_rng(config.curation_seed, 0, clip))
            noise = torch.randn(known.video.shape, generator=generator)[None].to(dist.device)
            context = known.context(0)[None].to(dist.device, torch.float32)
            removal = remover.denoise(noise, context, config.curation_steps, guidance_scale=config.guidance_scale)
            removal = removal[0].cpu()
            curated = {"removal": removal.half(), "score": score(latents, clip, removal)}
            write_atomically(clip_path(folder, clip), functools.partial(torch.save, curated))
    wait_for_clips(folder, clips, "curated (all ranks)", dist.is_main)
    if dist.is_main:
        write_kept_index(folder, clips, config.keep_fraction)
    dist.barrier()
    return CuratedSet(folder)


# --- bad noise ----------------------------------------------------------------------------------


def bad_noise(
    model: Callable[..., Tensor],
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
    if config.scorer not in SCORERS:
        raise RemoverError(f"unknown scorer {config.scorer!r}; choose one of {sorted(SCORERS)}")
    if dist.is_main:
        save_config(config, run_dir / "config.json")
    shape = stage_shape(config, dist.world_size, stage1)
    check_memory(config, shape, dist.world_size, dist.device, run_dir if dist.is_main else None, dist.is_main)
    vae = frozen_vae(Path(stage1.vae), dist.device)
    latents = prepare_latent_set(stage1.data(), vae, dist)
    curated = curate(config, stage1_dir / CHECKPOINT_DIR, latents, dist)

    torch.manual_seed(config.seed)
    model = stage2_model(stage1_dir / CHECKPOINT_DIR, config.condition_tokens, dist.device)
    trainee = prepare_model(model, config, dist)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    sampler = make_sampler("unipc", RELEASED_SCHEDULER, config.num_inference_steps)
    sigmas, timesteps = sampler.sigmas[:-1], sampler.timesteps.tolist()
    full = latents.latent_size

    def sample(step: int, index: int, size: tuple[int, int]) -> tuple:
        rng = sample_rng(config.seed, step, index)
        k = int(rng.integers(len(sigmas)))
        if is_curated(index, config.curated_fraction):
            kept = curated.clip[int(rng.integers(len(curated.clip)))]
            clip = latents.clip(kept)
            tensors = [curated.removal(kept), clip.context(0), clip.video]
        else:  # an ordinary sample: the epoch's next clip (ordinary samples counted alone), a borrowed mask
            ordinary = config.batch_size - math.floor(config.batch_size * config.curated_fraction)
            number = step * ordinary + index - math.floor(index * config.curated_fraction)
            clip = latents.clip(epoch_clip(config.seed, number, len(latents)))
            slot = int(rng.integers(1, latents.slots))
            tensors = [clip.video, clip.context(slot), clip.video]
        target, context, original = (t.float() for t in random_crop(tensors, rng, size))
        generator = torch_generator(rng)
        noise, fresh = torch.randn(target.shape, generator=generator), torch.randn(target.shape, generator=generator)
        return target, context, original, noise, fresh, float(rng.random()), sigmas[k], timesteps[k]

    def step_loss(step: int, indices: list[int]) -> Tensor:
        size = crop_size(config.seed, step, full, config.min_crop)
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
                trainee.plain,
                noise[rows],
                original[rows],
                context[rows],
                None if condition is None else condition[rows],
                alpha[rows],
                fresh[rows],
            )
        return flow_matching_loss(
            trainee, target, context, noise, sigma, timestep.float(), condition, config.hole_weight
        )

    return train_and_export(config, trainee, optimizer, step_loss, vae, dist, "stage 2")


def main() -> None:
    stage_main(__doc__.splitlines()[0], Stage2Config, train_stage2)


if __name__ == "__main__":
    main()
