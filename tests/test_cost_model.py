"""The analytic cost model against independent counts: torch's FlopCounterMode on real forwards
(ours and diffusers'), the modules' parameter counts, and hand-computed roofline floors."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from conftest import fresh_seed
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, register_flop_formula

from runtime.execution.cost_model import (
    GPUS,
    Cost,
    GPUSpec,
    dit_forward,
    floor_seconds,
    pipeline_costs,
    vae_decode,
    vae_encode,
)
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer
from runtime.models.vae import RELEASED_VAE, WanVAE


@register_flop_formula(torch.ops.aten.mkldnn_convolution)
def _onednn_conv_flops(x_shape, w_shape, _bias, _padding, _stride, _dilation, _groups, *, out_shape, **_) -> int:
    """The VAE's fp32 CPU inference calls oneDNN's convolution directly (runtime.models.vae.on_cpu_onednn),
    which the counter has no formula for: count it as the convolution it is."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def counted_flops(function, *args) -> int:
    """FLOPs torch counts; attention through the math backend, since the counter has no formula for the
    CPU flash kernel (it would count attention as 0)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        function(*args)
    return counter.get_total_flops()


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("trial", range(3))
def test_dit_forward_matches_flop_counter(trial):
    seed = fresh_seed()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    config = replace(
        RELEASED_TRANSFORMER,
        num_attention_heads=rng.randint(1, 3),
        attention_head_dim=rng.choice([8, 12, 16]),
        ffn_dim=rng.randint(8, 40),
        num_layers=rng.randint(1, 3),
        freq_dim=rng.choice([16, 32]),
        num_condition_tokens=rng.choice([0, 0, 2]),
    )
    model = RemoverTransformer(config).eval()
    model.cache_condition_kv()
    batch, latent = rng.randint(1, 2), (rng.randint(1, 3), 2 * rng.randint(1, 3), 2 * rng.randint(1, 4))
    latents = torch.randn(batch, config.in_channels, *latent)
    condition = 0 if config.num_condition_tokens else None
    expected = counted_flops(model, latents, torch.full((batch,), 500.0), condition)
    cost = dit_forward(config, latent, batch=batch)
    assert cost.flops == expected, f"seed {seed} {config} {latent}"
    assert cost.params == numel(model), f"seed {seed} {config}"


def test_released_transformer_size():
    """The released model has 1,127,055,424 parameters (docs/REFERENCE_MODEL.md)."""
    assert dit_forward(RELEASED_TRANSFORMER, (21, 60, 104)).params == 1_127_055_424


def _random_vae(rng: random.Random):
    return replace(RELEASED_VAE, base_dim=rng.choice([4, 8]), num_res_blocks=rng.randint(1, 2))


@pytest.mark.parametrize("trial", range(2))
def test_vae_costs_match_flop_counter_and_diffusers(trial):
    """Ours counted by FlopCounterMode, and diffusers' AutoencoderKLWan (an independent implementation)."""
    from diffusers import AutoencoderKLWan

    seed = fresh_seed()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    config = _random_vae(rng)
    ours = WanVAE(config).eval()
    frames, height, width = 1 + 4 * rng.randint(0, 2), 8 * rng.randint(1, 3), 8 * rng.randint(1, 3)
    batch = rng.randint(1, 2)
    video = torch.rand(batch, 3, frames, height, width) * 2 - 1
    latents = torch.randn(batch, config.z_dim, 1 + (frames - 1) // 4, height // 8, width // 8)
    encode = vae_encode(config, frames, height, width, batch=batch)
    decode = vae_decode(config, *latents.shape[2:], batch=batch)
    # the cost model counts the mode's z outputs of quant_conv, the least an encode needs; both
    # implementations compute the log-variance half too (2 z -> 2 z), ours through posterior_chunk
    positions = batch * latents[0, 0].numel()
    log_variance = 2 * positions * (2 * config.z_dim) * config.z_dim
    assert encode.flops + log_variance == counted_flops(ours.encode, video), f"seed {seed} {config}"
    assert decode.flops == counted_flops(ours.decode, latents), f"seed {seed} {config}"
    assert encode.params + decode.params == numel(ours), f"seed {seed} {config}"

    theirs = AutoencoderKLWan(base_dim=config.base_dim, num_res_blocks=config.num_res_blocks).eval()
    assert decode.flops == counted_flops(theirs.decode, latents), f"seed {seed} {config}"
    assert encode.flops + log_variance == counted_flops(theirs.encode, video), f"seed {seed} {config}"


def test_floor_is_the_slower_of_compute_and_bandwidth():
    gpu = GPUSpec("test", tensor_tflops=100.0, bandwidth_gbs=1000.0, memory_gb=1.0, source="")
    assert floor_seconds(Cost(flops=200e12, params=0, min_bytes=1e9), gpu) == pytest.approx(2.0)  # compute-bound
    assert floor_seconds(Cost(flops=1e12, params=0, min_bytes=3e12), gpu) == pytest.approx(3.0)  # bandwidth-bound


def test_released_setting_floor_is_below_the_paper():
    """A sanity bound: the 480x832x81 floor on an RTX 4090 must sit below the paper's measured 24 s."""
    costs = pipeline_costs(RELEASED_TRANSFORMER, RELEASED_VAE, 81, 480, 832)
    total = sum(floor_seconds(cost, GPUS["RTX 4090"]) for cost in costs.values())
    assert 5.0 < total < 24.0
    # six calls of the same weights: six times the FLOPs, the weights still counted once per call
    one = dit_forward(RELEASED_TRANSFORMER, (21, 60, 104))
    assert costs["denoise"].flops == 6 * one.flops
