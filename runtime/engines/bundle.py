"""Engine bundles: a folder with `manifest.json` and the exported graphs, and the stages that run them.

    <bundle>/manifest.json     what was exported, from which checkpoint, at which shapes and precision
    <bundle>/onnx/<graph>.onnx (+ .onnx.data)   written by `python -m export.onnx`
    <bundle>/aoti/<graph>.pt2                    AOTInductor packages (`export.onnx --aoti`)
    <bundle>/tensorrt/<graph>.plan               TensorRT engines (`python -m export.tensorrt`)

Six graphs, all with fp32 inputs and outputs (each casts to the bundle's precision inside, so
fp16 and bf16 bundles compute exactly what the PyTorch modules compute in that dtype):
    vae_encode_first  video [1, 3, 1, H, W]                 -> latents [1, z, 1, h, w], caches
    vae_encode_next   video [1, 3, 4, H, W], caches          -> latents [1, z, 1, h, w], caches
    dit_step          latents [1, 3z, T, h, w], timestep [1] -> velocity [1, z, T, h, w]
    dit_sampler       noise, masked_latents, mask_latents [1, z, T, h, w] -> clean_latents (the whole
                      sampler unrolled, its schedule baked in as constants)
    vae_decode_first  latents [1, z, 1, h, w]                -> video [1, 3, 1, H, W], caches
    vae_decode_next   latents [1, z, 1, h, w], caches        -> video [1, 3, 4, H, W], caches
The encoder streams the masked video, then the mask video (one cache in memory at a time). Caches are the causal
layers' carried frames, in the order the manifest lists them. Every artifact is keyed on shape,
precision, tool version, device and checkpoint hash; one that does not match is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from runtime.engines.graph_spec import GraphSpec, TensorSpec
from runtime.engines.graphs import BACKENDS, Graph, open_graph
from runtime.errors import RemoverError
from runtime.io.outputs import write_atomically
from runtime.models.config import config_from_dict
from runtime.models.scheduler import SchedulerConfig
from runtime.models.transformer import TransformerConfig
from runtime.models.vae import VAEConfig
from runtime.models.weights import CheckpointPaths, weight_files
from runtime.pipeline.stages import Stages

FORMAT = "minimax-remover-bundle"
FORMAT_VERSION = 2  # 2: the encoder graphs take one video, not the pair
MANIFEST = "manifest.json"
GRAPHS = ("vae_encode_first", "vae_encode_next", "dit_step", "dit_sampler", "vae_decode_first", "vae_decode_next")
ENCODE_BATCH = 1  # one video at a time: the masked video, then the mask video
NEXT_CHUNK_FRAMES = 4  # video frames per encoder chunk after the first (one latent frame)
PRECISIONS = ("fp32", "fp16", "bf16")
# Attention scores ONNX Runtime may materialize per layer (one call): a CPU-sized bundle is far below,
# the released 480x832x81 in fp16 is 26 GB
ORT_SCORES_LIMIT_BYTES = 4 * 1024**3
FUSED_ATTENTION_OPS = {"Attention", "MultiHeadAttention", "GroupQueryAttention"}

# How the runtime turns frames and masks into the graphs' inputs (runtime/pipeline/preprocess.py) and the
# decoder's output back into pixels; recorded so that other hosts can reproduce it.
INPUT_NORMALIZATION = {
    "video": "RGB uint8 -> x / 127.5 - 1, then bilinear resize to (height, width), align_corners=False, no antialias",
    "mask": "nonzero = remove; 3x3-cross binary dilation at the mask's resolution, bilinear resize, > 0 -> 1",
    "masked_video": "video * (1 - mask): the hole is 0 (mid-grey)",
    "mask_video": "2 * mask - 1, the same on all 3 channels",
    "encoder_order": "masked_video, then mask_video, each streamed on its own -> masked_latents, mask_latents",
    "frames": "padded to 4k+1 by repeating the last frame",
    "decoded_video": "in [-1, 1]; pixel = (x + 1) / 2",
}


@dataclass
class Manifest:
    """Everything a host needs to run a bundle and to know what it computes."""

    checkpoint_sha256: str
    transformer: TransformerConfig
    vae: VAEConfig
    scheduler: SchedulerConfig
    height: int
    width: int
    frames: int
    dynamic_frames: bool
    precision: str
    sampler: str
    steps: int
    timesteps: tuple[int, ...]
    sigmas: tuple[float, ...]
    condition: int | None  # the condition token the graphs bake in (models with condition tokens)
    graphs: dict[str, GraphSpec]
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> {"key", "files", ...}
    tools: dict[str, str] = field(default_factory=dict)

    @property
    def latent_frames(self) -> int:
        return self.vae.latent_shape(self.frames, self.height, self.width)[0]

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.vae.latent_shape(self.frames, self.height, self.width)[1:]

    def key(self, tool: str, device: str) -> dict[str, Any]:
        """What an artifact built by `tool` for `device` must be rebuilt for when it changes."""
        return {
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "dynamic_frames": self.dynamic_frames,
            "precision": self.precision,
            "checkpoint_sha256": self.checkpoint_sha256,
            "tool": tool,
            "device": device,
        }

    def to_json(self) -> dict[str, Any]:
        h, w = self.latent_size
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "checkpoint_sha256": self.checkpoint_sha256,
            "shape": {
                "height": self.height,
                "width": self.width,
                "frames": self.frames,
                "dynamic_frames": self.dynamic_frames,
                "latent": [self.latent_frames, h, w],
                "tokens": self.latent_frames
                * (h // self.transformer.patch_size[1])
                * (w // self.transformer.patch_size[2]),
            },
            "precision": self.precision,
            "io_dtype": "fp32",
            "schedule": {
                "sampler": self.sampler,
                "steps": self.steps,
                "timesteps": list(self.timesteps),
                "sigmas": list(self.sigmas),
            },
            "condition": self.condition,
            "latents_mean": list(self.vae.latents_mean),
            "latents_std": list(self.vae.latents_std),
            "input_normalization": INPUT_NORMALIZATION,
            "models": {
                "transformer": dataclasses.asdict(self.transformer),
                "vae": dataclasses.asdict(self.vae),
                "scheduler": dataclasses.asdict(self.scheduler),
            },
            "graphs": {
                name: {
                    "inputs": [dataclasses.asdict(t) for t in spec.inputs],
                    "outputs": [dataclasses.asdict(t) for t in spec.outputs],
                    "cache_layers": list(spec.cache_layers),
                }
                for name, spec in self.graphs.items()
            },
            "artifacts": self.artifacts,
            "tools": self.tools,
        }

    def write(self, folder: Path) -> None:
        """Write manifest.json (under a temporary name, then renamed)."""
        text = json.dumps(self.to_json(), indent=2) + "\n"
        write_atomically(folder / MANIFEST, lambda to: to.write_text(text))


def _tensor_spec(raw: dict[str, Any]) -> TensorSpec:
    return TensorSpec(raw["name"], tuple(raw["shape"]), raw["dtype"])


def read_manifest(folder: Path) -> Manifest:
    """Read and check a bundle's manifest.json; anything missing or from another format is a RemoverError."""
    path = folder / MANIFEST
    if not path.is_file():
        raise RemoverError(
            f"{folder} is not an engine bundle: it has no {MANIFEST} (make one with python -m export.onnx)"
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RemoverError(f"cannot parse {path}: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise RemoverError(f"{path} is not a MiniMax-Remover bundle manifest")
    if raw.get("format_version") != FORMAT_VERSION:
        raise RemoverError(
            f"{path} has bundle format version {raw.get('format_version')}; this runtime reads version "
            f"{FORMAT_VERSION}: export the bundle again"
        )
    try:
        models, shape, schedule = raw["models"], raw["shape"], raw["schedule"]
        manifest = Manifest(
            checkpoint_sha256=raw["checkpoint_sha256"],
            transformer=config_from_dict(TransformerConfig, models["transformer"], ignored={}, source=str(path)),
            vae=config_from_dict(VAEConfig, models["vae"], ignored={}, source=str(path)),
            scheduler=config_from_dict(SchedulerConfig, models["scheduler"], ignored={}, source=str(path)),
            height=shape["height"],
            width=shape["width"],
            frames=shape["frames"],
            dynamic_frames=shape["dynamic_frames"],
            precision=raw["precision"],
            sampler=schedule["sampler"],
            steps=schedule["steps"],
            timesteps=tuple(schedule["timesteps"]),
            sigmas=tuple(schedule["sigmas"]),
            condition=raw["condition"],
            graphs={
                name: GraphSpec(
                    tuple(_tensor_spec(t) for t in graph["inputs"]),
                    tuple(_tensor_spec(t) for t in graph["outputs"]),
                    tuple(graph["cache_layers"]),
                )
                for name, graph in raw["graphs"].items()
            },
            artifacts=raw["artifacts"],
            tools=raw["tools"],
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise RemoverError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from None
    if manifest.precision not in PRECISIONS:
        raise RemoverError(f"{path}: unknown precision {manifest.precision!r}")
    missing = sorted(set(GRAPHS) - set(manifest.graphs))
    if missing:
        raise RemoverError(f"{path}: the bundle lacks the graphs {missing}")
    return manifest


def checkpoint_sha256(paths: CheckpointPaths) -> str:
    """SHA-256 over a checkpoint's configs and weights (transformer, VAE, scheduler), in a fixed order."""
    files: list[tuple[str, Path]] = []
    if paths.transformer.is_dir():
        files += [("transformer/config.json", paths.transformer / "config.json")]
        files += [(f"transformer/{f.name}", f) for f in weight_files(paths.transformer)]
    else:
        files += [(f"transformer/{paths.transformer.name}", paths.transformer)]
    files += [("vae/config.json", paths.vae / "config.json")] + [(f"vae/{f.name}", f) for f in weight_files(paths.vae)]
    if paths.scheduler is not None:
        files += [("scheduler/scheduler_config.json", paths.scheduler)]
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode() + b"\0")
        try:
            with path.open("rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
        except OSError as exc:
            raise RemoverError(f"cannot read {path}: {exc}") from None
    return digest.hexdigest()


def _stale(manifest: Manifest, kind: str, tool: str, target: str) -> dict[str, tuple[Any, Any]]:
    """What the `kind` artifacts were built for that differs from running them with `tool` on `target`."""
    stored, live = manifest.artifacts[kind]["key"], manifest.key(tool, target)
    return {k: (stored.get(k), v) for k, v in live.items() if stored.get(k) != v}


def choose_backend(folder: Path, device: torch.device) -> str:
    """The backend for a bundle when none is named: on CUDA TensorRT, else AOTInductor, else ONNX
    Runtime; on the CPU ONNX Runtime, else AOTInductor; the first whose artifacts the bundle has,
    built for this device and these versions."""
    manifest = read_manifest(folder)
    order = ("tensorrt", "aoti", "onnxruntime") if device.type == "cuda" else ("onnxruntime", "aoti")
    for backend in order:
        kind = BACKENDS[backend].artifact
        if kind not in manifest.artifacts:
            continue
        try:
            tool, target = BACKENDS[backend].key(device)
        except RemoverError:  # TensorRT not installed, say
            continue
        if not _stale(manifest, kind, tool, target):
            return backend
    raise RemoverError(
        f"{folder} has no artifacts built to run on {device.type} here (it has {sorted(manifest.artifacts)}): "
        "build them (python -m export.onnx --aoti, python -m export.tensorrt) or name one with --backend"
    )


def check_onnxruntime_attention(manifest: Manifest, dit_graph: Path) -> None:
    """A RemoverError when ONNX Runtime would materialize attention scores too large to hold: the graphs
    write attention as MatMul -> Softmax -> MatMul (the pattern TensorRT fuses), which ONNX Runtime runs
    as written unless the graph has a fused attention op."""
    tokens = manifest.latent_frames * (manifest.latent_size[0] // 2) * (manifest.latent_size[1] // 2)
    heads, element = manifest.transformer.num_attention_heads, 4 if manifest.precision == "fp32" else 2
    scores = heads * tokens * (tokens + manifest.transformer.num_condition_tokens) * element
    if scores <= ORT_SCORES_LIMIT_BYTES or _has_fused_attention(dit_graph):
        return
    raise RemoverError(
        f"ONNX Runtime would hold {scores / 1e9:.0f} GB of attention scores per layer for this bundle "
        f"({manifest.width}x{manifest.height}, {manifest.frames} frames, {tokens} tokens): its graphs have no fused "
        "attention op; run it with --backend aoti or tensorrt, or export a smaller size for ONNX Runtime"
    )


def _has_fused_attention(path: Path) -> bool:
    """Whether an ONNX graph has a fused attention node (ONNX Runtime's contrib ops or ONNX's Attention)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type in FUSED_ATTENTION_OPS for node in graph.node)


class BundleStages(Stages):
    """The pipeline's heavy stages on a bundle's graphs, run by one backend."""

    def __init__(self, manifest: Manifest, graphs: dict[str, Graph], device: torch.device, backend: str) -> None:
        self.manifest = manifest
        self.graphs = graphs
        self.device = device
        self.backend = backend
        self.transformer_config = manifest.transformer
        self.vae_config = manifest.vae

    @classmethod
    def load(
        cls, folder: Path, backend: str, device: torch.device, *, expected_checkpoint: str | None = None
    ) -> BundleStages:
        """Read the manifest, check the bundle fits (checkpoint, backend, tool version), open every graph."""
        if backend not in BACKENDS:
            raise RemoverError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
        tool, target = BACKENDS[backend].key(device)  # first: TensorRT missing or no GPU is the error to see
        manifest = read_manifest(folder)
        if expected_checkpoint is not None and expected_checkpoint != manifest.checkpoint_sha256:
            raise RemoverError(
                f"{folder} was exported from another model (checkpoint sha256 {manifest.checkpoint_sha256[:12]}..., "
                f"these weights {expected_checkpoint[:12]}...): export the bundle again from these weights"
            )
        kind = BACKENDS[backend].artifact
        artifacts = manifest.artifacts.get(kind)
        if artifacts is None:
            raise RemoverError(
                f"{folder} has no {kind} artifacts for backend {backend!r} (it has {sorted(manifest.artifacts)})"
            )
        stale = _stale(manifest, kind, tool, target)
        if stale:
            detail = ", ".join(f"{k}: built for {old!r}, running with {new!r}" for k, (old, new) in stale.items())
            raise RemoverError(f"the {kind} artifacts in {folder} do not fit ({detail}); build them again")
        if backend == "onnxruntime":
            check_onnxruntime_attention(manifest, folder / artifacts["files"]["dit_step"])
        graphs = {}
        for name in GRAPHS:
            if name not in artifacts["files"]:
                raise RemoverError(f"{folder}: the {kind} artifacts lack the graph {name!r}")
            graphs[name] = open_graph(backend, folder / artifacts["files"][name], name, manifest.graphs[name], device)
        return cls(manifest, graphs, device, backend)

    @property
    def default_size(self) -> tuple[int, int]:
        return self.manifest.height, self.manifest.width

    @property
    def window_frames(self) -> tuple[int, bool]:
        return self.manifest.frames, not self.manifest.dynamic_frames

    @property
    def backends(self) -> str:
        """What runs the bundle's graphs, in which precision: "bundle onnxruntime, fp16"."""
        return f"bundle {self.backend}, {self.manifest.precision}"

    def check_size(self, frames: int, height: int, width: int) -> None:
        m = self.manifest
        if (height, width) != (m.height, m.width):
            raise RemoverError(
                f"this bundle was exported for {m.width}x{m.height} (width x height), not {width}x{height}: "
                "export one for this size (python -m export.onnx --height H --width W)"
            )
        fits = frames <= m.frames if m.dynamic_frames else frames == m.frames
        if not fits:
            allowed = f"at most {m.frames}" if m.dynamic_frames else f"exactly {m.frames}"
            raise RemoverError(
                f"this bundle was exported for {allowed} frames (after padding to 4k+1), the clip has {frames}: "
                "export one for this frame count (--frames, or --dynamic-frames)"
            )

    def _run(self, name: str, *inputs: Tensor) -> list[Tensor]:
        return self.graphs[name](*(x.to(self.device, torch.float32).contiguous() for x in inputs))

    def iter_encode(self, videos: Tensor) -> Iterator[Tensor]:
        latents, *cache = self._run("vae_encode_first", videos[:, :, :1])
        yield latents
        for start in range(1, videos.shape[2], NEXT_CHUNK_FRAMES):
            latents, *cache = self._run("vae_encode_next", videos[:, :, start : start + NEXT_CHUNK_FRAMES], *cache)
            yield latents

    def velocity(self, model_input: Tensor, timestep: Tensor, condition: Tensor | int | None = None) -> Tensor:
        baked = self.manifest.condition
        if model_input.shape[0] != 1 or (
            condition is not None and int(torch.as_tensor(condition).reshape(-1)[0]) != baked
        ):
            raise RemoverError(
                f"the bundle's transformer runs batch 1 with condition {baked}; guidance needs the PyTorch backend"
            )
        return self._run("dit_step", model_input, timestep)[0]

    def unrolled_sampler(self, sampler: str, num_steps: int) -> Callable[[Tensor, Tensor], Tensor] | None:
        if (sampler, num_steps) != (self.manifest.sampler, self.manifest.steps):
            return None
        z_dim = self.vae_config.z_dim

        def sample(noise: Tensor, context: Tensor) -> Tensor:
            return self._run("dit_sampler", noise, context[:, :z_dim], context[:, z_dim:])[0]

        return sample

    def iter_decode(self, latents: Tensor) -> Iterator[Tensor]:
        video, *cache = self._run("vae_decode_first", latents[:, :, :1])
        yield video
        for index in range(1, latents.shape[2]):
            video, *cache = self._run("vae_decode_next", latents[:, :, index : index + 1], *cache)
            yield video
