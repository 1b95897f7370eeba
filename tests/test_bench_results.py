"""The benchmark's run, gates and report on hand-made figures (no measurement runs here), and the saved runs
re-rendered as bench/RESULTS.md shows them."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest

from bench import report, results, thresholds
from bench.results import Machine, Meta, ResultsError, Run, Side, Stage
from bench.workloads import WORKLOADS
from runtime.models.transformer import RELEASED_TRANSFORMER
from runtime.models.vae import RELEASED_VAE

MODELS = (RELEASED_TRANSFORMER, RELEASED_VAE)


def side(
    seconds: dict[str, float], peaks: dict[str, float], loaded: float, steps: list[float] | None = None, frames=(5, 2)
) -> Side:
    """Figures as bench.sides reports them; `frames`: (video, latent)."""
    return Side(
        side="ours", workload="test", video_frames=frames[0], latent_frames=frames[1], device="cpu", dtype="float32",
        warmup=0, repeats=1, load_s=1.0, load_peak_mb=loaded, loaded_mb=loaded, loadavg=[1.0, 1.0],
        stages={name: Stage(seconds[name], peaks[name], peaks[name] - loaded, seconds[name]) for name in seconds},
        total_s=sum(seconds.values()), total_cpu_s=sum(seconds.values()), repeat_totals_s=[sum(seconds.values())],
        peak_mem_mb=max(peaks.values()), dit_steps_s=steps, dit_steps_cpu_s=steps,
        dit_step_peak_mb=None if steps is None else peaks["denoise"],
    )  # fmt: skip


def pipeline_point(ours_denoise: float = 6.0, ours_peak: float = 900.0) -> dict:
    workload = WORKLOADS["pipeline-64x112x5"]
    ours = side(
        {"read": 1.0, "preprocess": 1.0, "encode": 2.0, "denoise": ours_denoise, "decode": 2.0, "paste_back": 1.0,
         "write": 1.0},
        {"read": 500, "preprocess": 500, "encode": 700, "denoise": ours_peak, "decode": 800, "paste_back": 600,
         "write": 600},
        loaded=500.0, steps=[ours_denoise / 6] * 6,
    )  # fmt: skip
    reference = side(
        {"read": 1.0, "preprocess": 1.0, "encode": 4.0, "denoise": 6.0, "decode": 4.0, "write": 1.0},
        {"read": 500, "preprocess": 500, "encode": 900, "denoise": 900, "decode": 1500, "write": 700},
        loaded=500.0, steps=[1.0] * 6,
    )  # fmt: skip
    return results.point_entry(workload, ours, reference, MODELS)


def vae_point(latent_frames: int, ours_decode_peak: float, reference_decode_peak: float) -> dict:
    workload = WORKLOADS["vae-240x416"]
    frames = (1 + 4 * (latent_frames - 1), latent_frames)
    ours, reference = (
        side({"encode": 3.0, "decode": 4.0}, {"encode": 400.0, "decode": peak}, loaded=300.0, frames=frames)
        for peak in (ours_decode_peak, reference_decode_peak)
    )
    return results.point_entry(workload, ours, reference, MODELS)


def make_run(device: str = "cpu", pipeline=None, vae_points=None) -> Run:
    workloads = {
        "pipeline-64x112x5": results.workload_entry(WORKLOADS["pipeline-64x112x5"], [pipeline or pipeline_point()]),
        "vae-240x416": results.workload_entry(WORKLOADS["vae-240x416"], vae_points or [vae_point(1, 350, 400)]),
    }
    meta = Meta(
        date="2026-11-22", device=device, dtype="fp32", suite=list(workloads), quick=True, warmup=0, repeats=1,
        rounds=1, threads=1, weights="random", machine=Machine("test cpu", 2, 8.0, "Linux"), versions={"torch": "x"},
        command="python -m bench.run --quick", wall_s=60.0,
    )  # fmt: skip
    return results.assemble(meta, workloads)


def test_ratios_are_ours_over_reference():
    ratios = pipeline_point().ratios
    assert ratios.total_s == pytest.approx(14.0 / 17.0)
    assert ratios.stages["encode"].seconds == pytest.approx(0.5)
    assert ratios.stages["decode"].peak_mb == pytest.approx(800 / 1500)
    assert ratios.stages["decode"].above_loaded_mb == pytest.approx(300 / 1000)
    assert ratios.dit_step_s == pytest.approx(1.0) and ratios.dit_step_cpu_s == pytest.approx(1.0)
    assert ratios.total_cpu_s == pytest.approx(14.0 / 17.0)
    assert "paste_back" not in ratios.stages  # the reference has no paste-back


def test_merged_stage_processes_add_up():
    encode = side({"encode": 3.0}, {"encode": 700.0}, loaded=300.0)
    decode = side({"decode": 5.0}, {"decode": 900.0}, loaded=310.0)
    merged = results.merge_stages([encode, decode])
    assert list(merged.stages) == ["encode", "decode"]
    assert merged.total_s == 8.0 and merged.total_cpu_s == 8.0 and merged.repeat_totals_s == [8.0]
    assert merged.peak_mem_mb == 900.0 and merged.loaded_mb == 300.0
    assert merged.stages["decode"].above_loaded_mb == 590.0  # against its own process's loaded model


def test_rounds_take_median_times_and_highest_peaks():
    rounds = [
        side({"encode": seconds, "decode": 1.0}, {"encode": peak, "decode": 500.0}, loaded=loaded)
        for seconds, peak, loaded in ((3.0, 700.0, 300.0), (9.0, 650.0, 290.0), (4.0, 720.0, 310.0))
    ]
    combined = results.combine_rounds(rounds)
    assert combined.stages["encode"] == Stage(seconds=4.0, peak_mb=720.0, above_loaded_mb=410.0, cpu_s=4.0)
    assert combined.total_s == 5.0 and combined.peak_mem_mb == 720.0 and combined.loaded_mb == 290.0
    assert combined.rounds == 3 and len(combined.repeat_totals_s) == 3 and combined.loadavg == [1.0] * 6


def test_headline_is_the_first_pipeline_and_the_run_survives_a_json_round_trip():
    run = make_run()
    assert Run.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    assert run.headline == "pipeline-64x112x5"
    assert run.ours.total_s == 14.0 and run.reference.total_s == 17.0
    assert run.ours.peak_mem_mb == 900.0 and run.reference.peak_mem_mb == 1500.0
    assert "nvml_peak_mb" not in run.to_dict()["ours"]  # what a CPU run does not measure is left out


@pytest.mark.parametrize(
    "path",
    [("ours", "total_s"), ("reference", "peak_mem_mb"), ("meta", "device"), ("meta", "machine", "cpu"),
     ("ours", "stages", "decode", "seconds"), ("workloads", "vae-240x416", "points", 0, "ratios", "total_s"),
     ("workloads", "vae-240x416", "points", 0, "cost", "decode", "flops")],
)  # fmt: skip
def test_loading_names_a_missing_field(path):
    data = make_run().to_dict()
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(ResultsError, match=f"missing {path[-1]!r}"):
        Run.from_dict(data)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [(("ours", "total_s"), "fast", "run.ours.total_s: expected float, got 'fast'"),
     (("meta", "quick"), 1, "run.meta.quick: expected bool, got 1"),
     (("meta", "threads"), 1.0, "run.meta.threads: expected int, got 1.0"),
     (("ours", "dit_steps_s"), [1.0, None], r"run.ours.dit_steps_s\[1\]: expected float, got None"),
     (("ours", "stages", "encode"), [2.0], "run.ours.stages.encode: expected an object"),
     (("workloads", "vae-240x416", "points"), [], "no measured points"),
     (("ours", "speed"), 1.0, "run.ours: unknown key 'speed'")],
)  # fmt: skip
def test_loading_rejects_a_wrong_type_or_an_unknown_key(path, value, message):
    data = make_run().to_dict()
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    with pytest.raises(ResultsError, match=message):
        Run.from_dict(data)


def test_the_saved_runs_render_as_results_md_shows_them():
    """bench/RESULTS.md's generated block is what `python -m bench.report` makes of bench/results/*.json."""
    text = report.RESULTS_MD.read_text()
    block = text[text.index(report.BEGIN) + len(report.BEGIN) + 1 : text.index(report.END) - 1]
    runs = report.load_runs()
    assert runs, "no saved runs in bench/results"
    assert report.render(runs, {stem: f"results/{stem}.png" for stem in runs}) == block
    for stem, run in runs.items():  # and the saved JSON is exactly what the dataclasses write
        assert run.to_dict() == json.loads((report.RESULTS_DIR / f"{stem}.json").read_text())


def outcomes_by_gate(run: dict) -> dict[str, list[thresholds.Outcome]]:
    out: dict[str, list[thresholds.Outcome]] = {}
    for outcome in thresholds.evaluate(run):
        out.setdefault(outcome.gate.name, []).append(outcome)
    return out


def test_gates_pass_and_fail_on_the_ratios():
    good = outcomes_by_gate(make_run(vae_points=[vae_point(1, 350, 400), vae_point(5, 500, 1300)]))
    assert all(o.passed for outcomes in good.values() for o in outcomes)
    # the decode-memory gate reads the longest clip: 200 / 1000 above the loaded VAE
    assert good["vae_decode_memory_at_most_half"][0].value == pytest.approx(0.2)
    assert "paper_end_to_end_seconds" not in good  # GPU-only gates do not apply to a CPU run

    bad = outcomes_by_gate(make_run(pipeline=pipeline_point(ours_denoise=10.0, ours_peak=1600.0)))
    assert not bad["end_to_end_not_slower"][0].passed  # 18 s against 17 s
    assert not bad["dit_step_not_slower"][0].passed
    assert not bad["peak_memory_not_higher"][0].passed
    assert bad["vae_decode_memory_at_most_half"][0].passed  # 50 / 100 above loaded: exactly at the limit
    assert "FAILED" in bad["end_to_end_not_slower"][0].line()


def one_stage_vae_point(stage: str, ours_peak: float, reference_peak: float) -> dict:
    """A point of `python -m bench.run --workloads vae-240x416 --frames 3 --stages <stage>`."""
    sides = [side({stage: 4.0}, {stage: peak}, loaded=300.0, frames=(9, 3)) for peak in (ours_peak, reference_peak)]
    return results.point_entry(WORKLOADS["vae-240x416"], *sides, MODELS)


def test_a_run_of_one_vae_stage_renders_and_gates_that_stage():
    decode_only = make_run(vae_points=[one_stage_vae_point("decode", 500.0, 900.0)])
    text = report.render({"cpu-custom": decode_only}, {})
    assert "decode ours (MB)" in text and "encode ours (MB)" not in text
    decode_gate = [o for o in thresholds.evaluate(decode_only) if o.gate.name == "vae_decode_memory_at_most_half"]
    assert [(o.subject, o.value) for o in decode_gate] == [("vae-240x416@3lf", pytest.approx(200 / 600))]

    encode_only = make_run(vae_points=[one_stage_vae_point("encode", 500.0, 900.0)])
    assert "encode ours (MB)" in report.render({"cpu-custom": encode_only}, {})
    assert not [o for o in thresholds.evaluate(encode_only) if o.gate.name == "vae_decode_memory_at_most_half"]


def test_every_gate_has_a_reason_and_a_positive_limit():
    names = [gate.name for gate in thresholds.GATES]
    assert len(names) == len(set(names))
    for gate in thresholds.GATES:
        assert gate.limit > 0 and len(gate.reason) > 40 and gate.measures


def test_paper_gates_apply_to_the_released_setting_on_a_gpu():
    run = make_run(device="cuda")
    workload = copy.deepcopy(run.workloads["pipeline-64x112x5"])
    point = workload.points[0]
    point.ours = replace(point.ours, total_s=20.0, peak_mem_mb=12 * 1024.0, nvml_peak_mb=15 * 1024.0)
    run.workloads[thresholds.PAPER_WORKLOAD] = workload
    gates = outcomes_by_gate(run)
    assert gates["paper_end_to_end_seconds"][0].passed  # 20 s <= 24 s
    assert not gates["paper_peak_memory_gb"][0].passed  # NVML saw 15 GiB > 14


def test_report_has_the_paper_line_and_says_what_was_not_measured():
    text = report.render({"cpu-quick": make_run()}, charts={"cpu-quick": "results/cpu-quick.png"})
    assert report.PAPER_LINE in text
    assert "not measured: no GPU in this session" in text
    assert "| **end to end** | 14.00 | 17.00 | 0.82x | 14.00 | 17.00 | 0.82x | 900 | 1,500 | 0.60x |" in text
    assert (
        "| VAE encode (masked + mask video) | 2.00 | 4.00 | 0.50x | 2.00 | 4.00 | 0.50x | 700 | 900 | 0.78x |" in text
    )
    assert "| paste-back | 1.00 | - |  | 1.00 | - |  | 600 | - |  |" in text
    assert "| 1 | 1 | 3.00 | 3.00 | 1.00x | 100 | 100 | 1.00x | 4.00 | 4.00 | 1.00x | 50 | 100 | 0.50x |" in text
    assert "![cpu-quick stage breakdown](results/cpu-quick.png)" in text
    assert "| vae_decode_memory_at_most_half | vae-240x416@1lf | 0.500 | 0.5 | pass |" in text


def test_report_gpu_run_fills_the_gpu_table():
    run = make_run(device="cuda")
    run.meta.machine = replace(run.meta.machine, gpu="Test GPU", gpu_memory_gb=80.0, driver="1.0")
    run.workloads[thresholds.PAPER_WORKLOAD] = copy.deepcopy(run.workloads["pipeline-64x112x5"])
    text = report.render({"cuda": run}, charts={})
    assert "not measured" not in text
    assert "| ours (Test GPU, fp32) | 14.0 s | 0.9 GiB | 0.82x | 0.60x |" in text


def test_update_keeps_other_sections_and_reads_only_runs(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "cpu-quick.json").write_text(json.dumps(make_run().to_dict()))
    (folder / "seams.json").write_text(json.dumps({"tennis": {"ratio": 1.0}}))  # another benchmark's results
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text(f"{report.BEGIN}\nold tables\n{report.END}\n\n## Kernels\n\nsomeone else's table\n")
    report.update_results(results_md, folder)
    text = results_md.read_text()
    assert "old tables" not in text and "## Kernels\n\nsomeone else's table" in text
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    assert (folder / "cpu-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "seams" not in text and not (folder / "seams.png").exists()
