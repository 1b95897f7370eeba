"""The transformer split by sequence over the torchrun group (Ulysses and ring attention).

Rank 0 does everything a single process does (read, plan, VAE encode and decode, composite,
write); the VAE and the data path stay on it, so the others hold no frames. For each window rank 0
hands the denoising's inputs (noise and context latents) to every rank (a `Denoise` message), and all
of them run the same sampler loop with the transformer split over the ranks:
- tokens: rank i keeps a contiguous share of the L video tokens (balanced, any L) through every
  block's projections, norms and feed-forward, with the matching rows of the RoPE tables;
- attention: Ulysses over u = gcd(N, heads) ranks - an all-to-all trades the sequence split for a
  head split, so each rank attends with H / u heads over its group's tokens, on the attention backend
  the model chose (flash-attn, SDPA, math) - and ring attention over the r = N / u groups that
  remain (the groups' K/V blocks go round the ring; blockwise softmax merged by log-sum-exp, in fp32).
  The condition tokens' K/V are on every rank and join each rank's first ring step once.
- after the last block every rank gathers the whole output, so each rank's sampler step computes
  the same latents and no sampler state crosses ranks.

Ranks: rank = g * u + j with g the ring position and j the Ulysses position. Ulysses group g is
ranks g u .. g u + u - 1 (their token shares are contiguous: block g of the sequence); ring group j
is ranks j, u + j, ... (same heads, each block once).

`split(remover)` installs the split on a loaded Remover; rank 0 then calls it as usual and the others
call `follow(remover)` until rank 0 says Stop.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from runtime.distributed.group import collective, collective_timeout, join
from runtime.distributed.messages import Denoise, receive, send
from runtime.errors import RemoverError
from runtime.execution.attention import AttentionBackend
from runtime.pipeline.remover import Remover

SCORE_CHUNK_BYTES = 1 << 28  # ring attention materializes at most this many bytes of fp32 scores at a time


def token_bounds(length: int, parts: int) -> list[int]:
    """Balanced contiguous shares of `length` tokens: share i is [bounds[i], bounds[i + 1])."""
    return [i * length // parts for i in range(parts + 1)]


class SequenceParallel:
    """This rank's place in the group and the split of a model with `heads` attention heads."""

    def __init__(self, device: torch.device, heads: int) -> None:
        join(device)
        self.device = device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.ulysses = math.gcd(self.world, heads)
        self.ring = self.world // self.ulysses
        self.ring_position, self.ulysses_position = divmod(self.rank, self.ulysses)
        self.bounds: list[int] = []  # the token shares of the current call (`shard` sets them)
        timeout = collective_timeout()
        # every rank creates every group, in the same order
        self.compute_group = dist.new_group(timeout=timeout)
        self.ulysses_group = self.ring_group = None
        for g in range(self.ring):
            group = dist.new_group([g * self.ulysses + j for j in range(self.ulysses)], timeout=timeout)
            if g == self.ring_position:
                self.ulysses_group = group
        for j in range(self.ulysses):
            group = dist.new_group([g * self.ulysses + j for g in range(self.ring)], timeout=timeout)
            if j == self.ulysses_position:
                self.ring_group = group

    def describe(self) -> str:
        """What the run summary shows, e.g. 4 ranks (ulysses 2 x ring 2)."""
        return f"{self.world} ranks (ulysses {self.ulysses} x ring {self.ring})"

    # --- tokens ---------------------------------------------------------------------------------

    def shard(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """This rank's share of the tokens x [B, L, D] and of the RoPE tables [L, d / 2]."""
        self.bounds = token_bounds(x.shape[1], self.world)
        start, stop = self.bounds[self.rank], self.bounds[self.rank + 1]
        return x[:, start:stop], (rope[0][start:stop], rope[1][start:stop])

    def gather(self, x: Tensor) -> Tensor:
        """Every rank's share [B, L_i, C] (of the last `shard`) -> the whole sequence [B, L, C] on every rank."""
        bounds = self.bounds
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        padded = torch.zeros(x.shape[0], longest, x.shape[2], dtype=x.dtype, device=x.device)
        padded[:, : x.shape[1]] = x
        shares = [torch.empty_like(padded) for _ in range(self.world)]
        with collective():
            dist.all_gather(shares, padded, group=self.compute_group)
        return torch.cat([share[:, : b - a] for share, a, b in zip(shares, bounds, bounds[1:])], dim=1)

    # --- attention ------------------------------------------------------------------------------

    def attention(self, backend: AttentionBackend) -> AttentionBackend:
        """`backend` run over the group: same inputs and result as on one rank, per rank's share."""

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return self._attention(q, k, v, backend)

        return AttentionBackend(f"{backend.name} over {self.describe()}", run)

    def _attention(self, q: Tensor, k: Tensor, v: Tensor, backend: AttentionBackend) -> Tensor:
        """q [B, L_i, H, d] of this rank's tokens; k, v [B, L_i + n, H, d]: its tokens' keys and values
        followed by the n condition tokens' (the same on every rank)."""
        share, per_rank = q.shape[1], q.shape[2] // self.ulysses
        heads = slice(self.ulysses_position * per_rank, (self.ulysses_position + 1) * per_rank)
        condition_k, condition_v = k[:, share:, heads], v[:, share:, heads]
        first = self.ring_position * self.ulysses  # this Ulysses group's first rank
        lengths = [b - a for a, b in zip(self.bounds[first : first + self.ulysses], self.bounds[first + 1 :])]
        q, k, v = (self._to_heads(t, lengths) for t in (q, k[:, :share], v[:, :share]))
        if self.ring == 1:
            out = backend.run(q, torch.cat([k, condition_k], dim=1), torch.cat([v, condition_v], dim=1))
        else:
            out = self._ring_attention(q, k, v, condition_k, condition_v)
        return self._to_tokens(out.to(q.dtype), lengths)

    def _to_heads(self, x: Tensor, lengths: list[int]) -> Tensor:
        """Ulysses all-to-all: this rank's tokens with all heads [B, L_i, H, d] -> the group's tokens
        with this rank's heads [B, sum(lengths), H / u, d]."""
        if self.ulysses == 1:
            return x
        batch, share, heads, dim = x.shape
        send = x.reshape(batch, share, self.ulysses, heads // self.ulysses, dim).permute(2, 1, 0, 3, 4)
        send = send.reshape(self.ulysses * share, batch, heads // self.ulysses, dim).contiguous()
        received = send.new_empty(sum(lengths), batch, heads // self.ulysses, dim)
        with collective():
            dist.all_to_all_single(received, send, lengths, [share] * self.ulysses, group=self.ulysses_group)
        return received.transpose(0, 1)

    def _to_tokens(self, x: Tensor, lengths: list[int]) -> Tensor:
        """The inverse all-to-all: [B, sum(lengths), H / u, d] -> [B, L_i, H, d]."""
        if self.ulysses == 1:
            return x
        batch, _, heads, dim = x.shape
        share = lengths[self.ulysses_position]
        send = x.transpose(0, 1).contiguous()
        received = send.new_empty(self.ulysses * share, batch, heads, dim)
        with collective():
            dist.all_to_all_single(received, send, [share] * self.ulysses, lengths, group=self.ulysses_group)
        received = received.reshape(self.ulysses, share, batch, heads, dim).permute(2, 1, 0, 3, 4)
        return received.reshape(batch, share, self.ulysses * heads, dim)

    def _ring_attention(self, q: Tensor, k: Tensor, v: Tensor, condition_k: Tensor, condition_v: Tensor) -> Tensor:
        """Attention of this rank's queries over every ring block's keys and values (and the condition
        tokens'), each block passed on to the next rank while this one computes. Returns fp32."""
        lengths = [self.bounds[(g + 1) * self.ulysses] - self.bounds[g * self.ulysses] for g in range(self.ring)]
        out, lse = attention_with_lse(q, torch.cat([k, condition_k], dim=1), torch.cat([v, condition_v], dim=1))
        following, preceding = (self.ring_position + 1) % self.ring, (self.ring_position - 1) % self.ring
        kv = torch.stack([k, v])
        for step in range(1, self.ring):
            source = (self.ring_position - step) % self.ring
            incoming = kv.new_empty(2, kv.shape[1], lengths[source], *kv.shape[3:])
            with collective():
                requests = dist.batch_isend_irecv(
                    [
                        dist.P2POp(dist.isend, kv.contiguous(), self._ring_rank(following), group=self.ring_group),
                        dist.P2POp(dist.irecv, incoming, self._ring_rank(preceding), group=self.ring_group),
                    ]
                )
                for request in requests:
                    request.wait()
            kv = incoming
            out, lse = merge_blocks(out, lse, *attention_with_lse(q, kv[0], kv[1]))
        return out

    def _ring_rank(self, position: int) -> int:
        """The global rank at ring `position` in this rank's ring group."""
        return position * self.ulysses + self.ulysses_position


def merge_blocks(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Attention over two key blocks from each block's (out [B, L, h, d], lse [B, h, L]): the softmax
    weights of each block rescaled to the total log-sum-exp."""
    total = torch.logaddexp(lse_a, lse_b)
    weight_a, weight_b = ((lse - total).exp().transpose(1, 2)[..., None] for lse in (lse_a, lse_b))
    return out_a * weight_a + out_b * weight_b, total


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax attention in fp32 with its log-sum-exp: q [B, Lq, h, d], k, v [B, Lk, h, d] ->
    (out [B, Lq, h, d], lse [B, h, Lq]), at most SCORE_CHUNK_BYTES of scores at a time."""
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))  # [B, h, L, d]
    rows = max(1, SCORE_CHUNK_BYTES // (4 * qf.shape[0] * qf.shape[1] * max(1, kf.shape[2])))
    outs, lses = [], []
    for chunk in qf.split(rows, dim=2):
        scores = chunk @ kf.transpose(-1, -2) * qf.shape[-1] ** -0.5
        lse = scores.logsumexp(dim=-1)
        outs.append((scores - lse[..., None]).exp() @ vf)
        lses.append(lse)
    return torch.cat(outs, dim=2).transpose(1, 2), torch.cat(lses, dim=2)


class LeadingRemover(Remover):
    """Rank 0's Remover when the transformer is split: each denoising's inputs go to the other ranks
    first, so that they compute their share of the same steps."""

    def denoise(
        self,
        noise: Tensor,
        context: Tensor,
        num_steps: int,
        progress: bool = False,
        guidance_scale: float | None = None,
    ) -> Tensor:
        send(Denoise(noise, context, num_steps, guidance_scale), self.device)
        return super().denoise(noise, context, num_steps, progress, guidance_scale)


def split(remover: Remover) -> Remover:
    """`remover` (PyTorch modules, loaded on every rank) with its transformer split over the group: on
    rank 0 a LeadingRemover to call as usual, on the others the same Remover, for `follow`."""
    if remover.compile_mode != "off":
        raise RemoverError(f"--compile {remover.compile_mode} does not run over several ranks yet; use --compile off")
    transformer = getattr(remover.stages, "transformer", None)
    if transformer is None:
        raise RemoverError("--engine runs in one process; torchrun splits the PyTorch model (--weights) only")
    join(remover.device)
    parallel = SequenceParallel(remover.device, transformer.config.num_attention_heads)
    transformer.split_over(parallel)
    if parallel.rank != 0:
        return remover
    return LeadingRemover(
        remover.stages, remover.scheduler, device=remover.device, dtype=remover.dtype, sampler=remover.sampler
    )


def follow(remover: Remover) -> None:
    """Ranks other than 0: compute this rank's share of each window rank 0 denoises, until it says Stop."""
    z_dim = remover.stages.vae_config.z_dim
    while isinstance(job := receive(remover.device, z_dim, remover.dtype), Denoise):
        remover.denoise(job.noise, job.context, job.steps, guidance_scale=job.guidance_scale)
