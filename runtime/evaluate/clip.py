"""CLIP image features for the temporal-consistency figure (TC) without open_clip, torchvision or downloads.

TC (MiniMax-Remover, arXiv 2505.24873; the paper used CLIP ViT-H-14) is the mean cosine similarity of
the CLIP image features of consecutive frames. The vision tower here is open_clip's `VisionTransformer`
(class-token pooling, pre-LayerNorm blocks, GELU, a final projection), defined layer for layer so that
open_clip's released checkpoints load by key: a folder or hub repository holding `open_clip_config.json`
and `open_clip_model.safetensors` (or `open_clip_pytorch_model.bin`), such as
laion/CLIP-ViT-H-14-laion2B-s32B-b79K. open_clip itself is not imported: it imports torchvision, which
does not load beside this project's torch. A hub id is read from the hub cache only (runtime/hub.py,
never a download); anything missing or foreign is one RemoverError line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import RemoverError
from runtime.hub import is_hub_id, resolve

PAPER_MODEL = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # CLIP ViT-H-14, as the paper names it
CONFIG = "open_clip_config.json"
WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# open_clip's OPENAI_DATASET_MEAN / STD, its default where a config names none
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class Block(nn.Module):
    """open_clip's ResidualAttentionBlock: x + attn(ln_1(x)), then x + mlp(ln_2(x)) (GELU)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTower(nn.Module):
    """open_clip's VisionTransformer with its default options (the `visual.*` keys of a CLIP checkpoint)."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_ratio: float,
                 embed_dim: int) -> None:  # fmt: skip
        super().__init__()
        grid = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, patch_size, patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        x = self.ln_pre(x + self.positional_embedding.to(x.dtype))
        x = self.transformer(x)
        return self.ln_post(x[:, 0]) @ self.proj


class ClipFeatures(nn.Module):
    """CLIP image features of uint8 RGB frames, preprocessed as open_clip's evaluation transform does:
    the shorter side resized to the model's size (bicubic, antialiased), centre crop, mean/std."""

    def __init__(self, tower: VisionTower, size: int, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.tower, self.size = tower, size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """[1, 3, size, size] float32 from a uint8 [H, W, 3] frame."""
        x = torch.from_numpy(np.array(frame)).permute(2, 0, 1)[None].float() / 255.0
        height, width = x.shape[-2:]
        scale = self.size / min(height, width)
        shape = max(self.size, round(height * scale)), max(self.size, round(width * scale))
        if shape != (height, width):
            x = F.interpolate(x, size=shape, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (shape[0] - self.size) // 2, (shape[1] - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, frame: np.ndarray) -> torch.Tensor:
        """The unit-normalised feature vector [embed_dim] of one frame."""
        return F.normalize(self.tower(self.preprocess(frame))[0], dim=0)


def _config(folder: Path) -> tuple[dict, dict]:
    path = folder / CONFIG
    try:
        document = json.loads(path.read_text())
        model = document["model_cfg"]
        return model, document.get("preprocess_cfg", {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RemoverError(f"{path} is not an open_clip config ({type(exc).__name__}: {exc})") from None


def _tower(model: dict) -> VisionTower:
    vision = model.get("vision_cfg", {})
    unsupported = sorted(k for k in ("timm_model_name", "hf_model_name", "attentional_pool", "ls_init_value",
                                     "no_ln_pre", "final_ln_after_pool") if vision.get(k))  # fmt: skip
    if (
        unsupported
        or vision.get("pool_type", "tok") != "tok"
        or model.get("quick_gelu")
        or isinstance(vision.get("layers"), (list, tuple))
    ):
        raise RemoverError(f"the CLIP config's vision tower is not a plain ViT ({', '.join(unsupported) or 'options'})")
    width = vision.get("width", 768)
    return VisionTower(
        vision.get("image_size", 224), vision["patch_size"], width, vision["layers"],
        width // vision.get("head_width", 64), vision.get("mlp_ratio", 4.0), model["embed_dim"],
    )  # fmt: skip


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHTS:
        path = folder / name
        if path.is_file():
            try:
                if path.suffix == ".safetensors":
                    from safetensors.torch import load_file

                    return load_file(path)
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a truncated or foreign file: one line, whatever the reader raises
                raise RemoverError(f"cannot read the CLIP weights {path}: {str(exc).splitlines()[0]}") from None
    raise RemoverError(f"no CLIP weights ({' or '.join(WEIGHTS)}) in {folder}")


def load_clip(id_or_path: str | Path) -> ClipFeatures:
    """The CLIP image encoder of an open_clip checkpoint: a folder, or a hub id read from the hub cache
    only (never downloaded). Anything missing or not such a checkpoint is one RemoverError line."""
    name = str(id_or_path)
    folder = resolve(name, None, "the CLIP model (TC)", local_only=True) if is_hub_id(name) else Path(name)
    if not folder.is_dir():
        raise RemoverError(f"the CLIP model (TC) not found: {name} is neither a folder nor a hub id owner/name")
    model, preprocess = _config(folder)
    tower = _tower(model)
    state = {k.removeprefix("visual."): v for k, v in _weights(folder).items() if k.startswith("visual.")}
    try:
        tower.load_state_dict(state)
    except RuntimeError as exc:
        raise RemoverError(f"{folder} is not this CLIP vision tower: {str(exc).splitlines()[0]}") from None
    size = preprocess.get("size")
    size = size if isinstance(size, int) else model.get("vision_cfg", {}).get("image_size", 224)
    mean, std = tuple(preprocess.get("mean", MEAN)), tuple(preprocess.get("std", STD))
    return ClipFeatures(tower, size, mean, std).eval()
