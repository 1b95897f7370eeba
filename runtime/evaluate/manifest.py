"""Many clips at once: a manifest (CSV with a header, or JSON lines) of `result`, `video`, `mask` and
optionally `truth` and `name` per clip (relative paths are the manifest folder's), each evaluated in
turn, and the aggregate: every figure averaged over the clips weighted by their frame counts, over the
clips that have it (an exact background has no PSNR: such clips are counted in `exact_clips`, never
averaged in as a number)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import RemoverError
from runtime.evaluate.evaluation import Evaluation
from runtime.io.textfile import read_csv, read_json_lines

COLUMNS = ("result", "video", "mask", "truth", "name")
REQUIRED = ("result", "video", "mask")


@dataclass(frozen=True)
class ManifestClip:
    name: str
    result: Path
    video: Path
    mask: Path
    truth: Path | None


def _rows(path: Path) -> list[tuple[int, dict]]:
    if path.suffix.lower() == ".csv":
        return read_csv(path, "the manifest")[1]
    return read_json_lines(path, "the manifest")


def read_manifest(path: str | Path) -> list[ManifestClip]:
    """The clips of a .csv or .jsonl/.json manifest; a RemoverError naming the row for a bad one."""
    path = Path(path)
    if not path.is_file():
        raise RemoverError(f"manifest not found: {path}")
    clips = []
    for number, (line, row) in enumerate(_rows(path), 1):
        unknown = sorted(set(row) - set(COLUMNS))
        missing = [key for key in REQUIRED if not row.get(key)]
        if unknown or missing:
            problem = f"unknown column(s) {', '.join(unknown)}" if unknown else f"no {', '.join(missing)}"
            raise RemoverError(f"{path}, line {line} (clip {number}): {problem} (columns: {', '.join(COLUMNS)})")
        where = {key: path.parent / str(row[key]) for key in COLUMNS[:4] if row.get(key)}
        clips.append(ManifestClip(str(row.get("name") or where["result"].stem), **{"truth": None, **where}))
    if not clips:
        raise RemoverError(f"the manifest {path} lists no clips")
    return clips


def _weighted_mean(pairs: list[tuple[float | None, int]]) -> float | None:
    known = [(value, frames) for value, frames in pairs if value is not None]
    frames = sum(f for _, f in known)
    return sum(v * f for v, f in known) / frames if frames else None


def aggregate(evaluations: dict[str, Evaluation]) -> dict:
    """The clips' figures averaged, weighted by frames, over the clips that have each figure."""
    documents = {name: e.to_json() for name, e in evaluations.items()}
    total = {"clips": len(documents), "frames": sum(d["frames"] for d in documents.values())}
    for group in ("background", "truth", "temporal"):
        present = [(d[group], d["frames"]) for d in documents.values() if d[group]]
        if not present:
            total[group] = None
            continue
        keys = [k for k, v in present[0][0].items() if isinstance(v, (int, float)) or v is None]
        total[group] = {k: _weighted_mean([(g.get(k), f) for g, f in present]) for k in keys}
        if group == "background":
            total[group]["exact_clips"] = sum(g["psnr_db"] is None for g, _ in present)
            total[group]["max_abs"] = max(g["max_abs"] for g, _ in present)
            total[group]["exact_frames"] = sum(g["exact_frames"] for g, _ in present)
    return {"aggregate": total, "clips": documents}


def describe_aggregate(total: dict) -> list[str]:
    """The aggregate as lines for a terminal, e.g. "background: psnr_db 41.20, ssim 0.9990, ..."."""
    lines = [f"all {total['clips']} clips ({total['frames']} frames)"]
    for group in ("background", "truth", "temporal"):
        if total.get(group):
            values = ", ".join(
                f"{k} {'-' if v is None else (f'{v:.4g}' if isinstance(v, float) else v)}"
                for k, v in total[group].items()
            )
            lines.append(f"{group}: {values}")
    return lines


def evaluate_manifest(path: str | Path, evaluate: Callable[[ManifestClip], Evaluation]) -> dict[str, Evaluation]:
    """Each clip of the manifest through `evaluate`, in order; names must be unique."""
    clips = read_manifest(path)
    names = [clip.name for clip in clips]
    if len(set(names)) != len(names):
        raise RemoverError(f"{path}: clip names repeat; give each row a distinct `name`")
    return {clip.name: evaluate(clip) for clip in clips}
