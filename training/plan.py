"""The memory a transformer stage needs on each GPU, worked out before the first step.

    python -m training.plan --config training/configs/wan1.3b_stage1.json [--set key=value] [--gpus 8] [--gpu-memory 80]

The stages print this plan and write it to their run folder (`memory_plan.txt`, `memory_plan.json`),
and refuse a config whose plan does not fit the GPU (exit 2). Terms, per GPU, for N GPUs:

- weights, gradients and AdamW's two moments: fp32, whole under DDP, 1/N each under FSDP;
- DDP with bf16: autocast's bf16 copies of the weights live from the forward pass to the backward;
  FSDP: two blocks' weights gathered at a time (the one computing and the one prefetched), in bf16
  with bf16, and their unsharded gradients before the reduce-scatter;
- activations: what autograd keeps for backward, counted tensor by tensor from the block's code
  (`BLOCK_SAVES`; tests/test_training_plan.py checks the count against autograd's own); a checkpointed
  block keeps only its input and recomputes the rest while its backward runs;
- the backward working set: a block's recomputed activations (with checkpointing) and the gradients
  of its largest tensors; the optimizer step: one fp32 temporary per weight (AdamW's foreach sqrt);
- a reserve for the CUDA context, NCCL and the caching allocator (added when checking a GPU only).

Peak = weights + gradients + AdamW state + max(forward/backward, optimizer step): gradients are
counted whole during backward too, which over-counts a little for large models. Stage 2 adds nothing
on top: its bad-noise pass (gradients with respect to the noise) comes before the training pass and
holds at most the same activations for a third of the samples.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from runtime.errors import RemoverError, exit_code
from runtime.models.config import read_config
from runtime.models.transformer import RemoverTransformer, TransformerConfig
from runtime.models.vae import RELEASED_VAE, VAEConfig
from training.flow import transformer_config
from training.stage_config import Stage1Config, Stage2Config
from training.trainer import ScaleSettings, load_config

GIB = 2**30
RESERVE_BYTES = 3 * GIB  # CUDA context (~0.5 GiB), NCCL buffers, allocator fragmentation
RESERVE_FRACTION = 0.05  # ... and 5 % of the GPU for fragmentation at this tensor size
FSDP_GATHERED_BLOCKS = 2  # FSDP2 prefetches the next block while one computes

# What autograd keeps per token of one transformer block, as (count, width, bytes per element) for a
# fp32 run and a bf16-autocast run; width "D" is the model width, "F" the feed-forward width, "KV" a
# key or value row (the video tokens plus the condition tokens). Counted from the tensors the block's
# code (the PyTorch reference kernels, SDPA) hands autograd: the LayerNorms' inputs and outputs, q's
# and k's RMSNorm and RoPE inputs, the attention's q, keys, values and output, the linear layers'
# inputs, the gated branches' outputs, the feed-forward's two wide rows; under autocast the fp32
# statistics work on fp32 copies of bf16 tensors, so more of them are fp32. tests/test_training_plan.py
# checks the table against autograd's pack hook. Small per-token statistics: `STATS_PER_TOKEN`.
BLOCK_SAVES = {
    "fp32": [(14, "D", 4), (2, "KV", 4), (2, "F", 4)],
    "bf16": [(10, "D", 4), (4, "D", 2), (2, "KV", 2), (2, "F", 2)],
}
STATS_PER_TOKEN = 6  # fp32 values per token and block, plus one per attention head


@dataclass(frozen=True)
class ClipShape:
    """A training sample's size: latent frames x height x width, and the tokens it makes."""

    frames: int
    height: int
    width: int
    tokens: int

    @classmethod
    def of(
        cls, model: TransformerConfig, num_frames: int, height: int, width: int, vae: VAEConfig = RELEASED_VAE
    ) -> ClipShape:
        """The latents `vae` makes of `num_frames` frames of `height` x `width` pixels."""
        frames, h, w = vae.latent_shape(num_frames, height, width)
        pt, ph, pw = model.patch_size
        return cls(frames, h, w, (frames // pt) * (h // ph) * (w // pw))


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU: `static` terms held throughout, plus the larger of the `phases` (each a set of
    terms held together); `reserve` is added for a GPU's own overheads."""

    title: str
    static: dict[str, float]
    phases: dict[str, dict[str, float]]
    reserve: float

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda name: sum(self.phases[name].values()))

    @property
    def tensors(self) -> float:
        """The peak of tensor memory (what torch.cuda.max_memory_allocated would report)."""
        return sum(self.static.values()) + sum(self.phases[self.peak_phase].values())

    def total(self, capacity: float) -> float:
        return self.tensors + self.reserve + RESERVE_FRACTION * capacity

    def table(self, capacity: float | None = None) -> str:
        """The plan as aligned lines, with the verdict when `capacity` (bytes) is given."""
        unit, size = ("GiB", GIB) if self.tensors >= GIB / 4 else ("MiB", 2**20)
        rows = [("held throughout", None), *self.static.items()]
        for name, terms in self.phases.items():
            rows.append((f"during the {name}{' (the peak)' if name == self.peak_phase else ''}", None))
            rows += terms.items()
        rows.append(("tensors at the peak", self.tensors))
        if capacity:
            reserve = f"reserve (CUDA context, NCCL, allocator: {RESERVE_BYTES / GIB:.0f} GiB + {RESERVE_FRACTION:.0%})"
            rows += [(reserve, self.reserve + RESERVE_FRACTION * capacity), ("total", self.total(capacity))]
        width = max(len(name) for name, _ in rows) + 2
        lines = [self.title]
        for name, value in rows:
            lines.append(f"  {name}" if value is None else f"    {name:<{width}}{value / size:10.2f} {unit}")
        if capacity:
            verdict = "fits" if self.total(capacity) <= capacity else "does NOT fit"
            lines.append(f"  {verdict} in {capacity / GIB:.1f} GiB per GPU")
        return "\n".join(lines)

    def to_json(self, capacity: float | None = None) -> dict:
        """The plan in GiB, for the run folder."""
        record = {
            "title": self.title,
            "static_gib": {name: round(v / GIB, 4) for name, v in self.static.items()},
            "phases_gib": {p: {name: round(v / GIB, 4) for name, v in t.items()} for p, t in self.phases.items()},
            "peak_phase": self.peak_phase,
            "tensors_gib": round(self.tensors / GIB, 4),
        }
        if capacity:
            record.update(total_gib=round(self.total(capacity) / GIB, 3), capacity_gib=round(capacity / GIB, 3))
            record["fits"] = self.total(capacity) <= capacity
        return record


def parameter_counts(model: TransformerConfig, frozen_condition_tokens: bool) -> tuple[int, int, int]:
    """(all weights, trainable weights, weights of one block), counted on a model built on the meta device."""
    with torch.device("meta"):
        built = RemoverTransformer(model)
    total = sum(p.numel() for p in built.parameters())
    frozen = built.condition_embedding.weight.numel() if frozen_condition_tokens and model.num_condition_tokens else 0
    return total, total - frozen, sum(p.numel() for p in built.blocks[0].parameters())


def block_activation_bytes(model: TransformerConfig, tokens: int, precision: str) -> float:
    """Bytes autograd keeps for one block's backward, for one sample of `tokens` tokens."""
    widths = {
        "D": model.inner_dim,
        "F": model.ffn_dim,
        "KV": model.inner_dim * (tokens + model.num_condition_tokens) / tokens,
    }
    saved = sum(count * widths[width] * size for count, width, size in BLOCK_SAVES[precision])
    return tokens * (saved + 4 * (STATS_PER_TOKEN + model.num_attention_heads))


def memory_plan(
    model: TransformerConfig,
    clip: ClipShape,
    samples_per_pass: int,
    scale: ScaleSettings,
    gpus: int,
    frozen_condition_tokens: bool = False,
) -> MemoryPlan:
    """The plan for one GPU of `gpus` training `model` on `samples_per_pass` clips of `clip` per forward pass."""
    total, trainable, per_block = parameter_counts(model, frozen_condition_tokens)
    shards = gpus if scale.parallelism == "fsdp" else 1
    bf16 = scale.precision == "bf16"
    act = 2 if bf16 else 4  # bytes of the residual stream between blocks
    tokens, dim, b = clip.tokens, model.inner_dim, samples_per_pass
    layers = model.num_layers
    checkpointed = layers if scale.activation_checkpointing < 0 else min(layers, scale.activation_checkpointing)

    block = block_activation_bytes(model, tokens, scale.precision) * b
    pt, ph, pw = model.patch_size
    pixels = b * tokens * pt * ph * pw  # latent pixels of a pass
    # target, noise, context (16 + 16 + 32 channels), the noisy latents and their concatenation (16 + 48)
    inputs = pixels * 2 * (model.in_channels + 2 * model.out_channels) * 4
    # the patch embedding's output, the final norm's fp32 input and output, the projection's input and
    # output, the loss's difference; the rotary tables (cached by the model)
    outside_blocks = b * tokens * (dim * act + 2 * dim * 4 + dim * act) + pixels * 2 * model.out_channels * 4
    outside_blocks += 2 * tokens * model.attention_head_dim // 2 * 4
    share = f", 1/{shards} each" if shards > 1 else ""
    terms = {
        f"weights (fp32{share})": 4 * total / shards,
        f"AdamW moments (2 x fp32{share})": 8 * trainable / shards,
    }
    gradients = 4 * trainable / shards
    if scale.parallelism == "ddp" and gpus > 1:
        terms["gradients (fp32, DDP's buckets: allocated throughout)"] = gradients
    if shards > 1:
        gathered = FSDP_GATHERED_BLOCKS * per_block * (act + 4)  # weights in the compute dtype + fp32 gradients
        terms[f"gathered blocks ({FSDP_GATHERED_BLOCKS}: weights and gradients)"] = gathered
    passes = {
        "batch inputs": inputs,
        f"activations ({layers - checkpointed} whole blocks, head and tail)": (layers - checkpointed) * block
        + outside_blocks,
    }
    if bf16 and shards == 1:
        passes["bf16 copies of the weights (autocast)"] = 2 * total
    if checkpointed:
        passes[f"checkpointed block inputs ({checkpointed})"] = checkpointed * b * tokens * dim * act
        passes["recomputed block (backward)"] = block
    passes["backward working set (a feed-forward gradient)"] = b * tokens * model.ffn_dim * act
    step = {"optimizer step (fp32 temporary)": 4 * trainable / shards}
    if not (scale.parallelism == "ddp" and gpus > 1):
        step["gradients (fp32" + share + ")"] = gradients
    title = (
        f"memory plan per GPU: {scale.parallelism} over {gpus} GPU{'s' if gpus > 1 else ''}, {scale.precision}, "
        f"{checkpointed} of {layers} blocks checkpointed, {b} clip{'s' if b > 1 else ''} of "
        f"{clip.frames}x{clip.height}x{clip.width} latents ({tokens:,} tokens) per pass, "
        f"{total:,} weights"
    )
    return MemoryPlan(title, terms, {"forward and backward": passes, "optimizer step": step}, RESERVE_BYTES)


# --- from a stage config -------------------------------------------------------------------------


@dataclass(frozen=True)
class StageShape:
    """What a stage config says about memory: the model, the clip, the samples per forward pass."""

    model: TransformerConfig
    clip: ClipShape
    samples_per_pass: int
    frozen_condition_tokens: bool


def stage_shape(config: Stage1Config | Stage2Config, gpus: int, stage1: Stage1Config | None = None) -> StageShape:
    """The model and batch of a stage-1 config, or of a stage-2 config with its stage-1 config."""
    first = stage1 if stage1 is not None else config
    init = Path(first.init) / "config.json" if first.init else None
    if init is not None and init.is_file():  # the model training will load (else the size keys describe it)
        model = read_config(TransformerConfig, init, ignored=TransformerConfig.IGNORED_KEYS)
    else:
        sizes = (first.num_layers, first.num_attention_heads, first.attention_head_dim, first.ffn_dim)
        model = transformer_config(*sizes, first.num_condition_tokens)
    frozen = False
    if stage1 is not None:
        if config.condition_tokens == "none":
            model = replace(model, num_condition_tokens=0)
        frozen = config.condition_tokens == "positive"
    if config.batch_size % gpus:
        raise RemoverError(f"batch_size {config.batch_size} does not split over {gpus} GPUs")
    local = config.batch_size // gpus
    return StageShape(
        model,
        ClipShape.of(model, first.num_frames, first.height, first.width),
        min(config.micro_batch_size or local, local),  # the trainer's passes: micro-batches of its share
        frozen,
    )


def gpu_capacity(scale: ScaleSettings, device: torch.device) -> float | None:
    """Bytes the plan must fit: the config's `gpu_memory_gb` (GiB), else the GPU's memory; None on the CPU."""
    if scale.gpu_memory_gb:
        return scale.gpu_memory_gb * GIB
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return None


def check_memory(
    scale: ScaleSettings, shape: StageShape, gpus: int, device: torch.device, run_dir: Path | None, show: bool = True
) -> MemoryPlan:
    """Print the plan (if `show`) and write it to `run_dir` (if given); refuse a plan that does not fit
    the GPU with a RemoverError (every rank computes the same verdict)."""
    plan = memory_plan(shape.model, shape.clip, shape.samples_per_pass, scale, gpus, shape.frozen_condition_tokens)
    capacity = gpu_capacity(scale, device)
    if show:
        print(plan.table(capacity))
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "memory_plan.txt").write_text(plan.table(capacity) + "\n")
        (run_dir / "memory_plan.json").write_text(json.dumps(plan.to_json(capacity), indent=2) + "\n")
    if capacity and plan.total(capacity) > capacity:
        raise RemoverError(
            f"the memory plan needs {plan.total(capacity) / GIB:.1f} GiB per GPU, more than {capacity / GIB:.1f} GiB "
            "(plan above): checkpoint more blocks (activation_checkpointing=-1), shard (parallelism=fsdp), "
            "use bf16, or pass fewer samples at once (micro_batch_size)"
        )
    return plan


def main(argv: list[str] | None = None) -> int:
    """`python -m training.plan`: print the plan; a plan that does not fit is one error line and exit 2."""
    parser = argparse.ArgumentParser(description="The memory a training stage needs per GPU, before running it.")
    parser.add_argument("--config", required=True, help="a stage-1 or stage-2 JSON config (training/configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the run spreads over (default 1)")
    parser.add_argument(
        "--gpu-memory", type=float, default=0.0, help="GiB per GPU (default: the config's gpu_memory_gb)"
    )
    parser.add_argument("--stage1-config", help="stage 2: the stage-1 config, when its run folder has none yet")
    args = parser.parse_args(argv)

    def command() -> None:
        if args.gpus < 1:
            raise RemoverError("--gpus must be at least 1")
        try:
            raw = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RemoverError(f"cannot read config {args.config}: {exc}") from None
        overrides = [*args.set, *([f"gpu_memory_gb={args.gpu_memory}"] if args.gpu_memory else [])]
        if "stage1" in raw:
            config = load_config(Stage2Config, args.config, overrides)
            source = Path(args.stage1_config) if args.stage1_config else Path(config.stage1) / "config.json"
            if not source.is_file():
                raise RemoverError(f"no stage-1 config at {source}: pass --stage1-config FILE")
            stage1 = load_config(Stage1Config, source)
        else:
            config, stage1 = load_config(Stage1Config, args.config, overrides), None
        shape = stage_shape(config, args.gpus, stage1)
        check_memory(config, shape, args.gpus, torch.device("cuda" if torch.cuda.is_available() else "cpu"), None)

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
