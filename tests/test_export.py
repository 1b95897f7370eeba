"""Exported graphs (ONNX through onnxruntime, AOTInductor packages) against PyTorch and the reference fixture.

The bundle is exported once per session (conftest.tiny_bundle). Oracles: the fixture's reference
outputs (transformer call, whole pipeline) and the PyTorch modules run directly (VAE streaming,
sampler loop), never the exporter's own numbers.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NEEDS_AOTI, PIXEL_TOLERANCE, WITH_AOTI, fixed_seed, relative_error

from runtime import Remover, RemoverError
from runtime.engines.bundle import GRAPHS, BundleStages, checkpoint_sha256, read_manifest
from runtime.engines.graphs import BACKENDS as ENGINES
from runtime.models.transformer import RELEASED_TRANSFORMER
from runtime.models.weights import load_scheduler_config, load_transformer, load_vae, locate_checkpoint, save_checkpoint
from runtime.pipeline.samplers import make_sampler
from runtime.pipeline.stages import denoise_loop

pytestmark = pytest.mark.slow  # every test here uses the session's exported bundle

BACKENDS = ["onnxruntime", pytest.param("aoti", marks=NEEDS_AOTI)]
TOLERANCE = 1e-4  # fp32 graphs vs PyTorch / the fixture, relative L2 (the fixture README's bound)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def stages(tiny_bundle) -> dict[str, BundleStages]:
    """The bundle on each CPU backend it has artifacts for."""
    built = read_manifest(tiny_bundle).artifacts
    return {
        name: BundleStages.load(tiny_bundle, name, CPU)
        for name in ("onnxruntime", "aoti")
        if ENGINES[name].artifact in built
    }


@pytest.fixture(scope="module")
def vae(checkpoint):
    return load_vae(checkpoint / "vae", CPU, torch.float32)


@pytest.fixture(scope="module")
def transformer(checkpoint):
    return load_transformer(checkpoint / "transformer", CPU, torch.float32)


def test_manifest_describes_the_bundle(tiny_bundle, checkpoint, vae):
    raw = json.loads((tiny_bundle / "manifest.json").read_text())
    assert raw["format"] == "minimax-remover-bundle" and raw["format_version"] == 2
    assert raw["shape"] == {
        "height": 64,
        "width": 96,
        "frames": 9,
        "dynamic_frames": False,
        "latent": [3, 8, 12],
        "tokens": 3 * 4 * 6,
    }
    assert raw["precision"] == "fp32" and raw["io_dtype"] == "fp32"
    assert raw["schedule"]["timesteps"] == [999, 937, 856, 749, 599, 374]  # REFERENCE_MODEL.md, 6 steps
    assert raw["schedule"]["sigmas"][-1] == 0.0
    assert raw["latents_mean"] == list(vae.config.latents_mean) and raw["latents_std"] == list(vae.config.latents_std)
    assert "127.5" in raw["input_normalization"]["video"]
    assert raw["checkpoint_sha256"] == checkpoint_sha256(locate_checkpoint(checkpoint))
    assert {"torch", "onnx", "onnxruntime"} <= set(raw["tools"])
    assert set(raw["artifacts"]) == ({"onnx", "aoti"} if WITH_AOTI else {"onnx"})
    for kind in raw["artifacts"]:
        assert set(raw["artifacts"][kind]["files"]) == set(GRAPHS)
        assert raw["artifacts"][kind]["key"]["checkpoint_sha256"] == raw["checkpoint_sha256"]
    # the causal caches: one per layer that carries frames, 2 frames each (1 for temporal downsamplers)
    encode = raw["graphs"]["vae_encode_next"]
    caches = [t for t in encode["inputs"] if t["name"].startswith("cache_in_")]
    assert len(caches) == len(encode["cache_layers"]) == len(encode["outputs"]) - 1
    assert {c["shape"][2] for c in caches} == {1, 2}


@pytest.mark.parametrize("backend", BACKENDS)
def test_transformer_step_matches_reference_fixture(stages, expected, backend):
    velocity = stages[backend].velocity(expected["dit_input"], expected["dit_timestep"].float())
    assert velocity.shape == expected["dit_output"].shape
    assert relative_error(velocity, expected["dit_output"]) < TOLERANCE


@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_graphs_stream_like_the_pytorch_vae(stages, vae, backend):
    seed = fixed_seed()
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(1, 3, 9, 64, 96, generator=generator) * 2 - 1
    latents = torch.randn(1, 16, 3, 8, 12, generator=generator)
    with torch.no_grad():
        encoded, decoded = vae.encode(video), vae.decode(latents)
    assert relative_error(torch.cat(list(stages[backend].iter_encode(video)), 2), encoded) < TOLERANCE, seed
    assert relative_error(torch.cat(list(stages[backend].iter_decode(latents)), 2), decoded) < TOLERANCE, seed


@pytest.mark.parametrize("backend", BACKENDS)
def test_unrolled_sampler_equals_six_single_steps_and_pytorch(stages, transformer, checkpoint, backend):
    seed = fixed_seed()
    generator = torch.Generator().manual_seed(seed)
    noise, context = (
        torch.randn(1, 16, 3, 8, 12, generator=generator),
        torch.randn(1, 32, 3, 8, 12, generator=generator),
    )
    scheduler = load_scheduler_config(checkpoint / "scheduler" / "scheduler_config.json")
    bundle = stages[backend]
    unrolled = bundle.unrolled_sampler("unipc", 6)(noise, context)
    single_steps = denoise_loop(bundle.velocity, make_sampler("unipc", scheduler, 6), noise, context)
    with torch.no_grad():
        pytorch = denoise_loop(transformer, make_sampler("unipc", scheduler, 6), noise, context)
    assert unrolled.shape == noise.shape
    assert relative_error(unrolled, single_steps) < 1e-5, seed
    assert relative_error(unrolled, pytorch) < TOLERANCE, seed
    assert bundle.unrolled_sampler("unipc", 4) is None and bundle.unrolled_sampler("euler", 6) is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_pipeline_on_the_bundle_matches_the_reference(tiny_bundle, expected, fixture_inputs, backend):
    remover = Remover.from_bundle(tiny_bundle, backend, "cpu")
    out = remover(*fixture_inputs, latents=expected["noise"], paste_back=False, progress=False)  # the bundle's size
    assert out.shape == (9, 64, 96, 3)
    assert np.abs(out - expected["expected_frames"].numpy()).max() < PIXEL_TOLERANCE
    assert set(remover.timings) >= {"encode", "denoise", "decode"}


def test_other_step_counts_run_the_single_step_graph_in_the_loop(tiny_bundle, checkpoint, fixture_inputs):
    on_bundle = Remover.from_bundle(tiny_bundle, "onnxruntime", "cpu", sampler="euler")
    on_pytorch = Remover.from_pretrained(checkpoint, "cpu", sampler="euler")
    kwargs = {"height": 64, "width": 96, "num_inference_steps": 3, "paste_back": False, "progress": False}
    np.testing.assert_allclose(on_bundle(*fixture_inputs, **kwargs), on_pytorch(*fixture_inputs, **kwargs), atol=1e-4)


def test_onnx_graphs_have_real_rope_fusable_attention_and_shared_weights(tiny_bundle, transformer):
    import onnx

    step = onnx.load(str(tiny_bundle / "onnx" / "dit_step.onnx"))
    unrolled = onnx.load(str(tiny_bundle / "onnx" / "dit_sampler.onnx"))
    layers = transformer.config.num_layers
    for graph, calls in ((step, 1), (unrolled, 6)):
        producers = {out: node for node in graph.graph.node for out in node.output}
        softmaxes = [node for node in graph.graph.node if node.op_type == "Softmax"]
        assert len(softmaxes) == layers * calls
        # MatMul(Q, K^T) -> Softmax -> MatMul(., V): the pattern TensorRT fuses into one attention kernel
        assert all(producers[s.input[0]].op_type == "MatMul" for s in softmaxes)
        after = {s.output[0]: [n.op_type for n in graph.graph.node if s.output[0] in n.input] for s in softmaxes}
        assert all(ops == ["MatMul"] for ops in after.values())
        tensor_types = {v.type.tensor_type.elem_type for v in [*graph.graph.input, *graph.graph.output]}
        assert tensor_types == {onnx.TensorProto.FLOAT}  # fp32 I/O
        assert not any(t.data_type == onnx.TensorProto.DOUBLE for t in graph.graph.initializer)  # fp32 RoPE tables
    weights = [sum(int(np.prod(t.dims)) for t in g.graph.initializer) for g in (step, unrolled)]
    assert weights[1] < 1.2 * weights[0]  # the six unrolled steps share one copy of the weights


def test_bundle_for_another_size_or_frame_count_is_a_clear_error(tiny_bundle, fixture_inputs):
    remover = Remover.from_bundle(tiny_bundle, "onnxruntime", "cpu")
    frames, masks = fixture_inputs
    with pytest.raises(RemoverError, match="exported for 96x64"):
        remover(frames, masks, height=32, width=48, progress=False)
    with pytest.raises(RemoverError, match="exactly 9 frames"):
        remover(frames[:5], masks[:5], progress=False)


def test_dynamic_frame_bundles_take_up_to_their_frame_count(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    manifest.dynamic_frames = True
    stages = BundleStages(manifest, {}, CPU, "onnxruntime")
    for frames in (1, 5, 9):
        stages.check_size(frames, 64, 96)
    with pytest.raises(RemoverError, match="at most 9 frames"):
        stages.check_size(13, 64, 96)


def _fixture_clip_args(fixture_dir: Path, folder: Path) -> list[str]:
    """CLI arguments for the fixture's frames and masks, linked into two folders under `folder`."""
    frames, masks = folder / "frames", folder / "masks"
    frames.mkdir(), masks.mkdir()
    for path in sorted((fixture_dir / "inputs").iterdir()):
        (frames if path.name.startswith("frame_") else masks).joinpath(path.name).symlink_to(path)
    return ["--video", str(frames), "--mask", str(masks), "--quiet"]


def test_bundle_from_another_model_is_a_clear_error(tiny_bundle, checkpoint, fixture_dir, tmp_path, capsys):
    from runtime import run

    Remover.from_bundle(tiny_bundle, "onnxruntime", "cpu", weights=checkpoint)  # its own checkpoint fits
    transformer = load_transformer(checkpoint / "transformer", CPU, torch.float32)
    with torch.no_grad():
        transformer.proj_out.bias.add_(0.01)
    other = tmp_path / "other"
    save_checkpoint(
        other, transformer, load_vae(checkpoint / "vae", CPU, torch.float32), read_manifest(tiny_bundle).scheduler
    )
    with pytest.raises(RemoverError, match="exported from another model"):
        Remover.from_bundle(tiny_bundle, "onnxruntime", "cpu", weights=other)
    out = tmp_path / "out.mp4"
    args = [*_fixture_clip_args(fixture_dir, tmp_path), "--engine", str(tiny_bundle), "--weights", str(other)]
    assert run.main([*args, "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "exported from another model" in errors[0] and not out.exists()


def _edited_copy(bundle: Path, destination: Path, edit) -> Path:
    shutil.copytree(bundle, destination, ignore=shutil.ignore_patterns("aoti"))
    manifest = json.loads((destination / "manifest.json").read_text())
    edit(manifest)
    (destination / "manifest.json").write_text(json.dumps(manifest))
    return destination


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=99), "format version 99"),
        (lambda m: m["graphs"]["dit_step"]["inputs"][0].update(shape=[1, 48, 3, 4, 6]), "does not match the bundle"),
        (lambda m: m["artifacts"]["onnx"]["key"].update(checkpoint_sha256="0" * 64), "do not fit"),
        (lambda m: m["artifacts"]["onnx"]["files"].pop("dit_sampler"), "lack the graph 'dit_sampler'"),
        (lambda m: m["artifacts"].pop("aoti", None), "no aoti artifacts"),
    ],
)
def test_inconsistent_bundles_are_refused(tiny_bundle, tmp_path, edit, message):
    bundle = _edited_copy(tiny_bundle, tmp_path / "bundle", edit)
    backend = "aoti" if "aoti" in message else "onnxruntime"
    with pytest.raises(RemoverError, match=message):
        Remover.from_bundle(bundle, backend, "cpu")


def test_missing_bundle_and_unknown_backend(tiny_bundle, tmp_path):
    with pytest.raises(RemoverError, match="not an engine bundle"):
        Remover.from_bundle(tmp_path, "onnxruntime", "cpu")
    with pytest.raises(RemoverError, match="unknown backend"):
        Remover.from_bundle(tiny_bundle, "openvino", "cpu")


def test_tensorrt_backend_without_tensorrt_is_a_clear_error(tiny_bundle):
    if _tensorrt_and_gpu():
        pytest.skip("TensorRT and a GPU are present: the engine tests cover this backend")
    with pytest.raises(RemoverError, match="TensorRT|CUDA"):
        Remover.from_bundle(tiny_bundle, "tensorrt", "cpu")


def _tensorrt_and_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_cli_runs_a_bundle_like_the_pytorch_modules(tiny_bundle, checkpoint, fixture_dir, tmp_path, capsys):
    from PIL import Image

    from runtime import run

    args = [*_fixture_clip_args(fixture_dir, tmp_path), "--no-paste-back"]
    engine = [*args, "--engine", str(tiny_bundle)]
    assert run.main([*engine, "--out", str(tmp_path / "bundle")]) == 0  # the bundle's size: 96x64
    summary = capsys.readouterr().out
    assert summary.startswith(f"wrote {tmp_path / 'bundle'} (9 frames)") and "(bundle onnxruntime, fp32)" in summary
    pytorch = [*args, "--weights", str(checkpoint), "--height", "64", "--width", "96"]
    assert run.main([*pytorch, "--out", str(tmp_path / "pytorch")]) == 0

    def read(folder: Path) -> np.ndarray:
        return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.iterdir())]).astype(int)

    assert np.abs(read(tmp_path / "bundle") - read(tmp_path / "pytorch")).max() <= 1  # uint8 rounding

    bad = (
        (["--height", "32", "--width", "48"], "exported for 96x64"),
        (["--dtype", "fp16"], "--dtype: not with --engine"),
        (["--kernels", "torch", "--compile", "inductor"], "--kernels, --compile: not with --engine"),
    )
    for extra, message in bad:
        assert run.main([*engine, "--out", str(tmp_path / "again"), *extra]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0]
        assert not (tmp_path / "again").exists()


def test_a_clip_longer_than_a_static_bundle_runs_in_windows_of_its_length(tiny_bundle, data_dir, tmp_path, capsys):
    from runtime import run
    from runtime.io import open_clip

    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir(), masks.mkdir()
    for name in sorted(p.name for p in (data_dir / "tennis" / "frames").iterdir())[:20]:
        (frames / name).symlink_to(data_dir / "tennis" / "frames" / name)
        (masks / name).symlink_to(data_dir / "tennis" / "masks" / name)
    out = tmp_path / "out.mp4"
    code = run.main(["--video", str(frames), "--mask", str(masks), "--engine", str(tiny_bundle), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "20 frames of 432x240 in 4 window(s) (" in captured.err and ", overlap 4); whole frame" in captured.err
    for line in [line for line in captured.err.splitlines() if line.startswith("  window")]:
        assert "-> 96x64" in line  # every window is the bundle's 9 frames at its size
    assert open_clip(out).info.frame_count == 20


def test_preview_with_an_engine_draws_the_plan_the_bundle_allows(tiny_bundle, data_dir, tmp_path, capsys):
    """--preview with --engine plans with the bundle's size and frame count (it needs the bundle loaded)."""
    from runtime import run
    from runtime.io import open_clip

    frames = data_dir / "tennis" / "frames"
    masks = data_dir / "tennis" / "masks"
    out = tmp_path / "preview.mp4"
    code = run.main(["--video", str(frames), "--mask", str(masks), "--engine", str(tiny_bundle), "--preview", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    windows = [line for line in captured.err.splitlines() if line.startswith("  window")]
    assert windows and all("-> 96x64" in line for line in windows)
    assert open_clip(out).info.frame_count == open_clip(frames).info.frame_count


def test_the_backend_is_chosen_for_the_device_when_none_is_named(tiny_bundle):
    from runtime.engines.bundle import choose_backend

    assert choose_backend(tiny_bundle, CPU) == "onnxruntime"
    assert Remover.from_bundle(tiny_bundle, device="cpu").backends == "bundle onnxruntime, fp32"


def test_onnxruntime_refuses_to_materialize_huge_attention_scores(tiny_bundle):
    from runtime.engines.bundle import check_onnxruntime_attention

    manifest = read_manifest(tiny_bundle)
    dit_graph = tiny_bundle / manifest.artifacts["onnx"]["files"]["dit_step"]
    check_onnxruntime_attention(manifest, dit_graph)  # the tiny bundle's scores are small
    released = replace(manifest, transformer=RELEASED_TRANSFORMER, height=480, width=832, frames=81, precision="fp16")
    with pytest.raises(
        RemoverError, match=r"ONNX Runtime would hold 26 GB of attention scores per layer .* 32760 tokens"
    ):
        check_onnxruntime_attention(released, dit_graph)
