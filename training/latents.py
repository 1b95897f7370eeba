"""VAE latents of a set of training clips, computed once and cached on disk, one file per clip.

The transformer stages never run the VAE while training: for every clip the cache holds the latents
of the clip itself (the flow-matching target z_org), of the clip without its objects where known
(scores stage-1 removals), of the clip with holes cut out (one slot for its own object masks, the
negative sample; more slots for masks borrowed from other clips or random shapes, the positive
samples) and of each slot's mask video. Holes and mask videos follow the pipeline's convention
(`runtime.pipeline.remover.Remover.encode`): masked = frames * (1 - m), mask video = 2 m - 1.

Layout: a folder per cache key holding `clip-000000.pt`, `clip-000001.pt`, ... (a `ClipLatents`
each), every file written under a temporary name and renamed, so a file present is complete and an
interrupted encode resumes with the clips it lacks. `LatentSet` reads the files when asked for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from runtime.errors import RemoverError
from runtime.io.outputs import write_atomically
from runtime.models.vae import WanVAE
from training.data import ClipSource, clip_rng, random_shape_masks


@dataclass
class ClipLatents:
    """One clip's normalized latents (fp16, CPU), with 1 + P mask slots: video [z, T, h, w] (the
    target z_org); background [z, T, h, w] or None; masked [1 + P, z, T, h, w] (slot 0: the clip's own
    object masks cut out, slots 1..P: borrowed masks); masks [1 + P, z, T, h, w] (the mask video of
    each slot); region [T, h, w] bool (the clip's object masks at latent resolution)."""

    video: Tensor
    background: Tensor | None
    masked: Tensor
    masks: Tensor
    region: Tensor

    def context(self, slot: int) -> Tensor:
        """[2 z, T, h, w]: masked-video latents | mask latents of one slot, as the transformer takes them."""
        return torch.cat([self.masked[slot], self.masks[slot]])

    def save(self, path: Path) -> None:
        """Write under a temporary name and rename (a file present is never half-written)."""
        write_atomically(path, lambda to: torch.save({f.name: getattr(self, f.name) for f in fields(self)}, to))

    @classmethod
    def load(cls, path: Path) -> ClipLatents:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))


def clip_path(folder: Path, clip: int) -> Path:
    """Where clip `clip`'s file is kept in `folder` (its latents, or its stage-1 removal)."""
    return folder / f"clip-{clip:06d}.pt"


def wait_for_clips(folder: Path, clips: Iterable[int], desc: str, progress: bool, interval: float = 10.0) -> None:
    """Return once `folder` holds the file of every one of `clips` (written by other ranks). Polls the
    folder's listing, at once and then every 0.1 s growing to `interval` s, instead of waiting in a
    collective, whose timeout (NCCL's: 10 minutes) the gap between ranks can exceed. `progress` shows
    the clips present."""
    names = {clip_path(folder, clip).name for clip in clips}
    missing = names - file_names(folder)
    delay = 0.1
    with tqdm(
        total=len(names), initial=len(names) - len(missing), desc=desc, unit="clip", disable=not missing or not progress
    ) as bar:
        while missing:
            time.sleep(delay)
            delay = min(2 * delay, interval)
            found = missing & file_names(folder)
            bar.update(len(found))
            missing -= found


def file_names(folder: Path) -> set[str]:
    """The names in `folder` (none if it does not exist yet)."""
    return set(os.listdir(folder)) if folder.is_dir() else set()


class LatentSet:
    """The latents of `num_clips` clips, each made by `load(clip)` when asked for and kept in a
    least-recently-used cache of `capacity` clips: host memory holds at most `capacity` clips (about
    30 MB each for 81 frames at 480x832 with 2 borrowed masks) however many clips there are."""

    def __init__(self, load: Callable[[int], ClipLatents], num_clips: int, capacity: int = 4) -> None:
        self._load = load
        self._num_clips = num_clips
        self._capacity = capacity
        self._cache: OrderedDict[int, ClipLatents] = OrderedDict()

    @classmethod
    def open(cls, folder: Path, num_clips: int, capacity: int = 4) -> LatentSet:
        """The set cached in `folder`; an error if a clip's file is missing."""
        missing = [n for n in range(num_clips) if not clip_path(folder, n).is_file()]
        if missing:
            raise RemoverError(f"the latent cache {folder} lacks {len(missing)} clips, e.g. clip {missing[0]}")
        return cls(lambda clip: ClipLatents.load(clip_path(folder, clip)), num_clips, capacity)

    def __len__(self) -> int:
        return self._num_clips

    def clip(self, clip: int) -> ClipLatents:
        """Clip `clip`'s latents (read on first use, kept while recently used)."""
        if clip in self._cache:
            self._cache.move_to_end(clip)
            return self._cache[clip]
        latents = self._cache[clip] = self._load(clip)
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return latents

    @property
    def slots(self) -> int:
        """1 + P: the clip's own masks and the P borrowed ones."""
        return len(self.clip(0).masked)

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of every clip's latents."""
        return tuple(self.clip(0).video.shape[-2:])


def use_channels_last(vae: WanVAE) -> WanVAE:
    """Store the VAE's 3D convolution weights channels-last: on the CPU its encode runs ~1.5x and its
    training step ~2x faster (measured in this project; same results up to rounding)."""
    for module in vae.modules():
        if isinstance(module, nn.Conv3d):
            module.to(memory_format=torch.channels_last_3d)
    return vae


def as_video(frames: np.ndarray) -> Tensor:
    """uint8 [F, H, W, 3] -> fp32 [3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def masked_video(frames: np.ndarray, masks: np.ndarray) -> Tensor:
    """The frames with the masked pixels set to 0 (mid-grey), as the pipeline encodes them."""
    return as_video(frames) * (1.0 - torch.from_numpy(masks).float())


def mask_video(masks: np.ndarray) -> Tensor:
    """bool [F, H, W] -> [3, F, H, W] with 1 inside and -1 outside, as the pipeline encodes masks."""
    return (2.0 * torch.from_numpy(masks).float() - 1.0).expand(3, -1, -1, -1)


def latent_region(masks: np.ndarray, temporal: int = 4, spatial: int = 8) -> Tensor:
    """bool [T', h, w]: a latent pixel is in the region if any pixel it encodes is masked
    (latent frame 0 encodes frame 0, latent frame k frames 4k-3 .. 4k)."""
    m = torch.from_numpy(masks).float()
    grouped = torch.cat([m[:1], F.max_pool3d(m[1:][None], (temporal, 1, 1))[0]]) if len(m) > 1 else m
    return F.max_pool2d(grouped[:, None], spatial)[:, 0] > 0


@torch.no_grad()
def encode_all(vae: WanVAE, jobs: list[Callable[[], Tensor]], batch: int, device: torch.device) -> Iterator[Tensor]:
    """Encode videos [3, F, H, W] made on demand by `jobs`, `batch` at a time (the whole clip after the
    first frame as one chunk); yields fp16 latents one video at a time."""
    dtype = vae.quant_conv.weight.dtype
    for start in range(0, len(jobs), batch):
        videos = torch.stack([job() for job in jobs[start : start + batch]]).to(device, dtype)
        videos = videos.contiguous(memory_format=torch.channels_last_3d)
        frames = videos.shape[2]
        chunk = max(vae.config.temporal_factor, frames - 1)
        yield from vae.encode(videos, frames_per_chunk=chunk).half().cpu()


@dataclass(frozen=True)
class MaskPool:
    """The masks lent to positive slots: entry j < num_clips is clip j's object masks, read alone
    (`source.masks(j)`: a real clip's mask file, not its video); the `random_masks` entries after
    them are random moving shapes."""

    source: ClipSource
    num_clips: int
    random_masks: int
    seed: int

    def __len__(self) -> int:
        return self.num_clips + self.random_masks

    def borrowed(self, clip: int, count: int) -> list[int]:
        """Pool entries lent to `clip` for its positive samples: any but its own."""
        others = [j for j in range(len(self)) if j != clip]
        return [int(j) for j in clip_rng(self.seed, clip, 2).choice(others, size=count, replace=False)]

    def masks(self, entry: int, shape: tuple[int, int, int]) -> np.ndarray:
        """bool [F, H, W] of pool entry `entry`."""
        if entry < self.num_clips:
            return self.source.masks(entry)
        return random_shape_masks(clip_rng(self.seed, entry, 1), *shape)


def encode_clip(
    vae: WanVAE, pool: MaskPool, clip: int, positives: int, device: torch.device, batch: int = 8
) -> ClipLatents:
    """Clip `clip` of the pool's source, encoded with its own masks (slot 0) and `positives` borrowed ones."""
    made = pool.source(clip)
    slots = [made.masks] + [pool.masks(j, made.masks.shape) for j in pool.borrowed(clip, positives)]
    jobs: list[Callable[[], Tensor]] = [lambda: as_video(made.frames)]
    if made.background is not None:
        jobs.append(lambda: as_video(made.background))
    jobs += [lambda m=m: masked_video(made.frames, m) for m in slots]
    jobs += [lambda m=m: mask_video(m) for m in slots]
    latents = list(encode_all(vae, jobs, batch, device))
    video = latents.pop(0).clone()  # a clone: a view would save its whole batch's storage
    background = latents.pop(0).clone() if made.background is not None else None
    masked, masks = torch.stack(latents[: len(slots)]), torch.stack(latents[len(slots) :])
    return ClipLatents(video, background, masked, masks, latent_region(made.masks))


def encode_clips(
    vae: WanVAE,
    pool: MaskPool,
    clips: Iterable[int],
    positives: int,
    folder: Path,
    device: torch.device,
    batch: int = 8,
    progress: bool = True,
) -> list[int]:
    """Encode and save each of `clips` that `folder` lacks; returns the clips it encoded. Host memory:
    one clip, its borrowed masks and one batch of videos (batch x 3 x F x H x W fp32) at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [clip for clip in clips if not clip_path(folder, clip).is_file()]
    for clip in tqdm(todo, desc="encode", unit="clip", disable=not progress):
        encode_clip(vae, pool, clip, positives, device, batch).save(clip_path(folder, clip))
    return todo


def cache_key(settings: dict, vae: WanVAE) -> str:
    """A digest of the data settings and the VAE's weights: a cached set is reused only for both."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
