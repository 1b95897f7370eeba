"""One clip on several processes: the transformer split by sequence over a `torchrun` group.

    torchrun --nproc_per_node N -m runtime.run --video ... --mask ... --weights ...

Rank 0 does everything a single process does (read, plan, VAE encode and decode, composite,
write); the VAE and the data path stay on it, so the others hold no frames. For each window rank 0
hands the denoising's inputs (noise and context latents) to every rank, and all of them run the
same sampler loop with the transformer split over the ranks:

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

Failure: collectives time out after $RUNTIME_PARALLEL_TIMEOUT seconds (default 600), and a rank that
dies closes its connections, so the others fail with a RemoverError instead of waiting. Waiting for
rank 0's next window (rank 0 may be reading or running the VAE) has no such limit.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from runtime.errors import RemoverError
from runtime.execution.attention import AttentionBackend

TIMEOUT_ENV = "RUNTIME_PARALLEL_TIMEOUT"
IDLE_TIMEOUT = timedelta(days=1)  # how long the other ranks wait for rank 0's next window
SCORE_CHUNK_BYTES = 1 << 28  # ring attention materializes at most this many bytes of fp32 scores at a time

# control messages from rank 0: [op, steps, frames, height, width, has guidance] (int64) and the guidance scale;
# START carries the mode in the second field
STOP, START, DENOISE = 0, 1, 2
# how the ranks share a clip: the transformer split by sequence, or whole windows each (crossfaded windows only)
SEQUENCE, WINDOWS = 0, 1


def world_size() -> int:
    """The number of processes `torchrun` started ($WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank ($RANK; 0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: its own GPU ($LOCAL_RANK) when `device` is CUDA."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def collective_timeout() -> timedelta:
    """How long one collective of the computation may wait for the other ranks."""
    return timedelta(seconds=float(os.environ.get(TIMEOUT_ENV) or 600))


def join(device: torch.device) -> None:
    """Join the `torchrun` group (NCCL on CUDA, gloo on the CPU), once per process."""
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=IDLE_TIMEOUT)


def leave(together: bool = True) -> None:
    """Leave the group, after STOP. `together`: first wait until every rank is leaving, so that no rank
    tears its connections down while another still reads from them (gloo then aborted the process at
    exit now and then); a rank already gone is not waited for."""
    if dist.is_initialized():
        if together:
            with contextlib.suppress(GroupFailed), collective():
                dist.barrier()
        dist.destroy_process_group()


def token_bounds(length: int, parts: int) -> list[int]:
    """Balanced contiguous shares of `length` tokens: share i is [bounds[i], bounds[i + 1])."""
    return [i * length // parts for i in range(parts + 1)]


@dataclass
class DenoiseJob:
    """What rank 0 hands the other ranks for one window."""

    noise: Tensor  # [1, z_dim, T', h, w] fp32
    context: Tensor  # [1, 2 z_dim, T', h, w] in the model's dtype
    num_steps: int
    guidance_scale: float | None


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
        out, lse = _attention_with_lse(q, torch.cat([k, condition_k], dim=1), torch.cat([v, condition_v], dim=1))
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
            out, lse = merge_blocks(out, lse, *_attention_with_lse(q, kv[0], kv[1]))
        return out

    def _ring_rank(self, position: int) -> int:
        """The global rank at ring `position` in this rank's ring group."""
        return position * self.ulysses + self.ulysses_position


# --- rank 0 and the others ----------------------------------------------------------------------


class GroupFailed(RemoverError):
    """The group broke: a rank died, or a collective timed out."""


def tell(op: int, device: torch.device, job: DenoiseJob | None = None, mode: int = SEQUENCE) -> None:
    """Rank 0: START (load the model, share the clip in `mode`), a window's DENOISE job, or STOP, to the
    other ranks."""
    header = torch.zeros(6, dtype=torch.int64)
    guidance = torch.zeros(1, dtype=torch.float64)
    header[0], header[1] = op, mode
    if job is not None:
        _, _, frames, height, width = job.noise.shape
        header[1:] = torch.tensor([job.num_steps, frames, height, width, job.guidance_scale is not None])
        guidance[0] = job.guidance_scale or 0.0
    _broadcast(header, device)
    _broadcast(guidance, device)
    if job is not None:
        for tensor in (job.noise, job.context):
            _broadcast(tensor.contiguous(), device)


def _listen(device: torch.device) -> tuple[list[int], float]:
    """The other ranks: rank 0's next control message, the header's fields and the guidance scale."""
    header = _broadcast(torch.zeros(6, dtype=torch.int64), device)
    guidance = _broadcast(torch.zeros(1, dtype=torch.float64), device)
    return header.tolist(), float(guidance[0])


def wait_to_start(device: torch.device) -> int | None:
    """The other ranks: the mode once rank 0 says START, None at STOP (it ended before loading a model)."""
    (op, mode, *_), _ = _listen(device)
    return mode if op == START else None


def receive(device: torch.device, z_dim: int, dtype: torch.dtype) -> DenoiseJob | None:
    """The other ranks: the next window's denoising from rank 0, or None at STOP."""
    (op, steps, frames, height, width, has_guidance), guidance = _listen(device)
    if op == STOP:
        return None
    noise = _broadcast(torch.empty(1, z_dim, frames, height, width), device)
    context = _broadcast(torch.empty(1, 2 * z_dim, frames, height, width, dtype=dtype), device)
    return DenoiseJob(noise, context, steps, guidance if has_guidance else None)


def wait_for_stop(device: torch.device) -> None:
    """The other ranks, after their shared windows: rank 0's STOP (it has received every window)."""
    (op, *_), _ = _listen(device)
    if op != STOP:
        raise GroupFailed(f"rank {rank()}: expected STOP from rank 0, got message {op}")


def stop_others(device: torch.device, together: bool = True) -> None:
    """Rank 0 at the end: STOP to the others (those still there), and leave with them. After a failure
    (`together` False) it does not wait for them: a rank computing shared windows would not come."""
    with contextlib.suppress(GroupFailed):  # a rank that already ended (it failed too) cannot be told
        tell(STOP, device)
    leave(together)


def choose_mode(blend: str, windows: int, dry_run: bool = False) -> int:
    """WINDOWS when windows are independent (crossfaded) and there are enough for every rank, else
    SEQUENCE (also for a dry run, which computes nothing)."""
    return WINDOWS if blend == "crossfade" and windows >= world_size() and not dry_run else SEQUENCE


@dataclass(frozen=True)
class WindowShare:
    """Whole windows spread over the ranks (`runtime.clips.stream.window_owners` says whose each is): the
    others send their windows' finished frames to rank 0, which writes every frame in order."""

    rank: int
    world: int
    device: torch.device

    def send(self, frames: list[np.ndarray]) -> None:
        """Another rank: a window's finished frames (uint8 [H, W, 3] each) to rank 0."""
        with collective():
            dist.send(torch.from_numpy(np.stack(frames)).to(self.device), 0)

    def receive(self, owner: int, count: int, frame_shape: tuple[int, ...]) -> list[np.ndarray]:
        """Rank 0: the `count` finished frames of a window from its rank, `owner`."""
        frames = torch.empty(count, *frame_shape, dtype=torch.uint8, device=self.device)
        with collective():
            dist.recv(frames, owner)
        return list(frames.cpu().numpy())


def _broadcast(tensor: Tensor, device: torch.device) -> Tensor:
    """Rank 0's `tensor` on every rank (on `device`), over the default group: no time limit, since rank
    0 may read and run the VAE for long between windows."""
    on_device = tensor.to(device)
    with collective():
        dist.broadcast(on_device, 0)
    return on_device


def merge_blocks(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Attention over two key blocks from each block's (out [B, L, h, d], lse [B, h, L]): the softmax
    weights of each block rescaled to the total log-sum-exp."""
    total = torch.logaddexp(lse_a, lse_b)
    weight_a, weight_b = ((lse - total).exp().transpose(1, 2)[..., None] for lse in (lse_a, lse_b))
    return out_a * weight_a + out_b * weight_b, total


def _attention_with_lse(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
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


def check_supported(compile_mode: str) -> None:
    """What a group of ranks cannot run yet, as a RemoverError."""
    if compile_mode != "off":
        raise RemoverError(f"--compile {compile_mode} does not run over several ranks yet; use --compile off")


@contextmanager
def collective() -> Iterator[None]:
    """Turn a collective's failure (a rank died, or did not answer in time) into GroupFailed: one line
    that says what happened, instead of a backend's traceback."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:  # gloo and NCCL report a dead peer or a timeout as RuntimeError (DistError)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GroupFailed(
            f"rank {rank()} of {world_size()}: the run is abandoned: another rank stopped, or did not answer "
            f"within {collective_timeout().total_seconds():.0f} s (${TIMEOUT_ENV}) ({reason})"
        ) from exc
