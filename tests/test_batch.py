"""`python -m runtime.batch`: many clips on local worker processes or Ray actors, failures retried or
reported without stopping the rest, finished clips skipped on a rerun, Ctrl-C, manifest errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_lines, run_main
from media import encode_video, gradient_frames, patch_frames

from runtime import batch
from runtime.clips.job import remove_file
from runtime.io import read_clip
from runtime.loading import load_remover
from runtime.options import ModelOptions

REPO = Path(__file__).resolve().parents[1]
SIZE = ["--height", "64", "--width", "96"]  # the clips' own size: the demo model runs them in about a second


def make_clip(folder: Path, name: str, frames: np.ndarray, box: bool = True) -> None:
    """folder/NAME.mp4 and its mask folder/NAME_mask.mp4 (a box over the middle, or nothing)."""
    masks = np.zeros_like(frames)
    masks[:, 16:40, 24:64] = 255 if box else 0
    encode_video(folder / f"{name}.mp4", frames)
    encode_video(folder / f"{name}_mask.mp4", masks)


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    """tmp_path/in: two good 5-frame clips (a, b), one with an empty mask, and a truncated one (bad.mp4);
    tmp_path/out: empty."""
    (tmp_path / "in").mkdir(), (tmp_path / "out").mkdir()
    make_clip(tmp_path / "in", "a", patch_frames(5, 64, 96))
    make_clip(tmp_path / "in", "b", gradient_frames(5, 64, 96))
    make_clip(tmp_path / "in", "empty", gradient_frames(5, 64, 96), box=False)
    (tmp_path / "in" / "bad.mp4").write_bytes((tmp_path / "in" / "a.mp4").read_bytes()[:300])
    return tmp_path


def write_csv(path: Path, rows: list[str], header: str = "video,mask,output") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def run_batch_cli(args: list[str], capsys) -> tuple[int, str, str]:
    return run_main(batch.main, args, capsys)


def leftovers(folder: Path) -> list[str]:
    """Hidden files a writer leaves behind when it is not cleaned up."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_local_workers_finish_the_good_clips_report_the_corrupt_one_and_a_rerun_skips(clips, capsys):
    manifest = write_csv(
        clips / "manifest.csv",
        [
            "in/a.mp4,in/a_mask.mp4,out/a.mkv,,",
            "in/bad.mp4,in/a_mask.mp4,out/bad.mkv,,",
            "in/b.mp4,in/b_mask.mp4,out/b.mkv,,7",
            "in/empty.mp4,in/empty_mask.mp4,out/empty.mp4,false,",  # rows override the command line's defaults
        ],
        header="video,mask,output,lossless,seed",
    )
    summary_path = clips / "summary.json"
    args = [str(manifest), "--workers", "2", "--json", str(summary_path), "--lossless", *SIZE]
    code, stdout, stderr = run_batch_cli(args, capsys)

    assert code == 1, stderr
    assert "4 clip(s), 0 skipped, 4 to run on 2 local worker process(es) on cpu, cpu" in stderr
    assert "failed  line 3 (bad.mp4) after 1 attempt(s): cannot read video" in stderr  # bad input: no retry
    assert "warning: line 5: the mask is empty: writing the input unchanged" in stderr
    assert sorted(p.name for p in (clips / "out").iterdir()) == ["a.mkv", "b.mkv", "empty.mp4"]
    summary = json.loads(summary_path.read_text())
    assert [(c["line"], c["status"], c["attempts"], c["frames"]) for c in summary["clips"]] == [
        (2, "done", 1, 5),
        (3, "failed", 1, None),
        (4, "done", 1, 5),
        (5, "done", 1, 5),
    ]
    assert summary["clips"][1]["error"].startswith(f"cannot read video {clips / 'in' / 'bad.mp4'}")
    assert summary["clips"][0]["output"] == str(clips / "out" / "a.mkv")  # relative to the manifest
    totals = summary["totals"]
    assert (totals["clips"], totals["done"], totals["skipped"], totals["failed"], totals["frames"]) == (4, 3, 0, 1, 15)
    assert stdout.splitlines()[0].split() == [
        "line",
        "status",
        "attempts",
        "seconds",
        "frames",
        "frames/s",
        "video",
        "error",
    ]
    assert stdout.splitlines()[-1].startswith("total: 4 clip(s), 3 done, 0 skipped, 1 failed; 15 frames")

    # the model's clips through remove_file in this process, with the options the manifest gave them: the
    # same frames (the outputs are lossless: an encoder's choices do not blur the comparison)
    # each of the 2 workers ran on cores // 2 threads; with the model loaded at another thread count oneDNN
    # rounds one pixel of these clips one level differently
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        remover = load_remover(ModelOptions(), torch.device("cpu"))
        clip_a, _, clip_b, clip_empty = batch.read_manifest(manifest, {"height": 64, "width": 96, "lossless": True})
        assert (clip_a.run.seed, clip_b.run.seed, clip_a.encoding.lossless, clip_empty.encoding.lossless) == (
            42,
            7,
            True,
            False,
        )
        for clip in (clip_a, clip_b):
            direct = clips / f"direct_{clip.output.name}"
            plan, _ = remove_file(
                remover, clip.video, clip.mask, direct, clip.plan, clip.masking, clip.encoding, run=clip.run
            )
            batched = read_clip(clip.output).frames
            assert batched.shape == (plan.frame_count, 64, 96, 3) == (5, 64, 96, 3)
            np.testing.assert_array_equal(batched, read_clip(direct).frames)
            direct.unlink()
    finally:
        torch.set_num_threads(threads)
    assert read_clip(clip_empty.output).frames.shape == (5, 64, 96, 3)

    written = {p.name: p.stat().st_mtime_ns for p in (clips / "out").iterdir()}
    code, _, stderr = run_batch_cli(args, capsys)
    assert code == 1, stderr
    assert all(f"skipped line {line}" in stderr for line in (2, 4, 5))
    assert "4 clip(s), 3 skipped, 1 to run on 1 local worker process(es)" in stderr
    assert {p.name: p.stat().st_mtime_ns for p in (clips / "out").iterdir()} == written  # nothing redone
    statuses = [c["status"] for c in json.loads(summary_path.read_text())["clips"]]
    assert statuses == ["skipped", "failed", "skipped", "skipped"]


# Run as the main script (`python crashing_batch.py MANIFEST ...`), this is runtime.batch whose workers die
# on a video named crash_exit* (os._exit(3)) or crash_segv* (a segmentation fault), each after starting
# the output's temporary file as the writer would. Local workers: spawn runs the main script again in
# each worker (as __mp_main__), so the replaced remove_file is theirs too. Ray actors: the actor class
# is replaced by one defined here, which Ray therefore ships by value.
CRASHING_MAIN = """
import ctypes, os, resource, sys
from pathlib import Path

import runtime.batch.cli as cli
import runtime.batch.worker as worker


def crash(video, out):
    name, out = Path(video).stem, Path(out)
    if name.startswith("crash"):
        out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix}").write_bytes(b"half a video")
        if name == "crash_exit":
            os._exit(3)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        ctypes.string_at(0)


real_remove_file = worker.remove_file


def remove_file(remover, video, mask, out, *args, **kwargs):
    crash(video, out)
    return real_remove_file(remover, video, mask, out, *args, **kwargs)


class CrashingActor(worker.RayWorker):
    def run(self, clip):
        crash(clip.video, clip.output)
        return super().run(clip)


worker.remove_file, worker.RayWorker = remove_file, CrashingActor
if __name__ == "__main__":
    sys.exit(cli.main())
"""


def run_crashing_batch(folder: Path, args: list[str]) -> subprocess.CompletedProcess:
    script = folder / "crashing_batch.py"
    script.write_text(CRASHING_MAIN)
    command = [sys.executable, str(script), *args, "--json", str(folder / "summary.json"), "--quiet", *SIZE]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_dying_worker_is_replaced_and_its_clip_retried_without_stopping_the_others(clips):
    for name in ("crash_exit", "crash_segv"):
        make_clip(clips / "in", name, patch_frames(5, 64, 96))
    rows = [f"in/{name}.mp4,in/{name}_mask.mp4,out/{name}.mp4" for name in ("crash_exit", "a", "crash_segv", "b")]
    manifest = write_csv(clips / "manifest.csv", rows)
    result = run_crashing_batch(clips, [str(manifest), "--workers", "2"])
    assert result.returncode == 1, result.stderr
    assert "failed  line 2 (crash_exit.mp4), attempt 1 of 2, retrying: the worker process died (exit code 3)" in (
        result.stderr
    )
    outcomes = {Path(c["video"]).stem: c for c in json.loads((clips / "summary.json").read_text())["clips"]}
    assert {name: (c["status"], c["attempts"]) for name, c in outcomes.items()} == {
        "crash_exit": ("failed", 2),
        "a": ("done", 1),
        "crash_segv": ("failed", 2),
        "b": ("done", 1),
    }
    assert outcomes["crash_exit"]["error"] == "the worker process died (exit code 3)"
    assert outcomes["crash_segv"]["error"] == "the worker process died (signal SIGSEGV)"
    assert sorted(p.name for p in (clips / "out").iterdir()) == ["a.mp4", "b.mp4"]  # no partial files


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_does_the_rest(clips, capsys):
    rows = [f"in/a.mp4,in/a_mask.mp4,out/{i}.mp4" for i in range(5)]
    manifest = write_csv(clips / "manifest.csv", rows)
    command = [sys.executable, "-m", "runtime.batch", str(manifest), "--workers", "1", "--quiet", *SIZE]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (clips / "out" / "0.mp4").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # the second clip is under way
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "interrupted" and "Traceback" not in stderr
    finished = sorted(p.name for p in (clips / "out").iterdir())
    assert "0.mp4" in finished and len(finished) < 5 and not leftovers(clips / "out")

    code, _, stderr = run_batch_cli([str(manifest), "--workers", "1", *SIZE], capsys)
    assert code == 0, stderr
    assert f"5 clip(s), {len(finished)} skipped, {5 - len(finished)} to run" in stderr
    assert sorted(p.name for p in (clips / "out").iterdir()) == [f"{i}.mp4" for i in range(5)]
    assert all(read_clip(clips / "out" / f"{i}.mp4").frames.shape == (5, 64, 96, 3) for i in range(5))


@pytest.mark.slow
def test_a_local_ray_instance_runs_the_batch_through_a_corrupt_clip_and_a_dying_actor(clips):
    pytest.importorskip("ray")
    make_clip(clips / "in", "crash_exit", patch_frames(5, 64, 96))
    lines = [
        {"video": "in/a.mp4", "mask": "in/a_mask.mp4", "output": "out/a.mp4"},
        {"video": "in/bad.mp4", "mask": "in/a_mask.mp4", "output": "out/bad.mp4"},
        {"video": "in/crash_exit.mp4", "mask": "in/crash_exit_mask.mp4", "output": "out/crash.mp4"},
        {"video": "in/b.mp4", "mask": "in/b_mask.mp4", "output": "out/b.mp4", "crf": 20},
    ]
    manifest = clips / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_crashing_batch(clips, [str(manifest), "--address", "local", "--workers", "2"])

    assert result.returncode == 1, result.stderr
    assert "4 clip(s), 0 skipped, 4 to run on 2 Ray actor(s) at local, each with 1 CPU" in result.stderr
    summary = json.loads((clips / "summary.json").read_text())
    assert [(c["status"], c["attempts"], c["frames"]) for c in summary["clips"]] == [
        ("done", 1, 5),
        ("failed", 1, None),
        ("failed", 2, None),
        ("done", 1, 5),
    ]
    assert "cannot read video" in summary["clips"][1]["error"]
    assert summary["clips"][2]["error"].startswith("the worker actor died")
    assert sorted(p.name for p in (clips / "out").iterdir()) == ["a.mp4", "b.mp4"]  # no partial files
    assert read_clip(clips / "out" / "b.mp4").frames.shape == (5, 64, 96, 3)


def test_address_without_ray_names_the_extra(clips, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where it is not installed
    manifest = write_csv(clips / "manifest.csv", ["in/a.mp4,in/a_mask.mp4,out/a.mp4"])
    code, stdout, stderr = run_batch_cli([str(manifest), "--address", "local"], capsys)
    assert code == 2 and stdout == ""
    assert stderr.strip() == "error: --address needs Ray: pip install 'minimax-remover-runtime[ray]'"


GOOD = "in/a.mp4,in/a_mask.mp4,out/a.mp4"
BAD_MANIFESTS = {
    "missing column": ("m.csv", "video,output\nin/a.mp4,out/a.mp4\n", [], "m.csv, line 1: no 'mask' column"),
    "unknown option": ("m.csv", f"video,mask,output,colour\n{GOOD},red\n", [], "line 1: unknown option 'colour'"),
    "model option in a row": (
        "m.jsonl",
        '{"video": "in/a.mp4", "mask": "in/a_mask.mp4", "output": "out/a.mp4"}\n'
        '{"video": "in/b.mp4", "mask": "in/b_mask.mp4", "output": "out/b.mp4", "weights": "w"}\n',
        [],
        "m.jsonl, line 2: --weights is for the whole batch",
    ),
    "bad value": (
        "m.csv",
        f"video,mask,output,height\n{GOOD},64\nin/b.mp4,in/b_mask.mp4,out/b.mp4,tall\n",
        [],
        "m.csv, line 3: argument --height: invalid int value: 'tall'",
    ),
    "bad choice": ("m.csv", f"video,mask,output,blend\n{GOOD},smooth\n", [], "line 2: argument --blend: invalid"),
    "bad switch": ("m.csv", f"video,mask,output,lossless\n{GOOD},maybe\n", [], "line 2: lossless: expected true"),
    "plan that cannot be": (
        "m.csv",
        f"video,mask,output,window,overlap\n{GOOD},9,9\n",
        [],
        "line 2: --overlap (9) must be smaller than --window (9)",
    ),
    "duplicate output": (
        "m.csv",
        f"video,mask,output\n{GOOD}\nin/b.mp4,in/b_mask.mp4,out/../out/a.mp4\n",
        [],
        "line 3: output",
    ),
    "missing value": ("m.jsonl", '{"video": "in/a.mp4", "output": "out/a.mp4"}\n', [], "m.jsonl, line 1: no mask"),
    "not JSON": ("m.jsonl", "{video: a}\n", [], "m.jsonl, line 1: not JSON"),
    "bad default on the command line": ("m.csv", f"video,mask,output\n{GOOD}\n", ["--crf", "x"], "argument --crf"),
    "unknown format": ("m.txt", GOOD, [], "a manifest is .csv or JSON lines"),
    "output is another row's input": (
        "m.csv",
        f"video,mask,output\n{GOOD}\nin/b.mp4,in/b_mask.mp4,in/../in/a.mp4\n",
        [],
        "line 3: output",
    ),
    "output is its own mask": ("m.csv", "video,mask,output\nin/a.mp4,in/a_mask.mp4,in/a_mask.mp4\n", [], "input"),
    "steps out of range": ("m.csv", f"video,mask,output,steps\n{GOOD},0\n", [], "line 2: --steps must be a whole"),
    "seed out of range": ("m.csv", f"video,mask,output,seed\n{GOOD},99999999999999999999\n", [], "line 2: --seed"),
    "dilation beyond the frame": ("m.csv", f"video,mask,output,dilate\n{GOOD},1000000\n", [], "line 2: --dilate"),
    "context nan": (
        "m.jsonl",
        '{"video": "in/a.mp4", "mask": "in/a_mask.mp4", "output": "o.mp4", "context": "nan"}\n',
        [],
        "line 1: --context",
    ),
    "device on the command line": ("m.csv", f"video,mask,output\n{GOOD}\n", ["--device", "meta"], "--device meta"),
    "duplicate column": (
        "m.csv",
        f"video,mask,output,seed,seed\n{GOOD},1,2\n",
        [],
        "m.csv, line 1: the column 'seed' appears twice",
    ),
    "fractional seed": (
        "m.jsonl",
        '{"video": "in/a.mp4", "mask": "in/a_mask.mp4", "output": "out/a.mp4", "seed": 1.5}\n',
        [],
        "line 1: argument --seed: invalid int value: 1.5",
    ),
    "switch as a number": (
        "m.jsonl",
        '{"video": "in/a.mp4", "mask": "in/a_mask.mp4", "output": "out/a.mp4", "steps": true}\n',
        [],
        "line 1: argument --steps: invalid int value: True",
    ),
    "unsupported output": ("m.csv", "video,mask,output\nin/a.mp4,in/a_mask.mp4,out/a.txt\n", [], "unknown output"),
    "more cells than the header": ("m.csv", f"video,mask,output\n{GOOD},extra\n", [], "line 2: more cells"),
    "UTF-16 without its mark": ("m.csv", f"video,mask,output\n{GOOD}\n".encode("utf-16-le"), [], "NUL bytes"),
    "not UTF-8": ("m.csv", b"video,mask,output\n\xff\xfe\xfa,b,c\n", [], "not UTF-8 text"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_a_bad_manifest_is_one_error_line_and_exit_2(case, clips, capsys):
    name, text, extra, message = BAD_MANIFESTS[case]
    if isinstance(text, bytes):
        (clips / name).write_bytes(text)
    else:
        (clips / name).write_text(text)
    code, stdout, stderr = run_batch_cli([str(clips / name), *extra], capsys)
    assert code == 2 and stdout == "" and "Traceback" not in stderr
    assert len(error_lines(stderr)) == 1 and message in error_lines(stderr)[0], stderr
    assert stderr.strip() == error_lines(stderr)[0]  # nothing started: no worker, no model
    assert list((clips / "out").iterdir()) == []


def test_a_csv_with_a_byte_order_mark_reads_as_without(clips):
    """Spreadsheets save CSV as UTF-8 with a byte-order mark: the first column is still `video`."""
    manifest = clips / "bom.csv"
    manifest.write_text("\ufeffvideo,mask,output,seed\n" + GOOD + ",7\n", encoding="utf-8")
    [clip] = batch.read_manifest(manifest)
    assert (clip.video, clip.run.seed) == (clips / "in" / "a.mp4", 7)


def test_a_utf16_csv_with_its_mark_reads_as_utf8(clips):
    """Excel's "Unicode text" is UTF-16 with a byte-order mark: read, not a UnicodeDecodeError traceback."""
    manifest = clips / "wide.csv"
    manifest.write_bytes(f"video,mask,output,seed\n{GOOD},7\n".encode("utf-16"))
    [clip] = batch.read_manifest(manifest)
    assert (clip.video, clip.run.seed) == (clips / "in" / "a.mp4", 7)


def test_a_summary_that_cannot_be_written_is_refused_before_the_work(clips, capsys):
    """--json where no file can be made (a read-only mount; /proc refuses even root): one line, no clip run."""
    manifest = write_csv(clips / "manifest.csv", [GOOD])
    code, stdout, stderr = run_batch_cli([str(manifest), "--json", "/proc/summary.json"], capsys)
    assert code == 2 and stdout == "" and error_lines(stderr) == [stderr.strip()], stderr
    assert "cannot write in /proc" in stderr
    assert list((clips / "out").iterdir()) == []


@pytest.mark.slow
def test_two_batches_at_once_do_each_clip_once(clips):
    """Two runs of one manifest started together (different seeds: different results): each clip is done by
    one of them and skipped by the other (its output claimed, or written meanwhile); no result is replaced."""
    rows = [f"in/{name}.mp4,in/{name}_mask.mp4,out/{name}{i}.mkv" for i in range(3) for name in ("a", "b")]
    manifest = write_csv(clips / "manifest.csv", rows)
    runs = []
    for seed in (1, 2):
        summary = clips / f"summary{seed}.json"
        command = [sys.executable, "-m", "runtime.batch", str(manifest), "--seed", str(seed), "--json", str(summary)]
        runs.append(subprocess.Popen([*command, "--quiet", *SIZE], cwd=REPO, stderr=subprocess.PIPE, text=True))
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr
    statuses = [[c["status"] for c in json.loads((clips / f"summary{s}.json").read_text())["clips"]] for s in (1, 2)]
    assert all(sorted(pair) == ["done", "skipped"] for pair in zip(*statuses)), statuses
    assert sorted(p.name for p in (clips / "out").iterdir()) == sorted(row.split(",")[2][4:] for row in rows)


@pytest.mark.parametrize(
    "target", ["m.csv", "out/../m.csv", "in/../in/a.mp4", "in/a_mask.mp4", "out/a.mp4", "old.json"]
)
def test_batch_json_never_replaces_the_manifest_a_row_file_or_an_existing_file(clips, capsys, target):
    """--json onto the manifest, a row's video, mask or finished output (by any spelling), or any existing
    file without --overwrite: one error line before any work, every file as it was."""
    manifest = write_csv(clips / "m.csv", [GOOD])
    (clips / "out" / "a.mp4").write_bytes(b"a finished result")
    (clips / "old.json").write_text("{}")
    before = {p: p.read_bytes() for p in clips.rglob("*") if p.is_file()}
    code, stdout, stderr = run_batch_cli([str(manifest), "--json", str(clips / target)], capsys)
    assert code == 2 and stdout == "" and len(error_lines(stderr)) == 1, stderr
    assert stderr.strip() == error_lines(stderr)[0]
    assert {p: p.read_bytes() for p in clips.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_chain_waits_for_the_row_it_reads_and_fails_in_one_line_with_it(clips, capsys):
    """Line 3 reads line 2's output and line 5 line 4's: with 2 workers line 3 waited for line 2 (it
    used to find no video), and line 5, whose maker failed, fails without running."""
    manifest = write_csv(
        clips / "chain.csv",
        [
            "in/a.mp4,in/a_mask.mp4,out/a.mkv",
            "out/a.mkv,in/a_mask.mp4,out/a2.mkv",
            "in/bad.mp4,in/a_mask.mp4,out/bad.mkv",
            "out/bad.mkv,in/a_mask.mp4,out/bad2.mkv",
        ],
    )
    code, _, stderr = run_batch_cli([str(manifest), "--workers", "2", "--lossless", *SIZE], capsys)
    assert code == 1, stderr
    assert sorted(p.name for p in (clips / "out").iterdir()) == ["a.mkv", "a2.mkv"], stderr
    bad = clips / "out" / "bad.mkv"
    assert f"failed  line 5 (bad.mkv): not run: its video {bad} is line 4's output, which failed" in stderr
    assert "Traceback" not in stderr


def test_a_row_reading_its_own_or_a_later_rows_output_is_refused_before_running(clips, capsys):
    for rows in (
        ["out/x.mp4,in/a_mask.mp4,out/x.mp4"],
        ["out/b.mp4,in/a_mask.mp4,out/c.mp4", GOOD.replace("a.mp4,", "b.mp4,", 1).replace("out/a.mp4", "out/b.mp4")],
    ):
        manifest = write_csv(clips / "m.csv", rows)
        code, _, stderr = run_batch_cli([str(manifest), *SIZE], capsys)
        assert code == 2 and "read before this row writes it" in error_lines(stderr)[0], stderr
        assert list((clips / "out").iterdir()) == []
