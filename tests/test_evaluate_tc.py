"""TC (the paper's temporal consistency: mean cosine similarity of consecutive frames' CLIP image
features) in runtime.evaluate, on a random-weight CLIP of open_clip's ViT family saved in its released
format (open_clip_config.json + open_clip_model.safetensors), by path and by hub id from a hub cache laid
out in a temporary HF_HOME. The oracles: cosine similarities computed here from the tower's own outputs,
and (where installed) open_clip itself with its torchvision import stubbed."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from runtime.errors import RemoverError
from runtime.evaluate import evaluate_clip
from runtime.evaluate.__main__ import main
from runtime.evaluate.clip import PAPER_MODEL, VisionTower, load_clip
from runtime.io import write_clip

SIZE, PATCH, WIDTH, LAYERS, HEAD_WIDTH, EMBED = 32, 8, 32, 2, 16, 16
# open_clip's OPENAI_DATASET_MEAN / STD, written out here as the oracle's
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
REVISION = "0123456789abcdef0123456789abcdef01234567"
MODEL_CFG = {
    "embed_dim": EMBED,
    "vision_cfg": {"image_size": SIZE, "layers": LAYERS, "width": WIDTH, "head_width": HEAD_WIDTH, "patch_size": PATCH},
    "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1},
}


def random_visual_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random `visual.*` tensors of the tiny ViT's shapes (LayerNorms as initialised, biases zero: random
    ones would dominate every frame's feature alike), plus a text key the loader must ignore."""
    generator = torch.Generator().manual_seed(seed)
    shapes = VisionTower(SIZE, PATCH, WIDTH, LAYERS, WIDTH // HEAD_WIDTH, 4.0, EMBED).state_dict()
    state = {}
    for key, value in shapes.items():
        if "ln_" in key and key.endswith("weight"):
            state[f"visual.{key}"] = torch.ones(value.shape)
        elif key.endswith("bias"):
            state[f"visual.{key}"] = torch.zeros(value.shape)
        else:
            state[f"visual.{key}"] = torch.randn(value.shape, generator=generator) * 0.2
    return state | {"logit_scale": torch.tensor(4.6)}


def save_checkpoint(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    """open_clip's released layout: its config JSON and safetensors weights."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": {"mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist()},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(document))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "open_clip_model.safetensors")
    return folder


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "clip", random_visual_state())


@pytest.fixture
def hub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF_HOME, online as far as the environment says (the loader must not try to download)."""
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return home


def cache(home: Path, repo: str) -> Path:
    """A hub cache entry for `repo` (models--owner--name/snapshots/<hash>, refs/main), its snapshot folder."""
    entry = home / "hub" / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(REVISION)
    return entry / "snapshots" / REVISION


def oracle_features(tower: torch.nn.Module, frame: np.ndarray) -> torch.Tensor:
    """A SIZE x SIZE frame normalised here and put through the tower directly, unit length."""
    x = (torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255 - MEAN) / STD
    with torch.no_grad():
        return F.normalize(tower(x)[0], dim=0)


def noise_frames(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def write(folder: Path, name: str, frames: np.ndarray) -> Path:
    write_clip(folder / name, frames, 25)
    return folder / name


def evaluate_tc(tmp_path: Path, result: np.ndarray, video: np.ndarray, model) -> tuple[float, float]:
    masks = np.zeros_like(video)
    masks[:, 12:20, 12:20] = 255
    figures = evaluate_clip(
        write(tmp_path, "result", result), write(tmp_path, "video", video), write(tmp_path, "mask", masks),
        progress=False, flow=False, clip=model,
    )  # fmt: skip
    return figures.temporal.tc, figures.temporal.tc_reference


def test_tc_is_one_for_a_repeated_frame_and_the_oracle_mean_for_unrelated_frames(tmp_path, checkpoint):
    model = load_clip(checkpoint)
    frames = noise_frames(4)
    repeated = np.repeat(frames[:1], 4, axis=0)
    tc, tc_input = evaluate_tc(tmp_path, frames, repeated, model)
    assert tc_input == pytest.approx(1.0, abs=1e-5)
    features = torch.stack([oracle_features(model.tower, f) for f in frames])
    expected = float(F.cosine_similarity(features[:-1], features[1:], dim=1).mean())
    assert tc == pytest.approx(expected, abs=1e-5)
    assert tc < 0.99


def test_tc_by_hub_id_from_the_cache_only(tmp_path, hub_home, checkpoint, monkeypatch):
    """A hub id loads from the cache laid out by hand, with HF_HUB_OFFLINE unset and no connection tried."""
    import socket

    snapshot = save_checkpoint(cache(hub_home, "owner/tiny-clip"), random_visual_state())
    connect = mock.Mock(side_effect=OSError("no network in this test"))
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", connect)
    by_id, by_path = load_clip("owner/tiny-clip"), load_clip(snapshot)
    assert not connect.called
    frame = noise_frames(1)[0]
    assert torch.equal(by_id(frame), by_path(frame))
    assert torch.allclose(by_id(frame), oracle_features(by_path.tower, frame), atol=1e-6)


def test_missing_cache_is_one_line(hub_home):
    with pytest.raises(RemoverError) as caught:
        load_clip(PAPER_MODEL)
    message = str(caught.value)
    assert "\n" not in message and PAPER_MODEL in message and "cache" in message


def test_missing_huggingface_hub_is_one_line(hub_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(RemoverError) as caught:
        load_clip(PAPER_MODEL)
    assert "\n" not in str(caught.value) and "pip install huggingface_hub" in str(caught.value)


def test_foreign_or_incomplete_checkpoints_are_one_line(tmp_path, checkpoint):
    (checkpoint / "open_clip_model.safetensors").unlink()
    with pytest.raises(RemoverError, match="no CLIP weights"):
        load_clip(checkpoint)
    state = random_visual_state()
    del state["visual.proj"]
    with pytest.raises(RemoverError, match="not this CLIP vision tower") as caught:
        load_clip(save_checkpoint(tmp_path / "other", state))
    assert "\n" not in str(caught.value)


def test_cli_reports_tc_and_a_missing_model_is_one_error_line(tmp_path, checkpoint, hub_home, capsys):
    frames = noise_frames(3)
    masks = np.zeros_like(frames)
    masks[:, 8:16, 8:16] = 255
    paths = [write(tmp_path, name, clip) for name, clip in (("video", frames), ("mask", masks))]
    base = ["--result", paths[0], "--video", paths[0], "--mask", paths[1], "--quiet", "--no-lpips"]
    assert main([str(a) for a in base + ["--tc-model", checkpoint, "--json", tmp_path / "e.json"]]) == 0
    out = capsys.readouterr().out
    temporal = json.loads((tmp_path / "e.json").read_text())["temporal"]
    assert temporal["tc"] == pytest.approx(temporal["tc_reference"]) and temporal["tc"] < 1
    assert "TC (CLIP)" in out and "TC of the input" in out
    assert main([str(a) for a in base + ["--tc-model", PAPER_MODEL]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and PAPER_MODEL in err[0]


def stub_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip imports torchvision (and ftfy) at module level for its transforms and tokenizer, which a
    vision tower does not use: empty stand-ins, so its model module imports beside this torch."""
    names = ["torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
             "torchvision.transforms.functional"]  # fmt: skip
    modules = {}
    for name in names:
        module = types.ModuleType(name)
        module.__getattr__ = lambda attr: mock.MagicMock() if not attr.startswith("__") else _missing(attr)
        modules[name] = module
    for name, module in modules.items():
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(modules[parent], child, module)
        monkeypatch.setitem(sys.modules, name, module)
    if importlib.util.find_spec("ftfy") is None:
        monkeypatch.setitem(sys.modules, "ftfy", types.ModuleType("ftfy"))
    for name in [n for n in sys.modules if n == "open_clip" or n.startswith("open_clip.")]:
        monkeypatch.delitem(sys.modules, name)


def _missing(attr: str):
    raise AttributeError(attr)


@pytest.fixture
def stubbed_open_clip(monkeypatch):
    """open_clip importable with the stand-ins; its modules (bound to them) are dropped afterwards."""
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed (pip install --no-deps open_clip_torch)")
    stub_torchvision(monkeypatch)
    yield
    for name in [n for n in sys.modules if n == "open_clip" or n.startswith("open_clip.")]:
        del sys.modules[name]


def test_features_match_open_clip_on_its_own_random_checkpoint(tmp_path, stubbed_open_clip):
    """open_clip's CLIP of the same tiny config, its state dict saved as released; its encode_image is the oracle."""
    import open_clip.model as open_clip_model

    torch.manual_seed(0)
    vision = open_clip_model.CLIPVisionCfg(**MODEL_CFG["vision_cfg"])
    text = open_clip_model.CLIPTextCfg(**MODEL_CFG["text_cfg"])
    reference = open_clip_model.CLIP(embed_dim=EMBED, vision_cfg=vision, text_cfg=text).eval()
    with torch.no_grad():  # open_clip initialises proj and embeddings small: widen so features differ by frame
        for parameter in reference.visual.parameters():
            parameter.normal_(0, 0.2)
    folder = save_checkpoint(tmp_path / "open_clip", reference.state_dict())
    model = load_clip(folder)
    frames = noise_frames(2)
    for frame in frames:
        x = (torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255 - MEAN) / STD
        with torch.no_grad():
            expected = F.normalize(reference.encode_image(x)[0], dim=0)
        assert torch.allclose(model(frame), expected, atol=1e-5)
