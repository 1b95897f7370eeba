"""runtime.io.reader: lazy reading of videos, image folders and images, with their colour, rotation,
timestamps and other streams, on the real clips in ../shared/data and clips made here."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from media import PATCH, encode_video, patch_colour, patch_frames
from PIL import Image

import runtime.io.reader
from runtime import RemoverError
from runtime.errors import RemoverWarning
from runtime.io import open_clip, read_clip


def test_reads_the_tennis_frames(data_dir):
    clip = read_clip(data_dir / "tennis" / "frames")
    assert clip.frames.shape == (70, 240, 432, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == 25
    info = open_clip(data_dir / "tennis" / "frames").info
    assert (info.kind, info.frame_count, info.time_base, info.color.matrix) == ("images", 70, None, "rgb")
    assert info.describe() == "432x240, 70 frames, 25 fps, sRGB"


def test_reads_the_running_car_video(data_dir):
    with open_clip(data_dir / "running_car" / "running_car.mp4") as reader:
        info = reader.info
        assert (info.kind, info.width, info.height, info.frame_count, info.fps) == ("video", 972, 540, 292, 25)
        assert info.describe().startswith("972x540, 292 frames, 25 fps, ")
        shapes = [frame.image.shape for frame in reader]
        assert len(shapes) == 292 and set(shapes) == {(540, 972, 3)}


@pytest.mark.parametrize(
    ("size", "matrix", "full_range", "tagged", "described"),
    [
        ((1080, 1920), "bt709", False, True, "bt709 tv range"),
        ((720, 1280), "bt709", False, False, "bt709 tv range (untagged)"),  # players assume BT.709 for HD
        ((240, 320), "smpte170m", False, True, "smpte170m tv range"),
        ((240, 320), "smpte170m", False, False, "smpte170m tv range (untagged)"),  # and BT.601 below
        ((240, 320), "bt709", True, True, "bt709 pc range"),
    ],
)
def test_decodes_with_the_clips_own_matrix_and_range(tmp_path, size, matrix, full_range, tagged, described):
    path = encode_video(
        tmp_path / "clip.mp4", patch_frames(2, *size), matrix=matrix, full_range=full_range, tagged=tagged
    )
    with open_clip(path) as reader:
        assert reader.info.color.describe() == described
        for frame in reader:  # BT.601 for BT.709 (or the range wrong) would be 10 or more levels off
            assert np.abs(patch_colour(frame.image) - PATCH).max() <= 2


def test_frames_keep_their_own_timestamps(tmp_path):
    pts = [0, 40, 80, 200, 240, 400, 410]
    path = encode_video(tmp_path / "vfr.mkv", patch_frames(7, 48, 64), pts=pts, time_base=Fraction(1, 1000))
    with open_clip(path) as reader:
        assert reader.info.time_base == Fraction(1, 1000)
        assert reader.info.frame_count == 7  # Matroska states no count: counted from the packets
        assert [frame.pts for frame in reader] == pts
        assert [frame.index for frame in reader] == list(range(7))


@pytest.mark.parametrize(
    ("rotation", "hflip", "upright"),
    [
        (90, False, lambda image: np.rot90(image, 1)),
        (-90, False, lambda image: np.rot90(image, -1)),
        (180, False, lambda image: np.rot90(image, 2)),
        (0, True, lambda image: image[:, ::-1]),
        (90, True, lambda image: np.rot90(image, 1)[:, ::-1]),
    ],
)
def test_rotated_clips_are_read_upright(tmp_path, rotation, hflip, upright):
    frames = patch_frames(2, 48, 64)
    frames[:, :8, :8] = 255  # a white corner shows where the top left went
    path = encode_video(tmp_path / "rotated.mp4", frames, rotation=rotation, hflip=hflip)
    with open_clip(path) as reader:
        expected = upright(frames[0])
        assert (reader.info.height, reader.info.width) == expected.shape[:2]
        assert reader.info.rotation == rotation % 360 and reader.info.mirrored == hflip
        image = next(iter(reader)).image
        assert image.shape == expected.shape
        corner = np.argwhere((image > 200).all(axis=-1))  # the white corner, give or take a blurred edge
        expected_corner = np.argwhere((expected == 255).all(axis=-1))
        assert np.abs(corner.min(axis=0) - expected_corner.min(axis=0)).max() <= 1
        assert np.abs(corner.max(axis=0) - expected_corner.max(axis=0)).max() <= 1


def test_more_than_8_bits_and_hdr_read_as_8_bit_with_warnings(tmp_path):
    frames = patch_frames(2, 48, 64)
    ten_bit = encode_video(tmp_path / "10bit.mp4", frames, pixel_format="yuv420p10le")
    with pytest.warns(RemoverWarning, match="10-bit colour"):
        clip = read_clip(ten_bit)
    assert clip.frames.dtype == np.uint8 and np.abs(patch_colour(clip.frames[0]) - PATCH).max() <= 2

    hdr = encode_video(tmp_path / "hdr.mp4", frames, pixel_format="yuv420p10le", matrix="bt2020nc")
    with pytest.warns(RemoverWarning) as warned:
        reader = open_clip(hdr)
    assert [str(w.message).split(" ")[1:3] for w in warned] == [["has", "10-bit"], ["is", "HDR"]]
    assert reader.info.color.hdr and reader.info.color.transfer == "smpte2084"
    assert reader.info.color.describe() == "bt2020nc tv range 10-bit HDR PQ"


def test_odd_sizes_and_16_bit_images_are_read(tmp_path):
    odd = encode_video(tmp_path / "odd.mp4", patch_frames(2, 33, 47), pixel_format="yuv444p")
    assert read_clip(odd).frames.shape == (2, 33, 47, 3)
    gray = (np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 170).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "deep.png")
    with pytest.warns(RemoverWarning, match="16-bit"):
        clip = read_clip(tmp_path / "deep.png")
    np.testing.assert_array_equal(clip.frames[0, ..., 0], gray >> 8)  # scaled, not clipped at 255


def test_float_frames_are_scaled_from_0_to_1_or_refused(tmp_path):
    """A folder of float TIFF frames (as --video or evaluate --result): 0.8 is 204, not 0 (issue 31)."""
    frames = tmp_path / "frames"
    frames.mkdir()
    values = np.linspace(0, 1, 64 * 112, dtype=np.float32).reshape(64, 112)
    for index in range(3):
        Image.fromarray(values).save(frames / f"{index:05d}.tif")
    clip = read_clip(frames)
    assert clip.frames.shape == (3, 64, 112, 3)
    np.testing.assert_array_equal(clip.frames[1, ..., 2], np.round(values * 255).astype(np.uint8))
    for bad, message in [(1.5, "values from 0 to 1.5"), (np.nan, "NaN"), (-0.25, "from -0.25")]:
        spoilt = values.copy()
        spoilt[3, 4] = bad
        Image.fromarray(spoilt).save(frames / "00001.tif")
        with pytest.raises(RemoverError, match=message):
            read_clip(frames)
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(wide)
    with pytest.warns(RemoverWarning, match="16-bit"), pytest.raises(RemoverError, match="outside the 16-bit range"):
        read_clip(wide)


def test_other_streams_are_listed(tmp_path):
    path = encode_video(tmp_path / "all.mp4", patch_frames(5, 48, 64), audio_seconds=0.2, subtitles=True, data=True)
    info = open_clip(path).info
    assert [(s.type, s.codec) for s in info.streams] == [
        ("subtitle", "mov_text"),
        ("data", "bin_data"),
        ("audio", "aac"),
    ]
    assert info.describe().endswith("subtitle mov_text, data bin_data, audio aac 48 kHz stereo")


def test_iteration_is_lazy_and_starts_over(tmp_path, monkeypatch):
    frames = patch_frames(6, 48, 64)
    frames[:, :8, :8] = np.arange(6)[:, None, None, None] * 40  # each frame its own
    path = encode_video(tmp_path / "clip.mp4", frames)
    converted = []
    to_rgb = runtime.io.reader.to_rgb
    monkeypatch.setattr(runtime.io.reader, "to_rgb", lambda frame, color: converted.append(1) or to_rgb(frame, color))
    reader = open_clip(path)
    assert reader.info.frame_count == 6 and not converted  # known before any frame is converted
    frames = iter(reader)
    first = next(frames)
    assert len(converted) == 1  # nothing decoded ahead
    again = next(iter(reader))  # a second iteration starts from the first frame
    assert again.index == 0 and np.array_equal(again.image, first.image)
    assert next(frames).index == 1
    reader.close()
    with pytest.raises(StopIteration):
        next(frames)  # close ends the decodes under way
    with pytest.raises(ValueError, match="closed"):
        iter(reader)


def test_a_single_image_is_a_one_frame_clip(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "still.png")
    info = open_clip(tmp_path / "still.png").info
    assert (info.kind, info.frame_count, info.width, info.height) == ("image", 1, 30, 20)
    np.testing.assert_array_equal(read_clip(tmp_path / "still.png").frames, image[None])


def test_unreadable_inputs_are_clear_errors(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 50)
    with pytest.raises(RemoverError, match="cannot read video"):
        open_clip(tmp_path / "bad.mp4")
    with pytest.raises(RemoverError, match="video not found"):
        open_clip(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RemoverError, match="no images"):
        open_clip(tmp_path / "empty")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(RemoverError, match="cannot read image"):
        open_clip(tmp_path / "bad.png")
    with av.open(str(tmp_path / "sound.mp4"), "w") as container:
        audio = container.add_stream("aac", rate=48000)
        silence = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        silence.sample_rate = 48000
        container.mux(audio.encode(silence))
        container.mux(audio.encode())
    with pytest.raises(RemoverError, match="has no video stream"):
        open_clip(tmp_path / "sound.mp4")


def test_frames_of_different_sizes_are_an_error(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (32, 16)).save(folder / "0.png")
    Image.new("RGB", (16, 16)).save(folder / "1.png")
    with pytest.raises(RemoverError, match=r"different sizes: 32x16 \(0.png\), 16x16 \(1.png\)"):
        open_clip(folder)
