"""What the parallel tests start under `torchrun` (tests/test_parallel.py).

parallel_entry.py api FIXTURE CHECKPOINT OUT.npy  the fixture's inputs and noise through the Remover API
parallel_entry.py cli ARGS...                     python -m runtime.run ARGS
parallel_entry.py cli-rank-1-dies ARGS...         the same, with rank 1 exiting hard on its first window
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import load_file

from runtime import Remover, run
from runtime.distributed import group, messages, rank, sequence


def remove_fixture_inputs(fixture: Path, checkpoint: str, out: Path) -> None:
    """Rank 0: the fixture's frames from its initial noise, unpasted, at its size, saved to `out`; the
    others serve."""
    remover = sequence.split(Remover.from_pretrained(checkpoint, device="cpu", dtype="fp32"))
    if rank() != 0:
        sequence.follow(remover)
        group.leave()
        return
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted((fixture / "inputs").glob("frame_*.png"))])
    masks = np.stack([np.asarray(Image.open(p).convert("L")) for p in sorted((fixture / "inputs").glob("mask_*.png"))])
    noise = load_file(str(fixture / "expected.safetensors"))["noise"]
    generated = remover(frames, masks, height=64, width=96, latents=noise, paste_back=False, progress=False)
    messages.stop_others(remover.device)
    np.save(out, generated)


def die_on_first_window(remover: Remover) -> None:
    messages.receive(remover.device, remover.stages.vae_config.z_dim, remover.dtype)
    os._exit(3)


if __name__ == "__main__":
    mode, arguments = sys.argv[1], sys.argv[2:]
    if mode == "api":
        remove_fixture_inputs(Path(arguments[0]), arguments[1], Path(arguments[2]))
    else:
        if mode == "cli-rank-1-dies" and rank() == 1:
            sequence.follow = die_on_first_window
        sys.exit(run.main(arguments))
