"""The configs of the two transformer stages (JSON files in training/configs/, keys = fields).

Both take `ScaleSettings`' keys too (precision, activation_checkpointing, parallelism, micro_batch_size,
gpu_memory_gb). Kept apart from the stages so `training.plan` reads them without importing a stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import RemoverError
from training.flow import DataSettings
from training.trainer import ScaleSettings


@dataclass(frozen=True)
class Stage1Config(ScaleSettings):  # + precision, activation_checkpointing, parallelism, micro_batch_size
    out: str  # run folder: state.pt, log.jsonl, config.json, checkpoint/
    vae: str  # VAE folder (config.json + safetensors), e.g. the output of training.train_vae
    steps: int
    init: str = ""  # a transformer folder to start from (training.convert); "" = a fresh model of the size below
    num_layers: int = 4
    num_attention_heads: int = 2
    attention_head_dim: int = 32
    ffn_dim: int = 256
    num_condition_tokens: int = 6
    # data (see training.flow.DataSettings)
    data_source: str = "synthetic"
    data_root: str = ""
    num_clips: int = 32
    num_frames: int = 9
    height: int = 80
    width: int = 144
    positives_per_clip: int = 2
    random_masks: int = 16
    max_dilation: int = 8
    data_seed: int = 1
    cache_dir: str = "runs/cache"
    # optimization
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 50
    seed: int = 0
    negative_fraction: float = 0.5
    condition_dropout: float = 0.1
    timestep_shift: float = 3.0
    hole_weight: float = 0.0  # extra loss weight on latent positions the hole changed (training.flow.hole_positions)
    min_crop: int = 0  # smallest random latent crop side (0 = whole clips)
    log_every: int = 10
    checkpoint_every: int = 200
    device: str = ""
    threads: int = 0  # CPU threads (0 = PyTorch's default); 1 is far faster on an oversubscribed CPU

    def data(self) -> DataSettings:
        return DataSettings(
            self.data_source,
            self.data_root,
            self.num_clips,
            self.num_frames,
            self.height,
            self.width,
            self.positives_per_clip,
            self.random_masks,
            self.max_dilation,
            self.data_seed,
            self.cache_dir,
        )

    def validate(self, source: str) -> None:
        super().validate(source)
        check_hole_weight(self.hole_weight, source)


def check_hole_weight(hole_weight: float, source: str) -> None:
    """hole_weight is a finite number >= 0."""
    if not 0.0 <= hole_weight < float("inf"):
        raise RemoverError(f"{source}: hole_weight must be a finite number >= 0, not {hole_weight!r}")


@dataclass(frozen=True)
class Stage2Config(ScaleSettings):  # + precision, activation_checkpointing, parallelism, micro_batch_size
    out: str  # run folder: curated/, state.pt, log.jsonl, config.json, checkpoint/
    stage1: str  # the stage-1 run folder: its config.json names the data and the VAE, checkpoint/ the weights
    steps: int
    # curation
    curation_steps: int = 50
    guidance_scale: float = 3.0
    scorer: str = "ground-truth"  # see training.stage2.SCORERS
    keep_fraction: float = 0.5
    curation_seed: int = 0
    curation_clips: int = 0  # how many clips to curate, drawn from curation_seed (0 = all)
    # training
    num_inference_steps: int = 6
    curated_fraction: float = 1 / 3
    bad_noise: bool = True  # False: curated samples get plain random noise (the paper's ablation)
    condition_tokens: str = "positive"  # positive | none
    hole_weight: float = 0.0  # as in Stage1Config
    batch_size: int = 6
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup: int = 20
    seed: int = 0
    min_crop: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    device: str = ""
    threads: int = 0  # CPU threads (0 = PyTorch's default); 1 is far faster on an oversubscribed CPU

    def validate(self, source: str) -> None:
        super().validate(source)
        check_hole_weight(self.hole_weight, source)
        if self.condition_tokens not in ("positive", "none"):
            raise RemoverError(f"{source}: condition_tokens must be 'positive' or 'none'")
        if self.curation_clips < 0:
            raise RemoverError(f"{source}: curation_clips must be 0 (all clips) or a number of clips")
