"""What every training stage shares: config files, torchrun setup, how a model is spread over the
processes (DDP or FSDP2), mixed precision and gradient accumulation, the step loop with a progress
bar and a loss log, and resumable training state.

Randomness is drawn per sample from (seed, step, sample index) (`sample_rng`), never from a global
generator, so a run resumed from its state, or spread over any number of processes, computes the
same batches as one uninterrupted single-process run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from tqdm.auto import tqdm

from runtime.errors import RemoverError, exit_code
from runtime.io.outputs import write_atomically
from runtime.models.config import config_from_dict, write_config
from runtime.models.weights import WEIGHTS_NAME

ConfigT = TypeVar("ConfigT")
STATE_NAME = "state.pt"  # one file: the whole model and optimizer (DDP, one process)
SHARDED_STATE_NAME = "state"  # a torch.distributed.checkpoint folder: each rank writes its shards (FSDP)
LOG_NAME = "log.jsonl"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
PARALLELISMS = ("ddp", "fsdp")


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
    """One model's released-layout folder (config.json + safetensors), as `runtime.models.weights.save_checkpoint`
    writes each part; for parts saved on their own (the trained VAE, a converted transformer)."""
    write_config(model.config, folder / "config.json", class_name)
    tensors = {key: value.detach().to("cpu", dtype).contiguous() for key, value in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_NAME))


# --- fitting a model on the GPUs -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScaleSettings:
    """How a transformer stage fits its model in memory: the config keys both stages share."""

    # fp32, or bf16: matmuls under bf16 autocast; weights, gradients and AdamW state stay fp32
    precision: str = "fp32"
    # blocks (from the first) that keep only their input and recompute the rest in backward; -1 = all
    activation_checkpointing: int = 0
    # ddp: a whole copy of weights, gradients and optimizer state per GPU; fsdp: FSDP2, each sharded
    # over the GPUs per transformer block (weights all-gathered one block at a time, in bf16 with bf16)
    parallelism: str = "ddp"
    # samples per forward pass on one GPU; gradients accumulate over a GPU's share of batch_size (0 = all of it)
    micro_batch_size: int = 0
    # GiB (2^30 bytes) the memory plan must fit on each GPU (0 = the GPU's own memory; not checked on the CPU)
    gpu_memory_gb: float = 0.0

    def validate(self, source: str) -> None:
        if self.precision not in PRECISIONS:
            raise RemoverError(f"{source}: precision must be one of {sorted(PRECISIONS)}, not {self.precision!r}")
        if self.parallelism not in PARALLELISMS:
            raise RemoverError(f"{source}: parallelism must be one of {PARALLELISMS}, not {self.parallelism!r}")
        if self.activation_checkpointing < -1 or self.micro_batch_size < 0 or self.gpu_memory_gb < 0:
            raise RemoverError(
                f"{source}: activation_checkpointing must be >= -1, micro_batch_size and gpu_memory_gb >= 0"
            )


@dataclass(frozen=True)
class Trainee:
    """A model being trained: `module` holds the parameters (the optimizer's and the state file's);
    `wrapper` computes with them (DDP's wrapper, or the FSDP-sharded module itself); `sharded`: FSDP;
    `precision`: the autocast dtype of its forward passes."""

    module: nn.Module
    wrapper: nn.Module
    sharded: bool = False
    precision: str = "fp32"

    def __call__(self, *args: Any) -> Any:
        """The training forward pass: through DDP or FSDP, in the run's precision."""
        with self._autocast():
            return self.wrapper(*args)

    def plain(self, *args: Any) -> Any:
        """A forward pass that bypasses DDP's gradient sync (for gradients with respect to inputs only)."""
        with self._autocast():
            return self.module(*args)

    def _autocast(self) -> torch.autocast:
        device_type = next(self.module.parameters()).device.type
        return torch.autocast(device_type, PRECISIONS[self.precision], enabled=self.precision != "fp32")


def wrap_ddp(model: nn.Module, dist: Distributed, precision: str = "fp32") -> Trainee:
    """DistributedDataParallel around `model` when there are several processes."""
    if dist.world_size == 1:
        return Trainee(model, model, precision=precision)
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    # gradients as views into DDP's buckets: one fp32 copy of them, not two
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)
    return Trainee(model, ddp, precision=precision)


def prepare_model(model: nn.Module, scale: ScaleSettings, dist: Distributed) -> Trainee:
    """Set `model`'s activation checkpointing and spread it over the processes as `scale` says.

    FSDP2 shards each transformer block and then the rest of the model over all ranks; with bf16 the
    gathered weights are bf16 (gradients are reduced in fp32 into the fp32 shards). Build the optimizer
    after this: FSDP replaces the parameters by their shards."""
    model.checkpointed_blocks = scale.activation_checkpointing
    if scale.parallelism == "ddp":
        return wrap_ddp(model, dist, scale.precision)
    if not torch_dist.is_initialized():  # FSDP needs a process group, even of one
        backend = "nccl" if dist.device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend, store=torch_dist.HashStore(), rank=0, world_size=1)
    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    policy = MixedPrecisionPolicy(
        param_dtype=PRECISIONS[scale.precision], reduce_dtype=torch.float32, cast_forward_inputs=False
    )
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return Trainee(model, model, sharded=True, precision=scale.precision)


def gathered_module(trainee: Trainee, dist: Distributed) -> nn.Module | None:
    """The trained module with all its weights, on rank 0's CPU when sharded (None on the other ranks;
    every rank must call). A sharded module is rebuilt from its `config` around the gathered weights."""
    if not trainee.sharded:
        return trainee.module if dist.is_main else None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(trainee.module, options=options)
    if not dist.is_main:
        return None
    plain = next(cls for cls in type(trainee.module).__mro__ if not issubclass(cls, FSDPModule))
    with torch.device("meta"):
        whole = plain(trainee.module.config)
    whole.load_state_dict(state, assign=True)
    return whole


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
    checkpoint_every: int  # steps between saved states (and the last step); 0 = never (benchmarks)
    batch_size: int  # samples per optimizer step over all processes
    micro_batch_size: int = 0  # samples per forward pass (0 = a process's whole share)
    grad_clip: float = 1.0
    desc: str = "train"

    @classmethod
    def of(cls, config: Any, run_dir: Path, desc: str) -> LoopSettings:
        """The loop settings a training config names (steps, lr, warmup, log_every, checkpoint_every,
        batch_size and, where it has one, micro_batch_size), for the run folder `run_dir`."""
        return cls(
            run_dir,
            config.steps,
            config.lr,
            config.warmup,
            config.log_every,
            config.checkpoint_every,
            config.batch_size,
            getattr(config, "micro_batch_size", 0),
            desc=desc,
        )


def micro_batches(batch_size: int, micro_batch_size: int, dist: Distributed) -> list[list[int]]:
    """This rank's sample indices of a step, in the groups that go through the model together."""
    local = list(dist.shard(batch_size))
    size = micro_batch_size or len(local)
    return [local[start : start + size] for start in range(0, len(local), size)]


def run_steps(
    settings: LoopSettings,
    trainee: Trainee,
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[int, list[int]], torch.Tensor],
    dist: Distributed,
    on_checkpoint: Callable[[int], None] | None = None,
) -> None:
    """Optimize for `settings.steps` steps, resuming from the run folder's state if it has one.

    `step_loss(step, indices)` computes the mean loss of some of this rank's samples of a step; their
    gradients accumulate (weighted by their share) before one optimizer step, synchronized over the ranks
    by DDP or FSDP. Every rank calls `on_checkpoint(step)` after the state is saved.
    """
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    start = load_state(settings.run_dir, trainee, optimizer, dist)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = micro_batches(settings.batch_size, settings.micro_batch_size, dist)
    local = sum(len(group) for group in groups)
    no_sync = getattr(trainee.wrapper, "no_sync", None)  # DDP: reduce once, after the last group
    progress = tqdm(
        range(start, settings.steps), initial=start, total=settings.steps, desc=settings.desc, disable=not dist.is_main
    )
    began, losses = time.perf_counter(), []
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * lr_factor(step, settings.steps, settings.warmup)
        step_total = 0.0
        for number, indices in enumerate(groups):
            last = number == len(groups) - 1
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                loss = step_loss(step, indices) * (len(indices) / local)
                loss.backward()
            step_total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_total)
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            mean_loss = dist.mean(sum(losses) / len(losses))
            losses = []
            if dist.is_main:
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                record = {"step": done, "loss": mean_loss, "lr": optimizer.param_groups[0]["lr"]}
                record["seconds"] = round(time.perf_counter() - began, 3)
                with open(settings.run_dir / LOG_NAME, "a") as log:
                    log.write(json.dumps(record) + "\n")
        if settings.checkpoint_every and (done % settings.checkpoint_every == 0 or done == settings.steps):
            save_state(settings.run_dir, trainee, optimizer, done, dist)
            if on_checkpoint is not None:
                on_checkpoint(done)
            dist.barrier()
    progress.close()


def save_state(run_dir: Path, trainee: Trainee, optimizer: torch.optim.Optimizer, step: int, dist: Distributed) -> None:
    """Model, optimizer and step, written under a temporary name and renamed (never half-written): one
    file from rank 0, or with FSDP a checkpoint folder to which every rank writes its shards."""
    if not trainee.sharded:
        if dist.is_main:
            path = run_dir / STATE_NAME
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {"model": trainee.module.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
            write_atomically(path, lambda to: torch.save(state, to))
        return
    folder, temporary, previous = _sharded_state_paths(run_dir)
    if dist.is_main:
        shutil.rmtree(temporary, ignore_errors=True)
    dist.barrier()
    model_state, optimizer_state = get_state_dict(trainee.module, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state, "step": step}, checkpoint_id=temporary)
    dist.barrier()
    if dist.is_main:  # state -> state.previous, new -> state, drop previous: a state folder exists throughout
        if folder.exists():
            folder.rename(previous)
        temporary.rename(folder)
        shutil.rmtree(previous, ignore_errors=True)
    dist.barrier()


def load_state(run_dir: Path, trainee: Trainee, optimizer: torch.optim.Optimizer, dist: Distributed) -> int:
    """Restore a run's state if it has one; returns the number of steps already done (0 for a new run)."""
    folder, _, previous = _sharded_state_paths(run_dir)
    single = run_dir / STATE_NAME
    found = single if single.is_file() else folder if folder.is_dir() else previous if previous.is_dir() else None
    if found is None:
        return 0
    if (found == single) == trainee.sharded:
        held = "single-file (ddp)" if found == single else "sharded (fsdp)"
        raise RemoverError(f"{run_dir} holds a {held} training state; resume it with the parallelism it began with")
    if not trainee.sharded:
        state = torch.load(found, map_location="cpu", weights_only=True)
        trainee.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])
    model_state, optimizer_state = get_state_dict(trainee.module, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state, "step": 0}
    dcp.load(state, checkpoint_id=found)
    set_state_dict(trainee.module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return int(state["step"])


def _sharded_state_paths(run_dir: Path) -> tuple[Path, Path, Path]:
    """The sharded state folder, the one being written, and the one being replaced."""
    folder = run_dir / SHARDED_STATE_NAME
    return folder, run_dir / f".{SHARDED_STATE_NAME}.partial", run_dir / f".{SHARDED_STATE_NAME}.previous"
