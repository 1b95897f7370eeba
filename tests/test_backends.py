"""The runtime's switches: kernels ("auto" | "triton" | "torch", $RUNTIME_KERNELS), attention backend
($RUNTIME_ATTENTION) and compile mode, through Remover.from_pretrained and the CLI's summary."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import fresh_seed
from PIL import Image

from kernels import TORCH_KERNELS, TRITON_KERNELS, triton_support
from runtime import Remover, RemoverError, run
from runtime.attention import ATTENTION_ENV
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer
from runtime.models.vae import RELEASED_VAE, WanVAE
from runtime.pipeline import KERNELS_ENV, resolve_kernels
from runtime.scheduler import RELEASED_SCHEDULER
from runtime.weights import save_checkpoint

CPU = torch.device("cpu")
TOKENS_CONFIG = replace(
    RELEASED_TRANSFORMER, num_attention_heads=2, attention_head_dim=16, ffn_dim=48, num_layers=2, num_condition_tokens=6
)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_triton = pytest.mark.skipif(
    not triton_support.AVAILABLE or (DEVICE.type == "cpu" and not triton_support.INTERPRETED),
    reason="needs Triton, and on the CPU TRITON_INTERPRET=1 (conftest sets it when there is no GPU)",
)


@pytest.fixture(autouse=True)
def no_backend_environment(monkeypatch):
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    monkeypatch.delenv(ATTENTION_ENV, raising=False)


def test_defaults_on_the_cpu(checkpoint):
    remover = Remover.from_pretrained(checkpoint, device="cpu")
    assert remover.backends == "attention sdpa (flash), kernels torch"
    assert remover.transformer.blocks[1].attn1.kernels is TORCH_KERNELS


def test_kernel_choice_argument_environment_and_errors(monkeypatch):
    assert resolve_kernels("auto", CPU) is TORCH_KERNELS
    assert resolve_kernels("torch", CPU) is TORCH_KERNELS
    monkeypatch.setenv(KERNELS_ENV, "torch")
    assert resolve_kernels(None, CPU) is TORCH_KERNELS
    monkeypatch.setenv(KERNELS_ENV, "fast")
    with pytest.raises(RemoverError, match=r"unknown kernels 'fast' \(argument or \$RUNTIME_KERNELS\)"):
        resolve_kernels(None, CPU)
    monkeypatch.setattr(triton_support, "INTERPRETED", False)
    with pytest.raises(RemoverError, match="run only in Triton's interpreter: start with TRITON_INTERPRET=1"):
        resolve_kernels("triton", CPU)
    monkeypatch.setattr(triton_support, "AVAILABLE", False)
    with pytest.raises(RemoverError, match="need the triton package"):
        resolve_kernels("triton", CPU)
    assert resolve_kernels("auto", torch.device("cuda")) is TORCH_KERNELS  # no Triton: the references


@pytest.mark.slow
@needs_triton
def test_remover_with_triton_kernels_denoises_like_the_references(checkpoint, expected):
    remover = Remover.from_pretrained(checkpoint, device=DEVICE, dtype="fp32", kernels="triton", attention="math")
    assert remover.backends == "attention math, kernels triton"
    assert all(block.kernels is block.attn1.kernels is TRITON_KERNELS for block in remover.transformer.blocks)
    reference = Remover.from_pretrained(checkpoint, device=DEVICE, dtype="fp32", kernels="torch", attention="math")
    noise, context = expected["noise"].to(DEVICE), torch.randn(1, 32, 3, 8, 12, device=DEVICE)
    with torch.inference_mode():
        torch.testing.assert_close(remover.denoise(noise, context, 1), reference.denoise(noise, context, 1))


def test_compile_mode_errors(checkpoint):
    with pytest.raises(RemoverError, match="'cuda-graphs' needs a CUDA device"):
        Remover.from_pretrained(checkpoint, device="cpu", compile_mode="cuda-graphs")
    with pytest.raises(RemoverError, match="unknown compile mode 'max'"):
        Remover.from_pretrained(checkpoint, device="cpu", compile_mode="max")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("RUNTIME_TEST_INDUCTOR") != "1",
    reason="inductor's first CPU compile takes ~2.5 min with a cold cache on 2 cores; RUNTIME_TEST_INDUCTOR=1 runs it",
)
def test_compiled_denoising_step_matches_eager(checkpoint, expected):
    """torch.compile (inductor on the CPU) around the per-step model call: the latents of eager."""
    eager = Remover.from_pretrained(checkpoint, device="cpu")
    compiled = Remover.from_pretrained(checkpoint, device="cpu", compile_mode="inductor")
    assert compiled.backends.endswith(", compile inductor")
    noise, context = expected["noise"], torch.randn(1, 32, 3, 8, 12)
    with torch.inference_mode():
        torch.testing.assert_close(compiled.denoise(noise, context, 2), eager.denoise(noise, context, 2))


@pytest.mark.parametrize("model", ["released", "condition tokens"])
def test_denoising_step_traces_as_one_graph(model, checkpoint, tmp_path):
    """fullgraph tracing (what compile_mode relies on) of the per-step call: the released model, and
    a model with condition tokens through the cached K/V, alone and as the batched guidance call.
    aot_eager runs the traced graph without code generation (inductor: the opt-in test above)."""
    if model == "released":
        remover, guidance_scales = Remover.from_pretrained(checkpoint, device="cpu"), (None,)
    else:
        torch.manual_seed(fresh_seed())
        transformer = RemoverTransformer(TOKENS_CONFIG).eval()
        vae = WanVAE(replace(RELEASED_VAE, base_dim=8, num_res_blocks=1)).eval()
        save_checkpoint(tmp_path / "ckpt", transformer, vae, RELEASED_SCHEDULER, dtype=torch.float32)
        remover, guidance_scales = Remover.from_pretrained(tmp_path / "ckpt", device="cpu"), (None, 3.0)
    step = torch.compile(remover._model_velocity, backend="aot_eager", fullgraph=True, dynamic=False)
    model_input, timestep = torch.randn(1, 48, 2, 4, 6), torch.tensor([500.0])
    with torch.inference_mode():
        for guidance_scale in guidance_scales:
            expected = remover._model_velocity(model_input, timestep, guidance_scale)
            torch.testing.assert_close(step(model_input, timestep, guidance_scale), expected)


def test_cli_flags_reach_the_summary(checkpoint, fixture_inputs, tmp_path, capsys):
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir(), masks.mkdir()
    for index, (frame, mask) in enumerate(zip(*fixture_inputs)):
        Image.fromarray(frame).save(frames / f"{index:03d}.png")
        Image.fromarray(mask).save(masks / f"{index:03d}.png")
    out = tmp_path / "out.mp4"
    args = ["--video", str(frames), "--mask", str(masks), "--weights", str(checkpoint), "--out", str(out)]
    code = run.main([*args, "--height", "32", "--width", "48", "--attention", "math", "--kernels", "torch", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith(f"wrote {out}") and captured.out.rstrip().endswith("(attention math, kernels torch)")


def test_runtime_works_without_triton(checkpoint, expected):
    """A CPU-only install without Triton: the model runs on the references; asking for Triton is an error."""
    script = f"""
import sys
sys.modules["triton"] = None  # import triton now raises ImportError
import torch
from runtime import Remover, RemoverError
remover = Remover.from_pretrained({str(checkpoint)!r}, device="cpu", kernels="auto")
assert remover.backends.endswith("kernels torch"), remover.backends
try:
    Remover.from_pretrained({str(checkpoint)!r}, device="cpu", kernels="triton")
except RemoverError as error:
    print(error)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "need the triton package" in result.stdout
