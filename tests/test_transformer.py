"""The transformer against the reference fixture, an independent complex-number RoPE, and its dtypes."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import replace

import pytest
import torch
from conftest import fixed_seed, relative_error

from kernels import TORCH_KERNELS
from runtime.errors import RemoverError
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer, apply_rope, rope_cos_sin
from runtime.models.weights import load_transformer

TOLERANCE = 1e-4  # fixture README: transformer outputs within 1e-4 relative L2 in fp32


def test_matches_reference_fixture(checkpoint, expected):
    model = load_transformer(checkpoint / "transformer", torch.device("cpu"), torch.float32)
    with torch.no_grad():
        out = model(expected["dit_input"], expected["dit_timestep"])
    assert out.shape == expected["dit_output"].shape
    assert relative_error(out, expected["dit_output"]) < TOLERANCE


def complex_rope(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """The reference's form, written from the facts: complex128 rotation of interleaved pairs."""
    head_dim = x.shape[-1]
    h = w = 2 * (head_dim // 6)
    dims = (head_dim - h - w, h, w)
    freqs = []
    for size, dim in zip(grid, dims):
        inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        freqs.append(
            torch.polar(torch.ones(size, dim // 2, dtype=torch.float64), torch.outer(torch.arange(size).double(), inv))
        )
    f, hh, ww = grid
    table = torch.cat(
        [
            freqs[0][:, None, None].expand(f, hh, ww, -1),
            freqs[1][None, :, None].expand(f, hh, ww, -1),
            freqs[2][None, None, :].expand(f, hh, ww, -1),
        ],
        dim=-1,
    ).reshape(f * hh * ww, 1, -1)
    rotated = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous()) * table
    return torch.view_as_real(rotated).flatten(-2)


@pytest.mark.parametrize("head_dim", [128, 32, 20])
def test_real_rope_equals_complex_rope(head_dim):
    seed = fixed_seed()
    generator = torch.Generator().manual_seed(seed)
    grid = (3, 5, 7)
    x = torch.randn(2, 3 * 5 * 7, 4, head_dim, generator=generator)
    out = apply_rope(x, *rope_cos_sin(grid, head_dim, torch.device("cpu")))
    assert relative_error(out, complex_rope(x, grid)) < 1e-6, f"seed {seed}"


def test_rope_splits_head_dim_like_the_release():
    from runtime.models.transformer import rope_axis_dims

    assert rope_axis_dims(128) == (44, 42, 42)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_half_precision_stays_close_to_fp32(checkpoint, expected, dtype, tolerance):
    model = load_transformer(checkpoint / "transformer", torch.device("cpu"), dtype)
    with torch.no_grad():
        out = model(expected["dit_input"].to(dtype), expected["dit_timestep"])
    assert out.dtype == dtype
    assert relative_error(out.float(), expected["dit_output"]) < tolerance


def test_random_config_runs_every_shape():
    """Odd grids and a non-square patch shape run through the blocks to finite velocities of the input's shape
    (the values of patchify and unpatchify: the next test)."""
    config = replace(
        RELEASED_TRANSFORMER,
        patch_size=(1, 2, 3),
        num_attention_heads=3,
        attention_head_dim=16,
        ffn_dim=40,
        num_layers=1,
    )
    model = RemoverTransformer(config)
    latents = torch.randn(2, 48, 3, 6, 9)
    with torch.no_grad():
        out = model(latents, torch.tensor([999.0, 10.0]))
    assert out.shape == (2, 16, 3, 6, 9)
    assert torch.isfinite(out).all()


def patchify(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, C, T, H, W] -> tokens [B, T' H' W', C pt ph pw], frame-major, written here from the layout: token
    (t, h, w) holds patch x[:, :, t pt : (t + 1) pt, h ph : (h + 1) ph, w pw : (w + 1) pw] in (C, pt, ph, pw)
    order, as a Conv3d with kernel = stride = patch reads it."""
    batch, channels, frames, height, width = x.shape
    pt, ph, pw = patch
    tokens = torch.empty(batch, (frames // pt) * (height // ph) * (width // pw), channels * pt * ph * pw)
    index = 0
    for t in range(frames // pt):
        for h in range(height // ph):
            for w in range(width // pw):
                block = x[:, :, t * pt : (t + 1) * pt, h * ph : (h + 1) * ph, w * pw : (w + 1) * pw]
                tokens[:, index] = block.reshape(batch, -1)
                index += 1
    return tokens


@pytest.mark.parametrize("patch", [(1, 2, 2), (1, 2, 3), (2, 3, 2)])
def test_patchify_and_unpatchify_round_trip_value_by_value(patch):
    """With the patch embedding copying each patch's values into its token, no blocks, the output norm
    skipped and the projection reordering the token back, the model's tokens are the patchify written
    above, value by value, and its output is its input's first out_channels channels, exactly."""
    pt, ph, pw = patch
    config = replace(
        RELEASED_TRANSFORMER, patch_size=patch, in_channels=12, out_channels=4, num_attention_heads=4,
        attention_head_dim=16, ffn_dim=8, num_layers=0,
    )  # fmt: skip
    model = RemoverTransformer(config)
    elements = config.out_channels * pt * ph * pw  # 24 or 48 of the 64 token dims
    with torch.no_grad():
        model.patch_embedding.weight.zero_()
        model.patch_embedding.bias.zero_()
        embed = model.patch_embedding.weight.view(config.inner_dim, config.in_channels, pt, ph, pw)
        for j, (c, t, h, w) in enumerate(
            itertools.product(range(config.out_channels), range(pt), range(ph), range(pw))
        ):
            embed[j, c, t, h, w] = 1.0  # token dim j = element (c, t, h, w) of the patch: the noisy channels' values
        model.proj_out.weight.zero_()
        model.proj_out.bias.zero_()
        for j, (c, t, h, w) in enumerate(
            itertools.product(range(config.out_channels), range(pt), range(ph), range(pw))
        ):
            # output (t, h, w, c) of a token, the order the model unpatchifies, from token dim j
            model.proj_out.weight[((t * ph + h) * pw + w) * config.out_channels + c, j] = 1.0
    model.kernels = replace(TORCH_KERNELS, modulated_layer_norm=lambda x, shift, scale, eps: x)
    seen = []
    model.patch_embedding.register_forward_hook(lambda module, args, out: seen.append(out.flatten(2).transpose(1, 2)))

    frames, height, width = 3 * pt, 2 * ph, 5 * pw  # odd grids
    latents = torch.arange(2 * 12 * frames * height * width, dtype=torch.float32).reshape(2, 12, frames, height, width)
    with torch.no_grad():
        out = model(latents, torch.tensor([999.0, 10.0]))
    noisy = latents[:, : config.out_channels]
    assert torch.equal(seen[0][..., :elements], patchify(noisy, patch))
    assert torch.equal(out, noisy)


def _edited_checkpoint(checkpoint, tmp_path, **changes):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(changes)
    config_path.write_text(json.dumps(config))
    return folder / "transformer"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"qk_norm": "rms_norm"}, "qk_norm"),
        ({"text_dim": 4096}, "unknown config key 'text_dim'"),
        ({"num_layers": "two"}, "num_layers must be of type int"),
        ({"added_kv_proj_dim": 64}, "added_kv_proj_dim"),
        ({"in_channels": 36}, "in_channels"),
    ],
)
def test_wrong_config_is_a_clear_error(checkpoint, tmp_path, changes, message):
    with pytest.raises(RemoverError, match=message):
        load_transformer(_edited_checkpoint(checkpoint, tmp_path, **changes), torch.device("cpu"), torch.float32)
