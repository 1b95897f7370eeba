"""The decode stage with a light decoder against the full VAE: `python -m bench.decoder [--rounds 3]`.

Both decoders decode the same latents, interleaved round by round (VAE, light, VAE, light, ...) so a
busy machine slows both alike; each is streamed as the pipeline streams it (`iter_decode`). Cases:

- released shapes, random weights: the Wan2.1 VAE (RELEASED_VAE) against TAEHV at taew2_1's widths,
  at `--height` x `--width` x `--frames` (default 120x208x5: what a shared 2-core CPU decodes in
  seconds);
- the demo model: its VAE against a distilled decoder (`--demo-decoder`, default
  runs/taehv-demo/taehv.safetensors; skipped when missing) at the demo clip's 144x256x21.

Prints one line per case: median wall and CPU seconds of each, and the ratio light / VAE.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from runtime.demo import DEMO_WEIGHTS
from runtime.models.taehv import TAEHVConfig, TAEHVDecoder, load_light_decoder
from runtime.models.vae import RELEASED_VAE, WanVAE
from runtime.models.weights import load_vae

Decode = Callable[[Tensor], object]


def timed(decode: Decode, latents: Tensor) -> tuple[float, float]:
    """(wall, CPU) seconds of one streamed decode."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in decode(latents):
        pass
    return time.perf_counter() - wall, time.process_time() - cpu


@torch.inference_mode()
def interleaved(decoders: dict[str, Decode], latents: Tensor, rounds: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each decoder over `rounds` interleaved rounds (after one warm-up)."""
    for decode in decoders.values():
        timed(decode, latents)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in decoders}
    for _ in range(rounds):
        for name, decode in decoders.items():
            runs[name].append(timed(decode, latents))
    return {name: tuple(statistics.median(x) for x in zip(*times)) for name, times in runs.items()}


def report(case: str, figures: dict[str, tuple[float, float]]) -> str:
    (vae_wall, vae_cpu), (light_wall, light_cpu) = figures["vae"], figures["light"]
    return (
        f"{case}: vae {vae_wall:.2f} s wall / {vae_cpu:.2f} s CPU, light {light_wall:.2f} s / {light_cpu:.2f} s, "
        f"light/vae {light_wall / vae_wall:.3f} wall, {light_cpu / vae_cpu:.3f} CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=208)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--demo-decoder", default="runs/taehv-demo/taehv.safetensors")
    args = parser.parse_args()
    torch.manual_seed(0)
    cpu = torch.device("cpu")

    vae = WanVAE(RELEASED_VAE).eval()
    light = TAEHVDecoder(TAEHVConfig()).eval()
    latents = torch.randn(1, RELEASED_VAE.z_dim, *RELEASED_VAE.latent_shape(args.frames, args.height, args.width))
    figures = interleaved({"vae": vae.iter_decode, "light": light.iter_decode}, latents, args.rounds)
    print(report(f"released shapes {args.height}x{args.width}x{args.frames}", figures))

    if Path(args.demo_decoder).is_file():
        demo_vae = load_vae(DEMO_WEIGHTS / "vae", cpu, torch.float32)
        demo_light = load_light_decoder("taew2_1", Path(args.demo_decoder), demo_vae.config, cpu, torch.float32)
        latents = torch.randn(1, demo_vae.config.z_dim, *demo_vae.config.latent_shape(21, 144, 256))
        figures = interleaved({"vae": demo_vae.iter_decode, "light": demo_light.iter_decode}, latents, args.rounds)
        print(report("demo model 144x256x21", figures))


if __name__ == "__main__":
    main()
