"""The C++ host (export/cpp): built with CMake against the torch wheel's libtorch, run on the session
bundle's AOTInductor packages, compared with the reference fixture."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils
from conftest import NEEDS_AOTI, PIXEL_TOLERANCE

from runtime.pipeline.preprocess import prepare_masks, prepare_video
from runtime.pipeline.remover import encoder_batch

pytestmark = [pytest.mark.slow, NEEDS_AOTI]  # a C++ build and the session bundle's AOTInductor compiles

SOURCE = Path(__file__).resolve().parents[1] / "export" / "cpp"


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> Path:
    """remover_host, configured and built once per session."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake and a C++ compiler are needed to build export/cpp")
    build = tmp_path_factory.mktemp("cpp-build")
    configure = ["cmake", "-S", str(SOURCE), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    for command in (configure, ["cmake", "--build", str(build)]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return build / "remover_host"


def test_cpp_host_runs_the_bundle_like_the_reference(host, tiny_bundle, expected, fixture_inputs, tmp_path):
    frames, masks = fixture_inputs
    video = prepare_video(frames, (64, 96), torch.device("cpu"))
    _, mask = prepare_masks(masks != 0, 6, (64, 96), torch.device("cpu"))
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir(), outputs.mkdir()
    encoder_batch(video, mask).numpy().astype("<f4").tofile(inputs / "video.f32")
    expected["noise"].numpy().astype("<f4").tofile(inputs / "noise.f32")

    result = subprocess.run(
        [str(host), str(tiny_bundle), str(inputs), str(outputs)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {outputs}/video.f32 [1, 3, 9, 64, 96]")
    decoded = np.fromfile(outputs / "video.f32", dtype="<f4").reshape(1, 3, 9, 64, 96)
    pixels = np.clip(decoded[0] / 2 + 0.5, 0, 1).transpose(1, 2, 3, 0)
    assert np.abs(pixels - expected["expected_frames"].numpy()).max() < PIXEL_TOLERANCE
    assert np.fromfile(outputs / "latents.f32", dtype="<f4").size == 16 * 3 * 8 * 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{bundle}", "{missing}", "{out}"], "error: cannot read"),
        (["{bundle}", "{inputs}", "{out}", "--backend", "openvino"], "error: backend openvino is not built"),
        (["{missing}", "{inputs}", "{out}"], "error: "),
    ],
)
def test_cpp_host_errors_are_one_line(host, tiny_bundle, tmp_path, args, message):
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.zeros(10, dtype="<f4").tofile(inputs / "video.f32")
    paths = {"bundle": tiny_bundle, "missing": tmp_path / "missing", "inputs": inputs, "out": tmp_path}
    result = subprocess.run(
        [str(host), *(a.format(**paths) for a in args)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
