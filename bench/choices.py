"""What each speed choice costs in quality: `python -m bench.choices [--out DIR] [--aoti] [--json PATH]`.

The same clips run through each choice the runtime offers and each result is evaluated with
`runtime.evaluate` against the one-pass, whole-frame, fp32, 6-step run (the reference every choice
approximates) and, where the clip has one, against the truth:

- windows: overlap 1, 5 and 9 with blend continue, 5 and 9 with crossfade (windows of 13 frames, so that
  these short clips have several);
- crops: on, context 0.1, 0.25 and 0.5 (min crop 64 working pixels, so a crop is smaller than the frame);
- dtype: bf16 and fp16 (fp16 without native CPU support is emulated, about 7x slower: the demo clip only);
- steps: 12;
- engine bundles: ONNX Runtime and (with --aoti) AOTInductor, static shapes of one window (the bundle fixes
  the windows: compared also with the PyTorch run of the same plan, "same plan").

Clips: the tennis player composited onto the running car (bench/truth.py, seed 0, 25 frames at 432x240,
so it has a truth) and the bundled demo clip (21 frames at 256x144). The working size is 96x176 (the
demo model was trained at 144x256; smaller, so the study fits a shared 2-core CPU). Results are written
as PNG folders (lossless), so the figures are the pipeline's, not a codec's. Cost: the model work
(frames x working pixels over the one-pass run's) and the process's CPU seconds for the run (the
machine is shared: wall time is not comparable, and oversubscribed threads make even CPU seconds
noisy). The demo model fills holes with a blurred average colour: the figures rank how far each choice
moves the output, not the released model's quality.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import torch

from bench.truth import DATA, make_truth_clip
from runtime.clips.job import remove_file
from runtime.clips.plan import Plan
from runtime.demo import DEMO_WEIGHTS
from runtime.errors import RemoverError, exit_code
from runtime.evaluate import evaluate_clip
from runtime.evaluate.report import write_json
from runtime.options import PlanOptions, RunOptions
from runtime.pipeline.remover import Remover

HEIGHT, WIDTH, WINDOW, SEED = 96, 176, 13, 42
TRUTH_FRAMES = 25
RESULTS = Path(__file__).parent / "results" / "choices.json"
FP16_SKIPPED = "fp16 is emulated on this CPU (no AVX512-FP16 or AMX), about 7x fp32's time: run on the demo clip only"
GROUPS = ("windows", "crop", "dtype", "steps", "engine")
BASE = PlanOptions(window=0, crop="off", height=HEIGHT, width=WIDTH, min_crop=64)


@dataclass(frozen=True)
class Choice:
    """One way to run: plan options, steps, dtype, or an engine bundle's backend."""

    name: str
    group: str
    options: PlanOptions = BASE
    steps: int = 6
    dtype: str = "fp32"
    engine: str | None = None  # "onnxruntime" or "aoti": the bundle
    same_plan_as: str | None = None  # the PyTorch choice with the plan an engine bundle forces


def choices(engines: list[str]) -> list[Choice]:
    windowed = replace(BASE, window=WINDOW)
    listed = [Choice("one pass, whole frame, fp32, 6 steps", "reference")]
    listed += [
        Choice(f"{blend}, overlap {overlap}", "windows", replace(windowed, overlap=overlap, blend=blend))
        for blend, overlaps in (("continue", (1, 5, 9)), ("crossfade", (5, 9)))
        for overlap in overlaps
    ]
    listed += [Choice(f"crop, context {c}", "crop", replace(BASE, crop="on", context=c)) for c in (0.1, 0.25, 0.5)]
    listed += [Choice(dtype, "dtype", dtype=dtype) for dtype in ("bf16", "fp16")]
    listed += [Choice("12 steps", "steps", steps=12)]
    listed += [
        Choice(engine, "engine", replace(windowed, overlap=5), engine=engine, same_plan_as="continue, overlap 5")
        for engine in engines
    ]
    return listed


@dataclass
class Models:
    """The demo model in each dtype and the bundle on each backend, loaded once each."""

    bundle: Path | None
    loaded: dict[tuple[str, str | None], Remover] = field(default_factory=dict)

    def get(self, choice: Choice) -> Remover:
        key = (choice.dtype, choice.engine)
        if key not in self.loaded:
            self.loaded[key] = load_model(choice.dtype, self.bundle if choice.engine else None, choice.engine)
        return self.loaded[key]


# The only two calls into the runtime's loading and job API: adapt them here when those move.
def load_model(dtype: str, bundle: Path | None = None, backend: str | None = None) -> Remover:
    """The demo model on the CPU in `dtype`, or its engine bundle on `backend`."""
    if bundle is not None:
        return Remover.from_bundle(bundle, backend, "cpu", weights=DEMO_WEIGHTS)
    return Remover.from_pretrained(DEMO_WEIGHTS, "cpu", dtype)


def run_choice(
    remover: Remover, video: Path, mask: Path, out: Path, options: PlanOptions, steps: int
) -> tuple[Plan, float]:
    """Remove into `out` (a PNG folder); the plan it ran and the process's CPU seconds it took."""
    start = time.process_time()
    plan, _ = remove_file(remover, video, mask, out, options, run=RunOptions(steps=steps, seed=SEED, progress=False))
    return plan, time.process_time() - start


def build_bundle(folder: Path, aoti: bool, log) -> Path:
    """An fp32 bundle of the demo model for windows of WINDOW frames at the working size."""
    from export.onnx import build_bundle as export

    bundle = folder / "bundle"
    start = time.perf_counter()
    export(Path(DEMO_WEIGHTS), bundle, height=HEIGHT, width=WIDTH, frames=WINDOW, precision="fp32", aoti=aoti, log=log)
    log(f"built the bundle in {time.perf_counter() - start:.0f} s")
    return bundle


def test_clips(folder: Path, data: Path) -> dict[str, tuple[Path, Path, Path | None]]:
    """name -> (video, mask, truth or None)."""
    demo = Path(DEMO_WEIGHTS).parent
    clips = {"demo clip (21 frames, 256x144)": (demo / "clip.mp4", demo / "mask.mp4", None)}
    if data.is_dir():
        made = make_truth_clip(folder / "truth", seed=0, frames=TRUTH_FRAMES, data=data)
        name = f"tennis on running_car ({TRUTH_FRAMES} frames, 432x240)"
        clips = {name: (made.video, made.mask, made.truth), **clips}
    return clips


def describe(plan: Plan) -> str:
    """The first window's box and working size, e.g. "432x240+0+0 -> 256x144"."""
    window = plan.model_windows[0]
    return f"{window.box} -> {window.size[1]}x{window.size[0]}, {len(plan.windows)} window(s)"


def model_work(plan: Plan) -> float:
    """Frames x working pixels the model processes, over the one-pass whole-frame run's (the clip's frames
    at HEIGHT x WIDTH): the cost that does not depend on the machine's load."""
    done = sum(w.frames * w.size[0] * w.size[1] for w in plan.model_windows)
    return done / (plan.frame_count * HEIGHT * WIDTH)


def measure(folder: Path, clips: dict, listed: list[Choice], models: Models, log, save) -> dict:
    """Run every choice on every clip and evaluate it: the background and the seams with the run's own
    plan (the pixels it must keep, its windows); the fill against the reference run and the truth over
    the reference's region (one region for every choice, so the figures compare). `save(results)` after
    each choice, so an interrupted study keeps what it measured."""
    results = {}
    for clip_name, (video, mask, truth) in clips.items():
        rows, outputs = {}, {}
        results[clip_name] = rows
        for index, choice in enumerate(listed):
            out = folder / f"{len(results)}-{index}"
            if choice.dtype == "fp16" and truth is not None:
                rows[choice.name] = {"group": choice.group, "skipped": FP16_SKIPPED}
                continue
            try:
                remover = models.get(choice)
                plan, seconds = run_choice(remover, video, mask, out, choice.options, choice.steps)
            except RemoverError as exc:
                rows[choice.name] = {"group": choice.group, "skipped": str(exc)}
                log(f"{clip_name}, {choice.name}: skipped: {exc}")
                continue
            outputs[choice.name] = out
            own = evaluate_clip(out, video, mask, truth, plan_options=plan.options, progress=False).to_json()
            row = {"group": choice.group, "cpu_s": seconds, "work": model_work(plan), "plan": describe(plan)}
            row |= {"background": own["background"], "temporal": own["temporal"]}
            against = {"reference": outputs[listed[0].name], "same_plan": outputs.get(choice.same_plan_as)}
            for name, other in {**against, "truth": truth}.items():
                if other is not None:
                    figures = evaluate_clip(out, video, mask, other, plan_options=BASE, progress=False, flow=False)
                    row[f"vs_{name}"] = figures.to_json()["truth"]
            rows[choice.name] = row
            save(results)
            log(f"{clip_name}, {choice.name}: {seconds:.1f} CPU s, {row['plan']}")
    return results


def _db(value: float | None) -> str:
    return "exact" if value is None else f"{value:.2f}"


def table(results: dict) -> str:
    """A Markdown table per clip."""
    lines = []
    for clip, rows in results.items():
        with_truth = any("vs_truth" in r for r in rows.values())
        head = "| choice | plan | model work | CPU s | vs one pass: PSNR / masked PSNR (dB) | masked SSIM |"
        head += " background max diff |"
        tail = " masked PSNR vs truth (dB) | warp error (truth's) |" if with_truth else " warp error (input's) |"
        head += tail + " seam ratio |"
        lines += [f"**{clip}**", "", head, "|" + "---|" * head.count(" |")]
        for name, r in rows.items():
            if "skipped" in r:
                lines.append(f"| {name} | skipped: {r['skipped']} |")
                continue
            ref = r["vs_reference"]
            plan = f" (same plan: {_db(r['vs_same_plan']['masked_psnr_db'])})" if "vs_same_plan" in r else ""
            seam = r["temporal"]["seam_ratio"]
            cells = [
                name,
                r["plan"],
                f"{r['work']:.2f}x" if "work" in r else "-",
                f"{r['cpu_s']:.1f}",
                f"{_db(ref['psnr_db'])} / {_db(ref['masked_psnr_db'])}{plan}",
                f"{ref['masked_ssim']:.4f}",
                str(r["background"]["max_abs"]),
            ]
            if with_truth:
                cells += [_db(r["vs_truth"]["masked_psnr_db"])]
            cells += [f"{r['temporal']['warp_error']:.2f} ({r['temporal']['warp_error_reference']:.2f})"]
            cells += ["-" if seam is None else f"{seam:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.choices", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared clips (default ../shared/data)")
    parser.add_argument("--aoti", action="store_true", help="also compile and measure an AOTInductor bundle")
    parser.add_argument("--no-engines", action="store_true", help="skip the engine bundles")
    parser.add_argument("--only", nargs="+", choices=GROUPS, help="run only these groups (and the reference)")
    parser.add_argument("--clip", choices=("truth", "demo"), help="run one clip only (default both)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    def work() -> str:
        torch.manual_seed(0)
        log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        engines = [] if args.no_engines else ["onnxruntime"] + (["aoti"] if args.aoti else [])
        started = time.perf_counter()
        document = {
            "date": date.today().isoformat(),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
            "torch": torch.__version__,
            "command": "python -m bench.choices " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)

        def save(results: dict) -> None:
            write_json(args.json, {**document, "wall_s": time.perf_counter() - started, "clips": results})

        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            wanted = engines and (not args.only or "engine" in args.only)
            bundle = build_bundle(folder, args.aoti, lambda line: None) if wanted else None
            log(f"bundle built after {time.perf_counter() - started:.0f} s" if bundle else "no bundle")
            listed = [c for c in choices(engines) if not args.only or c.group in ("reference", *args.only)]
            clips = test_clips(folder, args.data)
            if args.clip:
                clips = {name: paths for name, paths in clips.items() if (paths[2] is None) == (args.clip == "demo")}
            results = measure(folder, clips, listed, Models(bundle), log, save)
        save(results)
        print(table(results))
        return f"wrote {args.json}"

    return exit_code(work)


if __name__ == "__main__":
    sys.exit(main())
