"""SAM 2 (Meta's `sam2` package, the optional extra [segment]) built from its config and a checkpoint in
the released format ({"model": state_dict}), behind the three calls the propagation makes.

The package is imported here only, when a model is loaded. Configs are named as SAM 2 names them
("configs/sam2.1/sam2.1_hiera_s.yaml"), by their short name ("sam2.1_hiera_s") or as a YAML file of
one's own; the model is built as SAM 2's video predictor builds it (its post-processing overrides:
stability fallback to multimask, binarized prompted masks in memory), with `image_size` replaced
when asked. Every check (config, checkpoint file, keys and shapes) is one RemoverError line before
anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.errors import RemoverError
from runtime.hub import is_hub_id, resolve
from runtime.segment.options import DEFAULT_CHECKPOINT, DEFAULT_CONFIG, INSTALL, SegmentOptions
from runtime.segment.tracker import MemoryBank, Output

# the released checkpoints on the hub: id -> (config, file)
RELEASED = {
    f"facebook/sam2.1-hiera-{name}": (f"configs/sam2.1/sam2.1_hiera_{short}.yaml", f"sam2.1_hiera_{name}.pt")
    for name, short in (("tiny", "t"), ("small", "s"), ("base-plus", "b+"), ("large", "l"))
} | {
    f"facebook/sam2-hiera-{name}": (f"configs/sam2/sam2_hiera_{short}.yaml", f"sam2_hiera_{name}.pt")
    for name, short in (("tiny", "t"), ("small", "s"), ("base-plus", "b+"), ("large", "l"))
}
# what SAM 2's build_sam2_video_predictor sets on top of a config
VIDEO_OVERRIDES = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    "model.binarize_mask_from_pts_for_mem_enc": True,
}
MODEL_CLASS = "sam2.modeling.sam2_base.SAM2Base"
PIXEL_MEAN, PIXEL_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # SAM 2's input normalization


def import_sam2() -> Any:
    """The `sam2` package, or one line naming the extra that installs it."""
    try:
        import hydra.utils  # noqa: F401 (SAM 2 builds its models with hydra)
        import omegaconf  # noqa: F401
        import sam2
    except ImportError:
        raise RemoverError(INSTALL) from None
    return sam2


def config_file(name: str) -> Path:
    """A config's YAML file: a file of one's own, or one of SAM 2's by its name or short name."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    root = Path(import_sam2().__file__).parent
    configs = sorted((root / "configs").rglob("*.yaml"))
    wanted = name.removesuffix(".yaml")
    for config in configs:
        relative = config.relative_to(root).with_suffix("").as_posix()
        if wanted in (relative, relative.removeprefix("configs/"), config.stem):
            return config
    if path.suffix in (".yaml", ".yml") and not name.startswith("configs/"):
        raise RemoverError(f"model config not found: {path}")
    known = ", ".join(config.stem for config in configs if "training" not in config.parent.name)
    raise RemoverError(f"unknown model config {name!r}: SAM 2 has {known}, or give a YAML file")


def model_choice(options: SegmentOptions) -> tuple[str, str]:
    """(checkpoint, config): a released hub id with the default config takes its own config."""
    checkpoint = options.checkpoint or DEFAULT_CHECKPOINT
    config = options.model_config
    if checkpoint in RELEASED and config == DEFAULT_CONFIG:
        config = RELEASED[checkpoint][0]
    return checkpoint, config


def checkpoint_file(checkpoint: str) -> Path:
    """The checkpoint's local file: a path, or a hub id resolved through the hub cache."""
    if not is_hub_id(checkpoint):
        path = resolve(checkpoint, None, "the SAM 2 checkpoint")
        if path.is_dir():
            raise RemoverError(f"the SAM 2 checkpoint {path} is a folder: give its .pt file")
        return path
    if checkpoint in RELEASED:
        return resolve(checkpoint, RELEASED[checkpoint][1], "the SAM 2 checkpoint")
    folder = resolve(checkpoint, None, "the SAM 2 checkpoint")
    files = sorted(folder.glob("*.pt"))
    if len(files) != 1:
        raise RemoverError(f"the hub repository {checkpoint} holds {len(files)} .pt files: give the file's path")
    return files[0]


def build_model(config: Path, image_size: int | None) -> torch.nn.Module:
    """SAM 2 with random weights from a config file, as its video predictor builds it."""
    import_sam2()
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    try:
        cfg = OmegaConf.load(config)
    except Exception as exc:  # YAML and OmegaConf errors have many types
        raise RemoverError(f"cannot read the model config {config}: {_first_line(exc)}") from None
    if not isinstance(cfg, DictConfig) or "model" not in cfg:
        raise RemoverError(f"{config} is not a SAM 2 model config (it has no model: section)")
    overrides = dict(VIDEO_OVERRIDES, **{"model._target_": MODEL_CLASS})
    if image_size is not None:
        overrides["model.image_size"] = image_size
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    try:
        OmegaConf.resolve(cfg)
        return instantiate(cfg.model, _recursive_=True)
    except Exception as exc:
        raise RemoverError(f"cannot build a SAM 2 model from {config}: {_first_line(exc)}") from None


def load_weights(model: torch.nn.Module, path: Path, config: Path) -> None:
    """Load a released-format checkpoint into `model`, after checking every key and shape."""
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RemoverError(f"cannot read the SAM 2 checkpoint {path}: {_first_line(exc)}") from None
    state = document.get("model") if isinstance(document, dict) else None
    if not isinstance(state, dict):
        raise RemoverError(f"{path} is not a SAM 2 checkpoint: expected {{'model': state_dict}}")
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        key for key in expected if key in state and tuple(getattr(state[key], "shape", ())) != expected[key].shape
    ]
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise RemoverError(
            f"the checkpoint {path.name} does not match {config.name}: {len(missing)} weights missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape (e.g. {example}); give the "
            "--model-config it was made with"
        )
    model.load_state_dict(state)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def pick_device(requested: str | None) -> torch.device:
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RemoverError(f"--device {requested}: this machine has no CUDA GPU that torch can use")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise RemoverError("--device mps: MPS is not available here")
    return torch.device(requested)


@dataclass
class Sam2Features:
    """One frame's image features, shared by every object tracked on it."""

    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]


class Sam2Model:
    """SAM 2 behind the propagation's three calls (runtime.segment.tracker.TrackingModel): image
    features, an output from prompts, an output from memory. Outputs keep what SAM 2's predictor keeps
    (memory features in bfloat16, one shared copy of the memory position encoding)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.image_size = int(model.image_size)
        pointers = model.max_obj_ptrs_in_encoder - 1 if model.use_obj_ptrs_in_encoder else 0
        self.memory_frames = max(model.num_maskmem - 1, pointers, 1)
        self._mean = torch.tensor(PIXEL_MEAN, device=device).view(3, 1, 1)
        self._std = torch.tensor(PIXEL_STD, device=device).view(3, 1, 1)
        self._memory_pos: list[torch.Tensor] | None = None

    @torch.inference_mode()
    def features(self, image: np.ndarray) -> Sam2Features:
        pixels = torch.from_numpy(image).to(self.device).permute(2, 0, 1).float() / 255
        backbone = self.model.forward_image(((pixels - self._mean) / self._std).unsqueeze(0))
        _, feats, pos, sizes = self.model._prepare_backbone_features(backbone)
        return Sam2Features(feats, pos, sizes)

    @torch.inference_mode()
    def conditioned(
        self, features: Sam2Features, frame: int, points: np.ndarray, labels: np.ndarray, frame_count: int
    ) -> Output:
        inputs = {
            "point_coords": torch.from_numpy(points).to(self.device).unsqueeze(0),
            "point_labels": torch.from_numpy(labels).to(self.device).unsqueeze(0),
        }
        return self._step(features, frame, True, inputs, None, frame_count, False)

    @torch.inference_mode()
    def tracked(self, features: Sam2Features, frame: int, bank: MemoryBank, frame_count: int, reverse: bool) -> Output:
        return self._step(features, frame, False, None, bank, frame_count, reverse)

    def _step(
        self,
        features: Sam2Features,
        frame: int,
        prompted: bool,
        point_inputs: dict[str, torch.Tensor] | None,
        bank: MemoryBank | None,
        frame_count: int,
        reverse: bool,
    ) -> Output:
        output = self.model.track_step(
            frame_idx=frame,
            is_init_cond_frame=prompted,
            current_vision_feats=features.vision_feats,
            current_vision_pos_embeds=features.vision_pos,
            feat_sizes=features.feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=None,
            output_dict=bank if bank is not None else {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
            num_frames=frame_count,
            track_in_reverse=reverse,
            run_mem_encoder=True,
        )
        if self._memory_pos is None:  # the same for every frame and object
            self._memory_pos = [tensor.clone() for tensor in output["maskmem_pos_enc"]]
        return {
            "maskmem_features": output["maskmem_features"].to(torch.bfloat16),
            "maskmem_pos_enc": self._memory_pos,
            "obj_ptr": output["obj_ptr"],
            "object_score_logits": output["object_score_logits"],
            "pred_masks": output["pred_masks"],
        }


def load_sam2(options: SegmentOptions) -> Sam2Model:
    """SAM 2 for `options`: config and checkpoint checked, weights loaded, on its device."""
    import_sam2()
    checkpoint, config_name = model_choice(options)
    config = config_file(config_name)
    device = pick_device(options.device)
    path = checkpoint_file(checkpoint)  # may download: after the checks that need nothing fetched
    model = build_model(config, options.image_size)
    load_weights(model, path, config)
    return Sam2Model(model, device)
