"""The export commands' bad-input handling: one `error:` line, exit status 2, nothing written."""

from __future__ import annotations

import pytest
import torch

from export import onnx as export_onnx
from export import tensorrt as export_tensorrt


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "10"], "frames must be 4k+1"),
        (["--height", "50"], "multiples of 16"),
        (["--weights", "/nonexistent"], "weights not found"),
        (["--out", "{existing}"], "already exists"),
    ],
)
def test_export_onnx_bad_input_is_one_line(checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "bundle"
    base = {"--weights": str(checkpoint), "--height": "64", "--width": "96", "--frames": "9", "--out": str(out)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value.format(existing=tmp_path)
    code = export_onnx.main([item for pair in base.items() for item in pair] + ["--dtype", "fp32"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.partial")]


def test_export_tensorrt_without_tensorrt_or_gpu_is_one_line(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401

        if torch.cuda.is_available():
            pytest.skip("TensorRT and a GPU are present: tests/test_tensorrt.py builds engines")
    except ImportError:
        pass
    assert export_tensorrt.main(["--bundle", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and ("TensorRT" in err[0] or "CUDA" in err[0])


def test_a_bundle_another_export_is_writing_is_one_line(checkpoint, tmp_path, capsys):
    """Two exports of one bundle at once: the second stops at once with one line (the first's claim),
    and nothing of the first's is touched; a dead exporter's staging folder is removed."""
    import subprocess

    out = tmp_path / "bundle"
    other = subprocess.Popen(["sleep", "60"])  # a live process holding the bundle's claim
    try:
        (tmp_path / ".bundle.lock").write_text(str(other.pid))
        staging = tmp_path / f".bundle.partial-{other.pid}"
        staging.mkdir()
        args = ["--weights", str(checkpoint), "--height", "64", "--width", "96", "--frames", "9", "--out", str(out)]
        assert export_onnx.main([*args, "--dtype", "fp32"]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"process {other.pid}" in errors[0], errors
        assert staging.is_dir() and not out.exists()  # a live exporter's work is left alone
    finally:
        other.kill()
        other.wait()
