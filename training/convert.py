"""Wan2.1-T2V-1.3B weights -> the stage-1 initialization of the remover (released folder layout).

    python -m training.convert --base Wan2.1-T2V-1.3B-Diffusers --out runs/init
    python -m training.convert --base wan2.1_t2v_1.3B.safetensors --vae VAE_FOLDER --out runs/init

`--base` is a diffusers-layout folder (with transformer/ and vae/, or a transformer folder itself) or a
single safetensors file with the original Wan key names (its VAE then comes from `--vae`, a folder in
the diffusers layout). The text embedder, every cross-attention and its norm are dropped; the patch
embedding is widened from 16 to 48 input channels (noisy | masked video | mask latents) with the 32
new channels zero, so the masked-video and mask inputs start out ignored and the model computes what
the base model computes without its text; the condition embedding (the contrastive tokens) is added
with a seeded N(0, 1) initialization, the scale of the normalized hidden states it joins in attention.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from runtime.errors import RemoverError, exit_code
from runtime.models.config import ANY, config_from_dict
from runtime.models.scheduler import RELEASED_SCHEDULER
from runtime.models.transformer import RemoverTransformer, TransformerConfig
from runtime.models.weights import (
    config_from_wan_tensors,
    load_into,
    load_vae,
    read_safetensors,
    save_checkpoint,
    wan_to_released_key,
    weight_files,
)

# Keys of the text-to-video model the remover does not have (diffusers names, then original Wan names).
DROPPED_KEYS = [
    r"condition_embedder\.text_embedder\.",
    r"blocks\.\d+\.attn2\.",
    r"blocks\.\d+\.norm2\.",  # diffusers: the cross-attention norm
    r"text_embedding\.",
    r"blocks\.\d+\.cross_attn\.",
    r"blocks\.\d+\.norm3\.",  # original Wan: the cross-attention norm
]
# diffusers WanTransformer3DModel config keys that only concern what is dropped
T2V_ONLY_KEYS = {"text_dim": ANY, "image_dim": None, "pos_embed_seq_len": None}


def remover_tensors(base: dict[str, Tensor]) -> dict[str, Tensor]:
    """Base-model tensors under released names, without text and cross-attention, patch embedding widened."""
    renamed = {wan_to_released_key(key): value for key, value in base.items()}
    kept = {k: v for k, v in renamed.items() if not any(re.match(p, k) for p in DROPPED_KEYS)}
    if "patch_embedding.weight" not in kept:
        raise RemoverError("not a Wan2.1 transformer: no patch_embedding.weight")
    patch = kept["patch_embedding.weight"]
    widened = patch.new_zeros(patch.shape[0], 3 * patch.shape[1], *patch.shape[2:])
    widened[:, : patch.shape[1]] = patch
    kept["patch_embedding.weight"] = widened
    return kept


def diffusers_config(path: Path, num_condition_tokens: int) -> TransformerConfig:
    """The remover's config from a diffusers WanTransformer3DModel config.json (48 input channels)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RemoverError(f"cannot read {path}: {exc}") from None
    raw = {**raw, "in_channels": 3 * raw.get("out_channels", 16), "num_condition_tokens": num_condition_tokens}
    ignored = {**TransformerConfig.IGNORED_KEYS, **T2V_ONLY_KEYS}
    return config_from_dict(TransformerConfig, raw, ignored=ignored, source=str(path))


def read_base(base: Path, num_condition_tokens: int) -> tuple[TransformerConfig, dict[str, Tensor]]:
    """Config and (widened, released-named) tensors of the base transformer, in fp32."""
    cpu = torch.device("cpu")
    if base.is_dir():
        folder = base / "transformer" if (base / "transformer").is_dir() else base
        config = diffusers_config(folder / "config.json", num_condition_tokens)
        return config, remover_tensors(read_safetensors(weight_files(folder), cpu, torch.float32))
    if base.is_file() and base.suffix == ".safetensors":
        tensors = remover_tensors(read_safetensors([base], cpu, torch.float32))
        config = config_from_wan_tensors(tensors)
        return replace(config, in_channels=3 * config.out_channels, num_condition_tokens=num_condition_tokens), tensors
    raise RemoverError(f"{base}: expected a diffusers folder or a .safetensors file with Wan names")


def convert(base: Path, num_condition_tokens: int = 6, seed: int = 0) -> RemoverTransformer:
    """The stage-1 initialization of `base` (fp32, CPU, eval mode)."""
    config, tensors = read_base(base, num_condition_tokens)
    if num_condition_tokens:
        generator = torch.Generator().manual_seed(seed)
        tensors["condition_embedding.weight"] = torch.randn(
            2, num_condition_tokens * config.inner_dim, generator=generator
        )
    with torch.device("meta"):
        model = RemoverTransformer(config)
    load_into(model, tensors, str(base))
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="diffusers folder, or a Wan-named .safetensors file")
    parser.add_argument("--vae", help="VAE folder (diffusers layout); default: <base>/vae")
    parser.add_argument("--out", required=True, help="output folder (released layout: transformer/, vae/, scheduler/)")
    parser.add_argument("--condition-tokens", type=int, default=6, help="contrastive tokens per condition (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the condition embedding's initialization")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args(argv)

    def command() -> str:
        base = Path(args.base)
        vae_folder = Path(args.vae) if args.vae else base / "vae"
        if not (vae_folder / "config.json").is_file():
            raise RemoverError(f"no VAE at {vae_folder}: give --vae FOLDER (diffusers layout)")
        model = convert(base, args.condition_tokens, args.seed)
        vae = load_vae(vae_folder, torch.device("cpu"), torch.float32)
        dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
        save_checkpoint(Path(args.out), model, vae, RELEASED_SCHEDULER, dtype)
        return f"wrote {args.out} ({sum(p.numel() for p in model.parameters()):,} transformer parameters)"

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
