"""The segmenter with SAM 2 itself: SAM 2.1 tiny built with random weights and saved in the released
checkpoint format ({"model": state_dict}), at a small input size. Its masks are arbitrary, so the
propagation is checked against SAM 2's own video predictor on the same clip and prompts (the same
logits), and the rest checks loading, the command line, errors and memory. With $SAM2_CHECKPOINT (a
real checkpoint; $SAM2_CONFIG its config, default the small SAM 2.1) the tennis clip is segmented
from a box and compared with its masks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.child import run_child
from runtime.errors import RemoverError
from runtime.io import open_clip, open_masks, read_clip
from runtime.segment import Prompt, SegmentOptions, load_segmenter
from runtime.segment.__main__ import main
from runtime.segment.tracker import propagate

pytest.importorskip("sam2", reason="the [segment] extra is not installed (make test installs it)")

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
INPUT = 128  # the model's input size in these tests (1024 in the released configs)
FRAMES, HEIGHT, WIDTH = 8, 96, 128
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SAM 2.1 tiny with random weights (fixed seed) in the released format."""
    from runtime.segment.model import build_model, config_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam2") / "tiny.pt"
    torch.save({"model": build_model(config_file(TINY), None).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def tiny_options(tiny_checkpoint: Path) -> SegmentOptions:
    return SegmentOptions(checkpoint=str(tiny_checkpoint), model_config=TINY, image_size=INPUT, device="cpu")


@pytest.fixture(scope="module")
def segmenter(tiny_options: SegmentOptions):
    return load_segmenter(tiny_options)


@pytest.fixture(scope="module")
def jpeg_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two moving blocks as JPEG files named as SAM 2's predictor reads a folder."""
    folder = tmp_path_factory.mktemp("jpeg_clip")
    for frame in range(FRAMES):
        image = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
        image[30:60, 20 + 4 * frame : 50 + 4 * frame] = (220, 80, 60)
        image[5 + 3 * frame : 25 + 3 * frame, 90:110] = (60, 200, 90)
        Image.fromarray(image).save(folder / f"{frame:05d}.jpg", quality=95)
    return folder


@pytest.mark.slow
def test_propagation_matches_sam2_predictor(segmenter, jpeg_clip: Path, tiny_checkpoint: Path, one_torch_thread):
    """Prompts on frames 2 and 5, two objects: the streamed forward and backward passes give SAM 2's
    own predictor's logits (its reverse pass and its forward pass, each on a fresh state)."""
    from sam2.build_sam import build_sam2_video_predictor

    prompts = [
        Prompt(2, 1, "box", (26, 28, 60, 62)),
        Prompt(5, 1, "point", (50, 45)),
        Prompt(2, 2, "point", (100, 20)),
        Prompt(2, 2, "negative", (30, 80)),
    ]
    with open_clip(jpeg_clip) as reader:
        frames = (frame.image for frame in reader)
        ours = dict(propagate(segmenter.model, frames, (WIDTH, HEIGHT), FRAMES, prompts, progress=False))

    overrides = [f"++model.image_size={INPUT}"]
    predictor = build_sam2_video_predictor(TINY, str(tiny_checkpoint), device="cpu", hydra_overrides_extra=overrides)

    def theirs(reverse: bool) -> dict[int, torch.Tensor]:
        state = predictor.init_state(str(jpeg_clip))
        predictor.add_new_points_or_box(state, 2, 1, box=[26, 28, 60, 62])
        predictor.add_new_points_or_box(state, 5, 1, points=[[50, 45]], labels=[1])
        predictor.add_new_points_or_box(state, 2, 2, points=[[100, 20], [30, 80]], labels=[1, 0])
        return {frame: masks for frame, _, masks in predictor.propagate_in_video(state, reverse=reverse)}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its hole filling needs the CUDA extension and says so
        reference = theirs(reverse=True) | theirs(reverse=False)
    assert sorted(ours) == sorted(reference) == list(range(FRAMES))
    for frame in range(FRAMES):
        for slot, object_id in enumerate((1, 2)):
            logits = F.interpolate(ours[frame][object_id], size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
            torch.testing.assert_close(logits[0, 0], reference[frame][slot, 0], rtol=0, atol=1e-5)


def test_command_line_writes_a_mask_a_frame(
    tiny_checkpoint: Path, jpeg_clip: Path, tmp_path: Path, capsys, one_torch_thread
):
    """The issue's first "done when": a folder of binary masks in the frames' size; the mask's round trip
    into runtime.run --mask."""
    out, ids = tmp_path / "m", tmp_path / "ids.mkv"
    args = ["--video", str(jpeg_clip), "--box", "20,30,50,60@3", "--point", "100,20@6#2", "--out", str(out)]
    args += ["--checkpoint", str(tiny_checkpoint), "--model-config", "sam2.1_hiera_t", "--image-size", str(INPUT)]
    assert main([*args, "--ids", str(ids), "--device", "cpu", "--quiet"]) == 0
    assert "wrote the mask of 8 frame(s)" in capsys.readouterr().out
    files = sorted(out.iterdir())
    assert [file.name for file in files] == [f"{frame:05d}.png" for frame in range(FRAMES)]
    images = np.stack([np.asarray(Image.open(file)) for file in files])
    assert images.shape == (FRAMES, HEIGHT, WIDTH, 3) and set(np.unique(images)) <= {0, 255}
    with open_clip(jpeg_clip) as reader:
        assert np.array_equal(np.stack(list(open_masks(out, reader.info))), images[..., 0] == 255)
    id_values = read_clip(ids).frames[..., 0]
    assert set(np.unique(id_values)) <= {0, 1, 2}
    assert np.array_equal(id_values > 0, images[..., 0] == 255)  # the union is where any object is


def _cli_error(args: list[str], tmp_path: Path, capsys) -> str:
    out = tmp_path / "out"
    out.mkdir()
    assert main([*args, "--out", str(out / "mask.mp4"), "--device", "cpu", "--quiet"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ")
    assert list(out.iterdir()) == []
    return error[0]


def test_checkpoint_that_does_not_match_the_config(tiny_checkpoint: Path, jpeg_clip: Path, tmp_path: Path, capsys):
    args = ["--video", str(jpeg_clip), "--box", "20,30,50,60", "--checkpoint", str(tiny_checkpoint)]
    error = _cli_error([*args, "--model-config", "sam2.1_hiera_s", "--image-size", str(INPUT)], tmp_path, capsys)
    assert "does not match sam2.1_hiera_s.yaml" in error and "--model-config" in error


@pytest.mark.parametrize(
    ("content", "expected"),
    [({"state": {}}, "is not a SAM 2 checkpoint"), (None, "cannot read the SAM 2 checkpoint")],
)
def test_not_a_checkpoint(content, expected: str, jpeg_clip: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.pt"
    if content is None:
        path.write_bytes(b"not a zip file")
    else:
        torch.save(content, path)
    args = ["--video", str(jpeg_clip), "--box", "20,30,50,60", "--checkpoint", str(path), "--model-config", TINY]
    assert expected in _cli_error(args, tmp_path, capsys)


@pytest.mark.parametrize(
    ("config", "expected"),
    [("sam2.1_hiera_x", "unknown model config 'sam2.1_hiera_x'"), ("mine/model.yaml", "model config not found")],
)
def test_unknown_config(config: str, expected: str, tiny_checkpoint: Path, jpeg_clip: Path, tmp_path: Path, capsys):
    args = ["--video", str(jpeg_clip), "--box", "20,30,50,60", "--checkpoint", str(tiny_checkpoint)]
    assert expected in _cli_error([*args, "--model-config", config], tmp_path, capsys)


def test_config_file_of_ones_own(tiny_checkpoint: Path, segmenter, tmp_path: Path) -> None:
    """A YAML file given by path (here SAM 2's tiny config with a smaller input size written into it)."""
    from runtime.segment.model import config_file

    own = tmp_path / "fast.yaml"
    own.write_text(config_file(TINY).read_text().replace("image_size: 1024", f"image_size: {INPUT // 2}"))
    options = SegmentOptions(checkpoint=str(tiny_checkpoint), model_config=str(own), device="cpu")
    assert load_segmenter(options).model.image_size == INPUT // 2


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sam2", None)  # as if not installed: importing it fails
    with pytest.raises(RemoverError, match=r"\[segment\] extra") as caught:
        load_segmenter(SegmentOptions())
    assert "\n" not in str(caught.value)


def test_default_checkpoint_offline_and_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RemoverError, match="facebook/sam2.1-hiera-small/sam2.1_hiera_small.pt is not in the hub cache"):
        load_segmenter(SegmentOptions(device="cpu"))


MEMORY_CHILD = """
import sys
import torch
from runtime.segment import Prompt, SegmentOptions, segment_file
video, out, checkpoint, frames = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(1)  # a tiny model on a shared CPU
options = SegmentOptions(checkpoint=checkpoint, model_config="{config}", image_size=64, device="cpu")
prompts = [Prompt(frames // 2, 1, "box", (600, 300, 900, 700))]  # mid-clip: both directions
segment_file(video, out, prompts, options, progress=False, say=lambda line: None)
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_clip(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Peak host memory of segmenting 41 frames within 1.15x of 9, in a child process each, on 1920x1080
    frames (6.2 MB each: keeping every frame would add 200 MB over the 32 more frames, and every mask
    66 MB; the second check catches either)."""
    from tests.media import encode_video

    peaks = {}
    for count in (9, 41):
        frames = np.zeros((count, 1080, 1920, 3), np.uint8)
        frames[:, 300:700, 600:900] = 200
        video = tmp_path / f"clip{count}.mp4"
        encode_video(video, frames)
        code = MEMORY_CHILD.format(config=TINY)
        out = tmp_path / f"mask{count}.mkv"
        # bench/child.py: the child's own peak (a child of this large process would inherit its high-water mark)
        result = run_child([sys.executable, "-c", code, video, out, tiny_checkpoint, count], timeout=300, cwd=REPO)
        assert result.returncode == 0, result.stderr[-2000:]
        peaks[count] = result.peak_rss_bytes
    growth = peaks[41] - peaks[9]
    print(f"peak host memory: 9 frames {peaks[9] / 2**20:.0f} MiB, 41 frames {peaks[41] / 2**20:.0f} MiB")
    assert peaks[41] <= 1.15 * peaks[9]
    assert growth < 32 * 1080 * 1920 / 2, f"{growth / 2**20:.0f} MiB more for 32 more frames"


@pytest.mark.skipif(not os.environ.get("SAM2_CHECKPOINT"), reason="set $SAM2_CHECKPOINT to a real SAM 2 checkpoint")
def test_tennis_with_a_real_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    """From a box around frame 0's masked region (the player and his shadow), the masks of the tennis
    clip: mean IoU >= 0.7 against its own masks."""
    clip = data_dir / "tennis"
    with open_clip(clip / "frames") as reader:
        info = reader.info
        expected = np.stack(list(open_masks(clip / "masks", info)))
    ys, xs = np.nonzero(expected[0])
    box = Prompt(0, 1, "box", (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
    config = os.environ.get("SAM2_CONFIG", "configs/sam2.1/sam2.1_hiera_s.yaml")
    options = SegmentOptions(checkpoint=os.environ["SAM2_CHECKPOINT"], model_config=config)
    masks = [np.logical_or.reduce(list(m.values())) for m in load_segmenter(options).track(clip / "frames", [box])]
    ious = [(m & e).sum() / max((m | e).sum(), 1) for m, e in zip(masks, expected, strict=True)]
    print(f"tennis: mean IoU {np.mean(ious):.3f} (min {np.min(ious):.3f}) with {options.checkpoint}")
    assert np.mean(ious) >= 0.7


def test_clip_frame_rate_kept(segmenter, tmp_path: Path, one_torch_thread) -> None:
    """A mask video keeps the clip's frame count and rate (runtime.run checks the count)."""
    from runtime.io import write_clip
    from runtime.segment import segment_file

    video = tmp_path / "clip.mp4"
    write_clip(video, np.full((5, 64, 96, 3), 100, np.uint8), Fraction(30))
    prompts = [Prompt(1, 1, "point", (40, 30))]
    segment_file(video, tmp_path / "mask.mp4", prompts, segmenter.options, segmenter=segmenter, progress=False)
    with open_clip(tmp_path / "mask.mp4") as reader:
        assert reader.info.frame_count == 5 and reader.info.fps == 30


@pytest.mark.slow
def test_segment_then_remove_in_one_command(
    tiny_checkpoint: Path, tennis, checkpoint: Path, tmp_path: Path, capsys, one_torch_thread
):
    """`runtime.run --video CLIP --box ... --checkpoint ...`: segment, then remove, one command. The dry run
    shows the segmentation and writes nothing; the run writes the clip, --save-mask keeps the mask (the
    mask runtime.run --mask then reads as it is), and no temporary mask or spill is left."""
    from runtime import run

    frames, masks = tennis
    with open_clip(frames) as reader:
        first = next(iter(open_masks(masks, reader.info)))
    ys, xs = np.nonzero(first)
    box = f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}"
    out, saved = tmp_path / "out" / "clean.mp4", tmp_path / "out" / "mask.mkv"
    out.parent.mkdir()
    sam = ["--checkpoint", str(tiny_checkpoint), "--model-config", TINY, "--image-size", str(INPUT)]
    args = ["--video", str(frames), "--box", box, *sam, "--weights", str(checkpoint), "--device", "cpu"]
    args += ["--height", "64", "--width", "112", "--out", str(out), "--quiet"]

    assert run.main([*args, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "segment: SAM 2" in dry and f"object 1: box {box} on frame 0" in dry, dry
    assert list(out.parent.iterdir()) == []

    assert run.main([*args, "--save-mask", str(saved)]) == 0, capsys.readouterr().err
    assert read_clip(out).frames.shape == (9, 240, 432, 3)
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean.mp4", "mask.mkv"]  # nothing temporary left
    with open_clip(frames) as reader:
        assert len(list(open_masks(saved, reader.info))) == 9
    capsys.readouterr()


@pytest.mark.slow
def test_ctrl_c_leaves_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """SIGINT to `python -m runtime.segment` while it tracks: exit 130, no mask, no preview, no partial
    files and no spilled frames."""
    from runtime.io import write_clip

    clip = tmp_path / "clip"
    write_clip(clip, np.random.default_rng(0).integers(0, 255, (60, 64, 64, 3), dtype=np.uint8), Fraction(25))
    out = tmp_path / "out"
    out.mkdir()
    args = ["--video", clip, "--box", "10,10,40,40@30", "--out", out / "mask.mp4", "--preview", out / "p.mp4"]
    args += ["--checkpoint", tiny_checkpoint, "--model-config", TINY, "--image-size", INPUT, "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "runtime.segment", *map(str, args), "--quiet"]
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        deadline = time.monotonic() + 120
        while not list(out.glob(".segment-*")) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the spill folder appears when tracking starts
        assert child.poll() is None, child.stderr.read()
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted"
    assert list(out.iterdir()) == []
