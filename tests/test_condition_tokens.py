"""Contrastive condition tokens: appended to every block's keys and values, cached for inference."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import fixed_seed, relative_error

from runtime import Remover, RemoverError
from runtime.models.scheduler import RELEASED_SCHEDULER
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer, apply_rope
from runtime.models.vae import RELEASED_VAE, WanVAE
from runtime.models.weights import load_transformer, save_checkpoint

TOKENS_CONFIG = replace(
    RELEASED_TRANSFORMER, num_attention_heads=2, attention_head_dim=16, ffn_dim=48, num_layers=2, num_condition_tokens=6
)


@pytest.fixture
def model():
    torch.manual_seed(fixed_seed())
    return RemoverTransformer(TOKENS_CONFIG).eval()


def test_first_block_attention_by_hand(model):
    """Block 0's attention with explicit softmax over [video keys (RoPE) | token keys (no RoPE)]."""
    latents, timestep = torch.randn(1, 48, 2, 4, 6), torch.tensor([600.0])
    attn = model.blocks[0].attn1
    captured = {}
    attn.register_forward_hook(lambda module, args, out: captured.update(x=args[0], out=out))
    with torch.no_grad():
        model(latents, timestep, condition=1)
        x = captured["x"]
        heads, dim = 2, TOKENS_CONFIG.inner_dim
        q = attn.norm_q(attn.to_q(x)).view(1, -1, heads, 16)
        k = attn.norm_k(attn.to_k(x)).view(1, -1, heads, 16)
        rope = model.rope((2, 2, 3), torch.device("cpu"))
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        tokens = model.condition_embedding.weight[1].view(1, 6, dim)
        k_tok = attn.norm_k(attn.to_k(tokens)).view(1, 6, heads, 16)
        keys = torch.cat([k, k_tok], dim=1)
        values = torch.cat([attn.to_v(x), attn.to_v(tokens)], dim=1).view(1, -1, heads, 16)
        weights = torch.einsum("blhd,bmhd->bhlm", q, keys) / math.sqrt(16)
        out = torch.einsum("bhlm,bmhd->blhd", weights.softmax(-1), values).flatten(2)
        expected = attn.to_out[0](out)
    assert relative_error(captured["out"], expected) < 1e-5


def test_conditions_differ_and_the_cache_equals_recomputation(model):
    latents, timestep = torch.randn(1, 48, 2, 4, 6), torch.tensor([400.0])
    with torch.no_grad():
        fresh = [model(latents, timestep, condition=c) for c in (0, 1)]
        model.cache_condition_kv()
        cached = [model(latents, timestep, condition=c) for c in (0, 1)]
        batched = model(latents.expand(2, -1, -1, -1, -1), timestep.expand(2), torch.tensor([0, 1]))
    assert relative_error(fresh[0], fresh[1]) > 1e-3
    for a, b in zip(fresh, cached):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(batched, torch.cat(cached))


def test_training_mode_drops_the_cache_and_gradients_reach_the_tokens(model):
    model.cache_condition_kv()
    model.train()
    out = model(torch.randn(1, 48, 1, 2, 2), torch.tensor([10.0]), condition=0)
    out.square().mean().backward()
    assert model.condition_embedding.weight.grad[0].abs().sum() > 0
    assert model.condition_embedding.weight.grad[1].abs().sum() == 0


def test_condition_argument_must_fit_the_model(model):
    released_like = RemoverTransformer(replace(TOKENS_CONFIG, num_condition_tokens=0)).eval()
    latents, timestep = torch.randn(1, 48, 1, 2, 2), torch.tensor([10.0])
    with pytest.raises(RemoverError, match="no condition tokens"):
        released_like(latents, timestep, condition=0)
    with pytest.raises(RemoverError, match="has condition tokens"):
        model(latents, timestep)


def test_checkpoint_with_tokens_round_trips_and_samples_with_guidance(tmp_path, fixture_inputs):
    torch.manual_seed(0)
    transformer = RemoverTransformer(TOKENS_CONFIG).eval()
    vae = WanVAE(replace(RELEASED_VAE, base_dim=8, num_res_blocks=1)).eval()
    save_checkpoint(tmp_path / "ckpt", transformer, vae, RELEASED_SCHEDULER, dtype=torch.float32)
    loaded = load_transformer(tmp_path / "ckpt" / "transformer", torch.device("cpu"), torch.float32)
    assert loaded.config == TOKENS_CONFIG
    latents, timestep = torch.randn(1, 48, 2, 2, 2), torch.tensor([900.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(latents, timestep, 1), transformer(latents, timestep, 1))

    remover = Remover.from_pretrained(tmp_path / "ckpt", device="cpu")
    frames, masks = fixture_inputs[0][:5], fixture_inputs[1][:5]
    common = dict(height=32, width=48, paste_back=False, progress=False)
    positive = remover(frames, masks, **common)
    np.testing.assert_allclose(remover(frames, masks, guidance_scale=1.0, **common), positive, atol=1e-5)
    assert not np.allclose(remover(frames, masks, guidance_scale=4.0, **common), positive, atol=1e-3)


def test_guidance_needs_condition_tokens(checkpoint, fixture_inputs):
    remover = Remover.from_pretrained(checkpoint, device="cpu")
    with pytest.raises(RemoverError, match="guidance_scale needs"):
        remover(*fixture_inputs, height=32, width=48, guidance_scale=3.0, progress=False)


def test_condition_embedding_layout():
    model = RemoverTransformer(TOKENS_CONFIG)
    assert model.state_dict()["condition_embedding.weight"].shape == (2, 6 * TOKENS_CONFIG.inner_dim)
