"""The batch manifest: a CSV file with a header row, or JSON lines, one clip a row.

Columns: `video`, `mask`, `output`, and any per-clip option of `python -m runtime.run` by its long name
(`height`, `crf`, `no_paste_back`, ...). Each row is parsed straight into the option dataclasses of
runtime/options.py, which check it as they check the CLI's values; relative paths are the manifest's
folder's. A row whose output is any row's input (the video, the mask, or a file in a frames folder) or
another row's output is refused before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from runtime.errors import RemoverError
from runtime.io import overlaps, same_file
from runtime.io.textfile import read_csv, read_json_lines
from runtime.io.writer import output_kind
from runtime.options import (
    ATTENTION_CHOICES,
    COMPILE_CHOICES,
    DECODER_CHOICES,
    DTYPE_CHOICES,
    ENGINE_RUNTIMES,
    KERNEL_CHOICES,
    MASK_CHANNELS,
    SAMPLER_CHOICES,
    MaskOptions,
    ModelOptions,
    OutputOptions,
    PlanOptions,
    RunOptions,
)
from runtime.pipeline.composite import RESIZE_MODES

REQUIRED = ("video", "mask", "output")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")


@dataclass(frozen=True)
class Column:
    """An option a row or the batch's command line may give: the options class and field it sets, how
    its text is read, and whether it is a switch (true/false; `negate`: sets the field to the opposite)."""

    target: type
    field: str
    read: Callable[[str], Any] = str
    switch: bool = False
    negate: bool = False
    help: str | None = None


def _choice(*choices: str) -> Callable[[str], str]:
    def read(text: str) -> str:
        if text not in choices:
            raise ValueError(f"invalid choice: {text!r} (choose from {', '.join(choices)})")
        return text

    return read


# per-clip options (a row's columns, or defaults on the batch's command line), by the CLI's long names
CLIP_COLUMNS = {
    "window": Column(PlanOptions, "window", int),
    "overlap": Column(PlanOptions, "overlap", int),
    "blend": Column(PlanOptions, "blend", _choice("continue", "crossfade")),
    "crop": Column(PlanOptions, "crop", _choice("auto", "on", "off")),
    "context": Column(PlanOptions, "context", float),
    "min_crop": Column(PlanOptions, "min_crop", int),
    "height": Column(PlanOptions, "height", int),
    "width": Column(PlanOptions, "width", int),
    "upscale": Column(PlanOptions, "upscale", switch=True),
    "dilate": Column(PlanOptions, "dilation", int),
    "feather": Column(PlanOptions, "feather", int),
    "resize": Column(PlanOptions, "resize", _choice(*RESIZE_MODES)),
    "no_paste_back": Column(RunOptions, "paste_back", switch=True, negate=True),
    "steps": Column(RunOptions, "steps", int),
    "seed": Column(RunOptions, "seed", int),
    "mask_threshold": Column(MaskOptions, "threshold", int),
    "invert_mask": Column(MaskOptions, "invert", switch=True),
    "mask_channel": Column(MaskOptions, "channel", _choice(*MASK_CHANNELS)),
    "codec": Column(OutputOptions, "codec"),
    "crf": Column(OutputOptions, "crf", int),
    "lossless": Column(OutputOptions, "lossless", switch=True),
    "overwrite": Column(
        OutputOptions, "overwrite", switch=True, help="redo clips whose output exists (default: skip them)"
    ),
}
# the model, for the whole batch (command line only)
MODEL_COLUMNS = {
    "weights": Column(ModelOptions, "weights"),
    "vae": Column(ModelOptions, "vae"),
    "engine": Column(ModelOptions, "engine"),
    "backend": Column(ModelOptions, "engine_runtime", _choice(*ENGINE_RUNTIMES)),
    "dtype": Column(ModelOptions, "dtype", _choice(*DTYPE_CHOICES)),
    "device": Column(ModelOptions, "device"),
    "kernels": Column(ModelOptions, "kernels", _choice(*KERNEL_CHOICES)),
    "attention": Column(ModelOptions, "attention", _choice(*ATTENTION_CHOICES)),
    "compile": Column(ModelOptions, "compile", _choice(*COMPILE_CHOICES)),
    "sampler": Column(ModelOptions, "sampler", _choice(*SAMPLER_CHOICES)),
    "decoder": Column(ModelOptions, "decoder", _choice(*DECODER_CHOICES)),
    "decoder_weights": Column(ModelOptions, "decoder_weights"),
}


@dataclass(frozen=True)
class Clip:
    """One manifest row, checked: its files (absolute) and the options `remove_file` takes for it."""

    line: int
    video: Path
    mask: Path
    output: Path
    plan: PlanOptions
    masking: MaskOptions
    encoding: OutputOptions
    run: RunOptions


def flag(name: str) -> str:
    """The command-line flag of a column name: no_paste_back -> --no-paste-back."""
    return "--" + name.replace("_", "-")


def read_value(name: str, value: Any, column: Column) -> Any:
    """A cell or a command-line value as its option's value; a bad one is a RemoverError naming the flag."""
    if column.switch:
        if isinstance(value, bool):
            return value != column.negate
        text = str(value).strip().lower()
        if text not in TRUE + FALSE:
            raise RemoverError(f"{name}: expected true or false, got {value!r}")
        return (text in TRUE) != column.negate
    if isinstance(value, bool) or (column.read is int and isinstance(value, float)):
        kind = {int: "int", float: "float"}.get(column.read, "text")
        raise RemoverError(f"argument {flag(name)}: invalid {kind} value: {value!r}")  # as the CLI refuses 1.5
    if column.read is str or isinstance(value, (int, float)) and column.read in (int, float):
        return column.read(value)
    try:
        return column.read(str(value).strip())
    except ValueError as exc:
        kind = {int: "int", float: "float"}.get(column.read)
        reason = f"invalid {kind} value: {str(value)!r}" if kind else str(exc)
        raise RemoverError(f"argument {flag(name)}: {reason}") from None


def build(cls: type, values: dict[str, Any], columns: dict[str, Column]) -> Any:
    """An options object of class `cls` from values by column name (the rest: the class's defaults)."""
    known = {f.name for f in fields(cls)}
    given = {columns[name].field: value for name, value in values.items() if columns[name].target is cls}
    return cls(**{key: value for key, value in given.items() if key in known})


def model_options(values: dict[str, Any]) -> ModelOptions:
    """The batch's model from command-line values by column name (text or typed)."""
    read = {name: read_value(name, value, MODEL_COLUMNS[name]) for name, value in values.items()}
    return build(ModelOptions, read, MODEL_COLUMNS)


def read_manifest(path: str | Path, defaults: dict[str, Any] | None = None) -> list[Clip]:
    """The clips of a CSV or JSON-lines manifest, each checked as the CLI checks its arguments, with
    `defaults` (option name -> value, e.g. {"height": 480}) for what a row leaves out. Any problem is a
    RemoverError naming the line."""
    path, defaults = Path(path), dict(defaults or {})
    if not path.is_file():
        raise RemoverError(f"manifest not found: {path}")
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
    elif path.suffix.lower() in JSON_SUFFIXES:
        rows = _json_rows(path)
    else:
        raise RemoverError(f"{path}: a manifest is .csv or JSON lines ({', '.join(JSON_SUFFIXES)})")
    _check_keys(defaults, "")
    defaults = {name: read_value(name, value, CLIP_COLUMNS[name]) for name, value in defaults.items()}
    _options(defaults, "")  # the defaults alone first, so that their errors do not blame a row
    clips = [_clip(line, row, defaults, path.parent.resolve(), f"{path}, line {line}: ") for line, row in rows]
    if not clips:
        raise RemoverError(f"{path}: no clips")
    _check_outputs(clips, path)
    return clips


def _made_by(source: Path, output: Path) -> bool:
    """Whether `source` (a row's video or mask) is the file writing `output` makes: the same path
    (neither need exist yet), or the same file by another spelling."""
    return source == output or same_file(output, source)


def chains(clips: list[Clip]) -> dict[int, dict[int, str]]:
    """For each row (by index) whose video or mask is an earlier row's output: that row's index -> what
    it reads ("video" or "mask"). Such a row runs only once the earlier one is done (a chain,
    `runtime.batch.dispatch`); reading a later row's output, or its own, is refused (`_check_outputs`)."""
    needs: dict[int, dict[int, str]] = {}
    for index, clip in enumerate(clips):
        for other, maker in enumerate(clips[:index]):
            for what in ("video", "mask"):
                if _made_by(getattr(clip, what), maker.output):
                    needs.setdefault(index, {}).setdefault(other, what)
    return needs


def _check_outputs(clips: list[Clip], path: Path) -> None:
    """No two rows write one file, and no row writes over or into an input (a frames folder's files too),
    its own or another row's, except a later row's video or mask that is exactly this output (a chain:
    that row runs after this one has written it). A row reading its own output or a later row's is
    refused even before the file exists: it would be read before it is written."""
    lines: dict[Path, int] = {}
    for number, clip in enumerate(clips):
        where = f"{path}, line {clip.line}: output {clip.output}"
        if clip.output in lines:
            raise RemoverError(f"{where} is line {lines[clip.output]}'s too")
        lines[clip.output] = clip.line
        for later, reader in enumerate(clips):
            for what in ("video", "mask"):
                source = getattr(reader, what)
                made = _made_by(source, clip.output)
                if made and later > number:
                    continue
                if made and not source.exists():
                    whose = "its own" if later == number else f"line {reader.line}'s"
                    raise RemoverError(
                        f"{where} is {whose} {what}, read before this row writes it: list the row that writes "
                        "a file before the rows that read it"
                    )
                if overlaps(clip.output, source):
                    raise RemoverError(f"{where} is line {reader.line}'s input: it would be replaced before it is read")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    header, rows = read_csv(path, "the manifest", _name)
    _check_keys(header, f"{path}, line 1: ")
    for column in REQUIRED:
        if column not in header:
            raise RemoverError(f"{path}, line 1: no {column!r} column")
    for line, row in rows:
        yield line, {k: v for k, v in row.items() if v.strip()}


def _json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, row in read_json_lines(path, "the manifest"):
        row = {_name(k): v for k, v in row.items() if v is not None}
        _check_keys(row, f"{path}, line {line}: ")
        yield line, row


def _name(key: str) -> str:
    return key.strip().replace("-", "_")


def _check_keys(keys: Any, where: str) -> None:
    for key in keys:
        if key in MODEL_COLUMNS:
            raise RemoverError(f"{where}{flag(key)} is for the whole batch: give it on the command line, not per clip")
        if key not in REQUIRED and key not in CLIP_COLUMNS:
            raise RemoverError(f"{where}unknown option {key!r} (the options: python -m runtime.batch --help)")


def _options(values: dict[str, Any], where: str) -> tuple[PlanOptions, MaskOptions, OutputOptions, RunOptions]:
    try:
        return tuple(build(cls, values, CLIP_COLUMNS) for cls in (PlanOptions, MaskOptions, OutputOptions, RunOptions))
    except RemoverError as exc:
        raise RemoverError(f"{where}{exc}") from None


def _clip(line: int, row: dict[str, Any], defaults: dict[str, Any], folder: Path, where: str) -> Clip:
    missing = [name for name in REQUIRED if name not in row]
    if missing:
        raise RemoverError(f"{where}no {' or '.join(missing)}")
    video, mask, output = ((folder / Path(str(row[name])).expanduser()).resolve() for name in REQUIRED)
    try:
        output_kind(output)  # an output the writers cannot make (out.txt) fails here, not after the work
        given = {name: read_value(name, v, CLIP_COLUMNS[name]) for name, v in row.items() if name not in REQUIRED}
    except RemoverError as exc:
        raise RemoverError(f"{where}{exc}") from None
    plan, masking, encoding, run = _options({**defaults, **given}, where)
    return Clip(line, video, mask, output, plan, masking, encoding, replace(run, progress=False))
