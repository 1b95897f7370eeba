"""What the benchmark runs: the configurations, their inputs, and the random released-shape weights.

Latency does not depend on the weights' values, so by default both sides load one checkpoint of
random weights with the released shapes, written once in the released folder layout (fp16, like
the release) by the runtime's own `save_checkpoint`. `--weights` points the harness at the real one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from runtime.io import write_clip
from runtime.models.scheduler import RELEASED_SCHEDULER
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer
from runtime.models.vae import RELEASED_VAE, WanVAE
from training.synthetic import render_clip

INPUT_SEED, NOISE_SEED, MASK_DILATION, FPS = 3, 42, 6, Fraction(16)


@dataclass(frozen=True)
class Workload:
    """One configuration. "pipeline": the whole clip-to-clip job on `frames` video frames rendered at
    `source` (height, width) and processed at height x width. "vae": the VAE alone, encode and decode,
    once per entry of `frames` (latent frame counts)."""

    name: str
    kind: str  # "pipeline" or "vae"
    height: int
    width: int
    frames: tuple[int, ...]
    source: tuple[int, int] | None = None
    steps: int = 6
    gpu_only: bool = False
    description: str = ""

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(T', h, w) of the pipeline's latents."""
        return RELEASED_VAE.latent_shape(self.frames[0], self.height, self.width)


WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "pipeline-480x832x81",
            "pipeline",
            480,
            832,
            (81,),
            source=(540, 960),
            gpu_only=True,
            description="the released setting: 81 frames at 480x832, 6 steps (the paper's 24 s / 14 GB on an RTX 4090)",
        ),
        Workload(
            "pipeline-128x224x9",
            "pipeline",
            128,
            224,
            (9,),
            source=(144, 256),
            description="full-size models, CPU-sized clip: 9 frames at 128x224 (336 tokens), 6 steps",
        ),
        Workload(
            "pipeline-64x112x5",
            "pipeline",
            64,
            112,
            (5,),
            source=(72, 128),
            description="full-size models, the smallest clip: 5 frames at 64x112 (56 tokens), 6 steps",
        ),
        Workload(
            "vae-480x832",
            "vae",
            480,
            832,
            (1, 6, 11, 21),
            gpu_only=True,
            description="full-size VAE alone at 480x832, 1 to 21 latent frames (1 to 81 video frames)",
        ),
        Workload(
            "vae-240x416",
            "vae",
            240,
            416,
            (1, 2, 3),
            description="full-size VAE alone at 240x416, 1 to 3 latent frames (1 to 9 video frames)",
        ),
        Workload(
            "vae-120x208-quick",
            "vae",
            120,
            208,
            (1, 2),
            description="full-size VAE alone at 120x208, 1 and 2 latent frames (1 and 5 video frames)",
        ),
    )
}

# (device type, quick) -> workloads, the pipeline that the run's headline figures come from first
SUITES = {
    ("cpu", True): ("pipeline-64x112x5", "vae-120x208-quick"),
    ("cpu", False): ("pipeline-128x224x9", "vae-240x416"),
    ("cuda", True): ("pipeline-64x112x5", "vae-120x208-quick"),
    ("cuda", False): ("pipeline-480x832x81", "vae-480x832", "pipeline-128x224x9", "vae-240x416"),
}


def default_weights_dir() -> Path:
    """Where the random released-shape checkpoint is cached (outside the repository)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "minimax-remover-bench" / "random-released-seed0"


def ensure_random_checkpoint(folder: Path) -> Path:
    """Write random weights of the released shapes (seed 0, fp16) to `folder` unless already there."""
    from runtime.models.weights import save_checkpoint

    if (folder / "transformer" / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    torch.manual_seed(0)
    save_checkpoint(partial, RemoverTransformer(RELEASED_TRANSFORMER), WanVAE(RELEASED_VAE), RELEASED_SCHEDULER)
    partial.rename(folder)
    return folder


WEIGHTS_HELP = (
    "demo (the bundled tiny model, default), released (random weights of the released shapes: for GPUs), "
    "or a checkpoint folder"
)


def resolve_weights(choice: str) -> Path:
    """The checkpoint a benchmark's --weights names (see WEIGHTS_HELP)."""
    from runtime.demo import DEMO_WEIGHTS

    if choice == "demo":
        return DEMO_WEIGHTS
    if choice == "released":
        return ensure_random_checkpoint(default_weights_dir())
    return Path(choice)


def write_pipeline_inputs(workload: Workload, folder: Path) -> tuple[Path, Path]:
    """Render the synthetic clip of a pipeline workload: an mp4 and a folder of PNG masks."""
    height, width = workload.source
    clip = render_clip(INPUT_SEED, workload.frames[0], height, width, num_objects=1)
    video, masks = folder / "clip.mp4", folder / "masks"
    write_clip(video, clip.with_objects, FPS)
    write_clip(masks, np.repeat(clip.masks[..., None] * np.uint8(255), 3, axis=-1), FPS)
    return video, masks


def initial_noise(latent_shape: tuple[int, int, int], z_dim: int = RELEASED_VAE.z_dim) -> torch.Tensor:
    """The seeded initial latents both sides start from."""
    generator = torch.Generator().manual_seed(NOISE_SEED)
    return torch.randn(1, z_dim, *latent_shape, generator=generator)
