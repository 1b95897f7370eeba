"""Measure a removal: background fidelity, figures against a known truth, temporal consistency and seams.

    from runtime.evaluate import evaluate_clip
    figures = evaluate_clip("clean.mp4", "clip.mp4", "mask.mp4", truth=None)
    print(figures.table()); json.dump(figures.to_json(), file)

The command is `python -m runtime.evaluate` (see docs/evaluate.md for what each figure means).
"""

try:
    import cv2  # noqa: F401 (every figure module needs it: a clear line where it is missing)
except ImportError as exc:
    raise ImportError("runtime.evaluate needs OpenCV: pip install 'minimax-remover-runtime[evaluate]'") from exc

from runtime.evaluate.evaluation import BackgroundFigures, Evaluation, TemporalFigures, TruthFigures, evaluate_clip

__all__ = ["BackgroundFigures", "Evaluation", "TemporalFigures", "TruthFigures", "evaluate_clip"]
