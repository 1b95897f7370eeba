"""Reading checkpoints: the released folder layout and the single-file Wan-named repack.

Released layout (diffusers style):
    <weights>/transformer/config.json + diffusion_pytorch_model.safetensors
    <weights>/vae/config.json          + diffusion_pytorch_model.safetensors
    <weights>/scheduler/scheduler_config.json
The repack (e.g. Wan2_1-MiniMaxRemover_1_3B_fp16.safetensors) holds the transformer alone under
the original Wan key names; its VAE and scheduler come from a released-layout folder.
Only safetensors are read. Models are built on the meta device and take the loaded tensors, so
weights are never initialized twice.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from runtime.errors import RemoverError
from runtime.models.config import ANY, read_config, write_config
from runtime.models.scheduler import RELEASED_SCHEDULER, SchedulerConfig, read_scheduler_config
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer, TransformerConfig
from runtime.models.vae import VAEConfig, WanVAE

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WAN_PREFIX = "model.diffusion_model."

# Original Wan name -> released (diffusers) name; "{i}" is a block index.
WAN_TO_RELEASED = [
    (r"time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"time_projection\.1\.", "condition_embedder.time_proj."),
    (r"head\.modulation$", "scale_shift_table"),
    (r"head\.head\.", "proj_out."),
    (r"blocks\.(\d+)\.modulation$", r"blocks.\1.scale_shift_table"),
    (r"blocks\.(\d+)\.self_attn\.q\.", r"blocks.\1.attn1.to_q."),
    (r"blocks\.(\d+)\.self_attn\.k\.", r"blocks.\1.attn1.to_k."),
    (r"blocks\.(\d+)\.self_attn\.v\.", r"blocks.\1.attn1.to_v."),
    (r"blocks\.(\d+)\.self_attn\.o\.", r"blocks.\1.attn1.to_out.0."),
    (r"blocks\.(\d+)\.self_attn\.norm_([qk])\.", r"blocks.\1.attn1.norm_\2."),
    (r"blocks\.(\d+)\.ffn\.0\.", r"blocks.\1.ffn.net.0.proj."),
    (r"blocks\.(\d+)\.ffn\.2\.", r"blocks.\1.ffn.net.2."),
]


@dataclass(frozen=True)
class CheckpointPaths:
    """Where each part of a checkpoint lives; `scheduler` None means the released scheduler config."""

    transformer: Path  # a folder (config.json + safetensors) or a single-file Wan-named repack
    vae: Path  # a folder with config.json + safetensors
    scheduler: Path | None


def locate_checkpoint(weights: str | Path, vae: str | Path | None = None) -> CheckpointPaths:
    """Resolve a released checkpoint folder, or a repack file plus a folder that has the VAE."""
    weights = Path(weights)
    if weights.is_dir():
        if not (weights / "transformer").is_dir():
            raise RemoverError(f"{weights} is not a checkpoint folder: it has no transformer/ subfolder")
        vae_dir = _vae_folder(Path(vae)) if vae is not None else weights / "vae"
        return CheckpointPaths(weights / "transformer", vae_dir, _scheduler_file(weights))
    if weights.is_file():
        if weights.suffix != ".safetensors":
            raise RemoverError(f"{weights}: only .safetensors weights are read")
        if vae is None:
            raise RemoverError(
                f"{weights} is a single-file transformer without a VAE: also give the released checkpoint "
                "folder (or its vae/ folder) as the VAE source (--vae)"
            )
        vae = Path(vae)
        return CheckpointPaths(weights, _vae_folder(vae), _scheduler_file(vae) if vae.is_dir() else None)
    raise RemoverError(f"weights not found: {weights}")


def _vae_folder(path: Path) -> Path:
    """Accept either a checkpoint folder (with vae/) or the vae folder itself."""
    if (path / "vae").is_dir():
        return path / "vae"
    if (path / "config.json").is_file():
        return path
    raise RemoverError(f"no VAE in {path}: expected {path}/vae/ or a folder with config.json")


def _scheduler_file(folder: Path) -> Path | None:
    path = folder / "scheduler" / "scheduler_config.json"
    return path if path.is_file() else None


# --- reading tensors ----------------------------------------------------------------------------


def read_safetensors(files: list[Path], device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    """All tensors of the given files, cast to `dtype` on `device`; unreadable files are RemoverErrors."""
    tensors: dict[str, Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for key in handle.keys():
                    tensors[key] = handle.get_tensor(key).to(device=device, dtype=dtype)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise RemoverError(f"cannot read weights {file}: {str(exc).splitlines()[0]}") from None
    return tensors


def weight_files(folder: Path) -> list[Path]:
    """The safetensors file of a model folder, or the shards its index lists."""
    single = folder / WEIGHTS_NAME
    index = folder / (WEIGHTS_NAME + ".index.json")
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise RemoverError(f"cannot parse {index}: {exc}") from None
        return [folder / shard for shard in shards]
    raise RemoverError(f"missing weights: {single}")


def load_into(model: nn.Module, tensors: dict[str, Tensor], source: str) -> None:
    """Give a meta-device model its weights; missing, unexpected or mis-shaped keys are one error."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = [
        f"{key} {tuple(tensors[key].shape)} (model expects {shape})"
        for key, shape in expected.items()
        if key in tensors and tuple(tensors[key].shape) != shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
    if problems:
        raise RemoverError(f"weights in {source} do not fit the model config: {'; '.join(problems)}")
    model.load_state_dict(tensors, assign=True)
    model.eval().requires_grad_(False)


# --- models ---------------------------------------------------------------------------------------


def wan_to_released_key(key: str) -> str:
    """Map one original Wan transformer key to the released name (unknown keys pass through)."""
    key = key.removeprefix(WAN_PREFIX)
    for pattern, target in WAN_TO_RELEASED:
        renamed, count = re.subn(pattern, target, key)
        if count:
            return renamed
    return key


def config_from_wan_tensors(tensors: dict[str, Tensor]) -> TransformerConfig:
    """Infer the transformer config from a repack's tensor shapes (heads of dim 128, as in Wan2.1)."""
    try:
        patch = tensors["patch_embedding.weight"]
        dim = patch.shape[0]
        if dim % RELEASED_TRANSFORMER.attention_head_dim:
            raise RemoverError(
                f"transformer width {dim} is not a multiple of the Wan head dim "
                f"{RELEASED_TRANSFORMER.attention_head_dim}; use a checkpoint folder with a config.json"
            )
        num_layers = 1 + max(int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k)))
        return replace(
            RELEASED_TRANSFORMER,
            patch_size=tuple(patch.shape[2:]),
            in_channels=patch.shape[1],
            num_attention_heads=dim // RELEASED_TRANSFORMER.attention_head_dim,
            out_channels=tensors["proj_out.weight"].shape[0] // math.prod(patch.shape[2:]),
            ffn_dim=tensors["blocks.0.ffn.net.0.proj.weight"].shape[0],
            num_layers=num_layers,
            freq_dim=tensors["condition_embedder.time_embedder.linear_1.weight"].shape[1],
        )
    except (KeyError, ValueError) as exc:
        raise RemoverError(f"not a MiniMax-Remover transformer file (missing {exc})") from None


def load_transformer(path: Path, device: torch.device, dtype: torch.dtype) -> RemoverTransformer:
    """Load the transformer from a released folder or a single-file Wan-named repack."""
    if path.is_dir():
        config = read_config(TransformerConfig, path / "config.json", ignored=TransformerConfig.IGNORED_KEYS)
        tensors = read_safetensors(weight_files(path), device, dtype)
    else:
        raw = read_safetensors([path], device, dtype)
        tensors = {wan_to_released_key(key): value for key, value in raw.items()}
        config = config_from_wan_tensors(tensors)
    with torch.device("meta"):
        model = RemoverTransformer(config)
    load_into(model, tensors, str(path))
    model.cache_condition_kv()
    return model


def load_vae(folder: Path, device: torch.device, dtype: torch.dtype) -> WanVAE:
    """Load the VAE from a folder with config.json and diffusers-named safetensors."""
    config = read_config(VAEConfig, folder / "config.json", ignored=VAEConfig.IGNORED_KEYS)
    tensors = read_safetensors(weight_files(folder), device, dtype)
    with torch.device("meta"):
        model = WanVAE(config)
    load_into(model, tensors, str(folder))
    return model


def load_scheduler_config(path: Path | None) -> SchedulerConfig:
    """The scheduler config at `path`, or the released one when the checkpoint has none."""
    return RELEASED_SCHEDULER if path is None else read_scheduler_config(path)


def save_checkpoint(
    folder: Path,
    transformer: RemoverTransformer,
    vae: WanVAE,
    scheduler: SchedulerConfig,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write the released folder layout (weights in `dtype`, fp16 like the release) that `locate_checkpoint` reads."""
    for name, model, class_name in (
        ("transformer", transformer, "Transformer3DModel"),
        ("vae", vae, "AutoencoderKLWan"),
    ):
        write_config(model.config, folder / name / "config.json", class_name)
        tensors = {key: value.detach().to("cpu", dtype).contiguous() for key, value in model.state_dict().items()}
        save_file(tensors, str(folder / name / WEIGHTS_NAME))
    pinned = {key: value for key, value in SchedulerConfig.IGNORED_KEYS.items() if value is not ANY}
    write_config(scheduler, folder / "scheduler" / "scheduler_config.json", "UniPCMultistepScheduler", pinned)
