"""runtime.io.masks: every mask source, thresholds, channels, scaling, rotation and the box file."""

from __future__ import annotations

import json
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from media import encode_video
from PIL import Image

from runtime import RemoverError
from runtime.errors import RemoverWarning
from runtime.io import ClipInfo, open_clip, open_masks, write_clip
from runtime.io.color import SRGB


def video(frames: int, height: int, width: int, rotation: int = 0) -> ClipInfo:
    """What open_clip would say of a video in display orientation (height x width)."""
    return ClipInfo(Path("video.mp4"), "video", width, height, frames, Fraction(25), Fraction(1, 25), rotation, SRGB)


def test_reads_the_tennis_masks(data_dir):
    frames = open_clip(data_dir / "tennis" / "frames").info
    masks = list(open_masks(data_dir / "tennis" / "masks", frames))
    assert len(masks) == 70 and masks[0].shape == (240, 432) and masks[0].dtype == bool
    # the masks are 0/255 PNGs: read independently with Pillow, the same pixels are set
    files = sorted((data_dir / "tennis" / "masks").glob("*.png"))
    expected = np.stack([np.asarray(Image.open(path).convert("L")) > 0 for path in files])
    np.testing.assert_array_equal(np.stack(masks), expected)


def test_a_still_mask_of_another_size_is_scaled_to_the_video(data_dir):
    car = open_clip(data_dir / "running_car" / "running_car.mp4").info
    source = open_masks(data_dir / "running_car" / "mask_square.png", car)  # 432x240 for 972x540
    assert source.frame_count == 292
    masks = iter(source)
    first = next(masks)
    assert first.shape == (540, 972) and first.any()
    assert next(masks) is first  # one image: the same (read-only) mask for every frame
    assert sum(1 for _ in masks) == 290


def test_mask_video_is_thresholded_at_half_intensity(tmp_path):
    masks = np.zeros((5, 32, 48, 3), np.uint8)
    masks[:, 8:24, 8:24] = 255
    write_clip(tmp_path / "mask.mp4", masks, Fraction(25))
    source = open_masks(tmp_path / "mask.mp4", video(5, 32, 48))
    read = np.stack(list(source))
    assert read.shape == (5, 32, 48)
    assert read[:, 10:22, 10:22].all() and not read[:, :, 30:].any()
    np.testing.assert_array_equal(np.stack(list(source)), read)  # iterating again starts over


def test_threshold_and_invert(tmp_path):
    gray = np.zeros((8, 12), np.uint8)
    gray[:, 4:8], gray[:, 8:] = 60, 200
    Image.fromarray(gray).save(tmp_path / "mask.png")
    clip = video(3, 8, 12)
    default = next(iter(open_masks(tmp_path / "mask.png", clip)))
    assert default[:, 4:].all() and not default[:, :4].any()  # images: any nonzero pixel
    high = next(iter(open_masks(tmp_path / "mask.png", clip, threshold=100)))
    assert high[:, 8:].all() and not high[:, :8].any()
    inverted = next(iter(open_masks(tmp_path / "mask.png", clip, threshold=100, invert=True)))
    np.testing.assert_array_equal(inverted, ~high)


def test_jpeg_noise_does_not_become_mask(tmp_path):
    image = np.random.default_rng(0).integers(0, 40, (64, 64, 3), dtype=np.uint8)  # noise in the black
    image[16:48, 16:48] = 255
    Image.fromarray(image).save(tmp_path / "mask.jpg", quality=90)
    clip = video(1, 64, 64)
    mask = next(iter(open_masks(tmp_path / "mask.jpg", clip)))
    assert mask[18:46, 18:46].all() and mask.sum() < 34 * 34
    assert next(iter(open_masks(tmp_path / "mask.jpg", clip, threshold=0))).mean() > 0.9  # what > 0 would do


def test_scaling_keeps_thin_lines_and_upscales_nearest(tmp_path):
    line = np.zeros((160, 240), np.uint8)
    line[81, :] = 255  # one pixel high: 4x down it must survive
    line[:, 123] = 255
    Image.fromarray(line).save(tmp_path / "line.png")
    mask = next(iter(open_masks(tmp_path / "line.png", video(1, 40, 60))))
    assert mask.shape == (40, 60)
    assert mask[20].all() and mask[:, 30].all() and mask.sum() == 60 + 40 - 1

    small = np.zeros((4, 6), np.uint8)
    small[1, 2] = 255
    Image.fromarray(small).save(tmp_path / "small.png")
    mask = next(iter(open_masks(tmp_path / "small.png", video(1, 12, 18))))
    np.testing.assert_array_equal(np.argwhere(mask).min(axis=0), [3, 6])
    np.testing.assert_array_equal(np.argwhere(mask).max(axis=0), [5, 8])


@pytest.mark.parametrize("bits", [8, 16])
def test_colour_masks_threshold_the_brightest_channel_or_the_luma(tmp_path, bits):
    """Random colours in an 8- or 16-bit PNG: the default channel is the largest of R, G and B, "luma" is
    BT.601's (299 R + 587 G + 114 B) / 1000 rounded, both computed here in floating point from the file."""
    full = 2**bits - 1
    pixels = (
        np.random.default_rng(bits).integers(0, full + 1, (24, 40, 3)).astype(np.uint16 if bits == 16 else np.uint8)
    )
    if bits == 8:
        Image.fromarray(pixels).save(tmp_path / "colours.png")
    else:  # Pillow writes no 16-bit RGB: a PNG by hand
        rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
        header = struct.pack(">IIBBBBB", 40, 24, 16, 2, 0, 0, 0)
        chunks = [(b"IHDR", header), (b"IDAT", zlib.compress(rows)), (b"IEND", b"")]
        body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)
        (tmp_path / "colours.png").write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    clip, scale = video(1, 24, 40), full // 255
    luma = np.floor(pixels.astype(float) @ np.array([0.299, 0.587, 0.114]) + 0.5)
    for threshold in (40, 127, 200):
        brightest = next(iter(open_masks(tmp_path / "colours.png", clip, threshold=threshold)))
        np.testing.assert_array_equal(brightest, pixels.max(axis=-1) > threshold * scale)
        by_luma = next(iter(open_masks(tmp_path / "colours.png", clip, threshold=threshold, channel="luma")))
        np.testing.assert_array_equal(by_luma, luma > threshold * scale)
        assert 0 < by_luma.sum() < by_luma.size


def test_alpha_channel_masks(tmp_path):
    rgba = np.full((10, 10, 4), 255, np.uint8)  # white everywhere: only the alpha says where
    rgba[..., 3] = 0
    rgba[2:5, 3:7, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "cutout.png")
    clip = video(1, 10, 10)
    mask = next(iter(open_masks(tmp_path / "cutout.png", clip)))
    assert mask.sum() == 12 and mask[2:5, 3:7].all()
    assert next(iter(open_masks(tmp_path / "cutout.png", clip, channel="luma"))).all()
    Image.fromarray(rgba[..., :3]).save(tmp_path / "plain.png")
    with pytest.raises(RemoverError, match="no alpha channel"):
        open_masks(tmp_path / "plain.png", clip, channel="alpha")
    with pytest.raises(RemoverError, match="unknown mask channel"):
        open_masks(tmp_path / "plain.png", clip, channel="red")


def encode_rgba_video(path: Path, frames: np.ndarray, codec: str) -> Path:
    """RGBA frames [F, H, W, 4] as a video with alpha (png or qtrle in .mov)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "rgba" if codec == "png" else "argb"
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(frame, format="rgba").reformat(format=stream.pix_fmt)
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("codec", ["png", "qtrle"])
def test_a_mask_video_with_the_object_in_alpha_is_read_by_its_alpha(tmp_path, codec):
    """White RGB everywhere, the object in alpha: the mask is the object, not the whole frame (issue 31)."""
    rgba = np.full((3, 64, 112, 4), 255, np.uint8)
    rgba[..., 3] = 0
    rgba[:, 10:30, 20:50, 3] = 255
    path = encode_rgba_video(tmp_path / "cutout.mov", rgba, codec)
    clip = video(3, 64, 112)
    expected = rgba[..., 3] > 0
    np.testing.assert_array_equal(np.stack(list(open_masks(path, clip))), expected)
    np.testing.assert_array_equal(np.stack(list(open_masks(path, clip, channel="alpha"))), expected)
    assert np.stack(list(open_masks(path, clip, channel="luma"))).all()  # the colour, when asked for
    write_clip(tmp_path / "plain.mp4", rgba[..., :3], Fraction(25))
    with pytest.raises(RemoverError, match="has no alpha channel"):
        open_masks(tmp_path / "plain.mp4", clip, channel="alpha")


def test_box_file(tmp_path):
    boxes = {"frames": {"0": [[1, 2, 4, 5]], "2": [[0.5, 0.5, 1.5, 1.2], [8, 6, 20, 20]]}}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    masks = list(open_masks(tmp_path / "boxes.json", video(3, 8, 10)))
    assert len(masks) == 3 and masks[0].shape == (8, 10)
    assert masks[0].sum() == 9 and masks[0][2:5, 1:4].all()
    assert not masks[1].any()  # a frame not listed has no mask
    assert masks[2][0:2, 0:2].all() and masks[2].sum() == 4 + 2 * 2  # fractions cover touched pixels; cut to the frame
    inverted = list(open_masks(tmp_path / "boxes.json", video(3, 8, 10), invert=True))
    np.testing.assert_array_equal(inverted[0], ~masks[0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"frames": {"3": [[0, 0, 2, 2]]}}', "frame 3 does not exist"),
        ('{"frames": {"first": []}}', "'first' is not a frame number"),
        ('{"frames": {"0": [[0, 0, 2]]}}', r"is not a box \[x0, y0, x1, y1\]"),
        ('{"frames": {"0": [[4, 0, 2, 2]]}}', "is empty"),
        ('{"frames": {"0": [[20, 20, 30, 30]]}}', "lies outside the 10x8 frame"),
        ('{"boxes": []}', "expected"),
        ('{"frames": {"0": [[0, 0, 2, 2]],}}', "is not JSON"),
    ],
)
def test_bad_box_files_are_clear_errors(tmp_path, content, message):
    (tmp_path / "boxes.json").write_text(content)
    with pytest.raises(RemoverError, match=message):
        open_masks(tmp_path / "boxes.json", video(3, 8, 10))


def test_masks_drawn_before_rotation_are_rotated_to_match(tmp_path):
    frames = np.zeros((3, 48, 64, 3), np.uint8)
    frames[:, :8, :8] = 255  # top left as stored
    clip = encode_video(tmp_path / "rotated.mp4", frames, rotation=90)
    info = open_clip(clip).info
    assert (info.width, info.height) == (48, 64)
    Image.fromarray(frames[0]).save(tmp_path / "stored.png")  # drawn on the frames as stored
    with pytest.warns(RemoverWarning, match="before its 90-degree rotation"):
        source = open_masks(tmp_path / "stored.png", info)
    mask = next(iter(source))
    upright = next(iter(open_clip(clip))).image.max(axis=-1) > 127
    assert mask.shape == (64, 48) and mask[56:, :8].all() and mask.sum() == 64
    assert (mask == upright).mean() > 0.99
    rotated_masks = encode_video(tmp_path / "rotated_mask.mp4", frames, rotation=90)  # its own rotation: read upright
    np.testing.assert_array_equal(next(iter(open_masks(rotated_masks, info))), mask)


def test_mismatches_are_errors_before_any_decoding(tmp_path):
    write_clip(tmp_path / "mask.mp4", np.zeros((4, 32, 48, 3), np.uint8), Fraction(25))
    with pytest.raises(RemoverError, match="the mask video has 4 frames, the video 5"):
        open_masks(tmp_path / "mask.mp4", video(5, 32, 48))
    with pytest.raises(RemoverError, match="the mask video mask.mp4 is 48x32 and the video 64x64"):
        open_masks(tmp_path / "mask.mp4", video(4, 64, 64))
    folder = tmp_path / "masks"
    folder.mkdir()
    for index in range(3):
        Image.new("L", (48, 32)).save(folder / f"{index}.png")
    with pytest.raises(RemoverError, match="has 3 images, the video 4 frames"):
        open_masks(folder, video(4, 32, 48))
    Image.new("L", (40, 32)).save(folder / "3.png")
    with pytest.raises(RemoverError, match="different sizes"):
        open_masks(folder, video(4, 32, 48))


def test_unreadable_masks_are_clear_errors(tmp_path):
    with pytest.raises(RemoverError, match="mask not found"):
        open_masks(tmp_path / "missing.png", video(1, 8, 8))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(RemoverError, match="cannot read image"):
        open_masks(tmp_path / "bad.png", video(1, 8, 8))
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 50)
    with pytest.raises(RemoverError, match="cannot read video"):
        open_masks(tmp_path / "bad.mp4", video(1, 8, 8))
    with pytest.raises(RemoverError, match="threshold 300"):
        open_masks(tmp_path / "bad.mp4", video(1, 8, 8), threshold=300)


def write_png(path: Path, rows: np.ndarray, color_type: int, depth: int, palette: bytes | None = None) -> Path:
    """A PNG written byte by byte (not through Pillow, which would not keep a short palette): `rows`
    [H, W] or [H, W, C] already in the file's sample type (big-endian for 16 bits)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = rows.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    pixels = b"".join(b"\0" + row.tobytes() for row in rows)  # filter 0 on every row
    body = chunk(b"IHDR", header) + (chunk(b"PLTE", palette) if palette is not None else b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("label", [1, 200, 65535])
@pytest.mark.parametrize("color_type", [0, 2, 6])  # gray, RGB, RGBA at 16 bits
def test_a_16_bit_label_map_is_a_mask_at_any_nonzero_value(tmp_path, label, color_type):
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    rows = np.zeros((6, 8, channels), ">u2")
    if channels == 4:
        rows[..., 3] = 65535  # opaque: the colour decides
    rows[2:4, 3:6, 0] = label
    write_png(tmp_path / "label.png", rows[..., 0] if channels == 1 else rows, color_type, 16)
    mask = next(iter(open_masks(tmp_path / "label.png", video(1, 6, 8))))
    expected = np.zeros((6, 8), bool)
    expected[2:4, 3:6] = True
    np.testing.assert_array_equal(mask, expected)


def test_a_16_bit_threshold_is_in_8_bit_units(tmp_path):
    rows = np.array([[0, 257 * 10, 257 * 10 + 1, 65535]], ">u2")
    write_png(tmp_path / "label.png", rows, 0, 16)
    mask = next(iter(open_masks(tmp_path / "label.png", video(1, 1, 4), threshold=10)))
    np.testing.assert_array_equal(mask, [[False, False, True, True]])


def test_palette_indices_without_palette_entries_are_masks(tmp_path):
    indices = np.zeros((4, 6), np.uint8)
    indices[1, 1], indices[2, 4], indices[3, 0] = 1, 5, 2
    files = {
        "short.png": bytes([0, 0, 0]),  # one entry: black for the background only
        "labels.png": bytes([0, 0, 0, 128, 0, 0, 0, 0, 0]),  # index 2 is black: not a mask
    }
    expected = {"short.png": indices > 0, "labels.png": (indices == 1) | (indices == 5)}
    for name, palette in files.items():
        write_png(tmp_path / name, indices, 3, 8, palette)
        mask = next(iter(open_masks(tmp_path / name, video(1, 4, 6))))
        np.testing.assert_array_equal(mask, expected[name], err_msg=name)


def test_a_float_tiff_mask_is_a_mask_at_any_value_above_zero(tmp_path):
    values = np.zeros((4, 6), np.float32)
    values[1, 1], values[2, 4], values[3, 0] = 0.5, 1e-6, 3.0
    Image.fromarray(values).save(tmp_path / "mask.tif")
    mask = next(iter(open_masks(tmp_path / "mask.tif", video(1, 4, 6))))
    np.testing.assert_array_equal(mask, values > 0)
    values[0, 0] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tif")
    with pytest.raises(RemoverError, match="holds NaN"):
        next(iter(open_masks(tmp_path / "nan.tif", video(1, 4, 6))))
