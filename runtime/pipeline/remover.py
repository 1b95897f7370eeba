"""`Remover`: frames + masks in, the video with the masked object removed out.

`Remover.run_window` is the one window pipeline every front door runs (a call is one window over the
whole frames; runtime/clips/stream.py runs it per window of a plan):

resize and dilate (runtime/pipeline/composite.py) -> VAE encode (streamed) -> sampler steps over the
transformer -> VAE decode (streamed) -> trim the frame padding -> paste back into the original frames

The three heavy stages run on PyTorch modules (`from_pretrained`) or on an exported engine bundle
(`from_bundle`); preprocessing, the sampler loop and paste-back are the same code either way.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from runtime.errors import RemoverError, RemoverWarning
from runtime.execution.attention import select_attention
from runtime.execution.choices import (
    COMPILE_MODES,
    DTYPES,
    check_compile_mode,
    resolve_device,
    resolve_dtype,
    resolve_kernels,
    verified_backends,
)
from runtime.execution.cost_model import estimate_run
from runtime.execution.host_memory import model_temporaries_on_heap
from runtime.execution.memory_fit import CALL_REMEDIES, check_fits, working_bytes
from runtime.models.scheduler import SchedulerConfig
from runtime.models.taehv import VAE_DECODER, decoder_file, load_light_decoder
from runtime.models.weights import load_scheduler_config, load_transformer, load_vae, locate_checkpoint
from runtime.options import RunOptions, check_dilation
from runtime.pipeline.box import Box
from runtime.pipeline.composite import DEFAULT_FEATHER, DEFAULT_RESIZE, Compositing
from runtime.pipeline.coverage import covers_nearly_all, mask_box, nearly_full_note
from runtime.pipeline.preprocess import as_frames, as_masks, output_size, padded_frame_count, resize
from runtime.pipeline.samplers import check_sampler, make_sampler
from runtime.pipeline.stages import Stages, TorchStages, denoise_loop
from runtime.pipeline.timing import Timings


class EmptyMaskWarning(UserWarning):
    """The mask selects nothing, so the input is returned unchanged."""


def _as_int(value: object) -> object:
    """A NumPy integer as a Python int (RunOptions takes ints); anything else as it is, to be refused there."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


@dataclass
class WindowOutput:
    """What `Remover.run_window` made for the frames after the known ones: the raw generation fp32
    [F, h, w, 3] in [0, 1] at the working size, and with paste-back the composited frames (uint8
    [H, W, 3] each)."""

    generated: np.ndarray
    frames: list[np.ndarray] | None


def encoder_batch(video: Tensor, mask: Tensor) -> Tensor:
    """The VAE encoder's two inputs [2, 3, F, H, W] (encoded one after the other): the masked video
    (the hole is 0, mid-grey) and the mask video 2 m - 1, from video [3, F, H, W] in [-1, 1] and mask
    [F, H, W] in {0, 1}."""
    return torch.stack([video * (1.0 - mask), (2.0 * mask - 1.0).expand_as(video)])


class Remover:
    """The MiniMax-Remover pipeline. Build it with `Remover.from_pretrained` (PyTorch modules) or
    `Remover.from_bundle` (an exported engine bundle)."""

    def __init__(
        self,
        stages: Stages,
        scheduler: SchedulerConfig,
        *,
        device: torch.device,
        dtype: torch.dtype,
        sampler: str = "unipc",
        compile_mode: str = "off",
    ) -> None:
        self.stages = stages
        self.scheduler = scheduler
        self.device = device
        self.dtype = dtype
        self.sampler = sampler
        self.timings = Timings()  # seconds per stage of the last call
        check_compile_mode(compile_mode, device)
        self.compile_mode = compile_mode
        self._velocity = self._model_velocity
        if COMPILE_MODES[compile_mode] is not None:  # static shapes: one graph per clip size
            self._velocity = torch.compile(
                self._model_velocity, mode=COMPILE_MODES[compile_mode], fullgraph=True, dynamic=False
            )

    @property
    def backends(self) -> str:
        """What runs the model, for the run summary: "attention sdpa (flash), kernels torch" (PyTorch
        modules) or "bundle onnxruntime, fp16" (an engine bundle)."""
        summary = self.stages.backends
        return summary if self.compile_mode == "off" else f"{summary}, compile {self.compile_mode}"

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        vae: str | Path | None = None,
        sampler: str = "unipc",
        kernels: str | None = None,
        attention: str | None = None,
        compile_mode: str = "off",
        decoder: str = VAE_DECODER,
        decoder_weights: str | Path | None = None,
    ) -> Remover:
        """Load a released checkpoint folder, or a single-file repack with `vae` naming the VAE's folder.

        `decoder` "vae" decodes with the VAE; "taew2_1" or "lighttaew2_1" with that light TAEHV decoder
        (runtime/models/taehv.py), from `decoder_weights` (a .safetensors file or a hub id; default the
        published file on the hub). The VAE still encodes.

        `kernels` ("auto", "triton", "torch"; default $RUNTIME_KERNELS or "auto") and `attention`
        ("auto", "flash-attn", "sdpa", "math"; default $RUNTIME_ATTENTION or "auto") choose what runs
        the transformer; `compile_mode` ("off", "inductor", "cuda-graphs") compiles its per-step call.
        Under torchrun, each process loads its own model; `runtime.distributed.sequence.split` splits one
        over the ranks.
        """
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        paths = locate_checkpoint(path, vae)
        scheduler = load_scheduler_config(paths.scheduler)
        check_sampler(sampler)  # before loading anything
        light_file = None if decoder == VAE_DECODER else decoder_file(decoder, decoder_weights)
        kernel_ops = resolve_kernels(kernels, device)
        transformer = load_transformer(paths.transformer, device, dtype)
        config = transformer.config
        attention_backend = select_attention(
            attention,
            device,
            dtype,
            heads=config.num_attention_heads,
            head_dim=config.attention_head_dim,
            num_conditions=config.num_condition_tokens,
        )
        if device.type == "cuda":  # the fast paths, checked against the references on this GPU first
            kernel_ops, attention_backend = verified_backends(kernel_ops, attention_backend, config, device, dtype)
        transformer.use_backends(kernel_ops, attention_backend)
        vae_model = load_vae(paths.vae, device, dtype)
        light = None if light_file is None else load_light_decoder(decoder, light_file, vae_model.config, device, dtype)
        return cls(
            TorchStages(transformer, vae_model, light),
            scheduler,
            device=device,
            dtype=dtype,
            sampler=sampler,
            compile_mode=compile_mode,
        )

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        backend: str | None = None,
        device: str | torch.device | None = None,
        *,
        weights: str | Path | None = None,
        vae: str | Path | None = None,
        sampler: str | None = None,
    ) -> Remover:
        """Run an engine bundle written by `python -m export.onnx` (and `export.tensorrt`).

        backend: "onnxruntime", "tensorrt" or "aoti"; None picks what fits the device and the bundle
        (`runtime.engines.bundle.choose_backend`). The bundle fixes the size, frame count and
        precision; `weights` (and `vae`, as in `from_pretrained`), if given, must be the checkpoint
        the bundle was exported from. A bundle that does not fit is a RemoverError. The bundle's
        sampler and step count run as its one unrolled graph; another `sampler` or step count runs
        the single-step graph in the sampler loop.
        """
        from runtime.engines.bundle import BundleStages, checkpoint_sha256, choose_backend

        device = resolve_device(device)
        backend = backend or choose_backend(Path(path), device)
        expected = checkpoint_sha256(locate_checkpoint(weights, vae)) if weights is not None else None
        stages = BundleStages.load(Path(path), backend, device, expected_checkpoint=expected)
        manifest = stages.manifest
        sampler = sampler or manifest.sampler
        check_sampler(sampler)  # before the first window
        return cls(stages, manifest.scheduler, device=device, dtype=DTYPES[manifest.precision], sampler=sampler)

    def _stage(self, name: str) -> AbstractContextManager[None]:
        """Time a stage of the current call (synchronizing the GPU so the time is the stage's own)."""
        return self.timings.stage(name, self.device)

    @torch.inference_mode()
    def __call__(
        self,
        frames: np.ndarray | Sequence,
        masks: np.ndarray | Sequence,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 6,
        mask_dilation: int = 6,
        feather: int = DEFAULT_FEATHER,
        resize: str = DEFAULT_RESIZE,
        seed: int = 42,
        latents: Tensor | np.ndarray | None = None,
        paste_back: bool = True,
        guidance_scale: float | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Remove the masked object from every frame.

        frames: uint8 [F, H, W, 3] (or a list of PIL images); masks: [F, H, W] or [H, W] for all
        frames, nonzero = remove. Returns float32 [F, H, W, 3] in [0, 1]: with `paste_back` the
        input size, the composited frames (uint8 levels / 255: everything outside the dilated mask is
        the input, bit-exact); without it, the raw generation at (height, width). `mask_dilation` and
        `feather` are pixels at 480p, as the CLI's --dilate and --feather; `resize` "reference" (the
        released pipeline's way: the raw generation is the released pipeline's) or "antialias", as
        --resize. The call is `remove_file`'s one window over the whole frames: the same options give
        the same pixels. `seed` (0 to 2**63 - 1) and `num_inference_steps` are checked as the CLI
        checks them (`runtime.options.RunOptions`); `latents` (a tensor or a NumPy array) replaces the
        seeded initial noise.
        `guidance_scale` (models with condition tokens only) mixes the remove and regenerate
        predictions, v = v_neg + g (v_pos - v_neg); without it the model is sampled with "remove".
        """
        frames = as_frames(frames)
        masks = as_masks(masks, frames)
        RunOptions(steps=_as_int(num_inference_steps), seed=_as_int(seed))  # refused as the CLI refuses them
        check_dilation("mask_dilation", _as_int(mask_dilation))
        if height is None and width is None and self.stages.default_size is not None:
            height, width = self.stages.default_size
        size = output_size(*frames.shape[1:3], height, width)
        compositing = Compositing.scaled(resize, frames.shape[1:3], size[0] / frames.shape[1], mask_dilation, feather)
        if not masks.any():
            warnings.warn("the mask is empty: returning the input unchanged", EmptyMaskWarning, stacklevel=2)
            return self._unchanged(frames, size, paste_back, compositing.resize)
        self._check_call(frames.shape[:3], masks, size, int(num_inference_steps), paste_back)  # before any work
        out = self.run_window(
            frames,
            masks,
            Box(0, 0, *frames.shape[1:3]),
            size,
            compositing,
            steps=int(num_inference_steps),
            seed=int(seed),
            latents=latents,
            paste_back=paste_back,
            guidance_scale=guidance_scale,
            progress=progress,
        )
        if out.frames is None:
            return out.generated
        pixels = np.stack(out.frames).astype(np.float32)
        pixels /= np.float32(255.0)
        return pixels

    def _check_call(
        self, shape: tuple[int, int, int], masks: np.ndarray, size: tuple[int, int], steps: int, paste_back: bool
    ) -> None:
        """What a run checks and says of its plan, for a call's one window over frames of `shape` (count,
        height, width) at `size`: a RemoverWarning when masks cover (nearly) whole frames, and a RemoverError
        when the call cannot fit this device or host, before anything of the working size is made."""
        count, frame_size = shape[0], shape[1:]
        full = [index for index, mask in enumerate(masks) if covers_nearly_all(mask, mask_box(mask))]
        if full:
            warnings.warn(nearly_full_note(len(full), full[0], count), RemoverWarning, stacklevel=3)
        padded = padded_frame_count(count, self.stages.vae_config.temporal_factor)
        self.stages.check_size(padded, *size)
        result = count * frame_size[0] * frame_size[1] * (3 + 3 * 4) if paste_back else 0  # uint8 frames, fp32 copy
        figures = estimate_run(
            [(padded, *size)],
            self.stages.transformer_config,
            self.stages.vae_config,
            steps,
            torch.finfo(self.dtype).bits // 8,
            working_bytes(count, *size) + result,
        )
        check_fits(self.device, figures, (count, *size), frame_size, CALL_REMEDIES)

    @torch.inference_mode()
    def run_window(
        self,
        frames: np.ndarray | Sequence[np.ndarray],
        masks: np.ndarray,
        box: Box,
        size: tuple[int, int],
        compositing: Compositing,
        *,
        known: int = 0,
        steps: int,
        seed: int,
        latents: Tensor | np.ndarray | None = None,
        paste_back: bool = True,
        guidance_scale: float | None = None,
        progress: bool = False,
    ) -> WindowOutput:
        """One window: frames (uint8 [H, W, 3] each; the first `known` are finished content, given to the
        model unmasked) and their masks over `box` (bool [F, hm, wm], the box's size or its aspect) ->
        the generation at `size` for the frames after the known ones and, with `paste_back`, those
        frames composited inside `box`. Noise from `seed` (or `latents`)."""
        self.timings = Timings()
        with self._stage("preprocess"):
            rows, cols = slice(box.top, box.bottom), slice(box.left, box.right)
            cut = frames[:, rows, cols] if isinstance(frames, np.ndarray) else np.stack([f[rows, cols] for f in frames])
            count = padded_frame_count(len(cut), self.stages.vae_config.temporal_factor)
            self.stages.check_size(count, *size)
            video, mask, dilated = compositing.model_inputs(cut, masks, size, count, self.device)
            del cut
            noise = self._initial_noise(count, size, seed, latents)

        with model_temporaries_on_heap():  # nothing long-lived of frame size is made in here (see there)
            with self._stage("encode"):
                context = self.encode(video, mask, progress)
            del video, mask
            with self._stage("denoise"):
                clean = self.denoise(noise, context, steps, progress, guidance_scale)
                self._check_finite(bool(torch.isfinite(clean).all()), "the sampler's latents")
            with self._stage("decode"):
                decoded = self.decode(clean, progress)
                self._check_finite(bool(np.isfinite(decoded).all()), "the decoded frames")
        generated = decoded[known : len(frames)].copy()  # made out here: the heap keeps what is made in the block
        del decoded
        if not paste_back:
            return WindowOutput(generated, None)
        with self._stage("composite"):
            new = [frames[i] for i in range(known, len(frames))]
            return WindowOutput(generated, compositing.paste(new, generated, dilated[known:], box))

    def encode(self, video: Tensor, mask: Tensor, progress: bool = False) -> Tensor:
        """Masked video and mask video -> context latents [1, 2 z_dim, T', h, w] in the model dtype.

        video [3, F, H, W] in [-1, 1]; mask [F, H, W] in {0, 1}; see `encoder_batch`. The two videos go
        through the VAE one after the other, not as a batch of two, so only one stream's causal cache
        (most of the encoder's memory) is held at a time.
        """
        chunks = self.stages.vae_config.latent_shape(*video.shape[1:])[0]
        latents = []
        with tqdm(total=2 * chunks, desc="encode", leave=False, disable=not progress) as bar:
            for source in encoder_batch(video, mask).split(1):
                parts = []
                for z in self.stages.iter_encode(source):
                    parts.append(z)
                    bar.update()
                latents.append(torch.cat(parts, dim=2))
        return torch.cat(latents, dim=1).to(self.dtype)

    def denoise(
        self,
        noise: Tensor,
        context: Tensor,
        num_steps: int,
        progress: bool = False,
        guidance_scale: float | None = None,
    ) -> Tensor:
        """Run the sampler from noise [1, z_dim, T', h, w] (fp32) to clean latents (fp32), the model
        seeing noisy latents | context latents. With `guidance_scale`, each step is one batched call
        for the remove (0) and regenerate (1) tokens: v = v_neg + g (v_pos - v_neg)."""
        if guidance_scale is not None and not self.stages.transformer_config.num_condition_tokens:
            raise RemoverError("guidance_scale needs a model with condition tokens")
        if guidance_scale is None:
            unrolled = self.stages.unrolled_sampler(self.sampler, num_steps)
            if unrolled is not None:
                return unrolled(noise, context)
        sampler = make_sampler(self.sampler, self.scheduler, num_steps)
        return denoise_loop(lambda x, t: self._velocity(x, t, guidance_scale), sampler, noise, context, progress)

    def _model_velocity(self, model_input: Tensor, timestep: Tensor, guidance_scale: float | None) -> Tensor:
        """One step's velocity (the function `compile_mode` compiles): the model on noisy | context
        latents [1, C, T', h, w] at timestep [1]; with guidance, the remove and regenerate tokens as
        one batch of two."""
        if not self.stages.transformer_config.num_condition_tokens:
            return self.stages.velocity(model_input, timestep)
        if guidance_scale is None:
            return self.stages.velocity(model_input, timestep, 0)
        conditions = torch.tensor([0, 1], device=self.device)
        both = self.stages.velocity(model_input.expand(2, -1, -1, -1, -1), timestep.expand(2), conditions)
        positive, negative = both.float().chunk(2)
        return negative + guidance_scale * (positive - negative)

    def decode(self, latents: Tensor, progress: bool = False) -> np.ndarray:
        """Clean latents [1, z_dim, T', h, w] -> float32 frames [F, H, W, 3] in [0, 1], streamed to host."""
        _, _, latent_frames, height, width = latents.shape
        factor, spatial = self.stages.vae_config.temporal_factor, self.stages.vae_config.spatial_factor
        out = np.empty((1 + factor * (latent_frames - 1), height * spatial, width * spatial, 3), dtype=np.float32)
        start = 0
        chunks = self.stages.iter_decode(latents.to(self.dtype))
        for chunk in tqdm(chunks, total=latent_frames, desc="decode", leave=False, disable=not progress):
            pixels = (chunk[0] / 2 + 0.5).clamp(0.0, 1.0).permute(1, 2, 3, 0)
            out[start : start + len(pixels)] = pixels.cpu().numpy()
            start += len(pixels)
        return out

    def _check_finite(self, finite: bool, what: str) -> None:
        """A RemoverError naming the stage, never a black or garbage video, when values are NaN or inf."""
        if not finite:
            dtype = str(self.dtype).removeprefix("torch.")
            raise RemoverError(
                f"{what} hold NaN or infinite values ({self.backends}, {dtype}): the model overflowed or its "
                "weights are broken; try another --dtype (fp32 is the safest) or check the weights"
            )

    def _initial_noise(
        self, frame_count: int, size: tuple[int, int], seed: int, latents: Tensor | np.ndarray | None
    ) -> Tensor:
        """Standard normal latents from a CPU generator (same noise on every device), or `latents`."""
        z = self.stages.vae_config
        shape = (1, z.z_dim, *z.latent_shape(frame_count, *size))
        if latents is None:
            return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device)
        if isinstance(latents, np.ndarray):
            latents = torch.from_numpy(np.array(latents, dtype=np.float32))  # a copy: any strides, any float type
        if not isinstance(latents, Tensor):
            raise RemoverError(f"latents must be a tensor or a NumPy array, got {type(latents).__name__}")
        if tuple(latents.shape) != shape:
            raise RemoverError(f"latents must have shape {list(shape)} for this input, got {list(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise RemoverError("latents hold NaN or infinite values")
        return latents.to(self.device, torch.float32)

    def _unchanged(self, frames: np.ndarray, size: tuple[int, int], paste_back: bool, mode: str) -> np.ndarray:
        """The input as float32 [0, 1], at the size the call would have returned."""
        if paste_back:
            return frames.astype(np.float32) / 255.0
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        return resize(video, size, mode == "antialias").clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
