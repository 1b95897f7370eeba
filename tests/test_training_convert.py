"""training.convert: Wan2.1 T2V weights (diffusers layout or original names) -> the stage-1 initialization.

The oracle is diffusers 0.33.1's WanTransformer3DModel on tiny random configs: with its cross-attention
output projection zeroed (so the text contributes nothing), it must compute what the converted model
computes from the noisy latents alone, whatever the 32 new (zero-initialized) input channels hold.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from conftest import fixed_seed, relative_error
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from runtime.models.vae import RELEASED_VAE, WanVAE
from runtime.models.weights import load_transformer
from training.convert import convert, main
from training.trainer import save_model_folder

TINY_T2V = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=1,
    attention_head_dim=128,  # Wan's head dim, so original-name files can infer the config
    in_channels=16,
    out_channels=16,
    text_dim=24,
    freq_dim=256,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)

# diffusers name -> original Wan name, written out independently of runtime.models.weights
TO_WAN = [
    (r"condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"condition_embedder\.time_proj\.", "time_projection.1."),
    (r"blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.self_attn.\2."),
    (r"blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
    (r"blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"blocks\.(\d+)\.attn2\.to_([qkv])\.", r"blocks.\1.cross_attn.\2."),
    (r"blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"blocks\.(\d+)\.scale_shift_table", r"blocks.\1.modulation"),
    (r"^scale_shift_table", "head.modulation"),
    (r"^proj_out\.", "head.head."),
]


def to_wan(key: str) -> str:
    for pattern, target in TO_WAN:
        renamed, count = re.subn(pattern, target, key)
        if count:
            return renamed
    return key


@pytest.fixture
def base(tmp_path):
    """A tiny random T2V model saved in the diffusers layout (transformer/ + vae/), and the model."""
    torch.manual_seed(fixed_seed())
    model = WanTransformer3DModel(**TINY_T2V).eval()
    with torch.no_grad():  # make the zero-initialized parts of diffusers' init non-trivial
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    model.save_pretrained(tmp_path / "base" / "transformer", safe_serialization=True)
    save_model_folder(
        tmp_path / "base" / "vae", WanVAE(replace(RELEASED_VAE, base_dim=8, num_res_blocks=1)), "AutoencoderKLWan"
    )
    return tmp_path / "base", model


def oracle_output(model: WanTransformer3DModel, noisy: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """The base model with its cross-attention output zeroed: text has no effect."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn2.to_out[0].weight.zero_()
            block.attn2.to_out[0].bias.zero_()
        text = torch.randn(noisy.shape[0], 5, TINY_T2V["text_dim"])
        return model(noisy, timestep, text, return_dict=False)[0]


@pytest.mark.parametrize("layout", ["diffusers", "wan-names"])
def test_converted_model_computes_the_base_model_without_text(base, layout, tmp_path):
    folder, t2v = base
    if layout == "wan-names":
        tensors = {"model.diffusion_model." + to_wan(k): v.contiguous() for k, v in t2v.state_dict().items()}
        assert any(k.endswith("cross_attn.q.weight") for k in tensors) and any("text_embedding" in k for k in tensors)
        source = tmp_path / "wan.safetensors"
        save_file(tensors, str(source))
    else:
        source = folder
    converted = convert(source, num_condition_tokens=0)
    assert converted.config.in_channels == 48 and converted.patch_embedding.weight.shape[1] == 48
    assert not any("attn2" in k or "text" in k or "norm2" in k for k in converted.state_dict())

    noisy, timestep = torch.randn(1, 16, 2, 4, 6), torch.tensor([637.0])
    expected = oracle_output(t2v, noisy, timestep)
    with torch.no_grad():
        for context in (torch.zeros(1, 32, 2, 4, 6), 3.0 * torch.randn(1, 32, 2, 4, 6)):
            actual = converted(torch.cat([noisy, context], dim=1), timestep)
            assert relative_error(actual, expected) < 1e-5


def test_cli_writes_a_released_checkpoint_with_condition_tokens(base, tmp_path):
    folder, t2v = base
    out = tmp_path / "init"
    assert main(["--base", str(folder), "--out", str(out), "--condition-tokens", "6"]) == 0
    model = load_transformer(out / "transformer", torch.device("cpu"), torch.float32)
    assert model.config.num_condition_tokens == 6 and model.config.in_channels == 48
    base_state = t2v.state_dict()
    for key, value in model.state_dict().items():
        if key == "patch_embedding.weight":
            torch.testing.assert_close(value[:, :16], base_state[key], rtol=0, atol=0)
            assert value[:, 16:].abs().max() == 0
        elif key == "condition_embedding.weight":
            assert value.shape == (2, 6 * 128) and 0.8 < float(value.std()) < 1.2
        else:
            torch.testing.assert_close(value, base_state[key], rtol=0, atol=0)
    assert (out / "vae" / "config.json").is_file() and (out / "scheduler" / "scheduler_config.json").is_file()


def test_cli_bad_base_is_one_error_line(tmp_path, capsys):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    assert main(["--base", str(tmp_path / "missing.safetensors"), "--vae", str(tmp_path / "vae"), "--out", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
