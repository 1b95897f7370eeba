"""Distill a light TAEHV decoder for a checkpoint's VAE: the student learns the VAE's own decode.

    python -m training.distill_decoder --config training/configs/distill_decoder_demo.json
    python -m training.distill_decoder --config ... --set vae=/models/MiniMax-Remover/vae --set widths=[256,128,64,64]

Each sample is a random crop of a rendered clip (with or without its objects), encoded by the VAE
(the distribution's mode, normalized, as the pipeline's latents are) with a little Gaussian noise
added so the student also sees latents off the encoder's manifold, as the DiT's are; the target is
the VAE's decode of those latents (clamped to [-1, 1], what the pipeline keeps). The loss is
L1 + MSE on the student's unclamped output. Resumable like every stage (`state.pt` in the run
folder); at the end `<out>/taehv.safetensors` holds the decoder under the published taew2_1 key
layout, run with `runtime.run --decoder taew2_1 --decoder-weights <out>/taehv.safetensors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from runtime.io.outputs import write_atomically
from runtime.models.taehv import DecoderMemory, TAEHVConfig, TAEHVDecoder
from runtime.models.vae import WanVAE
from runtime.models.weights import load_vae
from training.data import ClipSpec, SyntheticSource
from training.synthetic import FAMILIES
from training.trainer import (
    Distributed,
    LoopSettings,
    Trainee,
    run_steps,
    sample_rng,
    save_config,
    stage_main,
    torch_generator,
    wrap_ddp,
)

DECODER_NAME = "taehv.safetensors"


@dataclass(frozen=True)
class DistillConfig:
    out: str  # run folder: state.pt, log.jsonl, taehv.safetensors
    steps: int
    vae: str = "runtime/demo/weights/vae"  # the teacher: a VAE folder (config.json + safetensors)
    widths: tuple[int, int, int, int] = (256, 128, 64, 64)  # the published taew2_1's; smaller for tiny VAEs
    batch_size: int = 4
    lr: float = 1e-3
    warmup: int = 20
    seed: int = 0
    # clips are rendered at clip_height x clip_width and cropped to crop x crop
    num_frames: int = 9
    clip_height: int = 80
    clip_width: int = 144
    crop: int = 64
    data_source: str = "synthetic-soft"  # a synthetic family of training.synthetic.FAMILIES
    latent_noise: float = 0.1  # std of the noise added to the normalized latents
    log_every: int = 10
    checkpoint_every: int = 100
    device: str = ""
    threads: int = 0  # CPU threads (0 = PyTorch's default)


class DistillObjective(nn.Module):
    """L1 + MSE between the student's unclamped decode and the teacher's decode (DDP wraps this)."""

    def __init__(self, student: TAEHVDecoder) -> None:
        super().__init__()
        self.student = student

    def forward(self, latents: Tensor, target: Tensor) -> Tensor:
        """latents [B, z, T, h, w] normalized; target [B, 3, 4T - 3, 8h, 8w] in [-1, 1]."""
        trim = self.student.config.temporal_factor - 1
        decoded = self.student.decode_chunk(latents, DecoderMemory(), clamp=False)[:, :, trim:]
        return (decoded - target).abs().mean() + (decoded - target).square().mean()


@torch.no_grad()
def teacher_sample(
    config: DistillConfig, vae: WanVAE, source: SyntheticSource, step: int, index: int
) -> tuple[Tensor, Tensor]:
    """One sample's noisy normalized latents [z, T, h, w] and the VAE's decode of them [3, F, H, W]."""
    rng = sample_rng(config.seed, step, index)
    clip = source(step * config.batch_size + index)
    frames = clip.frames if rng.random() < 0.5 else clip.background
    top = int(rng.integers(0, config.clip_height - config.crop + 1))
    left = int(rng.integers(0, config.clip_width - config.crop + 1))
    crop = frames[:, top : top + config.crop, left : left + config.crop]
    device = vae.quant_conv.weight.device
    video = torch.from_numpy(crop).permute(3, 0, 1, 2)[None].float().to(device) / 127.5 - 1.0
    latents = vae.encode(video)
    noise = torch.randn(latents.shape, generator=torch_generator(sample_rng(config.seed, step, index, 1)))
    latents = latents + config.latent_noise * noise.to(device)
    return latents[0], vae.decode(latents)[0]


def save_decoder(student: TAEHVDecoder, path: Path) -> None:
    """The decoder's tensors under the published key layout (`decoder.N...`), fp16 as published."""
    tensors = {
        f"decoder.{key}": value.detach().to("cpu", torch.float16) for key, value in student.decoder.state_dict().items()
    }
    write_atomically(path, lambda to: save_file(tensors, str(to)))


def distill_decoder(config: DistillConfig, dist: Distributed) -> Path:
    """Distill, then write `<out>/taehv.safetensors`; returns that file."""
    run_dir = Path(config.out)
    if dist.is_main:
        save_config(config, run_dir / "config.json")
    vae = load_vae(Path(config.vae), dist.device, torch.float32)
    torch.manual_seed(config.seed)
    student = TAEHVDecoder(TAEHVConfig(latent_channels=vae.config.z_dim, widths=tuple(config.widths)))
    student = student.to(dist.device).train()
    objective = Trainee(student, wrap_ddp(DistillObjective(student), dist).wrapper)  # state: the student's keys
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
    spec = ClipSpec(config.num_frames, config.clip_height, config.clip_width, seed=config.seed)
    source = SyntheticSource(spec, FAMILIES[config.data_source])

    def step_loss(step: int, indices: list[int]) -> Tensor:
        latents, targets = zip(*(teacher_sample(config, vae, source, step, i) for i in indices))
        return objective(torch.stack(latents), torch.stack(targets))

    settings = LoopSettings.of(config, run_dir, "distill decoder")
    run_steps(settings, objective, optimizer, step_loss, dist)
    path = run_dir / DECODER_NAME
    if dist.is_main:
        save_decoder(student.eval(), path)
    dist.barrier()
    return path


def main() -> None:
    stage_main(__doc__.splitlines()[0], DistillConfig, distill_decoder)


if __name__ == "__main__":
    main()
