"""TensorRT: the builder's shape profiles and precision checks (anywhere), and engines for the fixture
bundle run through the pipeline (needs TensorRT and a CUDA GPU; skipped with the reason otherwise;
never run on the machine these were written on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.tensorrt import Precision, has_fp8_quantization, profile_shapes
from runtime import Remover
from runtime.engines.graph_spec import GraphSpec, TensorSpec

TF32_PIXEL_TOLERANCE = 1e-2  # TensorRT may run fp32 layers in TF32 (its default on Ampere and later)


@pytest.fixture(scope="module")
def engine_bundle(checkpoint, tmp_path_factory):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pytest.skip("TensorRT is not installed (pip install tensorrt, on a machine with an NVIDIA GPU)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU and this machine has none")
    from export.onnx import build_bundle
    from export.tensorrt import build_engines

    bundle = tmp_path_factory.mktemp("tensorrt") / "tiny"
    build_bundle(checkpoint, bundle, height=64, width=96, frames=9, precision="fp32", log=lambda _: None)
    build_engines(bundle, device=torch.device("cuda"))
    return bundle


def test_profiles_are_the_exact_shapes_and_the_frame_axis_up_to_its_maximum():
    spec = GraphSpec(
        (TensorSpec("latents", (1, 48, "latent_frames", 60, 104)), TensorSpec("timestep", (1,))),
        (TensorSpec("velocity", (1, 16, "latent_frames", 60, 104)),),
    )
    assert profile_shapes(spec, 21) == {
        "latents": ((1, 48, 1, 60, 104), (1, 48, 21, 60, 104), (1, 48, 21, 60, 104)),
        "timestep": ((1,), (1,), (1,)),
    }


def test_fp8_needs_fp8_quantize_nodes_and_a_recent_gpu(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def graph_with_zero_point(dtype: int):
        zero = helper.make_tensor("zero", dtype, [], [0])
        scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0])
        node = helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["y"])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
        y = helper.make_tensor_value_info("y", dtype, [4])
        return helper.make_model(helper.make_graph([node], "q", [x], [y], [scale, zero]))

    for dtype, expected in ((TensorProto.FLOAT8E4M3FN, True), (TensorProto.INT8, False)):
        onnx.save(graph_with_zero_point(dtype), str(tmp_path / "q.onnx"))
        assert has_fp8_quantization(tmp_path / "q.onnx") is expected
    assert Precision.FP8.min_capability == (8, 9) and Precision.BF16.min_capability == (8, 0)


@pytest.mark.gpu
def test_engines_run_the_pipeline_like_the_reference(engine_bundle, expected, fixture_inputs):
    remover = Remover.from_bundle(engine_bundle, "tensorrt", "cuda")
    out = remover(*fixture_inputs, latents=expected["noise"], paste_back=False, progress=False)
    assert np.abs(out - expected["expected_frames"].numpy()).max() < TF32_PIXEL_TOLERANCE


@pytest.mark.gpu
def test_engines_are_keyed_and_described_in_the_manifest(engine_bundle):
    import tensorrt

    from runtime.engines.bundle import GRAPHS, read_manifest

    artifacts = read_manifest(engine_bundle).artifacts["tensorrt"]
    assert artifacts["key"]["tool"] == f"tensorrt {tensorrt.__version__}"
    assert artifacts["key"]["device"].startswith("sm_")
    assert set(artifacts["engines"]) == set(GRAPHS)
    assert all(e["engine_bytes"] > 0 and e["build_seconds"] > 0 for e in artifacts["engines"].values())
    assert (engine_bundle / "tensorrt" / "build.log").is_file()
