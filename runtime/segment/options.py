"""What the segmenter is asked to do: which SAM 2 model, at what size, where, and how its masks are
finished (grown or shrunk, holes filled)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import RemoverError

DEFAULT_CHECKPOINT = "facebook/sam2.1-hiera-small"
DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_s.yaml"
# SAM 2's image encoder halves the size five times (patch embedding 4, three poolings) and its neck
# adds the last level to the one before: the input side must be a multiple of 32
IMAGE_STRIDE = 32
# SAM 2's masks follow object edges tightly (from logits at a quarter of the model's input size), and
# motion blur and soft edges fall outside them; the remover dilates again at its working size
DEFAULT_GROW = 4
MAX_GROW = 256
DEVICES = ("cpu", "cuda", "mps")
INSTALL = (
    "segmenting needs SAM 2, the [segment] extra: pip install 'minimax-remover-runtime[segment]' and then "
    "SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2 (see docs/segment.md)"
)


@dataclass(frozen=True)
class SegmentOptions:
    """`checkpoint`: a local .pt in Meta's released format ({"model": state_dict}) or a hub id (None: the
    small SAM 2.1). `model_config`: as SAM 2 names its configs ("configs/sam2.1/sam2.1_hiera_s.yaml"
    or "sam2.1_hiera_s") or a YAML file. `image_size` replaces the config's input size (a multiple of
    32; smaller is faster and coarser). `device`: None takes cuda when there is one. `grow` pixels are
    added to (or, negative, taken from) each mask's edge, in display pixels; `fill_holes` fills what a
    mask encloses."""

    checkpoint: str | None = None
    model_config: str = DEFAULT_CONFIG
    image_size: int | None = None
    device: str | None = None
    grow: int = DEFAULT_GROW
    fill_holes: bool = True

    def __post_init__(self) -> None:
        if self.checkpoint is not None and not self.checkpoint.strip():
            raise RemoverError("--checkpoint is empty")
        if not self.model_config.strip():
            raise RemoverError("--model-config is empty")
        if self.image_size is not None and (self.image_size < IMAGE_STRIDE or self.image_size % IMAGE_STRIDE):
            raise RemoverError(f"--image-size {self.image_size} must be a positive multiple of {IMAGE_STRIDE}")
        if self.device is not None and self.device.split(":")[0] not in DEVICES:
            raise RemoverError(f"unknown device {self.device!r}: use {', '.join(DEVICES)} (cuda:N for a GPU)")
        if not -MAX_GROW <= self.grow <= MAX_GROW:
            raise RemoverError(f"--grow {self.grow} is outside -{MAX_GROW} to {MAX_GROW} pixels")
