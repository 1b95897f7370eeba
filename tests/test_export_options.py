"""Export options on the fixture transformer: a dynamic frame axis, fp16 and bf16 graphs, --no-check."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from conftest import fixed_seed, relative_error

from export.graphs import dit_graphs
from export.onnx import export_graph, export_program, write_onnx
from runtime.engines.graphs import open_graph
from runtime.models.scheduler import RELEASED_SCHEDULER
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer
from runtime.models.weights import load_transformer

pytestmark = pytest.mark.slow  # each export traces and translates the transformer (tens of seconds)

CPU = torch.device("cpu")


def exported_step(checkpoint, tmp_path, precision: str, dynamic_frames: bool):
    """The dit_step graph written as ONNX, with its graph description, for a fresh transformer in `precision`."""
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    transformer = load_transformer(checkpoint / "transformer", CPU, dtype)
    step, _ = dit_graphs(transformer, RELEASED_SCHEDULER, (3, 8, 12), dynamic_frames=dynamic_frames)
    spec = step.spec(step.reference_outputs())
    program = export_program(step, max_latent_frames=3)
    path = tmp_path / "dit_step.onnx"
    write_onnx(program, step, path, precision)
    return path, spec


def test_dynamic_frame_axis_runs_every_frame_count_up_to_the_maximum(checkpoint, tmp_path):
    path, spec = exported_step(checkpoint, tmp_path, "fp32", dynamic_frames=True)
    assert spec.inputs[0].shape == (1, 48, "latent_frames", 8, 12)
    graph = open_graph("onnxruntime", path, "dit_step", spec, CPU)
    transformer = load_transformer(checkpoint / "transformer", CPU, torch.float32)
    timestep = torch.tensor([749.0])
    for frames in (1, 2, 3):
        latents = torch.randn(1, 48, frames, 8, 12)
        with torch.no_grad():
            reference = transformer(latents, timestep)
        assert relative_error(graph(latents, timestep)[0], reference) < 1e-4, frames


def test_fp16_graph_matches_the_reference_fixture_within_fp16_error(checkpoint, tmp_path, expected):
    path, spec = exported_step(checkpoint, tmp_path, "fp16", dynamic_frames=False)
    velocity = open_graph("onnxruntime", path, "dit_step", spec, CPU)(
        expected["dit_input"], expected["dit_timestep"].float()
    )
    assert relative_error(velocity[0], expected["dit_output"]) < 1e-2


def test_bf16_graph_is_valid_onnx(checkpoint, tmp_path):
    import onnx

    path, _ = exported_step(checkpoint, tmp_path, "bf16", dynamic_frames=False)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    sizes = {}  # elements per initializer dtype: the weights are bf16, the RoPE tables fp32 (RoPE runs in fp32)
    for tensor in model.graph.initializer:
        sizes[tensor.data_type] = sizes.get(tensor.data_type, 0) + math.prod(tensor.dims)
    assert sizes[onnx.TensorProto.BFLOAT16] > 0.8 * sum(sizes.values())


def test_condition_token_models_export_with_the_remove_token_baked_in(tmp_path):
    tiny = {"num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 48, "num_layers": 2}
    config = replace(RELEASED_TRANSFORMER, **tiny, num_condition_tokens=6)
    torch.manual_seed(fixed_seed())
    transformer = RemoverTransformer(config).eval().requires_grad_(False)
    transformer.cache_condition_kv()
    step, _ = dit_graphs(transformer, RELEASED_SCHEDULER, (2, 4, 6))
    path = tmp_path / "dit_step.onnx"
    write_onnx(export_program(step, max_latent_frames=2), step, path, "fp32")
    graph = open_graph("onnxruntime", path, "dit_step", step.spec(step.reference_outputs()), CPU)
    latents, timestep = torch.randn(1, 48, 2, 4, 6), torch.tensor([599.0])
    with torch.no_grad():
        remove, regenerate = transformer(latents, timestep, 0), transformer(latents, timestep, 1)
    velocity = graph(latents, timestep)[0]
    assert relative_error(velocity, remove) < 1e-4
    assert relative_error(velocity, regenerate) > 1e-3  # the token matters, and it is "remove"


def test_no_check_takes_the_output_shapes_from_the_trace_and_says_so(checkpoint, tmp_path):
    transformer = load_transformer(checkpoint / "transformer", CPU, torch.float32)
    step, _ = dit_graphs(transformer, RELEASED_SCHEDULER, (3, 8, 12))
    # the parts of a Manifest that export_graph fills in
    manifest = SimpleNamespace(precision="fp32", graphs={}, artifacts={"onnx": {"key": {}, "files": {}, "checks": {}}})
    (tmp_path / "onnx").mkdir()
    export_graph(step, manifest, tmp_path, 3, check=False, log=lambda _: None)
    reference = step.reference_outputs()
    assert manifest.graphs["dit_step"] == step.spec(reference)
    assert manifest.artifacts["onnx"]["checks"]["dit_step"]["not_checked"] == "exported with --no-check"
    graph = open_graph("onnxruntime", tmp_path / "onnx" / "dit_step.onnx", "dit_step", manifest.graphs["dit_step"], CPU)
    assert relative_error(graph(*step.inputs.values())[0], reference[0]) < 1e-4  # unchecked, but still right
