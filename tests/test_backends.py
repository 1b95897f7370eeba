"""The runtime's switches: kernels ("auto" | "triton" | "torch", $RUNTIME_KERNELS), attention backend
($RUNTIME_ATTENTION) and compile mode, through Remover.from_pretrained and the CLI's summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import fixed_seed, fresh_seed
from PIL import Image

from kernels import TORCH_KERNELS, TRITON_KERNELS, triton_support
from runtime import Remover, RemoverError, run
from runtime.errors import RemoverWarning
from runtime.execution import choices
from runtime.execution.attention import ATTENTION_ENV, MATH, SDPA, AttentionBackend
from runtime.execution.choices import CHECK_CACHE_ENV, KERNELS_ENV, resolve_kernels, verified_backends
from runtime.models.scheduler import RELEASED_SCHEDULER
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer, TransformerConfig
from runtime.models.vae import RELEASED_VAE, WanVAE
from runtime.models.weights import save_checkpoint

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
    assert remover.stages.transformer.blocks[1].attn1.kernels is TORCH_KERNELS


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
    assert all(block.kernels is block.attn1.kernels is TRITON_KERNELS for block in remover.stages.transformer.blocks)
    reference = Remover.from_pretrained(checkpoint, device=DEVICE, dtype="fp32", kernels="torch", attention="math")
    noise, context = expected["noise"].to(DEVICE), torch.randn(1, 32, 3, 8, 12, device=DEVICE)
    with torch.inference_mode():
        torch.testing.assert_close(remover.denoise(noise, context, 1), reference.denoise(noise, context, 1))


def test_compile_mode_errors(checkpoint):
    with pytest.raises(RemoverError, match="'cuda-graphs' needs a CUDA device"):
        Remover.from_pretrained(checkpoint, device="cpu", compile_mode="cuda-graphs")
    with pytest.raises(RemoverError, match="unknown compile mode 'max'"):
        Remover.from_pretrained(checkpoint, device="cpu", compile_mode="max")


def tiny_checkpoint(folder: Path, config: TransformerConfig) -> Path:
    """A released-layout checkpoint of a random transformer of `config` and a small VAE (fp32), in `folder`."""
    transformer = RemoverTransformer(config).eval()
    vae = WanVAE(replace(RELEASED_VAE, base_dim=8, num_res_blocks=1)).eval()
    save_checkpoint(folder, transformer, vae, RELEASED_SCHEDULER, dtype=torch.float32)
    return folder


@pytest.mark.slow
def test_inductor_compiled_steps_match_eager_on_a_one_layer_model(tmp_path):
    """compile_mode="inductor" on the CPU, in every run: a one-layer model with condition tokens goes
    through tracing, inductor's code generation and the C++ compiler (about 30 s with a cold cache on
    2 cores), and two compiled steps give the latents of eager, from one compilation (the second step
    once recompiled on the rotary cache the first filled). The fixture's model: the opt-in test below."""
    torch.manual_seed(fixed_seed())
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", replace(TOKENS_CONFIG, num_layers=1))
    eager = Remover.from_pretrained(checkpoint, device="cpu")
    compiled = Remover.from_pretrained(checkpoint, device="cpu", compile_mode="inductor")
    assert compiled.backends.endswith(", compile inductor")
    noise, context = torch.randn(1, 16, 2, 4, 6), torch.randn(1, 32, 2, 4, 6)
    with torch.inference_mode(), torch._dynamo.config.patch(error_on_recompile=True):
        torch.testing.assert_close(compiled.denoise(noise, context, 2), eager.denoise(noise, context, 2))


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("RUNTIME_TEST_INDUCTOR") != "1",
    reason="inductor's first CPU compile of the fixture's model adds about 30 s of CPU with a cold cache (28 s "
    "on 2026-12-03; the one-layer test above runs by default); RUNTIME_TEST_INDUCTOR=1 runs it",
)
def test_compiled_denoising_step_matches_eager(checkpoint, expected):
    """torch.compile (inductor on the CPU) around the per-step call of the fixture's model: the latents of eager."""
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
    aot_eager runs the traced graph without code generation (inductor: the tests above)."""
    if model == "released":
        remover, guidance_scales = Remover.from_pretrained(checkpoint, device="cpu"), (None,)
    else:
        torch.manual_seed(fresh_seed())
        remover = Remover.from_pretrained(tiny_checkpoint(tmp_path / "ckpt", TOKENS_CONFIG), device="cpu")
        guidance_scales = (None, 3.0)
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


# --- the self-check: fast choices verified against the references before use ----------------------


@pytest.fixture
def verdicts(tmp_path, monkeypatch):
    """A fresh verdicts file for the self-check."""
    path = tmp_path / "self-check.json"
    monkeypatch.setenv(CHECK_CACHE_ENV, str(path))
    return path


def _broken_sdpa(q, k, v):
    return MATH.run(q, k, v) * 0.5


@needs_triton
@pytest.mark.parametrize("config", [TOKENS_CONFIG, replace(TOKENS_CONFIG, num_condition_tokens=0)])
def test_working_choices_pass_the_self_check_silently(config, verdicts, recwarn):
    kernels, attention = verified_backends(TRITON_KERNELS, SDPA, config, DEVICE, torch.float32)
    assert kernels is TRITON_KERNELS and attention is SDPA
    assert not [w for w in recwarn if issubclass(w.category, RemoverWarning)]
    assert list(json.loads(verdicts.read_text()).values()) == [{"kernels": None, "attention": None}]


def test_a_wrong_kernel_falls_back_to_the_references_with_one_warning(verdicts):
    broken = replace(TORCH_KERNELS, name="broken", gated_residual=lambda x, y, gate: x)  # drops the branch
    with pytest.warns(RemoverWarning, match=r"the broken kernels failed on cpu in float32 \(relative error") as caught:
        kernels, attention = verified_backends(broken, SDPA, TOKENS_CONFIG, CPU, torch.float32)
    assert kernels is TORCH_KERNELS and attention is SDPA and len(caught) == 1


def test_a_kernel_that_raises_or_attention_that_is_wrong_fall_back(verdicts):
    def fails(*args):
        raise RuntimeError("PTX compile error\nmore detail")

    raising = replace(TORCH_KERNELS, name="raising", modulated_layer_norm=fails)
    wrong = AttentionBackend("flash-attn 2", _broken_sdpa)
    with pytest.warns(RemoverWarning) as caught:
        kernels, attention = verified_backends(raising, wrong, TOKENS_CONFIG, CPU, torch.float16)
    assert kernels is TORCH_KERNELS and attention is SDPA  # flash-attn -> SDPA (checked in turn, fine here)
    messages = [str(w.message) for w in caught]
    assert messages[0] == (
        "self-check: the raising kernels failed on cpu in float16 (RuntimeError: PTX compile error): "
        "using the PyTorch kernels"
    )
    assert messages[1].startswith("self-check: attention flash-attn 2 failed on cpu in float16 (relative error")
    assert messages[1].endswith("): using sdpa") and len(messages) == 2


def test_the_verdict_is_cached_and_a_cached_failure_still_warns(verdicts, monkeypatch):
    broken = replace(TORCH_KERNELS, name="broken", gated_residual=lambda x, y, gate: x)
    with pytest.warns(RemoverWarning):
        verified_backends(broken, SDPA, TOKENS_CONFIG, CPU, torch.float32)
    monkeypatch.setattr(choices, "_probe_output", None)  # a second check would crash
    with pytest.warns(RemoverWarning, match="the broken kernels failed"):
        assert verified_backends(broken, SDPA, TOKENS_CONFIG, CPU, torch.float32)[0] is TORCH_KERNELS
    assert verified_backends(TORCH_KERNELS, MATH, TOKENS_CONFIG, CPU, torch.float32) == (TORCH_KERNELS, MATH)
