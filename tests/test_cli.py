"""`python -m runtime.run`: the demo, and one clear line with a non-zero exit for each bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_lines, run_main
from PIL import Image

from runtime import Remover, run
from runtime.io import read_clip
from runtime.pipeline.preprocess import dilate

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    return run_main(run.main, args, capsys)


@pytest.mark.slow
def test_demo_runs_end_to_end_as_a_subprocess(tmp_path):
    """The README's demo command, from a fresh process: exit 0, a summary line, a playable video."""
    out = tmp_path / "demo.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "runtime.run", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out} (21 frames)")
    for stage in ("encode", "denoise", "decode", "write"):
        assert f"{stage} " in result.stdout
    assert "denoise" in result.stderr  # progress bars
    clip = read_clip(out)
    assert clip.frames.shape == (21, 144, 256, 3) and clip.fps == 16


def test_tennis_to_png_folder_at_input_size(tennis, checkpoint, tmp_path, capsys):
    frames, masks = tennis
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        [
            "--video",
            str(frames),
            "--mask",
            str(masks),
            "--weights",
            str(checkpoint),
            "--height",
            "64",
            "--width",
            "112",
            "--resize",
            "antialias",  # the footprint below is this mode's: the masks dilated at the working size
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0 and stdout.startswith("wrote")
    result = read_clip(out).frames
    source = read_clip(frames).frames
    assert result.shape == source.shape == (9, 240, 432, 3)
    # 432 columns at 112: 3.86 pixels a working pixel. The blend reaches the mask's dilation (6 px at 480p
    # on this sub-480p frame = 1.6, 2 working px, a diamond), the shrinking footprint and the weights'
    # bilinear enlargement (each a working pixel in both axes, 2 along the diagonal): 6 working px of
    # city-block distance, 23.1 px. Beyond that every pixel is the input.
    outside = ~dilate(torch.from_numpy(read_clip(masks).frames.any(axis=-1)), 24).numpy()
    np.testing.assert_array_equal(result[outside], source[outside])  # PNGs are lossless: bit-exact
    assert (result[~outside] != source[~outside]).mean() > 0.5


def test_empty_mask_warns_and_writes_the_input(tennis, checkpoint, tmp_path, capsys):
    from PIL import Image

    frames, _ = tennis
    Image.new("L", (432, 240)).save(tmp_path / "empty.png")
    out = tmp_path / "out"
    code, _, stderr = run_cli(
        [
            "--video",
            str(frames),
            "--mask",
            str(tmp_path / "empty.png"),
            "--weights",
            str(checkpoint),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0
    assert "warning: the mask is empty" in stderr
    np.testing.assert_array_equal(read_clip(out).frames, read_clip(frames).frames)


def _corrupt_checkpoint(checkpoint: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "corrupt"
    shutil.copytree(checkpoint, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"\x00" * 64)
    return folder


def _wrong_config(checkpoint: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "wrong"
    shutil.copytree(checkpoint, folder)
    config = folder / "vae" / "config.json"
    config.chmod(0o644)
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_dim": 32}))
    return folder


def _mask_folder(masks: Path, tmp_path: Path, count: int, size: tuple[int, int] | None = None) -> Path:
    from PIL import Image

    folder = tmp_path / f"masks_{count}_{size}"
    folder.mkdir()
    for path in sorted(masks.iterdir())[:count]:
        image = Image.open(path)
        (image.resize(size) if size else image).save(folder / path.name)
    return folder


BAD_INPUTS = {
    "mask count": (lambda f, m, c, t: ["--video", f, "--mask", _mask_folder(m, t, 8)], "has 8 images, the video 9"),
    "mask size": (lambda f, m, c, t: ["--video", f, "--mask", _mask_folder(m, t, 9, (100, 100))], "100x100"),
    "height not a multiple of 16": (
        lambda f, m, c, t: ["--video", f, "--mask", m, "--height", "100"],
        "multiples of 16",
    ),
    "missing checkpoint": (
        lambda f, m, c, t: ["--video", f, "--mask", m, "--weights", t / "none"],
        "weights not found",
    ),
    "corrupt checkpoint": (
        lambda f, m, c, t: ["--video", f, "--mask", m, "--weights", _corrupt_checkpoint(c, t)],
        "cannot read weights",
    ),
    "wrong config": (
        lambda f, m, c, t: ["--video", f, "--mask", m, "--weights", _wrong_config(c, t)],
        "do not fit the model config",
    ),
    "unreadable video": (lambda f, m, c, t: ["--video", t / "x.mp4", "--mask", m], "cannot read video"),
    "missing output folder": (
        lambda f, m, c, t: ["--video", f, "--mask", m, "--out", t / "no" / "x.mp4"],
        "does not exist",
    ),
    "mask without video": (lambda f, m, c, t: ["--mask", m], "--mask and the prompts need --video"),
    "bad device": (lambda f, m, c, t: ["--video", f, "--mask", m, "--device", "tpu"], "device"),
    "dilation beyond the frame": (lambda f, m, c, t: ["--video", f, "--mask", m, "--dilate", "1000000"], "--dilate"),
    "context nan": (lambda f, m, c, t: ["--video", f, "--mask", m, "--context", "nan"], "--context must be a finite"),
    "context inf": (lambda f, m, c, t: ["--video", f, "--mask", m, "--context", "inf"], "--context must be a finite"),
    "context 1e308": (lambda f, m, c, t: ["--video", f, "--mask", m, "--context", "1e308"], "--context must be"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_error_line_and_no_output(case, tennis, checkpoint, tmp_path, capsys):
    frames, masks = tennis
    (tmp_path / "x.mp4").write_bytes(b"garbage" * 100)
    make_args, message = BAD_INPUTS[case]
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    args = [str(a) for a in make_args(frames, masks, checkpoint, tmp_path)]
    if "--out" not in args:
        args += ["--out", str(out_dir / "out.mp4")]
    if "--weights" not in args:
        args += ["--weights", str(checkpoint)]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 2
    assert len(error_lines(stderr)) == 1 and message in error_lines(stderr)[0], stderr
    assert "Traceback" not in stderr and stdout == ""
    assert list(out_dir.iterdir()) == []


def test_bad_input_in_a_fresh_process_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.run",
            "--video",
            str(tmp_path / "none.mp4"),
            "--mask",
            str(tmp_path / "none.png"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: video not found: {tmp_path / 'none.mp4'}"


def test_interrupt_exits_130_without_output(tennis, checkpoint, tmp_path, capsys, monkeypatch):
    frames, masks = tennis

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Remover, "run_window", interrupted)
    code, _, stderr = run_cli(
        ["--video", str(frames), "--mask", str(masks), "--weights", str(checkpoint), "--out", str(tmp_path / "o.mp4")],
        capsys,
    )
    assert code == 130 and "interrupted" in stderr
    assert not (tmp_path / "o.mp4").exists()


def test_a_checkpoint_with_a_nan_fails_and_writes_nothing(tennis, checkpoint, tmp_path, capsys):
    """One NaN in the transformer's weights used to write a garbage video and exit 0."""
    from runtime.models.weights import load_scheduler_config, load_transformer, load_vae, save_checkpoint

    cpu = torch.device("cpu")
    transformer = load_transformer(checkpoint / "transformer", cpu, torch.float32)
    with torch.no_grad():
        transformer.proj_out.weight[0, 0] = float("nan")
    broken = tmp_path / "broken"
    vae = load_vae(checkpoint / "vae", cpu, torch.float32)
    save_checkpoint(broken, transformer, vae, load_scheduler_config(None), torch.float32)
    frames, masks = tennis
    out = tmp_path / "out.mp4"
    args = ["--video", str(frames), "--mask", str(masks), "--weights", str(broken), "--out", str(out)]
    code, stdout, stderr = run_cli([*args, "--height", "64", "--width", "112"], capsys)
    assert code == 2 and stdout == ""
    assert len(error_lines(stderr)) == 1
    assert "the sampler's latents hold NaN or infinite values" in error_lines(stderr)[0] and "--dtype" in stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken", "frames", "masks"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mask", "m.mp4", "--box", "1,1,5,5"], "give --mask or prompts"),
        ([], "--video needs --mask, or prompts"),
        (["--mask", "m.mp4", "--save-mask", "k.mkv"], "--save-mask keeps the mask made from prompts"),
        (["--box", "1,1,5"], "--box"),
    ],
)
def test_mask_or_prompts_is_one_error_line(extra, message, tmp_path, capsys):
    code, stdout, stderr = run_cli(["--video", "clip.mp4", "--out", str(tmp_path / "o.mp4"), *extra], capsys)
    assert code == 2 and stdout == "" and len(error_lines(stderr)) == 1 and message in error_lines(stderr)[0], stderr
    assert list(tmp_path.iterdir()) == []


def test_the_output_is_never_the_mask_whatever_its_spelling(tennis, checkpoint, tmp_path, capsys):
    """--overwrite with --out naming the mask folder (by another spelling) or a file in it: one line, and
    the masks are untouched."""
    frames, masks = tennis
    before = sorted(p.name for p in masks.iterdir())
    for out in (masks.parent / "." / masks.name, masks / "mask_00000.png"):
        args = ["--video", frames, "--mask", masks, "--weights", checkpoint, "--out", out, "--overwrite"]
        code, stdout, stderr = run_cli([str(a) for a in args], capsys)
        assert code == 2 and stdout == "" and len(error_lines(stderr)) == 1 and "input" in error_lines(stderr)[0]
    assert sorted(p.name for p in masks.iterdir()) == before


def test_an_empty_mask_writes_the_input_unchanged_without_the_model(tennis, tmp_path, capsys, monkeypatch):
    """A mask that selects nothing: the frames are written unchanged (losslessly: the same pixels) and no
    model is loaded."""
    frames, _ = tennis

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for an empty mask")

    monkeypatch.setattr(Remover, "from_pretrained", no_model)
    black = tmp_path / "black.png"
    Image.new("L", (432, 240)).save(black)
    out = tmp_path / "out.mkv"
    code, stdout, stderr = run_cli(["--video", str(frames), "--mask", str(black), "--out", str(out)], capsys)
    assert code == 0, stderr
    assert "unchanged" in stdout and "the mask is empty" in stderr
    np.testing.assert_array_equal(read_clip(out).frames, read_clip(frames).frames)


def test_a_small_clip_is_not_upscaled_unless_asked(tennis, checkpoint, capsys):
    """The 432x240 tennis clip runs at its own size (rounded down to multiples of 16), 480p with --upscale."""
    frames, masks = tennis
    args = ["--video", str(frames), "--mask", str(masks), "--weights", str(checkpoint), "--dry-run", "--crop", "off"]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and "-> 432x240 (scale 1.00)" in stdout and "not upscaled" in stdout, stdout
    code, stdout, _ = run_cli([*args, "--upscale"], capsys)
    assert code == 0 and "-> 864x480" in stdout, stdout


def test_a_mask_covering_the_whole_frame_is_one_warning_and_in_the_plan(tennis, checkpoint, tmp_path, capsys):
    """An all-white mask (what an alpha mask read by its white RGB looked like): said, not silent."""
    frames, _ = tennis
    white = tmp_path / "white.png"
    Image.new("L", (432, 240), 255).save(white)
    args = ["--video", frames, "--mask", white, "--weights", checkpoint, "--dry-run"]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    warned = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "covers 98% or more of 9 of 9 frame(s)" in warned[0], stderr
    assert "note: the mask covers 98% or more" in stdout
