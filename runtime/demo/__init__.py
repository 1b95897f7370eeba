"""The bundled demo: a clip the project rendered itself, its mask, and the small model trained for it
(training/make_demo.py makes all three). `python -m runtime.run` with no --video runs it."""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
DEMO_CLIP = DEMO_DIR / "clip.mp4"
DEMO_MASK = DEMO_DIR / "mask.mp4"
DEMO_WEIGHTS = DEMO_DIR / "weights"
