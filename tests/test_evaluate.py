"""runtime.evaluate: known answers computed here, independently of the code under test (numpy, scipy,
scikit-image), on tiny clips written as PNG folders."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from runtime import run
from runtime.clips.plan import PlanOptions, make_plan
from runtime.evaluate import evaluate_clip
from runtime.evaluate.__main__ import main
from runtime.evaluate.lpips import BACKBONE_GLOB, alexnet_features, load_lpips
from runtime.evaluate.metrics import ssim_map
from runtime.evaluate.temporal import boundary_transitions, seam_ratio
from runtime.io import write_clip

FRAMES, HEIGHT, WIDTH = 8, 64, 96
NATIVE = PlanOptions(height=HEIGHT, width=WIDTH, crop="off")  # a run at the clip's own size: dilation as is
CROSS = ndimage.generate_binary_structure(2, 1)  # the runtime dilates with the 4-connected cross


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture, uint8 [H, W, 3] (smooth, so the optical flow can follow it)."""
    noise = np.random.default_rng(seed).random((height, width, 3))
    smooth = ndimage.gaussian_filter(noise, (3, 3, 0))
    return np.round(30 + 190 * (smooth - smooth.min()) / np.ptp(smooth)).astype(np.uint8)


def moving_clip(shift: tuple[int, int] = (1, 2)) -> np.ndarray:
    """FRAMES frames cut from a larger texture, moving by `shift` (down, right) pixels a frame."""
    canvas = texture(HEIGHT + FRAMES * shift[0] + 1, WIDTH + FRAMES * shift[1] + 1)
    return np.stack(
        [canvas[i * shift[0] : i * shift[0] + HEIGHT, i * shift[1] : i * shift[1] + WIDTH] for i in range(FRAMES)]
    )


def square_masks() -> np.ndarray:
    """A 16x20 box moving right a pixel a frame, bool [F, H, W]."""
    masks = np.zeros((FRAMES, HEIGHT, WIDTH), bool)
    for i in range(FRAMES):
        masks[i, 24:40, 30 + i : 50 + i] = True
    return masks


def save(folder: Path, name: str, frames: np.ndarray) -> Path:
    if frames.dtype == bool:
        frames = np.repeat(frames[..., None].astype(np.uint8) * 255, 3, axis=-1)
    write_clip(folder / name, frames, 25)
    return folder / name


def cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args] + ["--quiet", "--no-lpips"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def clip(tmp_path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    frames, masks = moving_clip(), square_masks()
    return save(tmp_path, "video", frames), save(tmp_path, "mask", masks), frames, masks


def test_identical_clips_have_an_exact_background_and_null_psnr(clip, tmp_path, capsys):
    video, mask, _, _ = clip
    code, stdout, stderr = cli(
        ["--result", video, "--video", video, "--mask", mask, "--json", tmp_path / "e.json"], capsys
    )
    assert code == 0, stderr
    document = json.loads((tmp_path / "e.json").read_text())
    assert document["frames"] == FRAMES
    assert document["background"] == {"psnr_db": None, "ssim": 1.0, "max_abs": 0, "exact_frames": FRAMES}
    assert document["truth"] is None
    assert set(document["temporal"]) >= {"warp_error", "warp_error_reference"}
    assert "background PSNR (dB)        exact\n" in stdout and "inf" not in stdout


def test_a_fixed_error_inside_the_mask_gives_the_known_psnr(clip, tmp_path):
    video, mask, frames, masks = clip
    region = np.stack([ndimage.binary_dilation(m, CROSS, iterations=6) for m in masks])  # the default 6 px
    pattern = np.where((np.indices(frames.shape[:3]).sum(0) % 2 == 0), 5, -5)[..., None]  # +-5 checkerboard
    result = np.where(region[..., None], frames.astype(int) + pattern, frames).astype(np.uint8)
    figures = evaluate_clip(save(tmp_path, "result", result), video, mask, video, plan_options=NATIVE, progress=False)
    expected = 10 * math.log10(255**2 / 25)  # 34.15 dB
    assert figures.truth.masked_psnr_db == pytest.approx(expected, abs=0.01)
    whole = 10 * math.log10(255**2 / (25 * region.mean()))
    assert figures.truth.psnr_db == pytest.approx(whole, abs=0.01)
    assert figures.background.psnr_db is None and figures.background.max_abs == 0
    assert figures.dilation_px == 6
    # one pixel outside the dilated mask changed: the background is no longer exact, by that much
    result[3, 0, 0] = frames[3, 0, 0] ^ 8
    figures = evaluate_clip(save(tmp_path, "result1", result), video, mask, plan_options=NATIVE, progress=False)
    assert figures.background.exact_frames == FRAMES - 1 and figures.background.max_abs == 8
    error = frames[3, 0, 0].astype(int) - result[3, 0, 0]
    expected = 10 * math.log10(255**2 * 3 * (~region).sum() / int(error @ error))
    assert figures.background.psnr_db == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("size", [(32, 40), (47, 61)])
def test_ssim_matches_scikit_image(size):
    a = texture(*size, seed=1)
    noise = np.random.default_rng(2).normal(0, 12, a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    expected = structural_similarity(
        a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert abs(ssim_map(a, b).mean() - expected) < 1e-4
    assert abs(ssim_map(a, a).mean() - 1) < 1e-6


def test_a_clip_moving_by_a_known_flow_has_a_warp_error_near_zero(clip, tmp_path):
    video, mask, frames, masks = clip
    figures = evaluate_clip(video, video, mask, truth=video, plan_options=NATIVE, progress=False)
    assert figures.temporal.warp_error < 1.0 and figures.temporal.warp_error_reference < 1.0
    assert figures.temporal.reference == "truth"
    # flicker inside the mask: +-20 levels alternating frame to frame
    flicker = np.array([20 if i % 2 else -20 for i in range(FRAMES)])[:, None, None, None]
    region = np.stack([ndimage.binary_dilation(m, CROSS, iterations=6) for m in masks])[..., None]
    flickering = np.clip(np.where(region, frames.astype(int) + flicker, frames), 0, 255).astype(np.uint8)
    figures = evaluate_clip(
        save(tmp_path, "flicker", flickering), video, mask, video, plan_options=NATIVE, progress=False
    )
    assert figures.temporal.warp_error > 20 and figures.temporal.warp_error_reference < 1.0


def test_bad_input_is_one_line_and_exit_2(clip, tmp_path, capsys):
    video, mask, frames, masks = clip
    fewer = save(tmp_path, "fewer", frames[:-1])
    smaller = save(tmp_path, "smaller", frames[:, :48])
    other_mask = save(tmp_path, "other_mask", masks[:, :, :48])
    for args, message in (
        (["--result", fewer, "--video", video, "--mask", mask], "7 frames and the video 8"),
        (["--result", smaller, "--video", video, "--mask", mask], "is 96x48 and the video 96x64"),
        (["--result", video, "--video", video, "--mask", other_mask], "neither the same size nor the same aspect"),
        (["--result", video, "--video", video, "--mask", mask, "--truth", fewer], "the truth fewer has 7 frames"),
        (["--result", video, "--video", video], "give --result, --video and --mask"),
    ):
        code, stdout, stderr = cli(args, capsys)
        assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr, stderr
        assert "Traceback" not in stderr


def test_per_frame_csv_plot_and_no_silent_replacement(clip, tmp_path, capsys):
    video, mask, _, _ = clip
    csv_path, png = tmp_path / "frames.csv", tmp_path / "frames.png"
    args = [
        "--result",
        video,
        "--video",
        video,
        "--mask",
        mask,
        "--truth",
        video,
        "--per-frame",
        csv_path,
        "--plot",
        png,
    ]
    code, _, stderr = cli(args, capsys)
    assert code == 0, stderr
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == FRAMES and rows[0]["background_psnr_db"] == "" and rows[0]["background_max_abs"] == "0"
    assert rows[1]["warp_error"] != "" and png.read_bytes()[:4] == b"\x89PNG"
    code, _, stderr = cli(args, capsys)
    assert code == 2 and "exists (use --overwrite" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.csv", "frames.png", "mask", "video"]


def test_a_manifest_aggregates_weighted_by_frames(clip, tmp_path, capsys):
    video, mask, frames, _ = clip
    noisy = np.clip(frames.astype(int) + np.random.default_rng(3).integers(-3, 4, frames.shape), 0, 255).astype(
        np.uint8
    )
    save(tmp_path, "noisy", noisy)
    (tmp_path / "clips.csv").write_text("name,result,video,mask\nsame,video,video,mask\nnoisy,noisy,video,mask\n")
    code, stdout, stderr = cli(["--manifest", tmp_path / "clips.csv", "--json", tmp_path / "all.json"], capsys)
    assert code == 0, stderr
    document = json.loads((tmp_path / "all.json").read_text())
    total, noisy_figures = document["aggregate"], document["clips"]["noisy"]
    assert total["clips"] == 2 and total["frames"] == 2 * FRAMES
    assert total["background"]["exact_clips"] == 1
    assert total["background"]["psnr_db"] == pytest.approx(noisy_figures["background"]["psnr_db"])  # exact: left out
    assert total["background"]["ssim"] == pytest.approx((1 + noisy_figures["background"]["ssim"]) / 2)


def test_lpips_loads_a_backbone_from_the_torch_cache_without_torchvision(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model, why = load_lpips()
    if model is None and "heads" in why:
        pytest.skip(why)
    assert model is None and "no AlexNet backbone" in why
    torch.manual_seed(0)
    features = alexnet_features()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision's checkpoint holds the classifier too
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / BACKBONE_GLOB.replace("*", "0000"))
    model, why = load_lpips()
    assert why == "" and model is not None
    a, b = texture(64, 64, 4), texture(64, 64, 5)
    assert model(a, a) == 0.0
    assert model(a, b) > 0 and model(a, b) == pytest.approx(model(b, a), rel=1e-5)
    assert torch.equal(model.features[3].weight, features[3].weight)


def test_seam_ratio_of_a_known_jump():
    change = np.ones(40)
    plan = make_plan(41, (64, 64), [None] * 41, PlanOptions(window=21, overlap=5))
    boundaries = [w.start + w.known - 1 for w in plan.windows[1:]]  # continue: the last known frame
    assert len(boundaries) >= 2
    change[boundaries] = 3.0
    assert seam_ratio(change, plan.windows) == pytest.approx(3.0)
    assert seam_ratio(change, plan.windows[:1]) is None
    crossfade = make_plan(41, (64, 64), [None] * 41, PlanOptions(window=21, overlap=5, blend="crossfade")).windows
    assert boundary_transitions(crossfade) == {t for w in crossfade[1:] for t in range(w.start - 1, w.start + 5)}


@pytest.mark.slow
def test_a_run_of_the_runtime_at_a_smaller_working_size_keeps_an_exact_background(clip, tmp_path, capsys):
    """The demo model through runtime.run at 48x80 (scale 0.75 and 0.83), written as PNGs, antialiased (the
    masks dilated at the working size): the region the composite may touch is larger than the dilation at
    the clip's size, and the evaluation finds it."""
    video, mask, _, _ = clip
    size = ["--height", 48, "--width", 80, "--resize", "antialias"]
    code = run.main([str(a) for a in ["--video", video, "--mask", mask, "--out", tmp_path / "out", *size, "--quiet"]])
    assert code == 0, capsys.readouterr().err
    code, stdout, stderr = cli(["--result", tmp_path / "out", "--video", video, "--mask", mask, *size], capsys)
    assert code == 0, stderr
    assert "background PSNR (dB)        exact" in stdout and "background exact frames     8 / 8" in stdout
    figures = evaluate_clip(tmp_path / "out", video, mask, plan_options=NATIVE, progress=False)
    assert figures.background.max_abs > 0  # evaluated as if made at the clip's own size: the ring shows
    # the raw generation at the working size, as the released code returns it: the paper's background figure
    code = run.main(
        [str(a) for a in ["--video", video, "--mask", mask, "--out", tmp_path / "raw", *size, "--quiet"]]
        + ["--no-paste-back"]
    )
    assert code == 0, capsys.readouterr().err
    code, stdout, stderr = cli(["--result", tmp_path / "raw", "--video", video, "--mask", mask, *size], capsys)
    assert code == 2 and "is 80x48 and the video 96x64" in stderr
    code, stdout, stderr = cli(
        ["--result", tmp_path / "raw", "--video", video, "--mask", mask, *size, "--no-paste-back"], capsys
    )
    assert code == 0, stderr
    psnr = float(next(line for line in stdout.splitlines() if line.startswith("background PSNR")).split()[-1])
    assert 10 < psnr < 60  # the VAE's reconstruction of the background: finite, not exact


def test_memory_does_not_grow_with_the_clip(tmp_path):
    """The evaluation streams: the peak of what numpy holds is the same for 8 and 32 frames (tracemalloc
    sees numpy's buffers; OpenCV's temporaries are of a frame's size too)."""
    import tracemalloc

    peaks = []
    for count in (8, 32):
        frames = np.repeat(moving_clip()[:1], count, axis=0)
        masks = np.repeat(square_masks()[:1], count, axis=0)
        video, mask = save(tmp_path, f"v{count}", frames), save(tmp_path, f"m{count}", masks)
        del frames, masks
        tracemalloc.start()
        evaluate_clip(video, video, mask, video, plan_options=NATIVE, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    frame_bytes = HEIGHT * WIDTH * 3
    assert peaks[1] < peaks[0] + 4 * frame_bytes, peaks


def test_lpips_matches_the_lpips_package_on_the_same_backbone(tmp_path, monkeypatch):
    """The lpips package itself as the oracle, its torchvision import stubbed with the same random AlexNet."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("lpips") is None:
        pytest.skip("the lpips package is not installed (pip install --no-deps lpips)")
    torch.manual_seed(1)
    features = alexnet_features()
    models = types.ModuleType("torchvision.models")
    models.alexnet = lambda **kwargs: types.SimpleNamespace(features=features)
    stub = types.ModuleType("torchvision")
    stub.models = models
    monkeypatch.setitem(sys.modules, "torchvision", stub)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    for name in [n for n in sys.modules if n == "lpips" or n.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips

    oracle = lpips.LPIPS(net="alex", verbose=False).eval()
    backbone = tmp_path / "alexnet.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, backbone)
    model, _ = load_lpips(backbone)
    a, b = texture(64, 80, 6), texture(64, 80, 7)
    with torch.no_grad():
        expected = oracle(*(torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1 for x in (a, b)))
    assert model(a, b) == pytest.approx(float(expected), rel=1e-5)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "option, target",
    [
        ("--json", "video/../mask/{frame}"),  # a frame of --mask, spelled through another folder
        ("--per-frame", "{result}/../video/{frame}"),  # a frame of --video (also the --result here)
        ("--plot", "mask/../video/{frame}"),
        ("--json", "result/figs.json"),  # a new file inside the result's frame folder: an input
    ],
)
def test_a_report_never_replaces_or_writes_inside_an_input_even_with_overwrite(clip, tmp_path, capsys, option, target):
    video, mask, frames, _ = clip
    result = save(tmp_path, "result", frames)
    frame = sorted(p.name for p in video.iterdir())[0]
    before = _snapshot(tmp_path)
    path = tmp_path / target.format(frame=frame, result="result")
    args = ["--result", result, "--video", video, "--mask", mask, option, path, "--overwrite"]
    code, stdout, stderr = cli(args, capsys)
    assert code == 2 and "the input" in stderr and "Traceback" not in stderr, stderr
    assert _snapshot(tmp_path) == before


def test_two_reports_onto_one_file_are_refused_before_the_work(clip, tmp_path, capsys):
    video, mask, _, _ = clip
    args = ["--result", video, "--video", video, "--mask", mask, "--json", tmp_path / "a.json"]
    code, _, stderr = cli([*args, "--per-frame", tmp_path / "video" / ".." / "a.json"], capsys)
    assert code == 2 and "are the same file" in stderr, stderr
    assert not (tmp_path / "a.json").exists()


@pytest.mark.parametrize("target", ["clips.csv", "noisy/../clips.csv", "noisy/{frame}"])
def test_a_manifest_report_never_replaces_the_manifest_or_a_clip_it_lists(clip, tmp_path, capsys, target):
    video, _, frames, _ = clip
    save(tmp_path, "noisy", frames)
    (tmp_path / "clips.csv").write_text("name,result,video,mask\nsame,video,video,mask\nnoisy,noisy,video,mask\n")
    before = _snapshot(tmp_path)
    frame = sorted(p.name for p in video.iterdir())[0]
    path = tmp_path / target.format(frame=frame)
    code, _, stderr = cli(["--manifest", tmp_path / "clips.csv", "--json", path, "--overwrite"], capsys)
    assert code == 2 and "the input" in stderr, stderr
    assert _snapshot(tmp_path) == before


def test_a_report_in_a_read_only_folder_is_refused_before_the_work(clip, tmp_path, capsys):
    video, mask, _, _ = clip
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        code, stdout, stderr = cli(
            ["--result", video, "--video", video, "--mask", mask, "--json", locked / "e.json"], capsys
        )
    finally:
        locked.chmod(0o700)
    assert code == 2 and "cannot write in" in stderr and stdout == "", stderr


@pytest.mark.parametrize(
    "content, message",
    [
        (b"name,result,video,mask\nsame,video,video,mask,extra\n", "line 2: more cells than the header's 4"),
        (b"result,video,mask,mask\nvideo,video,mask,mask\n", "the column 'mask' appears twice"),
        ("result,video,mask\nvideo,video,mask\n".encode("utf-16-le"), "NUL bytes"),
    ],
    ids=["extra cell", "duplicate column", "UTF-16 without its mark"],
)
def test_a_bad_manifest_is_one_error_line(clip, tmp_path, capsys, content, message):
    (tmp_path / "clips.csv").write_bytes(content)
    code, stdout, stderr = cli(["--manifest", tmp_path / "clips.csv", "--json", tmp_path / "all.json"], capsys)
    assert code == 2 and stdout == "" and stderr.strip().splitlines() == [stderr.strip()], stderr
    assert stderr.startswith("error: ") and message in stderr, stderr
    assert not (tmp_path / "all.json").exists()


def test_a_utf16_manifest_with_its_mark_is_read(clip, tmp_path, capsys):
    (tmp_path / "clips.csv").write_bytes("name,result,video,mask\nsame,video,video,mask\n".encode("utf-16"))
    code, _, stderr = cli(["--manifest", tmp_path / "clips.csv", "--json", tmp_path / "all.json"], capsys)
    assert code == 0, stderr
    assert json.loads((tmp_path / "all.json").read_text())["aggregate"]["clips"] == 1


def test_a_report_where_no_file_can_be_made_is_refused_before_the_work(clip, capsys, monkeypatch):
    """/proc refuses a new file even to root (who passes os.access on a read-only folder): the report is
    probed, as a clip output is, before any frame is read."""
    import runtime.evaluate.__main__ as command

    video, mask, _, _ = clip
    monkeypatch.setattr(command, "evaluate_clip", lambda *a, **k: pytest.fail("evaluated before the check"))
    code, stdout, stderr = cli(["--result", video, "--video", video, "--mask", mask, "--json", "/proc/e.json"], capsys)
    assert code == 2 and "cannot write in /proc" in stderr and stdout == "", stderr
