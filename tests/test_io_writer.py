"""runtime.io.writer: colour, timestamps, other streams, sizes, lossless outputs, and the safety of
the temporary name (checked before any work, nothing left behind)."""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from media import PATCH, encode_video, gradient_frames, patch_colour, patch_frames, stream_codecs, stream_span
from PIL import Image

from runtime import RemoverError
from runtime.errors import RemoverWarning
from runtime.io import check_output, open_clip, open_writer, read_clip, write_clip
from runtime.io.writer import _real_time_threads as real_time  # skips threads that end while it looks

AAC_FRAME = Fraction(1024, 48000)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def rewrite(source, out, **options) -> None:
    """Read `source` with our reader and write it to `out` frame by frame with its timestamps."""
    with open_clip(source) as reader, open_writer(out, reader.info, **options) as writer:
        for frame in reader:
            writer.write(frame.image, frame.pts)


def test_hd_clip_with_audio_keeps_size_rate_timestamps_audio_and_colour(tmp_path):
    source = encode_video(tmp_path / "in.mp4", patch_frames(4, 1080, 1920), audio_seconds=4 / 25)
    rewrite(source, tmp_path / "out.mp4")
    before, after = open_clip(source), open_clip(tmp_path / "out.mp4")
    for field in ("width", "height", "frame_count", "fps", "color"):
        assert getattr(after.info, field) == getattr(before.info, field), field
    assert after.info.color.describe() == "bt709 tv range"
    times = [[frame.pts * reader.info.time_base for frame in reader] for reader in (before, after)]
    assert times[0] == times[1] == [Fraction(i, 25) for i in range(4)]
    assert [s.description for s in after.info.streams] == ["audio aac 48 kHz stereo"]
    count, first, end = stream_span(source, "audio")
    count_out, first_out, end_out = stream_span(tmp_path / "out.mp4", "audio")
    assert abs(first_out - first) <= AAC_FRAME and abs(end_out - end) <= AAC_FRAME and count_out == count
    for frame_in, frame_out in zip(before, after):
        assert np.abs(patch_colour(frame_out.image) - patch_colour(frame_in.image)).max() <= 2
        assert np.abs(patch_colour(frame_out.image) - PATCH).max() <= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_audio_stays_in_sync_with_the_video(tmp_path, suffix):
    """AAC starts 1024 priming samples (21.3 ms at 48 kHz) before the first frame. Matroska holds no
    negative timestamps, so its muxer moves both streams later by that much: the file starts 21 ms late,
    but audio against video (what a viewer hears against what they see) stays as in the source."""
    source = encode_video(tmp_path / "in.mp4", patch_frames(25, 64, 96), audio_seconds=1.0)
    rewrite(source, tmp_path / f"out{suffix}")
    offsets = []
    for path in (source, tmp_path / f"out{suffix}"):
        (_, audio_start, audio_end), (_, video_start, _) = stream_span(path, "audio"), stream_span(path, "video")
        offsets.append((float(audio_start - video_start), float(audio_end - video_start)))
    assert offsets[0][0] == pytest.approx(-1024 / 48000)
    # Matroska counts milliseconds: a packet's start and its duration are each rounded (a few ms, not 21)
    assert offsets[1] == pytest.approx(offsets[0], abs=3e-3)


@pytest.mark.parametrize(
    ("size", "matrix", "full_range", "tagged", "written"),
    [
        ((720, 1280), "bt709", False, False, "bt709 tv range"),  # untagged HD: tagged with what players assume
        ((240, 320), "smpte170m", False, True, "smpte170m tv range"),
        ((240, 320), "smpte170m", False, False, "smpte170m tv range"),
        ((240, 320), "bt709", True, True, "bt709 pc range"),
    ],
)
def test_colour_survives_a_round_trip_and_is_tagged(tmp_path, size, matrix, full_range, tagged, written):
    source = encode_video(
        tmp_path / "in.mp4", patch_frames(2, *size), matrix=matrix, full_range=full_range, tagged=tagged
    )
    rewrite(source, tmp_path / "out.mp4")
    after = open_clip(tmp_path / "out.mp4")
    assert after.info.color.describe() == written and after.info.color.tagged
    for frame_in, frame_out in zip(open_clip(source), after):
        assert np.abs(patch_colour(frame_out.image) - patch_colour(frame_in.image)).max() <= 2


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
def test_variable_frame_rate_timestamps_survive(tmp_path, suffix):
    pts = [0, 40, 80, 200, 240, 400, 410]
    source = encode_video(tmp_path / "vfr.mkv", patch_frames(7, 48, 64), pts=pts, time_base=Fraction(1, 1000))
    rewrite(source, tmp_path / f"out{suffix}")
    with open_clip(tmp_path / f"out{suffix}") as reader:
        times = [frame.pts * reader.info.time_base for frame in reader]
    assert times == [Fraction(p, 1000) for p in pts]


def test_image_sources_get_timestamps_at_their_rate(tmp_path):
    write_clip(tmp_path / "out.mp4", patch_frames(3, 48, 64), Fraction(10))
    with open_clip(tmp_path / "out.mp4") as reader:
        assert reader.info.fps == 10 and reader.info.color.describe() == "bt709 tv range"
        assert [frame.pts * reader.info.time_base for frame in reader] == [0, Fraction(1, 10), Fraction(2, 10)]


def test_rotated_and_deep_sources_are_written_upright_in_8_bits(tmp_path):
    frames = patch_frames(2, 48, 64)
    frames[:, :8, :8] = 255
    rotated = encode_video(tmp_path / "rotated.mp4", frames, rotation=90)
    rewrite(rotated, tmp_path / "upright.mp4")
    info = open_clip(tmp_path / "upright.mp4").info
    assert (info.width, info.height, info.rotation) == (48, 64, 0)
    np.testing.assert_array_equal(
        read_clip(tmp_path / "upright.mp4").frames[0].max(axis=-1) > 240,
        read_clip(rotated).frames[0].max(axis=-1) > 240,
    )
    hdr = encode_video(tmp_path / "hdr.mp4", frames, pixel_format="yuv420p10le", matrix="bt2020nc")
    with pytest.warns(RemoverWarning):
        rewrite(hdr, tmp_path / "hdr_out.mp4")
    with pytest.warns(RemoverWarning, match="HDR"):
        color = open_clip(tmp_path / "hdr_out.mp4").info.color
    assert (color.bit_depth, color.matrix, color.primaries, color.transfer) == (8, "bt2020nc", "bt2020", "smpte2084")


def test_odd_sizes_are_written(tmp_path):
    frames = gradient_frames(3, 33, 47)
    with pytest.warns(RemoverWarning, match="4:4:4"):
        write_clip(tmp_path / "odd.mp4", frames, Fraction(25))
    back = read_clip(tmp_path / "odd.mp4").frames
    assert back.shape == frames.shape and psnr(back, frames) > 40
    write_clip(tmp_path / "odd.webm", frames, Fraction(25))  # VP9 takes odd 4:2:0
    assert read_clip(tmp_path / "odd.webm").frames.shape == frames.shape


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", None), (".mov", None), (".mkv", "ffv1"), (".webm", None)])
def test_lossless_round_trip_is_bit_exact(tmp_path, suffix, codec):
    frames = np.random.default_rng(1).integers(0, 256, (3, 33, 47, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "in" / f"{index}.png")
    path = tmp_path / f"out{suffix}"
    rewrite(tmp_path / "in", path, codec=codec, lossless=True)
    np.testing.assert_array_equal(read_clip(path).frames, frames)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".mov"])
def test_video_round_trip_keeps_size_rate_and_content(data_dir, tmp_path, suffix):
    with open_clip(data_dir / "running_car" / "running_car.mp4") as reader:
        frames = np.stack([frame.image[:270, :480] for frame, _ in zip(reader, range(10))])
        fps = reader.info.fps
    write_clip(tmp_path / f"out{suffix}", frames, fps)
    back = read_clip(tmp_path / f"out{suffix}")
    assert back.frames.shape == frames.shape
    assert back.fps == fps
    assert psnr(back.frames, frames) > 33
    assert [p.name for p in tmp_path.iterdir()] == [f"out{suffix}"]


def test_png_folder_round_trip_is_exact(data_dir, tmp_path):
    frames = read_clip(data_dir / "tennis" / "frames").frames[:12]
    write_clip(tmp_path / "out", frames, Fraction(25))
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[:2] == ["00000.png", "00001.png"]
    np.testing.assert_array_equal(read_clip(tmp_path / "out").frames, frames)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


def test_single_image_in_single_image_out(tmp_path):
    image = gradient_frames(1, 20, 30)[0]
    Image.fromarray(image).save(tmp_path / "in.png")
    rewrite(tmp_path / "in.png", tmp_path / "out.png")
    np.testing.assert_array_equal(read_clip(tmp_path / "out.png").frames[0], image)
    rewrite(tmp_path / "in.png", tmp_path / "out.jpg")
    assert psnr(read_clip(tmp_path / "out.jpg").frames[0], image) > 35
    clip = open_clip(encode_video(tmp_path / "clip.mp4", patch_frames(2, 16, 16))).info
    with pytest.raises(RemoverError, match="holds one image and the clip has 2 frames"):
        check_output(tmp_path / "out2.png", clip)


@pytest.mark.parametrize("name", ["out.mp4", "out.png", "out"])
def test_existing_output_is_replaced_only_with_overwrite(tmp_path, name):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in.png")
    target = tmp_path / name
    if target.suffix:
        target.write_bytes(b"old")
    else:
        target.mkdir()
        (target / "00000.png").write_bytes(b"old")
    with pytest.raises(RemoverError, match="exists; pass --overwrite to replace it"):
        rewrite(tmp_path / "in.png", target)
    assert (target.read_bytes() if target.is_file() else (target / "00000.png").read_bytes()) == b"old"
    rewrite(tmp_path / "in.png", target, overwrite=True)
    assert read_clip(target).frames.shape[1:] == (8, 8, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.png", name])


def test_a_folder_of_other_files_is_never_replaced(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"keep me")
    info = open_clip(encode_video(tmp_path / "clip.mp4", patch_frames(2, 16, 16))).info
    with pytest.raises(RemoverError, match="holds other files than numbered PNG frames"):
        check_output(tmp_path / "photos", info, overwrite=True)


def test_other_streams_are_copied_re_encoded_or_dropped_with_a_warning(tmp_path):
    source = encode_video(
        tmp_path / "in.mp4", patch_frames(10, 48, 64), audio_seconds=10 / 25, subtitles=True, data=True
    )
    rewrite(source, tmp_path / "same.mp4")  # mp4 holds them all: copied, no warning
    assert stream_codecs(tmp_path / "same.mp4") == stream_codecs(source)
    assert stream_span(tmp_path / "same.mp4", "subtitle") == stream_span(source, "subtitle")
    assert stream_span(tmp_path / "same.mp4", "audio") == stream_span(source, "audio")

    with pytest.warns(RemoverWarning) as warned:
        rewrite(source, tmp_path / "out.webm")
    messages = sorted(str(w.message) for w in warned)
    assert messages == [
        "audio aac 48 kHz stereo (stream 3): .webm cannot hold aac: re-encoding it to libopus",
        "data bin_data (stream 2): dropped: only a .mp4 output keeps a data stream",
        "subtitle mov_text (stream 1): dropped: .webm cannot hold mov_text",
    ]
    assert stream_codecs(tmp_path / "out.webm") == [("video", "vp9"), ("audio", "opus")]
    _, first, end = stream_span(source, "audio")
    _, first_out, end_out = stream_span(tmp_path / "out.webm", "audio")
    assert abs(first_out - first) <= AAC_FRAME and abs(end_out - end) <= AAC_FRAME

    with pytest.warns(RemoverWarning) as warned:
        rewrite(source, tmp_path / "frames")
    assert [str(w.message).split(": ", 1)[1] for w in warned] == ["dropped: a folder of PNGs holds only frames"] * 3


def test_interrupted_write_leaves_nothing_behind(tmp_path):
    source = encode_video(tmp_path / "in.mp4", patch_frames(6, 32, 32), audio_seconds=6 / 25)
    for name in ("out.mp4", "out"):
        with pytest.raises(KeyboardInterrupt), open_clip(source) as reader, warnings.catch_warnings():
            warnings.simplefilter("ignore", RemoverWarning)  # a folder of PNGs drops the audio
            with open_writer(tmp_path / name, reader.info) as writer:
                for frame in reader:
                    writer.write(frame.image, frame.pts)
                    if frame.index == 2:
                        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["in.mp4"]


def test_output_paths_are_checked_before_any_work(tmp_path):
    info = open_clip(encode_video(tmp_path / "clip.mp4", patch_frames(2, 16, 16))).info
    cases = [
        (tmp_path / "missing" / "out.mp4", {}, "does not exist"),
        (tmp_path / "out.gif", {}, "unknown output type '.gif'"),
        (tmp_path / "clip.mp4", {"overwrite": True}, "the output .*clip.mp4 is the input"),
        (tmp_path / "out.webm", {"codec": "h264"}, "a .webm file cannot hold h264: use vp9, av1"),
        (tmp_path / "out.mp4", {"codec": "mpeg2"}, "unknown codec 'mpeg2'"),
        (tmp_path / "out.mp4", {"crf": 60}, "--crf 60 is outside 0 to 51 for h264"),
        (tmp_path / "out.mkv", {"codec": "ffv1", "crf": 10}, "ffv1 takes no --crf"),
        (tmp_path / "out.mp4", {"codec": "h265", "lossless": True}, "h265 has no lossless mode here: use --codec h264"),
        (tmp_path / "out.mp4", {"crf": 10, "lossless": True}, "exclude each other"),
        (tmp_path / "out", {"codec": "h264"}, "apply to video outputs"),
    ]
    for path, options, message in cases:
        with pytest.raises(RemoverError, match=message):
            check_output(path, info, **options)
    with pytest.raises(RemoverError, match="JPEG is lossy"):
        check_output(tmp_path / "out.jpg", replace(info, frame_count=1), lossless=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.png").write_bytes(b"")
    with pytest.raises(RemoverError, match="exists; pass --overwrite"):
        check_output(tmp_path / "full", info)
    check_output(tmp_path / "new.mp4", info, codec="h265", crf=28)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "full"]


@pytest.mark.parametrize(
    ("suffix", "codec", "decoded_by"),
    [(".mkv", "h265", "hevc"), (".mkv", "av1", "libdav1d"), (".mov", "prores", "prores"), (".mp4", "vp9", "vp9")],
)
@pytest.mark.filterwarnings("ignore:out.mov has 10-bit colour")  # ProRes is 10-bit
def test_every_codec_writes(tmp_path, suffix, codec, decoded_by):
    frames = gradient_frames(3, 64, 96)
    info = open_clip(encode_video(tmp_path / "in.mp4", frames)).info
    with open_writer(tmp_path / f"out{suffix}", info, codec=codec) as writer:
        for frame in frames:
            writer.write(frame)
    back = read_clip(tmp_path / f"out{suffix}").frames
    assert back.shape == frames.shape and psnr(back, frames) > 30
    assert stream_codecs(tmp_path / f"out{suffix}") == [("video", decoded_by)]


@pytest.mark.skipif(os.geteuid() != 0, reason="SVT-AV1 raises the priority of root's threads only")
def test_av1_leaves_no_thread_at_real_time_priority(tmp_path):
    """SVT-AV1, run as root, moves the thread that opens it and every thread it starts to SCHED_FIFO 99;
    the writer puts them back, and leaves a thread that was real-time before as it was."""
    frames = gradient_frames(3, 64, 96)
    info = open_clip(encode_video(tmp_path / "in.mp4", frames)).info
    host_thread_ready, stop = threading.Event(), threading.Event()

    def host_real_time_thread() -> None:  # a host program's own real-time thread
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
        host_thread_ready.set()
        stop.wait()

    host = threading.Thread(target=host_real_time_thread)
    host.start()
    host_thread_ready.wait()
    try:
        assert real_time() == {host.native_id}  # the helper sees real-time threads at all
        with open_writer(tmp_path / "out.mkv", info, codec="av1") as writer:
            for frame in frames:
                writer.write(frame)
                assert real_time() == {host.native_id}
        assert real_time() == {host.native_id}
    finally:
        stop.set()
        host.join()
