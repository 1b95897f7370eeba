"""Peak memory of a streamed VAE decode vs. the clip length, ours against diffusers (the reference).

    python -m bench.vae_memory [--frames 5 21] [--height 240 --width 416] [--config released|tiny]

Each measurement runs in a fresh process: it builds a VAE with random weights, notes the resident
memory, decodes `frames` latent frames and reports the peak resident memory above that baseline
(Linux ru_maxrss). Ours is measured twice: keeping the decoded video (a preallocated fp32 output)
and streaming it away chunk by chunk, which is what the runtime does with its host-side buffer.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from dataclasses import replace

import torch

from runtime.models.vae import RELEASED_VAE, WanVAE

CONFIGS = {"released": RELEASED_VAE, "tiny": replace(RELEASED_VAE, base_dim=8, num_res_blocks=1)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(implementation: str, config_name: str, frames: int, height: int, width: int) -> dict:
    """Run in this process: build, decode, and return baseline and peak memory in MB."""
    torch.manual_seed(0)
    config = CONFIGS[config_name]
    latents = torch.randn(1, config.z_dim, frames, height // 8, width // 8)
    if implementation == "diffusers":
        from diffusers import AutoencoderKLWan

        model = AutoencoderKLWan(base_dim=config.base_dim, num_res_blocks=config.num_res_blocks).eval()
    else:
        model = WanVAE(config).eval()
    baseline = peak_rss_mb()
    with torch.inference_mode():
        if implementation == "diffusers":
            model.decode(latents)
        elif implementation == "ours-streamed":
            for _chunk in model.iter_decode(latents):
                pass
        else:
            model.decode(latents)
    return {"implementation": implementation, "frames": frames, "baseline_mb": baseline, "peak_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[5, 21], help="latent frame counts")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="released")
    parser.add_argument("--implementations", nargs="+", default=["ours-streamed", "ours", "diffusers"])
    parser.add_argument("--child", nargs=2, metavar=("IMPLEMENTATION", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.config, int(args.child[1]), args.height, args.width)))
        return
    print(f"VAE decode, {args.config} config, {args.height}x{args.width}, CPU, peak RSS above the loaded model")
    print("| implementation | latent frames | video frames | peak above baseline (MB) |")
    print("|---|---|---|---|")
    for implementation in args.implementations:
        for frames in args.frames:
            command = [sys.executable, "-m", "bench.vae_memory", "--config", args.config, "--height", str(args.height),
                       "--width", str(args.width), "--child", implementation, str(frames)]  # fmt: skip
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            growth = result["peak_mb"] - result["baseline_mb"]
            print(f"| {implementation} | {frames} | {1 + 4 * (frames - 1)} | {growth:.0f} |", flush=True)


if __name__ == "__main__":
    main()
