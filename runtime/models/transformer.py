"""The MiniMax-Remover DiT: Wan2.1 with text embedding and cross-attention removed.

One file, read top-down: config, rotary embedding, blocks, model. Module and parameter names
follow the released checkpoint (diffusers layout), so its state dict loads by key name.
Modulation, norms and RoPE run in fp32 whatever the weights' dtype, as in the reference.

The elementwise steps around the matmuls (RMSNorm + RoPE + condition K/V, LayerNorm + modulation,
gated residuals) go through a `KernelOps` table: the plain PyTorch references in kernels/ (the
default) or the fused Triton kernels; attention goes through a selected backend
(runtime/execution/attention.py). `RemoverTransformer.use_backends` switches both for every block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kernels import TORCH_KERNELS, KernelOps
from kernels.attention_inputs import apply_rope as apply_rope  # re-exported: the tables are built below
from kernels.attention_inputs import rms_norm
from runtime.errors import RemoverError
from runtime.execution.attention import SDPA, AttentionBackend, attention
from runtime.models.config import ANY

ROPE_THETA = 10000.0


class SequenceSplit(Protocol):
    """How a model shares one sequence with other processes (runtime/distributed/sequence.py's
    SequenceParallel is the torchrun one): this process's share of the tokens, attention across the
    shares, the whole output."""

    def shard(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]: ...

    def gather(self, x: Tensor) -> Tensor: ...

    def attention(self, backend: AttentionBackend) -> AttentionBackend: ...


@dataclass(frozen=True)
class TransformerConfig:
    """The keys of transformer/config.json that shape the computation."""

    patch_size: tuple[int, int, int]
    num_attention_heads: int
    attention_head_dim: int
    in_channels: int
    out_channels: int
    ffn_dim: int
    num_layers: int
    freq_dim: int
    eps: float
    qk_norm: str
    rope_max_seq_len: int
    # Contrastive condition tokens (the paper's c+ / c-): 0 in the released model, 6 in ours. They are
    # appended to every self-attention's keys and values (not its queries), without RoPE.
    num_condition_tokens: int = 0

    # Keys the released file carries that change nothing here (no cross-attention, no image input).
    IGNORED_KEYS = {"cross_attn_norm": ANY, "added_kv_proj_dim": None}

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def validate(self, source: str) -> None:
        """Reject configs this implementation would silently compute wrongly."""
        if self.qk_norm != "rms_norm_across_heads":
            raise RemoverError(f"{source}: qk_norm={self.qk_norm!r} is not supported (rms_norm_across_heads)")
        if len(self.patch_size) != 3:
            raise RemoverError(f"{source}: patch_size must have 3 entries, got {self.patch_size}")
        if self.in_channels != 3 * self.out_channels:
            raise RemoverError(
                f"{source}: in_channels={self.in_channels} must be 3 x out_channels={self.out_channels} "
                "(noisy | masked-video | mask latents)"
            )
        if self.attention_head_dim % 2 or self.freq_dim % 2:
            raise RemoverError(f"{source}: attention_head_dim and freq_dim must be even")
        if self.num_condition_tokens < 0:
            raise RemoverError(f"{source}: num_condition_tokens must be >= 0")


RELEASED_TRANSFORMER = TransformerConfig(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=48,
    out_channels=16,
    ffn_dim=8960,
    num_layers=30,
    freq_dim=256,
    eps=1e-6,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=1024,
)


# --- rotary position embedding (3D, real cos/sin form) -------------------------------------------


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split of the head dim into (frame, row, column) rotary dims: 128 -> (44, 42, 42)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_cos_sin(grid: tuple[int, int, int], head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin tables [L, head_dim // 2] in fp32 for a token grid (frames, rows, columns).

    Token order is frame-major, as the patch embedding flattens. The angles are computed once in
    float64 (off the hot path) so the fp32 tables match the reference's complex128 rotation.
    """
    angles = []
    for axis, (size, dim) in enumerate(zip(grid, rope_axis_dims(head_dim))):
        inv_freq = ROPE_THETA ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        axis_angles = torch.arange(size, dtype=torch.float64)[:, None] * inv_freq[None, :]
        shape = [1, 1, 1, dim // 2]
        shape[axis] = size
        angles.append(axis_angles.view(shape).expand(*grid, dim // 2))
    table = torch.cat(angles, dim=-1).reshape(-1, head_dim // 2)
    return table.cos().float().to(device), table.sin().float().to(device)


# --- building blocks --------------------------------------------------------------------------


def timestep_features(timestep: Tensor, dim: int) -> Tensor:
    """Sinusoidal features [B, dim] of the timestep, cosines first (flip_sin_to_cos, no shift)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    angles = timestep.float()[:, None] * freqs[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class RMSNorm(nn.Module):
    """RMSNorm with a weight, statistics in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class TimestepMLP(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding)."""

    def __init__(self, freq_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


class ConditionEmbedder(nn.Module):
    """Timestep -> (temb [B, D] for the head, per-block modulation [B, 6, D])."""

    def __init__(self, freq_dim: int, dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = TimestepMLP(freq_dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)

    def forward(self, timestep: Tensor) -> tuple[Tensor, Tensor]:
        dtype = self.time_embedder.linear_1.weight.dtype
        temb = self.time_embedder(timestep_features(timestep, self.freq_dim).to(dtype))
        modulation = self.time_proj(F.silu(temb)).unflatten(1, (6, -1))
        return temb, modulation


class SelfAttention(nn.Module):
    """Self-attention with RMSNorm across heads on q and k and 3D RoPE ("attn1" in the checkpoint)."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # a list so the key reads "to_out.0"
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.kernels: KernelOps = TORCH_KERNELS
        self.attention_backend: AttentionBackend = SDPA

    def condition_kv(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values [B, n, heads, head_dim] of condition tokens [B, n, D] (no RoPE)."""
        k = self.norm_k(self.to_k(tokens)).unflatten(-1, (self.heads, -1))
        return k, self.to_v(tokens).unflatten(-1, (self.heads, -1))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], extra_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x [B, L, D]; `extra_kv` (condition keys and values) is appended after the video tokens."""
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)  # [B, L, D]
        # q [B, L, heads, head_dim] normed and rotated; K, V [B, L + n, heads, head_dim] with extra_kv appended
        norms = (self.norm_q.weight, self.norm_k.weight)
        q, k, v = self.kernels.attention_inputs(q, k, v, *norms, rope, extra_kv, self.heads, self.norm_q.eps)
        return self.to_out[0](attention(q, k, v, self.attention_backend).flatten(2))


class GELUProjection(nn.Module):
    """Linear followed by tanh-approximated GELU (diffusers' GELU module, key "proj")."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """net.0 = Linear + GELU(tanh), net.1 = (parameter-free dropout slot), net.2 = Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(GELUProjection(dim, hidden), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """adaLN-modulated self-attention and feed-forward, each with a gated residual."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        dim = config.inner_dim
        self.eps = config.eps
        self.attn1 = SelfAttention(dim, config.num_attention_heads, config.eps)
        self.ffn = FeedForward(dim, config.ffn_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.kernels: KernelOps = TORCH_KERNELS

    def forward(
        self,
        x: Tensor,
        modulation: Tensor,
        rope: tuple[Tensor, Tensor],
        extra_kv: tuple[Tensor, Tensor] | None = None,
        condition_tokens: Tensor | None = None,
    ) -> Tensor:
        """`extra_kv`: the condition tokens' keys and values (cached); or `condition_tokens` [B, n, D], whose
        keys and values the block computes itself (training: so a sharded block uses its own weights)."""
        if condition_tokens is not None:
            extra_kv = self.attn1.condition_kv(condition_tokens)
        # modulation [B, 6, D] -> six [B, 1, D] fp32 vectors
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table.float() + modulation.float()).chunk(
            6, dim=1
        )
        h = self.kernels.modulated_layer_norm(x, shift, scale, self.eps)
        # x + gate * attention, fused with the feed-forward's norm and modulation
        x, h = self.kernels.residual_modulated_layer_norm(
            x, self.attn1(h, rope, extra_kv), gate, c_shift, c_scale, self.eps
        )
        return self.kernels.gated_residual(x, self.ffn(h), c_gate)


# --- the model ------------------------------------------------------------------------------


class RemoverTransformer(nn.Module):
    """Velocity model: [B, 48, T, H, W] latents (noisy | masked video | mask) and timestep -> [B, 16, T, H, W]."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.inner_dim
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, config.patch_size, stride=config.patch_size)
        self.condition_embedder = ConditionEmbedder(config.freq_dim, dim)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, config.out_channels * math.prod(config.patch_size))
        if config.num_condition_tokens:
            # row 0 = positive (remove the object), row 1 = negative (regenerate it); a row splits into the tokens
            self.condition_embedding = nn.Embedding(2, config.num_condition_tokens * dim)
        self._rope_cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        # per block: keys and values [2, n, heads, head_dim], indexed by condition
        self._condition_kv_cache: list[tuple[Tensor, Tensor]] = []
        self.kernels: KernelOps = TORCH_KERNELS
        self.attention_backend: AttentionBackend = SDPA
        self.sequence_split: SequenceSplit | None = None  # the processes that share the tokens, if any
        # training: the first `checkpointed_blocks` blocks (all if -1) keep only their input for the
        # backward pass and recompute the rest there (activation checkpointing); 0 stores everything
        self.checkpointed_blocks = 0

    def use_backends(self, kernels: KernelOps | None = None, attention: AttentionBackend | None = None) -> None:
        """Run every block's fused steps with `kernels` and its attention with `attention` (None keeps
        the current choice; the defaults are the PyTorch references and plain SDPA)."""
        self.kernels = kernels or self.kernels
        self.attention_backend = attention or self.attention_backend
        for block in self.blocks:
            block.kernels = block.attn1.kernels = self.kernels
            block.attn1.attention_backend = self.attention_backend

    def split_over(self, split: SequenceSplit) -> None:
        """Run as this process's part of `split`: its share of the tokens, attention across the shares
        (with the current backend), the whole output in every process."""
        self.sequence_split = split
        self.use_backends(attention=split.attention(self.attention_backend))

    def condition_tokens(self, condition: Tensor) -> Tensor:
        """The condition tokens [B, n, D] of conditions [B] (0 or 1)."""
        return self.condition_embedding(condition).unflatten(-1, (self.config.num_condition_tokens, -1))

    def condition_kv(self, condition: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-block condition keys and values [B, n, heads, head_dim] for conditions [B] (0 or 1)."""
        tokens = self.condition_tokens(condition)
        return [block.attn1.condition_kv(tokens) for block in self.blocks]

    def cache_condition_kv(self) -> None:
        """Compute both conditions' per-block K/V once; inference then reuses them. Call again after
        changing the weights (switching to training mode drops the cache)."""
        self._condition_kv_cache = []
        if self.config.num_condition_tokens:
            with torch.no_grad():
                device = self.condition_embedding.weight.device
                remove, regenerate = (self.condition_kv(torch.tensor([c], device=device)) for c in (0, 1))
                self._condition_kv_cache = [
                    (torch.cat([k0, k1]), torch.cat([v0, v1])) for (k0, v0), (k1, v1) in zip(remove, regenerate)
                ]

    def train(self, mode: bool = True) -> RemoverTransformer:
        if mode:
            self._condition_kv_cache = []
        return super().train(mode)

    def _block_conditions(self, condition: int | Tensor | None, batch: int) -> tuple[list, Tensor | None]:
        """What each block appends to its keys and values: (per-block cached K/V or Nones, None) in
        inference, ([None] * blocks, the condition tokens [B, n, D]) when training."""
        nothing = [None] * len(self.blocks)
        if not self.config.num_condition_tokens:
            if condition is not None:
                raise RemoverError("this model has no condition tokens; pass condition=None")
            return nothing, None
        if condition is None:
            raise RemoverError("this model has condition tokens: pass condition=0 (remove) or 1 (regenerate)")
        conditions = torch.as_tensor(condition, device=self.condition_embedding.weight.device).long().reshape(-1)
        conditions = conditions.expand(batch) if conditions.numel() == 1 else conditions
        if self._condition_kv_cache and not torch.is_grad_enabled():
            # indexed on the device: no host sync, and torch.compile traces it without a graph break
            return [(keys[conditions], values[conditions]) for keys, values in self._condition_kv_cache], None
        return nothing, self.condition_tokens(conditions)

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> tuple[Tensor, Tensor]:
        """cos/sin tables for a token grid, computed once per grid and device (under torch.compile, in the
        graph: a lookup in the cache would be a guard that the first call's filling fails, so every clip
        size would compile twice)."""
        if torch.compiler.is_dynamo_compiling():
            return rope_cos_sin(grid, self.config.attention_head_dim, device)
        key = (grid, str(device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_cos_sin(grid, self.config.attention_head_dim, device)
        return self._rope_cache[key]

    def forward(self, latents: Tensor, timestep: Tensor, condition: int | Tensor | None = None) -> Tensor:
        """latents [B, in_channels, T, H, W] in the weights' dtype, timestep [B] in [0, 1000);
        `condition` (models with condition tokens only): 0 = remove, 1 = regenerate, or one per sample."""
        batch, _, frames, height, width = latents.shape
        pt, ph, pw = self.config.patch_size
        if frames % pt or height % ph or width % pw:
            raise RemoverError(f"latent size {frames}x{height}x{width} is not divisible by patch {pt}x{ph}x{pw}")
        grid = (frames // pt, height // ph, width // pw)

        # 1. Patch embedding and rotary tables; tokens are frame-major [B, L, D]
        x = self.patch_embedding(latents).flatten(2).transpose(1, 2)
        rope = self.rope(grid, latents.device)
        if self.sequence_split is not None:  # this process's share of the tokens
            x, rope = self.sequence_split.shard(x, rope)

        # 2. Timestep embedding and per-block modulation; condition tokens' keys and values
        temb, modulation = self.condition_embedder(timestep)
        condition_kv, condition_tokens = self._block_conditions(condition, batch)

        # 3. Transformer blocks
        checkpointed = len(self.blocks) if self.checkpointed_blocks < 0 else self.checkpointed_blocks
        for number, (block, extra_kv) in enumerate(zip(self.blocks, condition_kv)):
            if number < checkpointed and torch.is_grad_enabled():
                x = checkpoint(block, x, modulation, rope, extra_kv, condition_tokens, use_reentrant=False)
            else:
                x = block(x, modulation, rope, extra_kv, condition_tokens)

        # 4. Output norm, modulation and projection
        shift, scale = (self.scale_shift_table.float() + temb.float()[:, None]).chunk(2, dim=1)
        x = self.proj_out(self.kernels.modulated_layer_norm(x, shift, scale, self.config.eps))
        if self.sequence_split is not None:
            x = self.sequence_split.gather(x)

        # 5. Unpatchify [B, L, pt*ph*pw*C] -> [B, C, T, H, W]
        x = x.reshape(batch, *grid, pt, ph, pw, self.config.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(batch, self.config.out_channels, frames, height, width)
