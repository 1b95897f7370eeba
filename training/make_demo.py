"""Write the runtime's bundled demo: a synthetic clip, its mask, and a tiny checkpoint.

    python -m training.make_demo

The clip is rendered by `training.synthetic` (the project's own data). Until trained tiny weights
exist, the checkpoint is a seeded random initialization of a tiny config in the released layout:
it exercises the whole pipeline but does not remove anything convincingly.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer
from runtime.models.vae import RELEASED_VAE, WanVAE
from runtime.run import DEMO_CLIP, DEMO_MASK, DEMO_WEIGHTS
from runtime.scheduler import RELEASED_SCHEDULER
from runtime.video import write_clip
from training.synthetic import render_clip

DEMO_SEED, DEMO_FRAMES, DEMO_HEIGHT, DEMO_WIDTH, DEMO_FPS = 7, 21, 144, 256, Fraction(16)
TINY_TRANSFORMER = replace(
    RELEASED_TRANSFORMER, num_attention_heads=2, attention_head_dim=32, ffn_dim=128, num_layers=2
)
TINY_VAE = replace(RELEASED_VAE, base_dim=8, num_res_blocks=1)


def write_demo_clip(clip_path: Path, mask_path: Path) -> None:
    """Render the demo clip and write it and its mask as videos."""
    clip = render_clip(DEMO_SEED, DEMO_FRAMES, DEMO_HEIGHT, DEMO_WIDTH, num_objects=1)
    write_clip(clip_path, clip.with_objects, DEMO_FPS)
    write_clip(mask_path, np.repeat(clip.masks[..., None] * np.uint8(255), 3, axis=-1), DEMO_FPS)


def write_random_checkpoint(folder: Path, seed: int = 0) -> None:
    """A seeded random tiny checkpoint in the released layout (fp16, like the release)."""
    from runtime.weights import save_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(folder, RemoverTransformer(TINY_TRANSFORMER), WanVAE(TINY_VAE), RELEASED_SCHEDULER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    DEMO_CLIP.parent.mkdir(parents=True, exist_ok=True)
    for path in (DEMO_CLIP, DEMO_MASK):
        path.unlink(missing_ok=True)
    write_demo_clip(DEMO_CLIP, DEMO_MASK)
    write_random_checkpoint(DEMO_WEIGHTS)
    print(f"wrote {DEMO_CLIP}, {DEMO_MASK} and {DEMO_WEIGHTS}")


if __name__ == "__main__":
    main()
