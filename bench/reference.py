"""The reference the runtime is measured against: the released pipeline, rebuilt from diffusers 0.33.1 parts.

The released MiniMax-Remover transformer is Wan2.1 without cross-attention. diffusers'
`WanTransformer3DModel` always has cross-attention, so feeding it zeros would make the reference do
work the released model does not do; instead `ReleasedTransformer` is the released forward written
with diffusers' own building blocks (`Attention` with `WanAttnProcessor2_0`, `FeedForward`,
`FP32LayerNorm`, `Timesteps`/`TimestepEmbedding`, `WanRotaryPosEmbed`) under the released key names,
and it is loaded with diffusers' `from_pretrained` as the released code loads it. `tests/` proves it
against the parity fixture.

`ReferencePipeline` does what the released pipeline does (docs/REFERENCE_MODEL.md, "Pipeline") and
nothing else: preprocessing on the host in fp32 with a numpy mask dilation, a whole-clip
`AutoencoderKLWan.encode` of the masked video and then of the mask video, diffusers'
`UniPCMultistepScheduler` from scheduler_config.json, one transformer call per step, a whole-clip
decode and diffusers' `VideoProcessor` post-processing. No paste-back. ("Whole-clip" is one call on
the whole clip: inside it, diffusers 0.33.1 runs the encoder on 1 + 4 + 4 ... frames and the decoder
one latent frame at a time, with a feature cache, and concatenates the results.)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanAttnProcessor2_0, WanRotaryPosEmbed
from diffusers.video_processor import VideoProcessor
from torch import Tensor, nn


class ReleasedTimeEmbedding(nn.Module):
    """Timestep -> (temb [B, D], projection [B, 6 D]); the released model has no text embedder."""

    def __init__(self, dim: int, freq_dim: int) -> None:
        super().__init__()
        self.timesteps_proj = Timesteps(num_channels=freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(in_channels=freq_dim, time_embed_dim=dim)
        self.act_fn = nn.SiLU()
        self.time_proj = nn.Linear(dim, 6 * dim)

    def forward(self, timestep: Tensor) -> tuple[Tensor, Tensor]:
        features = self.timesteps_proj(timestep).to(self.time_embedder.linear_1.weight.dtype)
        temb = self.time_embedder(features).type_as(self.time_proj.weight)
        return temb, self.time_proj(self.act_fn(temb))


class ReleasedBlock(nn.Module):
    """Wan2.1's block with the cross-attention (attn2, norm2) taken out: self-attention and feed-forward."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, qk_norm: str, eps: float) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = Attention(
            query_dim=dim,
            heads=heads,
            kv_heads=heads,
            dim_head=dim // heads,
            qk_norm=qk_norm,
            eps=eps,
            bias=True,
            cross_attention_dim=None,
            out_bias=True,
            processor=WanAttnProcessor2_0(),
        )
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, hidden_states: Tensor, temb: Tensor, rotary_emb: Tensor) -> Tensor:
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table + temb.float()).chunk(6, dim=1)
        normed = (self.norm1(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        attn_output = self.attn1(hidden_states=normed, rotary_emb=rotary_emb)
        hidden_states = (hidden_states.float() + attn_output * gate).type_as(hidden_states)
        normed = (self.norm2(hidden_states.float()) * (1 + c_scale) + c_shift).type_as(hidden_states)
        return (hidden_states.float() + self.ffn(normed).float() * c_gate).type_as(hidden_states)


class ReleasedTransformer(ModelMixin, ConfigMixin):
    """The released transformer's forward on diffusers blocks; reads the released config and keys."""

    _no_split_modules = ["ReleasedBlock"]
    _keep_in_fp32_modules = ["time_embedder", "scale_shift_table", "norm1", "norm2"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        in_channels: int = 48,
        out_channels: int = 16,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        cross_attn_norm: bool = True,  # released key; there is no cross-attention to normalize
        qk_norm: str = "rms_norm_across_heads",
        eps: float = 1e-6,
        added_kv_proj_dim: int | None = None,  # released key; always None
        rope_max_seq_len: int = 1024,
    ) -> None:
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        self.rope = WanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = ReleasedTimeEmbedding(dim, freq_dim)
        self.blocks = nn.ModuleList(
            ReleasedBlock(dim, ffn_dim, num_attention_heads, qk_norm, eps) for _ in range(num_layers)
        )
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, hidden_states: Tensor, timestep: Tensor) -> Tensor:
        """hidden_states [B, 48, T, H, W] (noisy | masked video | mask latents), timestep [B] -> [B, 16, T, H, W]."""
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)

        # 1. Rotary table, patch embedding
        rotary_emb = self.rope(hidden_states)
        hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2)

        # 2. Timestep embedding
        temb, timestep_proj = self.condition_embedder(timestep)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))

        # 3. Blocks
        for block in self.blocks:
            hidden_states = block(hidden_states, timestep_proj, rotary_emb)

        # 4. Output norm, modulation, projection and unpatchify
        shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch, *grid, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def binary_dilation_cross(mask: np.ndarray, iterations: int) -> np.ndarray:
    """scipy.ndimage.binary_dilation(mask, iterations=n) with its default 4-connected cross, for bool [H, W]."""
    out = mask.copy()
    for _ in range(iterations):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


class ReferencePipeline:
    """The released pipeline's steps on diffusers components. Stages are methods so a harness can time them."""

    def __init__(
        self,
        transformer: ReleasedTransformer | None,  # None: only the VAE stages are used
        vae: AutoencoderKLWan,
        scheduler: UniPCMultistepScheduler,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        self.device, self.dtype = device, dtype
        self.video_processor = VideoProcessor(vae_scale_factor=2 ** len(vae.temperal_downsample))
        self.latents_mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(device, dtype)
        self.latents_std_inv = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(device, dtype)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device, dtype: torch.dtype) -> ReferencePipeline:
        """Load a released-layout checkpoint folder the way the released code does (diffusers from_pretrained)."""
        folder = Path(folder)
        transformer = ReleasedTransformer.from_pretrained(folder / "transformer", torch_dtype=dtype)
        vae = AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=dtype)
        scheduler = UniPCMultistepScheduler.from_pretrained(folder / "scheduler")
        return cls(transformer.to(device).eval(), vae.to(device).eval(), scheduler, device, dtype)

    def _resize(self, video: Tensor, height: int, width: int) -> Tensor:
        """Bilinear resize of [1, C, F, h, w] frame by frame (align_corners False, no antialias)."""
        frames = video[0].transpose(0, 1)
        return F.interpolate(frames, (height, width), mode="bilinear").transpose(0, 1)[None]

    @torch.no_grad()
    def preprocess(
        self, frames: np.ndarray, masks: np.ndarray, height: int, width: int, mask_dilation: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """uint8 frames [F, H, W, 3] and bool masks [F, H, W] -> (video in [-1, 1], masked video, 3-channel
        {0, 1} masks), each [1, 3, F, height, width] on the device in the model dtype; resizing runs on the
        host in fp32, as released."""
        video = (torch.from_numpy(frames) / 127.5 - 1.0).permute(3, 0, 1, 2)[None]
        dilated = np.stack([binary_dilation_cross(mask > 0, mask_dilation) for mask in masks]).astype(np.float32)
        mask_video = torch.from_numpy(dilated)[None, None].expand(1, 3, -1, -1, -1)
        mask_video = self._resize(mask_video, height, width).to(self.device, self.dtype)
        mask_video[mask_video > 0] = 1
        video = self._resize(video, height, width).to(self.device, self.dtype)
        return video, video * (1 - mask_video), mask_video

    @torch.no_grad()
    def encode(self, masked_video: Tensor, mask_video: Tensor) -> tuple[Tensor, Tensor]:
        """Masked video and {0, 1} mask video -> normalized mode latents, one whole-clip encode each."""
        masked_latents = self.vae.encode(masked_video).latent_dist.mode()
        mask_latents = self.vae.encode(2 * mask_video - 1.0).latent_dist.mode()
        return (
            (masked_latents - self.latents_mean) * self.latents_std_inv,
            (mask_latents - self.latents_mean) * self.latents_std_inv,
        )

    @torch.no_grad()
    def denoise(self, latents: Tensor, masked_latents: Tensor, mask_latents: Tensor, num_steps: int) -> Tensor:
        """The sampler loop: one transformer call and one UniPC step per timestep."""
        self.scheduler.set_timesteps(num_steps, device=self.device)
        latents = latents.to(self.device, self.dtype)
        for t in self.scheduler.timesteps:
            model_input = torch.cat([latents.to(self.dtype), masked_latents, mask_latents], dim=1)
            velocity = self.transformer(model_input, t.expand(latents.shape[0]))
            latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
        return latents

    @torch.no_grad()
    def decode(self, latents: Tensor) -> np.ndarray:
        """Normalized latents -> float32 frames [F, H, W, 3] in [0, 1] on the host."""
        latents = latents.to(self.dtype) / self.latents_std_inv + self.latents_mean
        video = self.vae.decode(latents, return_dict=False)[0]
        return self.video_processor.postprocess_video(video, output_type="np")[0]

    @torch.no_grad()
    def __call__(
        self,
        frames: np.ndarray,
        masks: np.ndarray,
        *,
        height: int,
        width: int,
        latents: Tensor,
        num_inference_steps: int = 6,
        mask_dilation: int = 6,
    ) -> np.ndarray:
        """frames uint8 [F, H, W, 3] with F = 4k + 1, masks bool [F, H, W], initial latents -> [F, height, width, 3]."""
        # the released code keeps the three preprocessed videos alive until it returns; so does this
        video, masked_video, mask_video = self.preprocess(frames, masks, height, width, mask_dilation)
        masked_latents, mask_latents = self.encode(masked_video, mask_video)
        clean = self.denoise(latents, masked_latents, mask_latents, num_inference_steps)
        return self.decode(clean)
