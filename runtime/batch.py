"""Many clips, unattended: `python -m runtime.batch MANIFEST`.

The manifest is a CSV file with a header row or a JSON-lines file, one clip a row: `video`, `mask`,
`output`, and any per-clip option of `python -m runtime.run` by its long name (`height`, `crf`,
`no_paste_back`, ...). A row becomes the CLI's own arguments, so its checks and defaults are the CLI's;
relative paths are the manifest's folder's. Each worker (a spawned process, or a Ray actor with
`--address`) loads the model once and takes clips while there are any; a clip that fails, or whose
worker dies, is retried on a fresh worker up to `--retries` times. A clip whose output exists is
skipped, so a rerun after a failure or Ctrl-C does the rest.

Exit status: 0 when no clip failed, 1 when some did, 2 for a bad manifest or argument (before any
model loads), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from runtime.clips.job import MaskOptions, OutputOptions, remove_file
from runtime.clips.plan import PlanOptions
from runtime.errors import RemoverError, exit_code
from runtime.io import remove_partial_output
from runtime.pipeline.remover import Remover
from runtime.run import load_remover, mask_options, output_options, parse_args, plan_options, resolve_device

RUN_DEFAULTS = vars(parse_args([]))  # every option of runtime.run -> its default (False: a switch)
MODEL_FLAGS = ("weights", "vae", "engine", "backend", "dtype", "device", "kernels", "attention", "compile", "sampler")
REQUIRED = ("video", "mask", "output")
CLIP_FLAGS = [n for n in RUN_DEFAULTS if n not in {*MODEL_FLAGS, "video", "mask", "out", "preview", "dry_run", "quiet"}]
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
NO_RAY = "--address needs Ray: pip install 'minimax-remover-runtime[ray]'"


@dataclass(frozen=True)
class Clip:
    """One manifest row, checked: its files (absolute) and what `remove_file` takes for it."""

    line: int
    video: Path
    mask: Path
    output: Path
    plan: PlanOptions
    masking: MaskOptions
    encoding: OutputOptions
    steps: int
    seed: int
    paste_back: bool


@dataclass
class Outcome:
    """What became of a clip: `status` is done, skipped or failed."""

    clip: Clip
    status: str
    attempts: int = 0
    seconds: float = 0.0
    frames: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The summary's row for this clip (JSON types)."""
        fps = round(self.frames / self.seconds, 3) if self.frames and self.seconds else None
        paths = {name: str(getattr(self.clip, name)) for name in REQUIRED}
        numbers = {"attempts": self.attempts, "seconds": round(self.seconds, 3), "frames": self.frames, "fps": fps}
        return {"line": self.clip.line, **paths, "status": self.status, **numbers, "error": self.error}


@dataclass
class Summary:
    """Every clip's outcome in manifest order, and the batch's wall time."""

    outcomes: list[Outcome]
    seconds: float

    @property
    def failed(self) -> list[Outcome]:
        """The clips that failed (the batch's exit status is 1 when there are any)."""
        return [o for o in self.outcomes if o.status == "failed"]

    def totals(self) -> dict[str, Any]:
        """Clips by status, frames written, wall seconds and frames per wall second."""
        frames = sum(o.frames or 0 for o in self.outcomes if o.status == "done")
        counts = {status: sum(o.status == status for o in self.outcomes) for status in ("done", "skipped", "failed")}
        fps = round(frames / self.seconds, 3) if self.seconds else 0.0
        return {"clips": len(self.outcomes), **counts, "frames": frames, "seconds": round(self.seconds, 3), "fps": fps}

    def as_dict(self) -> dict[str, Any]:
        """What --json writes: {"clips": [each clip's row], "totals": totals()}."""
        return {"clips": [o.as_dict() for o in self.outcomes], "totals": self.totals()}

    def table(self) -> str:
        """One row per clip (the error last, unaligned) and a totals line."""
        rows = [["line", "status", "attempts", "seconds", "frames", "frames/s", "video", "error"]]
        for o in self.outcomes:
            row = o.as_dict()
            cells = [row[key] for key in ("line", "status", "attempts", "seconds", "frames", "fps")]
            rows.append(["-" if c is None else str(c) for c in cells] + [o.clip.video.name, o.error or ""])
        widths = [max(len(row[i]) for row in rows) for i in range(7)]
        lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[7]]).rstrip() for row in rows]
        t = self.totals()
        counts = f"{t['clips']} clip(s), {t['done']} done, {t['skipped']} skipped, {t['failed']} failed"
        return "\n".join(
            [*lines, f"total: {counts}; {t['frames']} frames in {t['seconds']:.1f} s ({t['fps']} frames/s)"]
        )

    def write_json(self, path: str | Path) -> None:
        """The summary as JSON, written under a temporary name and renamed."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        partial.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        os.replace(partial, path)


# ---- the manifest


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
    _parse_run(_argv(defaults), "")  # the defaults alone first, so their errors do not blame a row
    clips: list[Clip] = []
    lines: dict[Path, int] = {}
    for line, row in rows:
        clip = _clip(line, row, defaults, path.parent.resolve(), f"{path}, line {line}: ")
        if clip.output in lines:
            raise RemoverError(f"{path}, line {line}: output {clip.output} is line {lines[clip.output]}'s too")
        lines[clip.output] = line
        clips.append(clip)
    if not clips:
        raise RemoverError(f"{path}: no clips")
    return clips


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        header = [_name(key) for key in reader.fieldnames or []]
        _check_keys(header, f"{path}, line 1: ")
        for column in REQUIRED:
            if column not in header:
                raise RemoverError(f"{path}, line 1: no {column!r} column")
        for row in reader:
            if None in row:
                raise RemoverError(f"{path}, line {reader.line_num}: more cells than the header's {len(header)}")
            yield reader.line_num, {_name(k): v for k, v in row.items() if v.strip()}


def _json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RemoverError(f"{path}, line {line}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise RemoverError(f"{path}, line {line}: expected an object, got {type(row).__name__}")
        row = {_name(k): v for k, v in row.items() if v is not None}
        _check_keys(row, f"{path}, line {line}: ")
        yield line, row


def _name(key: str) -> str:
    return key.strip().replace("-", "_")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_keys(keys: Iterable[str], where: str) -> None:
    for key in keys:
        if key in MODEL_FLAGS:
            raise RemoverError(f"{where}{_flag(key)} is for the whole batch: give it on the command line, not per clip")
        if key not in REQUIRED and key not in CLIP_FLAGS:
            raise RemoverError(f"{where}unknown option {key!r} (the options: python -m runtime.batch --help)")


def _clip(line: int, row: dict[str, Any], defaults: dict[str, Any], folder: Path, where: str) -> Clip:
    missing = [name for name in REQUIRED if name not in row]
    if missing:
        raise RemoverError(f"{where}no {' or '.join(missing)}")
    video, mask, output = ((folder / Path(str(row[name])).expanduser()).resolve() for name in REQUIRED)
    options = {**defaults, **{name: _value(name, v, where) for name, v in row.items() if name not in REQUIRED}}
    args = _parse_run(["--video", str(video), "--mask", str(mask), "--out", str(output), *_argv(options)], where)
    try:
        plan = plan_options(args)
    except RemoverError as exc:
        raise RemoverError(f"{where}{exc}") from None
    masking, encoding = mask_options(args), output_options(args)
    return Clip(line, video, mask, output, plan, masking, encoding, args.steps, args.seed, not args.no_paste_back)


def _value(name: str, value: Any, where: str) -> Any:
    """A switch's cell as a bool (true/false, yes/no, 1/0); any other option's as its text."""
    if RUN_DEFAULTS[name] is not False or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "yes", "1", "false", "no", "0"):
        raise RemoverError(f"{where}{name}: expected true or false, got {value!r}")
    return text in ("true", "yes", "1")


def _argv(options: dict[str, Any]) -> list[str]:
    return [_flag(k) if v is True else f"{_flag(k)}={v}" for k, v in options.items() if v is not False]


def _parse_run(argv: list[str], where: str) -> argparse.Namespace:
    """runtime.run's parse_args, its usage error turned into a RemoverError."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parse_args(argv)
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()[-1].split(": error: ", 1)[-1]
        raise RemoverError(f"{where}{message}") from None


# ---- workers: a Remover each, in a spawned process or a Ray actor


@dataclass(frozen=True)
class Attempt:
    """A worker's report of one try at a clip."""

    frames: int | None
    seconds: float
    error: str | None = None
    retry: bool = False  # worth another try (a RemoverError is the input's fault: the same again)
    warnings: tuple[str, ...] = ()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _load(model: argparse.Namespace, device: str) -> tuple[Remover | None, tuple[str, Any]]:
    try:
        remover, loaded = load_remover(model, torch.device(device))
    except Exception as exc:  # noqa: BLE001 - every load failure ends the batch with its message
        return None, ("load-error", _one_line(str(exc)))
    return remover, ("ready", (loaded, os.getpid()))


def _attempt(remover: Remover, clip: Clip) -> Attempt:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # the default filters: the CLI's warnings
        try:
            plan, _ = remove_file(
                remover, clip.video, clip.mask, clip.output, clip.plan, clip.masking, clip.encoding,
                steps=clip.steps, seed=clip.seed, paste_back=clip.paste_back, progress=False,
            )  # fmt: skip
            error, retry = None, False
        except RemoverError as exc:
            error, retry = str(exc), False
        except torch.OutOfMemoryError:
            error, retry = "out of memory; try a smaller --height/--width or --window", True
        except Exception as exc:  # noqa: BLE001 - any failure is this clip's, never the batch's
            error, retry = f"{type(exc).__name__}: {exc}", True
    said = tuple(_one_line(str(w.message)) for w in caught)
    frames = None if error else plan.frame_count
    return Attempt(frames, time.perf_counter() - start, error and _one_line(error), retry, said)


def _serve(conn: Connection, model: argparse.Namespace, device: str, threads: int | None) -> None:
    """A local worker process: load the model, then run each clip sent until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the batch's to handle: it ends the workers
    signal.signal(signal.SIGTERM, _exit)  # ... unwinding them, so a writer removes what it wrote
    if threads:
        torch.set_num_threads(threads)
    remover, message = _load(model, device)
    conn.send(message)
    while remover is not None:
        try:
            clip = conn.recv()
        except EOFError:
            return
        conn.send(("result", _attempt(remover, clip)))


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class LocalPool:
    """Worker processes started with `spawn`, one per device in `devices`, each talked to over a pipe.
    Events: ("ready", slot, (line, pid)), ("load-error", slot, message), ("result", slot, Attempt),
    ("died", slot, how)."""

    def __init__(self, model: argparse.Namespace, devices: list[str]) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._model, self.devices = model, devices
        cpus = sum(d == "cpu" for d in devices)
        self._threads = max(1, (os.cpu_count() or 1) // cpus) if cpus else None
        self._workers = [self._spawn(slot) for slot in range(len(devices))]
        self.where = f"{len(devices)} local worker process(es) on {', '.join(devices)}"

    def _spawn(self, slot: int) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        ours, theirs = self._context.Pipe()
        args = (theirs, self._model, self.devices[slot], self._threads)
        process = self._context.Process(target=_serve, args=args, daemon=True, name=f"batch-worker-{slot + 1}")
        process.start()
        theirs.close()
        return process, ours

    def submit(self, slot: int, clip: Clip) -> None:
        """Give an idle, loaded worker a clip; its result is a later event."""
        with contextlib.suppress(OSError):  # a dead worker: its death is the next event
            self._workers[slot][1].send(clip)

    def next_event(self) -> tuple[str, int, Any]:
        """The next thing a worker says, or its death; waits for it."""
        handles = {h: slot for slot, (p, conn) in enumerate(self._workers) for h in (conn, p.sentinel)}
        slot = handles[wait(list(handles))[0]]
        process, conn = self._workers[slot]
        with contextlib.suppress(EOFError, OSError):
            if conn.poll():
                kind, payload = conn.recv()
                return kind, slot, payload
        process.join()
        code = process.exitcode or 0
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return "died", slot, f"the worker process died ({how})"

    def restart(self, slot: int) -> None:
        """Replace a dead worker with a fresh one (which says "ready" once it has loaded the model)."""
        self._workers[slot][1].close()
        self._workers[slot] = self._spawn(slot)

    def close(self, idle: Collection[int]) -> None:
        """End the workers: idle ones read the end of their pipe and return, the others get SIGTERM
        (killed if that has not ended them in 10 s)."""
        for slot, (process, conn) in enumerate(self._workers):
            conn.close()
            if slot not in idle:
                process.terminate()
        for process, _ in self._workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


class _RayWorker:
    """The state of a Ray actor (the class goes through ray.remote only in RayPool)."""

    def load(self, model: argparse.Namespace, device: str) -> tuple[str, Any]:
        self.remover, message = _load(model, device)
        return message

    def run(self, clip: Clip) -> tuple[str, Attempt]:
        return "result", _attempt(self.remover, clip)


def import_ray() -> Any:
    """The ray module, or a RemoverError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise RemoverError(NO_RAY) from None
    return ray


class RayPool:
    """Ray actors holding a Remover each (`num_gpus=1` where the cluster has GPUs, else `num_cpus=1`),
    with LocalPool's events. `address`: auto, ray://host:port, or local (a Ray instance started here)."""

    def __init__(self, model: argparse.Namespace, address: str, workers: int | None, limit: int) -> None:
        ray = self._ray = import_ray()
        self._model = model
        if address == "local":
            cpus = max(os.cpu_count() or 1, workers or 1)
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        gpu = model.device != "cpu" and gpus > 0
        if model.device and model.device.startswith("cuda") and not gpu:
            ray.shutdown()
            raise RemoverError(f"--device {model.device}: the Ray cluster at {address} has no GPU")
        self.devices = ["cuda" if gpu else "cpu"] * min(workers or gpus or 1, limit)
        self._actor = (ray.remote(num_gpus=1) if gpu else ray.remote(num_cpus=1))(_RayWorker)
        self._actors: list[Any] = [None] * len(self.devices)
        self._calls: dict[Any, int] = {}
        for slot in range(len(self.devices)):
            self.restart(slot)
        self.where = f"{len(self.devices)} Ray actor(s) at {address}, each with 1 {'GPU' if gpu else 'CPU'}"

    def submit(self, slot: int, clip: Clip) -> None:
        self._calls[self._actors[slot].run.remote(clip)] = slot

    def next_event(self) -> tuple[str, int, Any]:
        [ref], _ = self._ray.wait(list(self._calls), num_returns=1)
        slot = self._calls.pop(ref)
        try:
            kind, payload = self._ray.get(ref)
        except self._ray.exceptions.RayActorError as exc:
            return "died", slot, f"the worker actor died ({(str(exc).splitlines() or ['no reason given'])[0]})"
        return kind, slot, payload

    def restart(self, slot: int) -> None:
        if self._actors[slot] is not None:
            self._ray.kill(self._actors[slot])
        self._actors[slot] = self._actor.remote()
        self._calls[self._actors[slot].load.remote(self._model, self.devices[slot])] = slot

    def close(self, idle: Collection[int]) -> None:
        for actor in self._actors:
            if actor is not None:
                self._ray.kill(actor)
        self._ray.shutdown()


def local_devices(device: str | None, workers: int | None) -> list[str]:
    """One worker per visible GPU (or `workers`, spread over them), else `workers` (default 1) on the
    CPU; a named device gets all the workers."""
    resolved = resolve_device(device) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if resolved.type == "cuda" and resolved.index is None:
        gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return [gpus[i % len(gpus)] for i in range(workers or len(gpus))]
    return [str(resolved)] * (workers or 1)


# ---- the batch


def _say(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def run_batch(
    clips: Sequence[Clip],
    model: argparse.Namespace,
    *,
    workers: int | None = None,
    address: str | None = None,
    retries: int = 1,
    progress: bool = True,
    say: Callable[[str], None] = _say,
) -> Summary:
    """Run `clips` (from `read_manifest`) on workers that each load the model `model` names (model
    options as `runtime.run.parse_args` returns them) once: local processes, or Ray actors with
    `address`. Clips whose output exists are skipped (unless their `encoding.overwrite`); a failed one
    is retried up to `retries` times, except for RemoverErrors (bad input: the same again). A worker
    load failure is a RemoverError; Ctrl-C ends the workers and leaves no partial output."""
    if address:
        import_ray()  # before anything, even when every clip is skipped
    start = time.perf_counter()
    outcomes: dict[int, Outcome] = {}
    for index, clip in enumerate(clips):
        if not clip.encoding.overwrite and clip.output.exists():
            outcomes[index] = Outcome(clip, "skipped")
            say(f"skipped line {clip.line}: {clip.output} exists (--overwrite redoes it)")
    todo = [i for i in range(len(clips)) if i not in outcomes]
    if todo:
        if address:
            pool = RayPool(model, address, workers, len(todo))
        else:
            pool = LocalPool(model, local_devices(model.device, workers)[: len(todo)])
        say(f"{len(clips)} clip(s), {len(outcomes)} skipped, {len(todo)} to run on {pool.where}")
        with tqdm(total=len(todo), unit="clip", desc="batch", disable=not progress, file=sys.stderr) as bar:
            outcomes.update(_dispatch(pool, clips, todo, retries, say, bar))
    else:
        say(f"{len(clips)} clip(s), all skipped: nothing to run")
    return Summary([outcomes[i] for i in range(len(clips))], time.perf_counter() - start)


def _dispatch(
    pool: LocalPool | RayPool,
    clips: Sequence[Clip],
    todo: list[int],
    retries: int,
    say: Callable[[str], None],
    bar: tqdm,
) -> dict[int, Outcome]:
    """Clips to idle workers until every clip is done or out of tries; then the workers are ended (and
    what a killed worker was writing removed), Ctrl-C or not."""
    queue, outcomes, idle, busy, pids = deque(todo), {}, [], {}, {}  # busy: slot -> (clip index, start)
    loading = set(range(len(pool.devices)))
    attempts = dict.fromkeys(todo, 0)
    frames, start = 0, time.perf_counter()
    try:
        while queue or busy:
            while idle and queue:
                slot, index = idle.pop(), queue.popleft()
                attempts[index] += 1
                busy[slot] = index, time.perf_counter()
                pool.submit(slot, clips[index])
            kind, slot, payload = pool.next_event()
            if kind == "load-error":
                raise RemoverError(payload)
            if kind == "died" and slot in loading:  # a fresh worker would die again
                raise RemoverError(f"worker {slot + 1} on {pool.devices[slot]}: {payload} while loading the model")
            if kind == "ready":
                if slot not in pids:
                    say(f"worker {slot + 1}: {payload[0]}")
                pids[slot] = payload[1]
                loading.discard(slot)
                idle.append(slot)
                continue
            if slot not in busy:  # an idle worker died
                idle.remove(slot)
                loading.add(slot)
                pool.restart(slot)
                continue
            index, started = busy.pop(slot)
            clip = clips[index]
            if kind == "died":
                remove_partial_output(clip.output, pids[slot])
                loading.add(slot)
                pool.restart(slot)
                attempt = Attempt(None, time.perf_counter() - started, payload, retry=True)
            else:
                attempt = payload
                idle.append(slot)
            for message in attempt.warnings:
                say(f"warning: line {clip.line}: {message}")
            what = f"line {clip.line} ({clip.video.name})"
            if attempt.error and attempt.retry and attempts[index] <= retries:
                say(f"failed  {what}, attempt {attempts[index]} of {retries + 1}, retrying: {attempt.error}")
                queue.appendleft(index)
                continue
            status = "failed" if attempt.error else "done"
            outcomes[index] = Outcome(clip, status, attempts[index], attempt.seconds, attempt.frames, attempt.error)
            if attempt.error:
                say(f"failed  {what} after {attempts[index]} attempt(s): {attempt.error}")
            else:
                frames += attempt.frames
                rate = f"{attempt.frames} frames in {attempt.seconds:.1f} s ({attempt.frames / attempt.seconds:.2f}/s)"
                say(f"done    {what} -> {clip.output}: {rate}")
            bar.update()
            bar.set_postfix_str(f"{frames / (time.perf_counter() - start):.2f} frames/s")
    finally:
        pool.close(idle)
        for slot, (index, _) in busy.items():
            if slot in pids:
                remove_partial_output(clips[index].output, pids[slot])
    return outcomes


# ---- the command line


def parse_batch_args(argv: list[str] | None) -> argparse.Namespace:
    """The batch's own options, the model options and the per-clip defaults (as given: checked by
    runtime.run's parser when the manifest is read)."""
    parser = argparse.ArgumentParser(
        prog="python -m runtime.batch",
        description="Remove objects from many clips: one model load per worker, failed clips retried, "
        "finished ones skipped when run again.",
        epilog="Exit status: 0 when no clip failed, 1 when any failed, 2 for a bad manifest or argument, 130 on "
        "Ctrl-C. Options mean what they mean for python -m runtime.run (see its --help).",
    )
    parser.add_argument("manifest", help="CSV with a header row, or JSON lines (.jsonl): video, mask, output, options")
    batch = parser.add_argument_group("batch")
    batch.add_argument("--workers", type=_count(1), help="worker processes or actors (default: one a GPU, else 1)")
    batch.add_argument("--address", help="run on Ray: auto, ray://HOST:PORT, or local (start Ray here)")
    batch.add_argument(
        "--retries", type=_count(0), default=1, help="more tries for a failed clip (default 1; bad input: none)"
    )
    batch.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    model = parser.add_argument_group("model, for every clip")
    clip = parser.add_argument_group("per-clip defaults (a row's column overrides them)")
    for name in (*MODEL_FLAGS, *CLIP_FLAGS):
        group, default = model if name in MODEL_FLAGS else clip, RUN_DEFAULTS[name]
        if default is False:
            help = "redo clips whose output exists (default: skip them)" if name == "overwrite" else None
            group.add_argument(_flag(name), action="store_true", default=argparse.SUPPRESS, help=help)
        else:
            help = None if default is None else f"default {default}"
            group.add_argument(_flag(name), metavar=name.upper(), default=argparse.SUPPRESS, help=help)
    return parser.parse_args(argv)


def _count(least: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        if text.isdigit() and int(text) >= least:
            return int(text)
        raise argparse.ArgumentTypeError(f"expected a whole number of at least {least}, got {text!r}")

    return count


def main(argv: list[str] | None = None) -> int:
    """The command line: the summary table on stdout, everything else on stderr; the exit status."""
    args = parse_batch_args(argv)
    warnings.showwarning = lambda message, *_: print(f"warning: {message}", file=sys.stderr)
    given = vars(args)
    failed = False

    def work() -> str:
        nonlocal failed
        model = _parse_run(_argv({name: given[name] for name in MODEL_FLAGS if name in given}), "")
        clips = read_manifest(args.manifest, {name: given[name] for name in CLIP_FLAGS if name in given})
        summary = run_batch(
            clips, model, workers=args.workers, address=args.address, retries=args.retries, progress=not args.quiet
        )
        if args.json:
            summary.write_json(args.json)
        failed = bool(summary.failed)
        return summary.table()

    code = exit_code(work)
    return 1 if code == 0 and failed else code


if __name__ == "__main__":
    sys.exit(main())
