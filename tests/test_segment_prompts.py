"""Prompts for the segmenter: the command-line strings, the prompts file, and every bad prompt as one
line with exit 2 and nothing written, before a model is loaded or a frame is processed."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import runtime.segment.files as segment_files
from runtime.errors import RemoverError
from runtime.io import open_clip, write_clip
from runtime.segment import Prompt, check_prompts, parse_prompts
from runtime.segment.__main__ import main

FRAMES, HEIGHT, WIDTH = 6, 48, 64
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "clip"
    write_clip(path, np.full((FRAMES, HEIGHT, WIDTH, 3), 90, np.uint8), Fraction(25))
    return path


def test_command_line_strings() -> None:
    prompts = parse_prompts(boxes=["1,2,30.5,40@3", "5,5,9,9#2"], points=["7,8"], negatives=["1e1,2@5#2"])
    assert prompts == [
        Prompt(3, 1, "box", (1.0, 2.0, 30.5, 40.0)),
        Prompt(0, 2, "box", (5.0, 5.0, 9.0, 9.0)),
        Prompt(0, 1, "point", (7.0, 8.0)),
        Prompt(5, 2, "negative", (10.0, 2.0)),
    ]


def test_prompts_file(tmp_path: Path) -> None:
    file = tmp_path / "prompts.json"
    objects = [
        {"prompts": [{"box": [0, 0, 10, 10]}, {"frame": 4, "point": [3, 4]}]},
        {"id": 7, "prompts": [{"frame": 2, "point": [20, 30]}, {"frame": 2, "negative": [21, 31]}]},
    ]
    file.write_text(json.dumps({"objects": objects}))
    assert parse_prompts(boxes=["1,1,5,5@1#3"], prompts_file=file) == [
        Prompt(1, 3, "box", (1.0, 1.0, 5.0, 5.0)),
        Prompt(0, 1, "box", (0.0, 0.0, 10.0, 10.0)),
        Prompt(4, 1, "point", (3.0, 4.0)),
        Prompt(2, 7, "point", (20.0, 30.0)),
        Prompt(2, 7, "negative", (21.0, 31.0)),
    ]


def test_prompts_inside_the_clip_pass(clip: Path) -> None:
    with open_clip(clip) as reader:
        edges = [Prompt(FRAMES - 1, 1, "box", (0, 0, WIDTH, HEIGHT)), Prompt(0, 1, "point", (WIDTH, HEIGHT))]
        check_prompts(edges, reader.info)


BAD_CLI = {
    "malformed box": (["--box", "1,2,3"], "a box takes X0,Y0,X1,Y1"),
    "malformed text": (["--point", "ten,20"], "expected X,Y[@FRAME][#OBJECT]"),
    "empty box": (["--box", "10,10,10,20"], "the box is empty"),
    "box outside the frame": (["--box", f"10,10,{WIDTH + 1},20"], f"outside the {WIDTH}x{HEIGHT} frame"),
    "point outside the frame": (["--point", f"5,{HEIGHT + 0.5}"], "outside the"),
    "negative point": (["--point=-1,5"], "outside the"),
    "frame past the end": (["--box", f"1,1,9,9@{FRAMES}"], f"frame {FRAMES} does not exist"),
    "two boxes on one frame": (["--box", "1,1,9,9", "--box", "20,20,30,30"], "two boxes on frame 0"),
    "only negative clicks": (["--negative", "5,5"], "only negative clicks"),
    "object id": (["--point", "5,5#256"], "outside 1 to 255"),
    "no prompts": ([], "no prompts"),
    "input size": (["--box", "1,1,9,9", "--image-size", "100"], "multiple of 32"),
    "grow": (["--box", "1,1,9,9", "--grow", "999"], "--grow 999 is outside"),
    "device": (["--box", "1,1,9,9", "--device", "tpu"], "unknown device 'tpu'"),
}
BAD_FILES = {
    "not JSON": ("{objects: ", "is not JSON"),
    "no objects": ('{"frames": {}}', 'expected {"objects"'),
    "two kinds in a prompt": ('{"objects": [{"prompts": [{"box": [0,0,5,5], "point": [1,1]}]}]}', "one of"),
    "coordinates not numbers": ('{"objects": [{"prompts": [{"point": ["a", 1]}]}]}', "not a list of numbers"),
    "frame not a number": ('{"objects": [{"prompts": [{"frame": "3", "point": [1, 1]}]}]}', '"frame": N'),
    "outside in a file": ('{"objects": [{"prompts": [{"frame": 1, "point": [500, 1]}]}]}', "outside the"),
}


def _run_bad(args: list[str], clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> str:
    """Run the command line; assert exit 2, one error line, no model loaded and nothing written."""

    def no_model(options: object) -> None:
        raise AssertionError("the model was loaded before the prompts were checked")

    monkeypatch.setattr(segment_files, "load_segmenter", no_model)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["--video", str(clip), "--out", str(out / "mask.mp4"), "--preview", str(out / "p.mp4"), *args])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and error[0].startswith("error: ")
    assert list(out.iterdir()) == []
    return error[0]


@pytest.mark.parametrize("case", BAD_CLI)
def test_bad_command_line_prompt(case: str, clip: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    args, expected = BAD_CLI[case]
    assert expected in _run_bad(args, clip, tmp_path, capsys, monkeypatch)


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_prompts_file(case: str, clip: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    text, expected = BAD_FILES[case]
    file = tmp_path / "prompts.json"
    file.write_text(text)
    assert expected in _run_bad(["--prompts", str(file)], clip, tmp_path, capsys, monkeypatch)


def test_missing_prompts_file(clip: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    assert "cannot read the prompts file" in _run_bad(
        ["--prompts", str(tmp_path / "none.json")], clip, tmp_path, capsys, monkeypatch
    )


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (Prompt(0, 1, "click", (1.0, 2.0)), "unknown prompt kind 'click'"),
        (Prompt(0, 1, "point", (1.0, 2.0, 3.0)), "a point takes X,Y"),
        (Prompt(0, 0, "point", (1.0, 2.0)), "object id 0 is outside 1 to 255"),
        (Prompt(-1, 1, "point", (1.0, 2.0)), "frame -1 is negative"),
        (Prompt(0, 1, "point", (float("nan"), 2.0)), "finite numbers"),
        (Prompt(0, 1, "negative", (1.0, 2.0)), "only negative clicks"),
    ],
)
def test_check_prompts_made_in_code(prompt: Prompt, expected: str, clip: Path) -> None:
    """Prompts an app builds itself get parse_prompts' checks too."""
    with open_clip(clip) as reader, pytest.raises(RemoverError, match=expected):
        check_prompts([prompt], reader.info)


def test_check_prompts_without_prompts(clip: Path) -> None:
    with open_clip(clip) as reader, pytest.raises(RemoverError, match="no prompts"):
        check_prompts([], reader.info)


@pytest.mark.slow
def test_importing_needs_no_extra() -> None:
    """runtime.run can import the segmenter's options without the [segment] extra installed: nothing of
    it is imported until a model is loaded or a mask finished."""
    code = (
        "import sys, runtime.segment, runtime.segment.cli, runtime.hub\n"
        "print([m for m in ('sam2', 'hydra', 'omegaconf', 'scipy', 'huggingface_hub') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"
