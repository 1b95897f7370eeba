"""The planner: windows over time, crop boxes and working sizes, on mask boxes made up in the test."""

from __future__ import annotations

import math

import pytest

from runtime import RemoverError
from runtime.clips.plan import Box, make_plan, window_spans
from runtime.options import PlanOptions
from runtime.pipeline.composite import pixel_unit
from runtime.pipeline.preprocess import output_size


@pytest.mark.parametrize(
    ("frames", "window", "overlap"), [(81, 81, 9), (82, 81, 9), (292, 81, 9), (321, 81, 9), (200, 33, 5), (50, 17, 0)]
)
def test_windows_cover_the_clip_with_the_overlap_and_never_exceed_the_window(frames, window, overlap):
    spans = window_spans(frames, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == frames
    assert all(stop - start <= window for start, stop in spans)
    for (_, stop), (start, _) in zip(spans[:-1], spans[1:]):
        assert stop - start == overlap  # consecutive windows share exactly the overlap
    assert len(spans) == max(1, math.ceil((frames - overlap) / (window - overlap)))  # as few windows as fit


def test_windows_are_balanced_and_4k_plus_1_long():
    spans = window_spans(200, 81, 9)
    lengths = [stop - start for start, stop in spans]
    assert lengths[:-1] == [73, 73] and lengths[-1] <= 73  # 200 frames: three windows, not 81 + 81 + 56
    assert all((length - 1) % 4 == 0 for length in lengths[:-1])


def test_window_zero_or_a_short_clip_is_one_pass():
    assert window_spans(500, 0, 9) == [(0, 500)]
    assert window_spans(81, 81, 9) == [(0, 81)]


def test_fixed_windows_all_have_the_window_length():
    spans = window_spans(100, 33, 5, fixed=True)
    assert all(stop - start == 33 for start, stop in spans) and spans[-1][1] == 100


def test_continue_windows_know_the_overlap_and_crossfade_windows_do_not():
    boxes = [Box(10, 10, 20, 20)] * 100
    plan = make_plan(100, (240, 432), boxes, PlanOptions(window=33, overlap=5))
    assert [w.known for w in plan.windows] == [0] + [5] * (len(plan.windows) - 1)
    crossfade = make_plan(100, (240, 432), boxes, PlanOptions(window=33, overlap=5, blend="crossfade"))
    assert all(w.known == 0 for w in crossfade.windows)


def _object(frame_size, fraction, center=(0.5, 0.5)):
    """A square box covering `fraction` of the frame."""
    height, width = frame_size
    side = round(math.sqrt(fraction * height * width))
    top, left = round(center[0] * height - side / 2), round(center[1] * width - side / 2)
    return Box(top, left, top + side, left + side)


def test_a_small_object_in_1080p_is_cropped_at_native_resolution():
    frame = (1080, 1920)
    box = _object(frame, 0.02)
    plan = make_plan(81, frame, [box] * 81, PlanOptions())
    (window,) = plan.windows
    assert plan.cropped
    assert window.size == (window.box.height, window.box.width)  # scale 1: no resampling
    assert window.size[0] % 16 == 0 and window.size[1] % 16 == 0
    grown = box.grown(6 * pixel_unit(frame))
    assert window.box.union(grown) == window.box  # the dilated mask is inside the crop
    whole = output_size(*frame, None, None)
    assert window.size[0] * window.size[1] * 3 <= whole[0] * whole[1]  # at least 3x fewer pixels


def test_a_large_object_is_scaled_down_to_the_budget():
    frame = (2160, 3840)
    box = _object(frame, 0.3)
    plan = make_plan(9, frame, [box] * 9, PlanOptions(crop="auto"))
    (window,) = plan.windows
    whole = output_size(*frame, None, None)
    assert plan.cropped and window.size[0] * window.size[1] <= whole[0] * whole[1]
    assert window.size[0] < window.box.height  # scaled down, but at more detail than the whole frame gets
    assert window.size[0] / window.box.height > whole[0] / frame[0]


def test_auto_takes_the_whole_frame_when_the_crop_would_be_no_smaller():
    frame = (2160, 3840)
    everywhere = Box(20, 20, 2140, 3820)
    auto = make_plan(9, frame, [everywhere] * 9, PlanOptions(crop="auto"))
    assert not auto.cropped and auto.windows[0].box == Box(0, 0, *frame)
    assert auto.windows[0].size == output_size(*frame, None, None)
    small = (144, 256)  # smaller than --min-crop: the crop would be the whole frame
    assert not make_plan(5, small, [Box(50, 50, 60, 60)] * 5, PlanOptions(height=144, width=256)).cropped


def test_every_window_has_the_same_crop_size_and_follows_the_object():
    frame = (1080, 1920)
    boxes = [Box(400, 100 + 8 * i, 500, 200 + 8 * i) for i in range(200)]  # moving right
    plan = make_plan(200, frame, boxes, PlanOptions())
    sizes = {(w.box.height, w.box.width) for w in plan.windows}
    assert len(sizes) == 1
    lefts = [w.box.left for w in plan.windows]
    assert lefts == sorted(lefts) and lefts[-1] > lefts[0]
    for w in plan.windows:  # each window's crop holds its own frames' (dilated) boxes
        for box in boxes[w.start + w.known : w.stop]:
            assert w.box.union(box.grown(6 * pixel_unit(frame))) == w.box


def test_min_crop_gives_a_tiny_object_context():
    frame = (2160, 3840)
    plan = make_plan(5, frame, [Box(1000, 1000, 1010, 1010)] * 5, PlanOptions(min_crop=256))
    assert min(plan.windows[0].size) >= 256


def test_crop_off_is_the_one_pass_whole_frame():
    frame = (1080, 1920)
    plan = make_plan(9, frame, [_object(frame, 0.02)] * 9, PlanOptions(crop="off", height=240, width=416))
    assert not plan.cropped and plan.windows[0].size == (240, 416) and plan.windows[0].box == Box(0, 0, 1080, 1920)


def test_dilation_and_feather_scale_with_the_frame():
    unit_480, unit_4k = pixel_unit((480, 832)), pixel_unit((2160, 3840))
    assert unit_480 == 1 and unit_4k == 4.5 and pixel_unit((240, 432)) == 1
    box = Box(1000, 1000, 1200, 1200)
    # antialias: the masks are dilated at the working size, in working pixels
    cropped = make_plan(5, (2160, 3840), [box] * 5, PlanOptions(crop="on", context=0.25, resize="antialias"))
    window = cropped.windows[0]
    scale = window.size[0] / window.box.height
    assert window.dilation == round(6 * 4.5 * scale) and window.feather == round(3 * 4.5 * scale)
    whole = make_plan(5, (2160, 3840), [box] * 5, PlanOptions(crop="off", resize="antialias")).windows[0]
    assert whole.dilation == 6 and whole.feather == 3  # 4K shrunk to 480p: the released setting
    # reference (the default): dilated at the native resolution, in native pixels, whatever the scale
    for options in (PlanOptions(crop="on", context=0.25), PlanOptions(crop="off")):
        window = make_plan(5, (2160, 3840), [box] * 5, options).windows[0]
        assert (window.resize, window.dilation, window.feather) == ("reference", 27, 14)  # 6 and 3 x 4.5, rounded


def test_windows_without_a_mask_are_copied_and_an_empty_mask_runs_nothing():
    boxes = [None] * 40 + [Box(10, 10, 20, 20)] * 10 + [None] * 50
    plan = make_plan(100, (240, 432), boxes, PlanOptions(window=33, overlap=5))  # windows 0-28, 24-52, 48-76, ...
    assert [w.box is not None for w in plan.windows] == [False, True, False, False]  # 48-52 are known in window 3
    crossfade = make_plan(100, (240, 432), boxes, PlanOptions(window=33, overlap=5, blend="crossfade"))
    assert [w.box is not None for w in crossfade.windows] == [False, True, True, False]
    assert not make_plan(10, (240, 432), [None] * 10, PlanOptions()).model_windows


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(window=9, overlap=9), "smaller than --window"),
        (dict(window=5, overlap=9), "smaller than --window"),
        (dict(window=-1), ">= 0"),
        (dict(blend="mix"), "blend mode"),
        (dict(crop="maybe"), "crop mode"),
        (dict(min_crop=8), "--min-crop"),
        (dict(resize="nearest"), "--resize nearest: choose one of reference, antialias"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(RemoverError, match=message):  # refused when made, before any plan
        PlanOptions(**options)


def test_the_plan_describes_itself():
    plan = make_plan(100, (1080, 1920), [_object((1080, 1920), 0.02)] * 100, PlanOptions())
    lines = plan.describe()
    assert lines[0].startswith("plan: 100 frames of 1920x1080 in 2 window(s) (continue, overlap 5); crop")
    assert "tokens" in lines[1] and "known" not in lines[1] and "5 known" in lines[2]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ((64, 112), (64, 112)),  # far below 480p: its own size, not 832x480 (scale 7.5)
        ((144, 256), (144, 256)),  # the demo
        ((200, 200), (192, 192)),  # sides rounded down to multiples of 16, never up
        ((255, 400), (240, 400)),  # around the 256 minimum crop: the whole frame
        ((256, 400), (256, 400)),
        ((257, 400), (256, 400)),
        ((479, 852), (464, 848)),  # one row short of 480p: still not upscaled
        ((480, 852), (480, 832)),  # 480p and above: 480p, as before
        ((481, 855), (480, 832)),
        ((720, 1280), (480, 832)),
        ((1080, 1920), (480, 832)),
        ((1920, 1080), (832, 480)),  # portrait
    ],
)
def test_the_whole_frame_is_never_upscaled_past_the_clip(frame, expected):
    plan = make_plan(9, frame, [Box(0, 0, *frame)] * 9, PlanOptions())
    assert plan.windows[0].size == expected
    assert ("not upscaled to" in plan.describe()[0]) == (min(frame) < 480)  # the plan says so


@pytest.mark.parametrize("frame", [(64, 112), (144, 256), (255, 400), (479, 852)])
def test_a_small_mask_in_a_small_clip_stays_at_native_scale(frame):
    box = Box(frame[0] // 3, frame[1] // 3, frame[0] // 2, frame[1] // 2)
    window = make_plan(9, frame, [box] * 9, PlanOptions()).windows[0]
    assert window.size[0] <= window.box.height and window.size[1] <= window.box.width  # no upscaling
    assert window.dilation == 6  # the 480p pixels, as given: below 480p one pixel is one pixel


def test_upscaling_a_small_clip_is_asked_for_by_upscale_or_a_size():
    frame = (64, 112)
    whole = [Box(0, 0, *frame)] * 9
    plan = make_plan(9, frame, whole, PlanOptions())
    assert "not upscaled to 832x480 (--upscale allows it)" in plan.describe()[0]
    upscaled = make_plan(9, frame, whole, PlanOptions(upscale=True))
    assert upscaled.windows[0].size == (480, 832) and "not upscaled" not in upscaled.describe()[0]
    assert make_plan(9, frame, whole, PlanOptions(height=128)).windows[0].size == (128, 224)
    big = make_plan(9, (1080, 1920), [Box(0, 0, 1080, 1920)] * 9, PlanOptions())
    assert "not upscaled" not in big.describe()[0]
