"""Train the tiny model the runtime ships, end to end, and install it as the bundled demo (one command).

    python -m training.tiny

Runs, in one process and in order, with the configs in training/configs/: the VAE (tiny_vae.json),
stage 1 (tiny_stage1.json), stage 2 (tiny_stage2.json), the evaluation (tiny_eval.json, table in
runs/tiny/eval/results.md), then installs the stage-2 checkpoint and a rendered clip as
runtime/demo (training.make_demo). Every stage resumes from its run folder, so an interrupted run
picks up where it stopped. Wall seconds per stage go to runs/tiny/timings.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from runtime.errors import exit_code
from training.evaluate import EvalConfig, evaluate
from training.flow import CHECKPOINT_DIR
from training.make_demo import make_demo
from training.stage1 import train_stage1
from training.stage2 import train_stage2
from training.stage_config import Stage1Config, Stage2Config
from training.train_vae import VAETrainConfig, train_vae
from training.trainer import load_config, setup_distributed

CONFIGS = Path(__file__).parent / "configs"
STAGES = [
    ("vae", VAETrainConfig, train_vae),
    ("stage1", Stage1Config, train_stage1),
    ("stage2", Stage2Config, train_stage2),
    ("eval", EvalConfig, evaluate),
]


def train_tiny() -> str:
    """Every stage in order, then the demo install; returns the wall seconds per stage as JSON."""
    dist = setup_distributed()
    timings: dict[str, float] = {}
    configs = {name: load_config(cls, CONFIGS / f"tiny_{name}.json") for name, cls, _ in STAGES}
    for name, _, job in STAGES:
        config = configs[name]
        torch.set_num_threads(config.threads or torch.get_num_threads())
        start = time.perf_counter()
        print(f"{name}: wrote {job(config, dist)}", flush=True)
        timings[name] = round(time.perf_counter() - start, 1)
    make_demo(Path(configs["stage2"].out) / CHECKPOINT_DIR)
    timings["training total (vae + stage1 + stage2)"] = round(sum(timings[k] for k in ("vae", "stage1", "stage2")), 1)
    path = Path(configs["vae"].out).parent / "timings.json"
    path.write_text(json.dumps(timings, indent=2) + "\n")
    return json.dumps(timings, indent=2)


def main() -> int:
    return exit_code(train_tiny)


if __name__ == "__main__":
    sys.exit(main())
