"""Training speed and memory at a stage-1 config's size, on any number of GPUs:

    python -m training.measure_step --config training/configs/wan1.3b_stage1.json [--set key=value] [--steps 200]
    torchrun --nproc_per_node 8 -m training.measure_step --config ...

Stage 1's step as `training.stage1` runs it (flow matching, AdamW, the config's precision, activation
checkpointing, parallelism and micro-batches, through `training.trainer.run_steps`), on a randomly
initialized model of the config's shape (its `init` is ignored: no base weights are needed) and random
latents of its clip size (no data or VAE). Stage 2 adds its bad-noise pass to this. Reports the median
step time after `--skip` warm-up steps, tokens and clips per second over all GPUs, each GPU's peak
memory (torch.cuda.max_memory_allocated; on the CPU the live-tensor peak of training.live_memory) and the
memory plan's prediction for it. Results: training/results/step-<device>.json, and a Markdown row
for training/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import torch
import torch.distributed as torch_dist

from runtime.errors import RemoverError, exit_code
from runtime.models.transformer import RemoverTransformer
from training.flow import flow_matching_loss
from training.live_memory import LiveTensorBytes
from training.plan import GIB, check_memory, parameter_counts, stage_shape
from training.stage_config import Stage1Config
from training.trainer import (
    LOG_NAME,
    LoopSettings,
    load_config,
    prepare_model,
    run_steps,
    setup_distributed,
    teardown_distributed,
)

RESULTS_DIR = Path(__file__).parent / "results"


def measure(config: Stage1Config, steps: int, skip: int) -> dict:
    """Run `steps` steps and return the figures (on rank 0; the other ranks return {})."""
    dist = setup_distributed(config.device)
    shape = stage_shape(config, dist.world_size)
    plan = check_memory(config, shape, dist.world_size, dist.device, None, show=dist.is_main)
    torch.manual_seed(config.seed)
    model = RemoverTransformer(shape.model).to(dist.device).train()
    trainee = prepare_model(model, config, dist)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    clip = shape.clip
    tokens_per_clip = clip.tokens

    def step_loss(step: int, indices: list[int]) -> torch.Tensor:
        n, size, device = len(indices), (clip.frames, clip.height, clip.width), dist.device
        target, noise = torch.randn(n, 16, *size, device=device), torch.randn(n, 16, *size, device=device)
        context = torch.randn(n, 32, *size, device=device)
        sigma = torch.rand(n, device=device)
        condition = torch.randint(0, 2, (n,), device=device) if shape.model.num_condition_tokens else None
        return flow_matching_loss(trainee, target, context, noise, sigma, 1000.0 * sigma, condition)

    cuda = dist.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dist.device)
    live = nullcontext() if cuda else LiveTensorBytes()
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        settings = LoopSettings(
            run_dir, steps, config.lr, config.warmup, 1, 0, config.batch_size, config.micro_batch_size, desc="steps"
        )
        with live:
            run_steps(settings, trainee, optimizer, step_loss, dist)
        log = [json.loads(line) for line in (run_dir / LOG_NAME).read_text().splitlines()] if dist.is_main else []
    peak = torch.cuda.max_memory_allocated(dist.device) if cuda else live.peak
    peaks = [peak]
    if dist.world_size > 1:
        peaks = [None] * dist.world_size
        torch_dist.all_gather_object(peaks, peak)
    teardown_distributed()
    if not dist.is_main:
        return {}
    seconds = [b["seconds"] - a["seconds"] for a, b in zip(log, log[1:])][max(0, skip - 1) :]
    step = statistics.median(seconds)
    return {
        "date": str(date.today()),
        "device": torch.cuda.get_device_name(dist.device) if cuda else "cpu",
        "gpus": dist.world_size,
        "config": {k: getattr(config, k) for k in ("precision", "activation_checkpointing", "parallelism")},
        "batch_size": config.batch_size,
        "micro_batch_size": shape.samples_per_pass,
        "tokens_per_clip": tokens_per_clip,
        "weights": parameter_counts(shape.model, frozen_condition_tokens=False)[0],
        "steps_timed": len(seconds),
        "step_seconds_median": round(step, 4),
        "step_seconds_range": [round(min(seconds), 4), round(max(seconds), 4)],
        "clips_per_second": round(config.batch_size / step, 4),
        "tokens_per_second": round(config.batch_size * tokens_per_clip / step, 1),
        "peak_gib_per_gpu": [round(p / GIB, 4) for p in peaks],
        "plan_tensors_gib": round(plan.tensors / GIB, 4),
        "peak_over_plan": round(max(peaks) / plan.tensors, 3),
    }


def markdown_row(result: dict) -> str:
    """A row for training/RESULTS.md's released-scale table."""
    config = result["config"]
    return (
        f"| {result['date']} | {result['device']} x {result['gpus']} | {config['parallelism']}, {config['precision']}, "
        f"{config['activation_checkpointing']} checkpointed, batch {result['batch_size']} "
        f"({result['micro_batch_size']} per pass) | {result['step_seconds_median']} s | "
        f"{result['tokens_per_second']:,.0f} | {max(result['peak_gib_per_gpu'])} GiB | "
        f"{result['plan_tensors_gib']} GiB |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a stage-1 config (training/configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--steps", type=int, default=200, help="steps to run (default 200)")
    parser.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the timing (default 5)")
    parser.add_argument("--out", type=Path, help="result JSON (default training/results/step-<device>.json)")
    args = parser.parse_args(argv)

    def command() -> str | None:
        if args.steps < args.skip + 2:
            raise RemoverError(f"--steps must be at least --skip + 2 ({args.skip + 2}) to time a step")
        config = load_config(Stage1Config, args.config, args.set)
        if config.threads:
            torch.set_num_threads(config.threads)
        result = measure(config, args.steps, args.skip)
        if not result:
            return None
        device = "cuda" if result["device"] != "cpu" else "cpu"
        out = args.out or RESULTS_DIR / f"step-{device}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        return f"wrote {out}\n{markdown_row(result)}"  # the row last: make gpu-check quotes it

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
