"""Writing what was measured: JSON, the per-frame CSV and its plot, each under a temporary name in the
target's folder and renamed at the end (an error or Ctrl-C leaves nothing)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from runtime.io.outputs import write_atomically

PLOTTED = (  # per-frame columns drawn, by panel
    ("PSNR (dB)", ("background_psnr_db", "truth_psnr_db", "masked_psnr_db")),
    ("SSIM", ("background_ssim", "truth_ssim", "masked_ssim")),
    ("warp error (levels)", ("warp_error", "warp_error_reference")),
)


def write_json(path: Path, document: dict) -> None:
    write_atomically(path, lambda target: target.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n"))


def write_csv(path: Path, rows: list[dict]) -> None:
    """One row a frame; columns in order of first appearance; an empty cell for None."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def write(target: Path) -> None:
        with target.open("w", newline="") as file:
            writer = csv.DictWriter(file, columns)
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)

    write_atomically(path, write)


def plot(path: Path, rows: list[dict], title: str) -> None:
    """The per-frame figures as a PNG: one panel per kind of figure, exact frames left as gaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [(label, [c for c in columns if any(row.get(c) is not None for row in rows)]) for label, columns in PLOTTED]
    panels = [(label, columns) for label, columns in drawn if columns]
    figure, axes = plt.subplots(max(1, len(panels)), 1, figsize=(9, 2.6 * max(1, len(panels))), sharex=True)
    axes = [axes] if len(panels) <= 1 else axes
    for axis, (label, columns) in zip(axes, panels):
        for column in columns:
            values = [float("nan") if row.get(column) is None else row[column] for row in rows]
            axis.plot([row["frame"] for row in rows], values, label=column.replace("_", " "))
        axis.set_ylabel(label)
        axis.legend(fontsize="small")
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("frame")
    axes[0].set_title(title)
    figure.tight_layout()
    write_atomically(path, lambda target: figure.savefig(target, format="png", dpi=100))
    plt.close(figure)
