"""What every training stage shares: config files, torchrun/DDP setup, the step loop with a progress
bar and a loss log, and resumable training state.

Randomness is drawn per sample from (seed, step, sample index) (`sample_rng`), never from a global
generator, so a run resumed from its state, or spread over any number of processes, computes the
same batches as one uninterrupted single-process run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as torch_dist
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from runtime.errors import RemoverError, exit_code
from runtime.models.config import config_from_dict, write_config
from runtime.weights import WEIGHTS_NAME

ConfigT = TypeVar("ConfigT")
STATE_NAME = "state.pt"
LOG_NAME = "log.jsonl"


# --- configs ----------------------------------------------------------------------------------


def load_config(cls: type[ConfigT], path: str | Path | None, overrides: list[str] = ()) -> ConfigT:
    """A stage config from a JSON file plus `key=value` overrides (values parsed as JSON when they
    parse, else taken as strings); unknown or mistyped keys are errors that name the key."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RemoverError(f"cannot read config {path}: {exc}") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise RemoverError(f"override {item!r} is not key=value")
        try:
            raw[key] = json.loads(value)
        except json.JSONDecodeError:
            raw[key] = value
    return config_from_dict(cls, raw, ignored={}, source=str(path or "overrides"))


def stage_main(description: str, config_cls: type[ConfigT], job: Callable[[ConfigT, Distributed], Path]) -> None:
    """The command line of a stage: `--config FILE` plus repeated `--set key=value`; joins torchrun's
    process group, runs `job(config, dist)` and prints what it wrote. A problem the user can fix
    (a bad config, missing weights) is one `error:` line and exit status 2 (`exit_code`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="JSON config file (see training/configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args()

    def command() -> str | None:
        config = load_config(config_cls, args.config, args.set)
        if getattr(config, "threads", 0):
            torch.set_num_threads(config.threads)
        dist = setup_distributed(getattr(config, "device", ""))
        try:
            written = job(config, dist)
        finally:
            teardown_distributed()
        return f"wrote {written}" if dist.is_main else None

    code = exit_code(command)
    if code:
        sys.exit(code)


def save_config(config: object, path: Path) -> None:
    """Write the config a run used beside its outputs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")


# --- processes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, global_batch: int) -> range:
        """This rank's sample indices of a global batch (the batch must split evenly)."""
        if global_batch % self.world_size:
            raise RemoverError(f"batch_size {global_batch} does not split over {self.world_size} processes")
        local = global_batch // self.world_size
        return range(self.rank * local, (self.rank + 1) * local)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of a float over all ranks."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return float(tensor) / self.world_size


def setup_distributed(device: str = "") -> Distributed:
    """Join the torchrun process group if launched by torchrun (NCCL on GPUs, gloo on the CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device:
        chosen = torch.device(device)
    else:
        chosen = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    rank = torch_dist.get_rank() if torch_dist.is_initialized() else 0
    return Distributed(rank, world_size, chosen)


def teardown_distributed() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def save_model_folder(folder: Path, model: nn.Module, class_name: str, dtype: torch.dtype = torch.float32) -> None:
    """One model's released-layout folder (config.json + safetensors), as `runtime.weights.save_checkpoint`
    writes each part; for parts saved on their own (the trained VAE, a converted transformer)."""
    write_config(model.config, folder / "config.json", class_name)
    tensors = {key: value.detach().to("cpu", dtype).contiguous() for key, value in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_NAME))


def wrap_ddp(model: nn.Module, dist: Distributed) -> nn.Module:
    """DistributedDataParallel around `model` when there are several processes."""
    if dist.world_size == 1:
        return model
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def sample_rng(seed: int, step: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of one sample of one step (independent of how samples are spread over ranks)."""
    return np.random.default_rng([seed, step, index, stream])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from `rng` (noise is drawn on the CPU: the same on every device)."""
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


# --- the loop -------------------------------------------------------------------------------------


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 10 % at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class LoopSettings:
    run_dir: Path
    steps: int
    lr: float
    warmup: int
    log_every: int
    checkpoint_every: int
    grad_clip: float = 1.0
    desc: str = "train"


def run_steps(
    settings: LoopSettings,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[int], torch.Tensor],
    dist: Distributed,
    on_checkpoint: Callable[[int], None] | None = None,
) -> None:
    """Optimize for `settings.steps` steps, resuming from the run folder's state if it has one.

    `step_loss(step)` computes this rank's loss (DDP averages the gradients over ranks). `model` is the
    unwrapped module whose parameters `optimizer` holds; the state file holds both and the step.
    """
    state_path = settings.run_dir / STATE_NAME
    start = load_state(state_path, model, optimizer) if state_path.is_file() else 0
    params = [p for group in optimizer.param_groups for p in group["params"]]
    progress = tqdm(
        range(start, settings.steps), initial=start, total=settings.steps, desc=settings.desc, disable=not dist.is_main
    )
    began, losses = time.perf_counter(), []
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * lr_factor(step, settings.steps, settings.warmup)
        loss = step_loss(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            mean_loss = dist.mean(sum(losses) / len(losses))
            losses = []
            if dist.is_main:
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                record = {"step": done, "loss": mean_loss, "lr": optimizer.param_groups[0]["lr"]}
                record["seconds"] = round(time.perf_counter() - began, 2)
                with open(settings.run_dir / LOG_NAME, "a") as log:
                    log.write(json.dumps(record) + "\n")
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            if dist.is_main:
                save_state(state_path, model, optimizer, done)
                if on_checkpoint is not None:
                    on_checkpoint(done)
            dist.barrier()
    progress.close()


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Model, optimizer and step, written under a temporary name and renamed (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, temporary)
    os.replace(temporary, path)


def load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore a run's state; returns the number of steps already done."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])
