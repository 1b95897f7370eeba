"""bench/scaling.py on the CPU: it runs every blend on every rank count and reports what ran."""

from __future__ import annotations

import json

import pytest

from bench import scaling


@pytest.mark.slow
def test_scaling_runs_both_ways_of_sharing_on_two_ranks(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    arguments = ["--ranks", "1", "2", "--lengths", "17", "--window", "9", "--height", "64", "--width", "96"]
    assert scaling.main([*arguments, "--json", str(out)]) == 0
    run = json.loads(out.read_text())
    assert list(run["clips"]) == ["17 frames, continue", "17 frames, crossfade"]
    for entry in run["clips"].values():
        assert entry["1"]["speedup"] == 1.0 and entry["2"]["seconds"] > 0
        assert entry["1"]["seconds"] < entry["1"]["wall_s"]  # the model load and start-up are left out
    assert "over 2 ranks (ulysses" in run["clips"]["17 frames, continue"]["2"]["summary"]
    assert "windows shared by 2 ranks" in run["clips"]["17 frames, crossfade"]["2"]["summary"]
    assert "| 17 frames, crossfade |" in capsys.readouterr().out
