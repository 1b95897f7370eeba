"""Checkpoint loading: the released layout, the Wan-named single-file repack, and clear failures."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from runtime import Remover, RemoverError
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer
from runtime.models.weights import load_transformer, locate_checkpoint

# Released (diffusers) name -> original Wan name, written out from the facts file.
RELEASED_TO_WAN = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "scale_shift_table": "head.modulation",
    "proj_out": "head.head",
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}


def to_wan_name(key: str) -> str:
    if key.startswith("blocks."):
        _, index, rest = key.split(".", 2)
        if rest == "scale_shift_table":
            return f"blocks.{index}.modulation"
        for released, wan in RELEASED_TO_WAN.items():
            if rest.startswith(released + "."):
                return f"blocks.{index}.{wan}{rest[len(released) :]}"
        return key
    for released, wan in RELEASED_TO_WAN.items():
        if key == released or key.startswith(released + "."):
            return wan + key[len(released) :]
    return key


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_wan_named_repack_loads_like_the_folder(tmp_path, prefix):
    """A model with heads of dim 128 (the repack convention) saved under Wan names, fp16 like the
    released repack, loads to the same weights and output."""
    torch.manual_seed(0)
    config = replace(RELEASED_TRANSFORMER, num_attention_heads=2, ffn_dim=64, num_layers=2)
    model = RemoverTransformer(config).eval()
    wan = {prefix + to_wan_name(k): v.half() for k, v in model.state_dict().items()}
    assert len({k for k in wan if "attn1" in k or "condition_embedder" in k}) == 0
    path = tmp_path / "repack.safetensors"
    save_file(wan, str(path))
    loaded = load_transformer(path, torch.device("cpu"), torch.float32)
    assert loaded.config == config
    latents, timestep = torch.randn(1, 48, 2, 4, 4), torch.tensor([500.0])
    with torch.no_grad():
        expected = RemoverTransformer(config)
        expected.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
        torch.testing.assert_close(loaded(latents, timestep), expected.eval()(latents, timestep))


def test_repack_with_a_vae_folder_runs_the_pipeline(checkpoint, tmp_path, fixture_inputs):
    torch.manual_seed(0)
    model = RemoverTransformer(replace(RELEASED_TRANSFORMER, num_attention_heads=1, ffn_dim=32, num_layers=1))
    path = tmp_path / "repack.safetensors"
    save_file({to_wan_name(k): v.half() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(RemoverError, match="without a VAE"):
        locate_checkpoint(path)
    paths = locate_checkpoint(path, checkpoint)
    assert (paths.transformer, paths.vae) == (path, checkpoint / "vae") and paths.scheduler is not None
    remover = Remover.from_pretrained(path, device="cpu", vae=checkpoint)
    out = remover(fixture_inputs[0][:5], fixture_inputs[1][:5], height=32, width=48, progress=False)
    assert out.shape == (5, 240, 432, 3)


def test_repack_whose_width_does_not_fit_wan_heads_is_an_error(checkpoint, tmp_path):
    weights = load_file(str(checkpoint / "transformer" / "diffusion_pytorch_model.safetensors"))
    path = tmp_path / "tiny.safetensors"
    save_file({to_wan_name(k): v for k, v in weights.items()}, str(path))
    with pytest.raises(RemoverError, match="width 64 is not a multiple of the Wan head dim 128"):
        load_transformer(path, torch.device("cpu"), torch.float32)


@pytest.fixture
def checkpoint_copy(checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    for path in folder.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return folder


def test_missing_checkpoint(tmp_path):
    with pytest.raises(RemoverError, match="weights not found"):
        Remover.from_pretrained(tmp_path / "nope", device="cpu")
    with pytest.raises(RemoverError, match="no transformer/ subfolder"):
        Remover.from_pretrained(tmp_path, device="cpu")


def test_missing_weights_file(checkpoint_copy):
    (checkpoint_copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(RemoverError, match="missing weights: .*vae"):
        Remover.from_pretrained(checkpoint_copy, device="cpu")


def test_corrupt_weights_file(checkpoint_copy):
    (checkpoint_copy / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(RemoverError, match="cannot read weights"):
        Remover.from_pretrained(checkpoint_copy, device="cpu")


def test_truncated_weights_file(checkpoint_copy):
    path = checkpoint_copy / "vae" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RemoverError, match="cannot read weights"):
        Remover.from_pretrained(checkpoint_copy, device="cpu")


def test_config_that_does_not_fit_the_weights_names_the_keys(checkpoint_copy):
    path = checkpoint_copy / "transformer" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "num_layers": 3, "ffn_dim": 80}))
    with pytest.raises(RemoverError) as error:
        Remover.from_pretrained(checkpoint_copy, device="cpu")
    message = str(error.value)
    assert (
        "missing: blocks.2." in message
        and "mis-shaped: blocks.0.ffn.net.0.proj.weight (96, 64) (model expects (80, 64))" in message
    )


def test_unexpected_keys_are_named(checkpoint_copy):
    path = checkpoint_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    tensors["blocks.0.attn2.to_q.weight"] = torch.zeros(1)
    save_file(tensors, str(path))
    with pytest.raises(RemoverError, match="1 unexpected: blocks.0.attn2.to_q.weight"):
        Remover.from_pretrained(checkpoint_copy, device="cpu")


def test_unparsable_config(checkpoint_copy):
    (checkpoint_copy / "vae" / "config.json").write_text("{not json")
    with pytest.raises(RemoverError, match="cannot parse"):
        Remover.from_pretrained(checkpoint_copy, device="cpu")


def test_unknown_dtype_and_sampler(checkpoint):
    with pytest.raises(RemoverError, match="unknown dtype"):
        Remover.from_pretrained(checkpoint, device="cpu", dtype="fp8")
    with pytest.raises(RemoverError, match="unknown sampler"):
        Remover.from_pretrained(checkpoint, device="cpu", sampler="ddim")
