"""LPIPS (Zhang et al. 2018, v0.1, AlexNet) without torchvision and without downloads.

The `lpips` wheel ships its linear heads (lpips/weights/v0.1/alex.pth, read here without importing the
package, which needs torchvision); the AlexNet backbone is torchvision's ImageNet checkpoint, taken from
the user's torch hub cache (`torch.hub.get_dir()/checkpoints/alexnet-owt-*.pth`) or a path, and loaded
by key into the same layers defined here. Nothing is ever downloaded: without either file LPIPS is
skipped with one line saying why. Lower is closer; 0 for identical frames.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from runtime.errors import RemoverError

# the lpips package's ScalingLayer: ImageNet statistics in its [-1, 1] input range
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 192, 384, 256, 256)
STAGE_ENDS = (2, 5, 8, 10, 12)  # torchvision's alexnet.features[:12] split after each ReLU, as lpips slices it
BACKBONE_GLOB = "alexnet-owt-*.pth"


def alexnet_features() -> nn.Sequential:
    """torchvision's AlexNet `features` up to the last ReLU, layer for layer (so its keys load as they are)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )  # fmt: skip


class Lpips(nn.Module):
    """LPIPS distance of uint8 RGB frames: AlexNet activations after each of its 5 ReLU stages, unit
    normalised over channels, squared differences weighted by the linear heads, averaged over space."""

    def __init__(self) -> None:
        super().__init__()
        self.features = alexnet_features()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out, start = [], 0
        for end in STAGE_ENDS:
            x = self.features[start:end](x)
            out.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
            start = end
        return out

    @torch.no_grad()
    def forward(self, a: np.ndarray, b: np.ndarray) -> float:
        """The distance of two uint8 [H, W, 3] frames."""
        pair = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        total = 0.0
        for head, stage in zip(self.heads, self._stages(pair)):
            total += float(head((stage[0:1] - stage[1:2]) ** 2).mean())
        return total


def heads_file() -> Path | None:
    """lpips/weights/v0.1/alex.pth of the installed `lpips` package, found without importing it."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / "alex.pth"
    return path if path.is_file() else None


def cached_backbone() -> Path | None:
    """torchvision's AlexNet checkpoint in the torch hub cache, if a previous download left one there."""
    found = sorted((Path(torch.hub.get_dir()) / "checkpoints").glob(BACKBONE_GLOB))
    return found[-1] if found else None


def _load(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: one line, whatever torch raises
        raise RemoverError(f"cannot read the {what} {path}: {str(exc).splitlines()[0]}") from None


def load_lpips(backbone: str | Path | None = None, heads: str | Path | None = None) -> tuple[Lpips | None, str]:
    """(the LPIPS model, "") or (None, the one line saying why it is skipped). `backbone`: torchvision's
    AlexNet checkpoint (default: the torch hub cache); `heads`: lpips's alex.pth (default: its wheel).
    A file that is given or found but cannot be loaded is a RemoverError."""
    heads = Path(heads) if heads else heads_file()
    backbone = Path(backbone) if backbone else cached_backbone()
    if heads is None:
        return None, "LPIPS skipped: its linear heads are not installed (pip install --no-deps lpips)"
    if backbone is None:
        where = Path(torch.hub.get_dir()) / "checkpoints"
        return None, f"LPIPS skipped: no AlexNet backbone ({BACKBONE_GLOB}) in {where}; give --lpips-backbone PATH"
    if not backbone.is_file() or not heads.is_file():
        raise RemoverError(f"LPIPS weights not found: {backbone if not backbone.is_file() else heads}")
    model = Lpips()
    state = _load(backbone, "AlexNet backbone")
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    head_weights = _load(heads, "LPIPS heads")
    try:
        model.features.load_state_dict({k: v for k, v in features.items() if int(k.split(".")[0]) < STAGE_ENDS[-1]})
        model.heads.load_state_dict({f"{i}.weight": head_weights[f"lin{i}.model.1.weight"] for i in range(5)})
    except (RuntimeError, KeyError, ValueError) as exc:
        raise RemoverError(f"{backbone} or {heads} is not AlexNet / LPIPS v0.1: {str(exc).splitlines()[0]}") from None
    return model.eval(), ""
