"""The benchmark's reference (bench/reference.py) against the parity fixture: it must be the released model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fresh_seed, relative_error

from bench.reference import ReferencePipeline, ReleasedTransformer, binary_dilation_cross
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer

FIXTURE = {"height": 64, "width": 96, "mask_dilation": 6, "steps": 6}  # fixture.json


def test_released_transformer_matches_reference_fixture(checkpoint, expected):
    model = ReleasedTransformer.from_pretrained(checkpoint / "transformer", torch_dtype=torch.float32)
    with torch.no_grad():
        out = model(expected["dit_input"], expected["dit_timestep"])
    assert relative_error(out, expected["dit_output"]) < 1e-4  # fixture README tolerance


def test_released_transformer_has_the_released_keys_and_size():
    """Same state-dict keys and shapes as the released model (the runtime's definition), 1,127,055,424 parameters."""
    config = RELEASED_TRANSFORMER
    with torch.device("meta"):
        reference = ReleasedTransformer(
            num_attention_heads=config.num_attention_heads,
            attention_head_dim=config.attention_head_dim,
            ffn_dim=config.ffn_dim,
            num_layers=config.num_layers,
        )
        ours = RemoverTransformer(config)
    shapes = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    assert shapes == {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert sum(value.numel() for value in reference.state_dict().values()) == 1_127_055_424


def test_reference_pipeline_matches_reference_fixture(checkpoint, expected, fixture_inputs):
    frames, masks = fixture_inputs
    pipeline = ReferencePipeline.from_pretrained(checkpoint, torch.device("cpu"), torch.float32)
    out = pipeline(
        frames,
        masks > 0,
        height=FIXTURE["height"],
        width=FIXTURE["width"],
        latents=expected["noise"],
        num_inference_steps=FIXTURE["steps"],
        mask_dilation=FIXTURE["mask_dilation"],
    )
    assert out.shape == tuple(expected["expected_frames"].shape)
    assert np.abs(out - expected["expected_frames"].numpy()).max() < 2e-3  # fixture README tolerance


def test_dilation_is_the_four_connected_cross():
    """Against the definition: a pixel is set after n steps iff its Manhattan distance to the mask is <= n."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    mask = rng.random((17, 23)) < 0.02
    iterations = int(rng.integers(0, 5))
    points = np.argwhere(mask)
    yy, xx = np.mgrid[0:17, 0:23]
    if len(points):
        distance = np.min(np.abs(yy[..., None] - points[:, 0]) + np.abs(xx[..., None] - points[:, 1]), axis=-1)
        expected = distance <= iterations
    else:
        expected = np.zeros_like(mask)
    np.testing.assert_array_equal(binary_dilation_cross(mask, iterations), expected, err_msg=f"seed {seed}")


@pytest.mark.parametrize("iterations", [0, 1])
def test_dilation_leaves_an_empty_mask_empty(iterations):
    assert not binary_dilation_cross(np.zeros((4, 5), dtype=bool), iterations).any()
