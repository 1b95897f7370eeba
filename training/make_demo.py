"""Write the runtime's bundled demo: a synthetic clip, its mask, and the trained tiny checkpoint.

    python -m training.make_demo --weights runs/tiny/stage2/checkpoint

The clip is rendered by `training.synthetic` (the project's own data); the weights are a trained
checkpoint (`python -m training.tiny` trains the tiny VAE, stage 1 and stage 2 and then calls this),
stored in fp16 like the release.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from runtime.demo import DEMO_CLIP, DEMO_MASK, DEMO_WEIGHTS
from runtime.errors import exit_code
from runtime.io import read_clip, write_atomically, write_clip
from runtime.models.weights import load_scheduler_config, load_transformer, load_vae, locate_checkpoint, save_checkpoint
from training.synthetic import FAMILIES

DEMO_SEED, DEMO_FRAMES, DEMO_HEIGHT, DEMO_WIDTH, DEMO_FPS = 7, 21, 144, 256, Fraction(16)
DEMO_FAMILY = "synthetic-soft-held-out"


def write_demo_clip(clip_path: Path, mask_path: Path) -> None:
    """Render the demo clip and write it and its mask as videos: one object over a panning background of
    the held-out family (a generator the model never trained on), which it reveals as it moves."""
    clip = FAMILIES[DEMO_FAMILY].render(DEMO_SEED, DEMO_FRAMES, DEMO_HEIGHT, DEMO_WIDTH)
    write_clip(clip_path, clip.with_objects, DEMO_FPS)
    write_clip(mask_path, np.repeat(clip.masks[..., None] * np.uint8(255), 3, axis=-1), DEMO_FPS)


def install_weights(checkpoint: Path, folder: Path) -> None:
    """Copy a checkpoint (released layout) into `folder` in fp16, replacing what is there only once complete."""
    paths = locate_checkpoint(checkpoint)
    cpu = torch.device("cpu")
    transformer = load_transformer(paths.transformer, cpu, torch.float32)
    vae = load_vae(paths.vae, cpu, torch.float32)
    temporary = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(temporary, ignore_errors=True)
    save_checkpoint(temporary, transformer, vae, load_scheduler_config(paths.scheduler), torch.float16)
    shutil.rmtree(folder, ignore_errors=True)
    temporary.rename(folder)


def write_picture(path: Path, frame: int = DEMO_FRAMES // 2) -> None:
    """One frame of the installed demo side by side: input, mask, the bundled model's removal (the
    CLI's defaults) and OpenCV Telea on the same dilated mask, labelled, as a PNG for the README."""
    from PIL import Image, ImageDraw

    from runtime.pipeline.composite import DEFAULT_DILATION
    from runtime.pipeline.preprocess import dilate
    from runtime.pipeline.remover import Remover
    from training.baselines import telea

    frames = read_clip(DEMO_CLIP).frames
    masks = read_clip(DEMO_MASK).frames[..., 0] > 127
    ours = Remover.from_pretrained(DEMO_WEIGHTS, torch.device("cpu"), "fp32")(frames, masks, progress=False)
    region = dilate(torch.from_numpy(masks), DEFAULT_DILATION).numpy()
    panels = {
        "input": frames[frame],
        "mask": np.repeat(masks[frame, ..., None] * np.uint8(255), 3, axis=-1),
        "ours (6 steps)": np.round(ours[frame] * 255).astype(np.uint8),
        "OpenCV Telea": np.round(telea(frames[frame : frame + 1], region[frame : frame + 1])[0] * 255).astype(np.uint8),
    }
    label = 14
    sheet = Image.new("RGB", (DEMO_WIDTH * len(panels), DEMO_HEIGHT + label), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, image) in enumerate(panels.items()):
        sheet.paste(Image.fromarray(image), (i * DEMO_WIDTH, label))
        draw.text((i * DEMO_WIDTH + 4, 1), name, fill="black")
    write_atomically(path, lambda to: sheet.save(to, format="PNG"))


def make_demo(checkpoint: Path) -> None:
    DEMO_CLIP.parent.mkdir(parents=True, exist_ok=True)
    for path in (DEMO_CLIP, DEMO_MASK):
        path.unlink(missing_ok=True)
    write_demo_clip(DEMO_CLIP, DEMO_MASK)
    install_weights(checkpoint, DEMO_WEIGHTS)
    print(f"wrote {DEMO_CLIP}, {DEMO_MASK} and {DEMO_WEIGHTS} (from {checkpoint})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="runs/tiny/stage2/checkpoint", help="trained checkpoint folder")
    parser.add_argument("--picture", type=Path, help="only draw the installed demo's picture to this PNG")
    args = parser.parse_args(argv)
    if args.picture:
        return exit_code(lambda: write_picture(args.picture))
    return exit_code(lambda: make_demo(Path(args.weights)))


if __name__ == "__main__":
    sys.exit(main())
