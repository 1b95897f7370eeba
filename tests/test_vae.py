"""The streamed VAE against the reference fixture and diffusers' AutoencoderKLWan (released version)."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import fixed_seed, fresh_seed, relative_error

from runtime.models import vae
from runtime.models.vae import SINGLE_FRAME_MIN_HEIGHT, TemporalCache, VAEConfig, WanVAE
from runtime.models.weights import load_into, load_vae

TOLERANCE = 1e-4  # fixture README: VAE outputs within 1e-4 relative L2 in fp32


@pytest.fixture(scope="module")
def fixture_vae(checkpoint):
    return load_vae(checkpoint / "vae", torch.device("cpu"), torch.float32)


def stream_frames_per_step(monkeypatch: pytest.MonkeyPatch, frames: int) -> None:
    """Make the VAE stream `frames` frames at a time inside a chunk, whatever the frame size."""
    monkeypatch.setattr(vae, "frames_per_step", lambda height, temporal_factor: frames)


@pytest.fixture(params=[1, 4], ids=["one frame a step", "four frames a step"])
def frames_per_step(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Both streaming granularities: the fixture's 64 px high frames would otherwise take 4 at a time."""
    stream_frames_per_step(monkeypatch, request.param)
    return request.param


def test_frames_per_step_is_one_from_the_height_where_single_frames_are_fast():
    assert vae.frames_per_step(SINGLE_FRAME_MIN_HEIGHT - 1, 4) == 4
    assert vae.frames_per_step(SINGLE_FRAME_MIN_HEIGHT, 4) == vae.frames_per_step(480, 4) == 1


def test_encode_matches_reference_fixture(fixture_vae, expected, frames_per_step):
    mean, std = fixture_vae.latent_stats(torch.device("cpu"))
    with torch.no_grad():
        latents = fixture_vae.encode(expected["vae_input"])
    assert relative_error(latents * std + mean, expected["vae_latent_mode"]) < TOLERANCE


def test_decode_matches_reference_fixture(fixture_vae, expected, frames_per_step):
    mean, std = fixture_vae.latent_stats(torch.device("cpu"))
    with torch.no_grad():
        video = fixture_vae.decode((expected["vae_latent_mode"] - mean) / std)
    assert video.shape == expected["vae_decoded"].shape
    assert relative_error(video, expected["vae_decoded"]) < TOLERANCE


def test_latent_shape_is_the_shape_the_encoder_makes(fixture_vae):
    """The config's one statement of the latent shape agrees with what the encoder actually returns."""
    config = fixture_vae.config
    for frames, height, width in [(1, 16, 24), (5, 32, 16), (9, 24, 40)]:
        with torch.no_grad():
            latents = fixture_vae.encode(torch.zeros(1, 3, frames, height, width))
        assert latents.shape == (1, config.z_dim, *config.latent_shape(frames, height, width))


def test_chunk_size_does_not_change_the_result(fixture_vae):
    """Streaming is exact (up to fp32 rounding): one latent frame per chunk, two, or all at once."""
    generator = torch.Generator().manual_seed(fixed_seed())
    video = torch.rand(1, 3, 13, 32, 48, generator=generator) * 2 - 1
    with torch.no_grad():
        by_one = fixture_vae.encode(video)
        for frames_per_chunk in (8, 12):
            assert relative_error(fixture_vae.encode(video, frames_per_chunk), by_one) < 1e-5
        decoded = fixture_vae.decode(by_one)
        for latents_per_chunk in (2, 3):
            assert relative_error(fixture_vae.decode(by_one, latents_per_chunk), decoded) < 1e-5


def test_cache_size_is_fixed_after_the_first_chunk(fixture_vae):
    """What streaming keeps between chunks does not grow with the clip: from the first chunk on the
    cache is the same set of tensors, each holding the 2 frames a causal 3-tap conv needs (1 for the
    stride-2 temporal downsamplers), which is also what an exported per-chunk graph carries."""
    video = torch.rand(1, 3, 17, 32, 48) * 2 - 1
    with torch.no_grad():
        for stream, chunks in (
            (fixture_vae.encode_chunk, [video[:, :, :1]] + list(video[:, :, 1:].split(4, dim=2))),
            (fixture_vae.decode_chunk, list(torch.randn(1, 16, 5, 4, 6).split(1, dim=2))),
        ):
            cache, shapes = TemporalCache(), []
            for chunk in chunks:
                stream(chunk, cache)
                shapes.append({id(layer): tuple(t.shape) for layer, t in cache.frames.items()})
            assert all(s == shapes[0] for s in shapes[1:])
            assert {shape[2] for shape in shapes[0].values()} <= {1, 2}


def _random_config(rng: random.Random) -> VAEConfig:
    z_dim = rng.choice([4, 16])
    levels = rng.choice([3, 4])
    return VAEConfig(
        base_dim=rng.choice([4, 8]),
        z_dim=z_dim,
        dim_mult=tuple(rng.choice([1, 2]) for _ in range(levels)),
        num_res_blocks=rng.choice([1, 2]),
        # diffusers streams in 4-frame chunks, so it only handles two temporal downsamples
        temperal_downsample=tuple(rng.sample([True, True] + [False] * (levels - 3), levels - 1)),
        latents_mean=tuple(rng.uniform(-1, 1) for _ in range(z_dim)),
        latents_std=tuple(rng.uniform(0.5, 3) for _ in range(z_dim)),
    )


@pytest.mark.parametrize("trial", range(4))
def test_matches_diffusers_on_random_configs(trial, monkeypatch):
    """Random architectures, streamed one frame or four frames a step (alternate trials)."""
    from diffusers import AutoencoderKLWan

    stream_frames_per_step(monkeypatch, (1, 4)[trial % 2])
    seed = fresh_seed()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    config = _random_config(rng)
    reference = AutoencoderKLWan(
        base_dim=config.base_dim,
        z_dim=config.z_dim,
        dim_mult=list(config.dim_mult),
        num_res_blocks=config.num_res_blocks,
        temperal_downsample=list(config.temperal_downsample),
        latents_mean=list(config.latents_mean),
        latents_std=list(config.latents_std),
    ).eval()
    with torch.no_grad():  # diffusers starts norms at 1 and biases at 0: randomize everything
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    with torch.device("meta"):
        ours = WanVAE(config)
    load_into(ours, {k: v.clone() for k, v in reference.state_dict().items()}, "diffusers")

    temporal, spatial = config.temporal_factor, config.spatial_factor
    frames = 1 + temporal * rng.randint(1, 3)
    height, width = spatial * rng.randint(1, 3), spatial * rng.randint(1, 3)
    video = torch.rand(1, 3, frames, height, width) * 2 - 1
    mean, std = ours.latent_stats(torch.device("cpu"))
    with torch.no_grad():
        expected_mode = reference.encode(video).latent_dist.mode()
        assert relative_error(ours.encode(video) * std + mean, expected_mode) < TOLERANCE, f"seed {seed} {config}"
        expected_video = reference.decode(expected_mode).sample
        ours_video = ours.decode((expected_mode - mean) / std)
        assert relative_error(ours_video, expected_video) < TOLERANCE, f"seed {seed} {config}"


def test_cpu_inference_calls_onednn_and_matches_the_native_conv(monkeypatch):
    """The direct oneDNN call (fp32 CPU inference) gives PyTorch's ordinary conv3d result, and is the path
    taken: a conv whose batch x channels x frames x height is under 20480 (PyTorch's native path) included."""
    conv = vae.CausalConv3d(8, 16, 3, spatial_padding=1)
    video = torch.randn(1, 8, 1, 20, 24, generator=torch.Generator().manual_seed(fixed_seed()))
    calls = []
    onednn = torch.ops.aten.mkldnn_convolution
    monkeypatch.setattr(torch.ops.aten, "mkldnn_convolution", lambda *args: calls.append(1) or onednn(*args))
    with torch.no_grad():
        fast = conv(video, TemporalCache())
    padded = torch.nn.functional.pad(video, (0, 0, 0, 0, 2, 0))
    native = torch.nn.functional.conv3d(padded, conv.weight, conv.bias, padding=(0, 1, 1)).detach()
    assert calls == [1]
    assert torch.allclose(fast, native, atol=1e-5, rtol=1e-5)
    with torch.enable_grad():  # autograd keeps the ordinary op
        conv(video, TemporalCache())
    assert calls == [1]
