"""Weights by hub id: resolved from a hub cache laid out by hand in a temporary HF_HOME, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import RemoverError
from runtime.hub import is_hub_id, resolve

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An HF_HOME whose cache holds owner/model at REVISION: weights.pt and vae/config.json, offline."""
    home = tmp_path / "hf"
    repo = home / "hub" / "models--owner--model"
    snapshot = repo / "snapshots" / REVISION
    (snapshot / "vae").mkdir(parents=True)
    (snapshot / "weights.pt").write_bytes(b"weights")
    (snapshot / "vae" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_local_path_is_returned_as_is(tmp_path: Path) -> None:
    file = tmp_path / "model.pt"
    file.write_bytes(b"x")
    assert resolve(str(file), "ignored.pt", "the checkpoint") == file
    assert not is_hub_id(str(file))


def test_hub_file_from_the_cache_offline(hub_home: Path) -> None:
    found = resolve("owner/model", "weights.pt", "the checkpoint")
    assert found.read_bytes() == b"weights"
    assert hub_home in found.parents


def test_hub_snapshot_folder_from_the_cache_offline(hub_home: Path) -> None:
    found = resolve("owner/model", None, "the remover's weights")
    assert found.is_dir() and (found / "vae" / "config.json").read_text() == "{}"
    assert found.name == REVISION


@pytest.mark.parametrize(("repo", "filename"), [("owner/other", None), ("owner/model", "missing.pt")])
def test_offline_and_not_cached_is_one_line(hub_home: Path, repo: str, filename: str | None) -> None:
    with pytest.raises(RemoverError) as caught:
        resolve(repo, filename, "the checkpoint")
    message = str(caught.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message and repo in message


@pytest.mark.parametrize("name", ["missing/deep/model", "weights/sam.pt", "/abs/path"])
def test_neither_path_nor_hub_id(name: str, hub_home: Path) -> None:
    """A missing file path is not sent to the hub, even when it has the form owner/name."""
    with pytest.raises(RemoverError, match="neither a local path nor a hub id"):
        resolve(name, None, "the checkpoint")


def test_remover_weights_by_hub_id_load_from_the_cache_offline(hub_home: Path, checkpoint: Path, capsys) -> None:
    """`runtime.run --weights owner/name` runs on the snapshot the cache holds (the fixture's checkpoint
    laid out as the released repository is), with HF_HUB_OFFLINE set; an id not cached is one line."""
    import shutil

    from runtime import run

    snapshot = hub_home / "hub" / "models--owner--remover" / "snapshots" / REVISION
    shutil.copytree(checkpoint, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(REVISION)
    frames, masks = hub_home / "frames", hub_home / "masks"
    for kind, folder in (("frame", frames), ("mask", masks)):
        folder.mkdir()
        for image in sorted((checkpoint.parent / "inputs").glob(f"{kind}_*.png")):
            shutil.copy(image, folder)
    clip = ["--video", str(frames), "--mask", str(masks), "--dry-run", "--quiet"]
    code = run.main([*clip, "--weights", "owner/remover"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "weights owner/remover on cpu" in err  # loaded: the dry run needs the model

    code = run.main([*clip, "--weights", "owner/absent"])
    _, err = capsys.readouterr()
    assert code == 2 and err.strip().startswith("error: the remover's weights: owner/absent is not in the hub cache")
