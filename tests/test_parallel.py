"""One clip over several processes (runtime/distributed/), on the CPU with gloo: `torchrun` starts
tests/parallel_entry.py, and the result is compared with the fixture's reference frames and with one
process. Ulysses needs the rank count to divide the head count; the fixture's model has 2 heads, so
3 ranks run pure ring attention, and a 6-head model covers Ulysses over 3 and ulysses 2 x ring 2."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PIXEL_TOLERANCE, fixed_seed
from PIL import Image

from runtime import Remover
from runtime.distributed import sequence
from runtime.models.scheduler import RELEASED_SCHEDULER
from runtime.models.transformer import RELEASED_TRANSFORMER, RemoverTransformer
from runtime.models.vae import RELEASED_VAE, WanVAE
from runtime.models.weights import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).with_name("parallel_entry.py")
FP32_TOLERANCE = 1e-5  # the same computation split over ranks: fp32 rounding of other summation orders

pytestmark = pytest.mark.slow


def torchrun(ranks: int, *arguments: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """tests/parallel_entry.py ARGUMENTS on `ranks` CPU processes."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    return subprocess.run(
        [*command, str(ENTRY), *arguments], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def removed_on_ranks(ranks: int, fixture_dir: Path, checkpoint: Path, out: Path) -> np.ndarray:
    result = torchrun(ranks, "api", str(fixture_dir), str(checkpoint), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


@pytest.fixture(scope="module")
def six_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random checkpoint whose 6 heads split over 2, 3 and 6 ranks (condition tokens included)."""
    torch.manual_seed(fixed_seed())
    config = replace(
        RELEASED_TRANSFORMER,
        num_attention_heads=6,
        attention_head_dim=16,
        ffn_dim=96,
        num_layers=2,
        num_condition_tokens=6,
    )
    folder = tmp_path_factory.mktemp("six-heads")
    vae = WanVAE(replace(RELEASED_VAE, base_dim=8, num_res_blocks=1)).eval()
    save_checkpoint(folder, RemoverTransformer(config).eval(), vae, RELEASED_SCHEDULER, dtype=torch.float32)
    return folder


def test_token_bounds_share_any_length():
    assert sequence.token_bounds(10, 3) == [0, 3, 6, 10]
    assert sequence.token_bounds(2, 3) == [0, 0, 1, 2]


@pytest.mark.parametrize("chunk_bytes", [1 << 28, 4096], ids=["one chunk", "many chunks"])
def test_blockwise_attention_and_its_log_sum_exp(chunk_bytes, monkeypatch):
    """The ring's block attention (fp32, queries in chunks of at most SCORE_CHUNK_BYTES of scores) is
    softmax attention, and merging two key blocks by log-sum-exp gives attention over both."""
    monkeypatch.setattr(sequence, "SCORE_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(fixed_seed())
    q, k, v = torch.randn(2, 37, 3, 16), torch.randn(2, 41, 3, 16), torch.randn(2, 41, 3, 16)
    exact = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    out, lse = sequence.attention_with_lse(q, k, v)
    torch.testing.assert_close(out, exact)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / 4.0
    torch.testing.assert_close(lse, scores.logsumexp(-1))
    (a, lse_a), (b, lse_b) = (
        sequence.attention_with_lse(q, k[:, :30], v[:, :30]),
        sequence.attention_with_lse(q, k[:, 30:], v[:, 30:]),
    )
    merged = sequence.merge_blocks(a, lse_a, b, lse_b)
    torch.testing.assert_close(merged[0], exact)
    torch.testing.assert_close(merged[1], lse)


@pytest.mark.parametrize("ranks", [2, 3], ids=["ulysses 2", "ring 3"])
def test_fixture_on_ranks_matches_the_reference(ranks, fixture_dir, checkpoint, expected, tmp_path):
    """The fixture's model (2 heads) over 2 ranks (Ulysses) and 3 (ring): the reference's frames."""
    frames = removed_on_ranks(ranks, fixture_dir, checkpoint, tmp_path / "out.npy")
    assert np.abs(frames - expected["expected_frames"].numpy()).max() < PIXEL_TOLERANCE
    single = Remover.from_pretrained(checkpoint, device="cpu")(
        *fixture_arrays(fixture_dir), height=64, width=96, latents=expected["noise"], paste_back=False, progress=False
    )
    assert np.abs(frames - single).max() < FP32_TOLERANCE


@pytest.mark.parametrize("ranks", [3, 4], ids=["ulysses 3", "ulysses 2 x ring 2"])
def test_six_head_model_on_ranks_matches_one_process(ranks, six_heads, fixture_dir, expected, tmp_path):
    frames = removed_on_ranks(ranks, fixture_dir, six_heads, tmp_path / "out.npy")
    single = Remover.from_pretrained(six_heads, device="cpu")(
        *fixture_arrays(fixture_dir), height=64, width=96, latents=expected["noise"], paste_back=False, progress=False
    )
    assert np.abs(frames - single).max() < FP32_TOLERANCE


def fixture_arrays(fixture_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    inputs = fixture_dir / "inputs"
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted(inputs.glob("frame_*.png"))])
    masks = np.stack([np.asarray(Image.open(p).convert("L")) for p in sorted(inputs.glob("mask_*.png"))])
    return frames, masks


def write_moving_patch_clip(folder: Path, count: int, height: int, width: int) -> tuple[Path, Path]:
    """PNG folders of `count` frames (smooth ramps) and masks of a square moving across them."""
    frames_dir, masks_dir = folder / "frames", folder / "masks"
    frames_dir.mkdir(parents=True), masks_dir.mkdir()
    y, x = np.mgrid[0:height, 0:width]
    for i in range(count):
        frame = np.stack([x * 200 // width + 20 + 3 * i, y * 200 // height + 30, (x + y) * 100 // (height + width)], -1)
        Image.fromarray(frame.astype(np.uint8)).save(frames_dir / f"{i:04d}.png")
        left = 8 + i * (width - 40) // count
        mask = np.zeros((height, width), np.uint8)
        mask[height // 3 : height // 3 + 24, left : left + 24] = 255
        Image.fromarray(mask).save(masks_dir / f"{i:04d}.png")
    return frames_dir, masks_dir


def read_pngs(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


@pytest.mark.parametrize(
    "blend, shared_by", [("continue", "over 2 ranks (ulysses 2 x ring 1)"), ("crossfade", "windows shared by 2 ranks")]
)
def test_long_clip_in_windows_on_two_ranks_matches_one_process(blend, shared_by, checkpoint, tmp_path):
    """29 frames in 4 windows of 9 (2 shared) through the CLI, on 2 ranks and on one: the same frames
    (up to one level where fp32 rounding differs). Continued windows depend on the one before, so
    each is split by sequence; crossfaded ones are independent, so each rank takes whole windows."""
    frames, masks = write_moving_patch_clip(tmp_path, 29, 64, 96)
    arguments = ["--video", str(frames), "--mask", str(masks), "--weights", str(checkpoint), "--window", "9"]
    arguments += ["--overlap", "2", "--blend", blend, "--height", "64", "--width", "96", "--quiet"]
    single = subprocess.run(
        [sys.executable, "-m", "runtime.run", *arguments, "--out", str(tmp_path / "single")],
        capture_output=True, text=True, cwd=REPO, timeout=240,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    result = torchrun(2, "cli", *arguments, "--out", str(tmp_path / "ranks"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "window 4: frames 21-28" in result.stderr and shared_by in result.stdout, result.stdout
    one, two = read_pngs(tmp_path / "single"), read_pngs(tmp_path / "ranks")
    assert one.shape == two.shape == (29, 64, 96, 3)
    assert np.abs(one.astype(int) - two).max() <= 1


def test_a_rank_that_dies_fails_the_run_without_output(checkpoint, tmp_path):
    """Rank 1 exits hard on its first window: the run fails within the time limit, saying which rank
    stopped, and leaves no output."""
    frames, masks = write_moving_patch_clip(tmp_path / "clip", 9, 64, 96)
    out = tmp_path / "out.mp4"
    arguments = ["--video", str(frames), "--mask", str(masks), "--weights", str(checkpoint), "--out", str(out)]
    result = torchrun(2, "cli-rank-1-dies", *arguments, "--height", "64", "--width", "96", "--quiet", timeout=120)
    assert result.returncode != 0
    assert "exitcode  : 3" in result.stderr, result.stderr[-3000:]  # torchrun's report names the rank that died
    assert "[rank0]: Traceback" not in result.stderr  # rank 0 says it in one line, or torchrun stopped it first
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]


def test_bad_input_on_rank_0_stops_the_others_before_they_load(checkpoint, tmp_path):
    """Rank 0's input check fails: one error line, exit 2, and the other rank ends without loading."""
    result = torchrun(2, "cli", "--video", str(tmp_path / "missing.mp4"), "--mask", str(tmp_path / "m.png"))
    assert result.returncode != 0
    assert "error: " in result.stderr and "Traceback" not in result.stderr.split("error: ")[0][-2000:]
