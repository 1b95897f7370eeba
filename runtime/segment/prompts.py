"""Prompts for the segmenter: boxes, clicks and negative clicks on any frame, one object or several.

On the command line (all in the clip's display pixels, frame 0 when `@FRAME` is left out, object 1
when `#OBJECT` is left out):

    --box X0,Y0,X1,Y1[@FRAME][#OBJECT]   --point X,Y[@FRAME][#OBJECT]   --negative X,Y[@FRAME][#OBJECT]

A prompts file (JSON) holds several objects, each with its own prompts:

    {"objects": [
        {"id": 1, "prompts": [{"frame": 0, "box": [40, 30, 120, 200]}, {"frame": 40, "point": [80, 90]}]},
        {"id": 2, "prompts": [{"frame": 10, "point": [300, 64]}, {"frame": 10, "negative": [310, 90]}]}
    ]}

Each prompt has "frame" (default 0) and exactly one of "box" [x0, y0, x1, y1], "point" [x, y],
"negative" [x, y]. Object ids are 1 to 255 (the id video stores them as grey levels; "id" defaults to
the object's place in the list, from 1). An object takes at most one box per frame (SAM 2 takes one),
and needs a box or a point somewhere. `check_prompts` then checks them against the clip.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runtime.errors import RemoverError
from runtime.io.reader import ClipInfo
from runtime.io.textfile import read_json

KINDS = ("box", "point", "negative")
MAX_OBJECT_ID = 255  # the id video stores an object's id as an 8-bit grey level
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
CLI_PROMPT = re.compile(rf"(?P<coords>{NUMBER}(?:,{NUMBER})*)(?:@(?P<frame>\d+))?(?:#(?P<object>\d+))?")
COORD_COUNT = {"box": 4, "point": 2, "negative": 2}


@dataclass(frozen=True)
class Prompt:
    """One click or box on a frame of the clip, in its display pixels: a box is (x0, y0, x1, y1), right
    and bottom being the far edges; a point (x, y). "negative" is a click on what is not the object."""

    frame: int
    object_id: int
    kind: Literal["box", "point", "negative"]
    coords: tuple[float, ...]

    def describe(self) -> str:
        """e.g. "box 10,20,110,220 on frame 0"."""
        values = ",".join(f"{value:g}" for value in self.coords)
        return f"{self.kind} {values} on frame {self.frame}"


def _checked(prompt: Prompt, where: str) -> Prompt:
    """`prompt` after the checks that need no clip: coordinate count, finite numbers, frame, id."""
    if prompt.kind not in KINDS:
        raise RemoverError(f"{where}: unknown prompt kind {prompt.kind!r}: use {', '.join(KINDS)}")
    if len(prompt.coords) != COORD_COUNT[prompt.kind]:
        shape = "X0,Y0,X1,Y1" if prompt.kind == "box" else "X,Y"
        raise RemoverError(f"{where}: a {prompt.kind} takes {shape}, got {len(prompt.coords)} numbers")
    if not all(math.isfinite(value) for value in prompt.coords):
        raise RemoverError(f"{where}: coordinates must be finite numbers")
    if prompt.frame < 0:
        raise RemoverError(f"{where}: frame {prompt.frame} is negative")
    if not 1 <= prompt.object_id <= MAX_OBJECT_ID:
        raise RemoverError(f"{where}: object id {prompt.object_id} is outside 1 to {MAX_OBJECT_ID}")
    if prompt.kind == "box":
        x0, y0, x1, y1 = prompt.coords
        if x1 <= x0 or y1 <= y0:
            raise RemoverError(f"{where}: the box is empty (it needs X0 < X1 and Y0 < Y1)")
    return prompt


def _cli_prompt(kind: str, text: str) -> Prompt:
    option = f"--{kind} {text}"
    match = CLI_PROMPT.fullmatch(text.strip())
    if match is None:
        shape = "X0,Y0,X1,Y1" if kind == "box" else "X,Y"
        raise RemoverError(f"{option}: expected {shape}[@FRAME][#OBJECT] in display pixels")
    coords = tuple(float(value) for value in match["coords"].split(","))
    frame = int(match["frame"] or 0)
    object_id = int(match["object"] or 1)
    return _checked(Prompt(frame, object_id, kind, coords), option)


def _number_list(value: object) -> tuple[float, ...] | None:
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)
    return None


def _file_prompts(path: Path) -> list[Prompt]:
    document = read_json(path, "the prompts file")
    objects = document.get("objects") if isinstance(document, dict) else None
    if not isinstance(objects, list) or not objects:
        raise RemoverError(f'{path}: expected {{"objects": [{{"id": 1, "prompts": [{{"frame": 0, "box": [...]}}]}}]}}')
    prompts: list[Prompt] = []
    for place, entry in enumerate(objects, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("prompts"), list) or not entry["prompts"]:
            raise RemoverError(f'{path}: object {place}: expected {{"id": N, "prompts": [...]}} with prompts')
        object_id = entry.get("id", place)
        if not isinstance(object_id, int) or isinstance(object_id, bool):
            raise RemoverError(f"{path}: object {place}: id {object_id!r} is not a whole number")
        for number, item in enumerate(entry["prompts"], start=1):
            where = f"{path}: object {object_id}, prompt {number}"
            kinds = [kind for kind in KINDS if isinstance(item, dict) and kind in item]
            frame = item.get("frame", 0) if isinstance(item, dict) else None
            if len(kinds) != 1 or not isinstance(frame, int) or isinstance(frame, bool):
                raise RemoverError(f'{where}: expected {{"frame": N, and one of "box", "point", "negative"}}')
            coords = _number_list(item[kinds[0]])
            if coords is None:
                raise RemoverError(f"{where}: {kinds[0]} {item[kinds[0]]!r} is not a list of numbers")
            prompts.append(_checked(Prompt(frame, object_id, kinds[0], coords), where))
    return prompts


def _check_objects(prompts: list[Prompt]) -> None:
    """One box per object and frame; every object needs a box or a positive point."""
    boxes: set[tuple[int, int]] = set()
    for prompt in prompts:
        if prompt.kind == "box":
            if (prompt.object_id, prompt.frame) in boxes:
                raise RemoverError(
                    f"object {prompt.object_id} has two boxes on frame {prompt.frame} (SAM 2 takes one an object "
                    "and frame): give the second another object, e.g. #2, or use a prompts file"
                )
            boxes.add((prompt.object_id, prompt.frame))
    for object_id in object_ids(prompts):
        if all(p.kind == "negative" for p in prompts if p.object_id == object_id):
            raise RemoverError(f"object {object_id} has only negative clicks: add a box or a point on it")


def parse_prompts(
    boxes: Iterable[str] = (),
    points: Iterable[str] = (),
    negatives: Iterable[str] = (),
    prompts_file: str | Path | None = None,
) -> list[Prompt]:
    """The prompts of the command-line strings and the prompts file together (see the module's
    docstring); a malformed one is one RemoverError line. An empty result is an error too."""
    prompts = [_cli_prompt(kind, text) for kind, texts in zip(KINDS, (boxes, points, negatives)) for text in texts]
    if prompts_file is not None:
        prompts += _file_prompts(Path(prompts_file))
    if not prompts:
        raise RemoverError("no prompts: give --box, --point or --prompts FILE.json")
    _check_objects(prompts)
    return prompts


def check_prompts(prompts: list[Prompt], info: ClipInfo) -> None:
    """Every prompt well formed (as `parse_prompts` checks, for prompts made in code) and inside the
    clip: its frame exists, a point lies in the frame, a box lies in the frame (0 <= x0 < x1 <= width,
    0 <= y0 < y1 <= height). One RemoverError line otherwise."""
    if not prompts:
        raise RemoverError("no prompts to segment with")
    size = f"{info.width}x{info.height}"
    for prompt in prompts:
        where = f"object {prompt.object_id}: {prompt.kind} on frame {prompt.frame}"
        _checked(prompt, where)
        where = f"object {prompt.object_id}: {prompt.describe()}"
        if prompt.frame >= info.frame_count:
            raise RemoverError(f"{where}: frame {prompt.frame} does not exist (the clip has {info.frame_count} frames)")
        if prompt.kind == "box":
            x0, y0, x1, y1 = prompt.coords
            if x1 <= x0 or y1 <= y0:
                raise RemoverError(f"{where}: the box is empty (it needs x0 < x1 and y0 < y1)")
            inside = 0 <= x0 and 0 <= y0 and x1 <= info.width and y1 <= info.height
        else:
            x, y = prompt.coords
            inside = 0 <= x <= info.width and 0 <= y <= info.height
        if not inside:
            raise RemoverError(f"{where}: outside the {size} frame")
    _check_objects(prompts)


def object_ids(prompts: Iterable[Prompt]) -> list[int]:
    """The objects' ids, in increasing order."""
    return sorted({prompt.object_id for prompt in prompts})


def frame_inputs(prompts: Iterable[Prompt]) -> dict[int, dict[int, list[Prompt]]]:
    """object id -> frame -> that frame's prompts, the box first (SAM 2 takes a box before clicks)."""
    grouped: dict[int, dict[int, list[Prompt]]] = {}
    for prompt in prompts:
        grouped.setdefault(prompt.object_id, {}).setdefault(prompt.frame, []).append(prompt)
    for frames in grouped.values():
        for frame, items in frames.items():
            frames[frame] = sorted(items, key=lambda p: p.kind != "box")
    return grouped
