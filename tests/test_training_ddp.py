"""Distributed training: torchrun with 2 CPU processes (gloo) computes what one process computes.

Each sample's randomness comes from (seed, step, sample index), the global batch is split between
the ranks, DDP averages their gradients and stage 2 spreads curation over them, so the weights after
a few steps must match a single-process run with the same global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from runtime.models.vae import RELEASED_VAE, WanVAE
from runtime.models.weights import load_transformer
from training.trainer import save_model_folder

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def run(module: str, config: Path, out: Path, processes: int) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", module, "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "--set", f"out={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]


def assert_same_weights(a: Path, b: Path) -> None:
    first = load_transformer(a / "checkpoint" / "transformer", CPU, torch.float32).state_dict()
    second = load_transformer(b / "checkpoint" / "transformer", CPU, torch.float32).state_dict()
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
def test_two_gloo_processes_train_like_one(tmp_path):
    torch.manual_seed(0)
    vae_config = replace(RELEASED_VAE, base_dim=4, num_res_blocks=1, latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16)
    save_model_folder(tmp_path / "vae", WanVAE(vae_config), "AutoencoderKLWan")
    stage1 = {
        "vae": str(tmp_path / "vae"), "steps": 3, "batch_size": 4, "warmup": 1, "log_every": 1,
        "num_clips": 3, "num_frames": 5, "height": 32, "width": 48, "positives_per_clip": 1, "random_masks": 1,
        "num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 32,
        "num_condition_tokens": 2, "cache_dir": str(tmp_path / "cache"), "threads": 1,
    }  # fmt: skip
    (tmp_path / "stage1.json").write_text(json.dumps(stage1))
    run("training.stage1", tmp_path / "stage1.json", tmp_path / "s1-ddp", processes=2)  # rank 0 builds the cache
    run("training.stage1", tmp_path / "stage1.json", tmp_path / "s1-one", processes=1)
    assert_same_weights(tmp_path / "s1-ddp", tmp_path / "s1-one")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "s1-ddp" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 3

    stage2 = {"stage1": str(tmp_path / "s1-one"), "steps": 2, "curation_steps": 2, "batch_size": 6, "warmup": 1}
    (tmp_path / "stage2.json").write_text(json.dumps({**stage2, "threads": 1}))
    run("training.stage2", tmp_path / "stage2.json", tmp_path / "s2-ddp", processes=2)
    run("training.stage2", tmp_path / "stage2.json", tmp_path / "s2-one", processes=1)
    kept = [json.loads((tmp_path / run / "curated" / "kept.json").read_text()) for run in ("s2-ddp", "s2-one")]
    assert kept[0]["clip"] == kept[1]["clip"] and kept[0]["score"] == pytest.approx(kept[1]["score"])
    assert_same_weights(tmp_path / "s2-ddp", tmp_path / "s2-one")
