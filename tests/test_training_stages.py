"""Training stages on tiny configs: VAE, stage 1, stage 2 (bad noise), evaluation; resuming; the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime import Remover
from runtime.errors import RemoverError
from runtime.io.outputs import temporary_name
from runtime.models.vae import RELEASED_VAE, WanVAE
from runtime.models.weights import load_transformer, load_vae
from training.data import ClipSpec, SyntheticSource
from training.evaluate import EvalConfig, evaluate
from training.flow import flow_matching_loss, new_transformer
from training.latents import ClipLatents, LatentSet, clip_path
from training.stage1 import stage1_sample, train_stage1
from training.stage2 import (
    SCORERS,
    CuratedSet,
    bad_noise,
    curate,
    curation_clips,
    is_curated,
    stage2_model,
    train_stage2,
    write_kept_index,
)
from training.stage_config import Stage1Config, Stage2Config
from training.train_vae import VAETrainConfig, train_vae
from training.trainer import Distributed, load_config, sample_rng, save_model_folder, torch_generator

REPO = Path(__file__).resolve().parents[1]
CPU = Distributed(rank=0, world_size=1, device=torch.device("cpu"))
TINY_DATA = dict(num_clips=3, num_frames=5, height=32, width=48, positives_per_clip=1, random_masks=1)
TINY_MODEL = dict(num_layers=1, num_attention_heads=2, attention_head_dim=16, ffn_dim=32, num_condition_tokens=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and a shared CPU makes them far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    """A seeded random tiny VAE folder (identity latent stats)."""
    folder = tmp_path_factory.mktemp("vae") / "vae"
    torch.manual_seed(0)
    config = replace(RELEASED_VAE, base_dim=4, num_res_blocks=1, latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16)
    save_model_folder(folder, WanVAE(config), "AutoencoderKLWan")
    return folder


def stage1_config(tiny_vae: Path, out: Path, **overrides) -> Stage1Config:
    values = dict(out=str(out), vae=str(tiny_vae), steps=4, batch_size=4, warmup=1, log_every=1, checkpoint_every=2)
    values.update(cache_dir=str(out.parent / "cache"), **TINY_DATA, **TINY_MODEL)
    return replace(Stage1Config(**values), **overrides)


@pytest.fixture(scope="module")
def stage1_run(tiny_vae, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "stage1"
    train_stage1(stage1_config(tiny_vae, out), CPU)
    return out


@pytest.mark.slow
def test_vae_training_writes_a_loadable_vae_with_measured_stats(tmp_path):
    config = VAETrainConfig(
        out=str(tmp_path / "vae"), steps=2, batch_size=2, base_dim=4, num_frames=5, clip_height=32, clip_width=48,
        crop=16, warmup=1, log_every=1, stats_clips=2, stats_frames=5,
    )  # fmt: skip
    folder = train_vae(config, CPU)
    vae = load_vae(folder, torch.device("cpu"), torch.float32)
    assert vae.config.latents_std != (1.0,) * 16 and all(s > 0 for s in vae.config.latents_std)
    # the stats normalize the clips they were measured on: per-channel mean 0 and std 1
    source = SyntheticSource(ClipSpec(5, 32, 48, seed=config.seed + 1))
    videos = torch.stack([torch.from_numpy(source(i).frames).permute(3, 0, 1, 2) for i in range(2)]).float()
    with torch.no_grad():
        latents = vae.encode(videos / 127.5 - 1.0, frames_per_chunk=4).transpose(0, 1).flatten(1).double()
    assert latents.mean(1).abs().max() < 1e-4 and (latents.std(1) - 1).abs().max() < 1e-4
    assert [json.loads(line)["step"] for line in (tmp_path / "vae" / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_stage1_samples_pair_masks_with_tokens():
    """Negatives: the clip's own object masks (slot 0), token 1. Positives: a borrowed mask, token 0
    (or token 1 at the condition-dropout rate). The target is always the clip itself."""
    n, slots = 4, 3
    video = torch.arange(n, dtype=torch.float16).view(n, 1, 1, 1, 1).expand(n, 16, 2, 4, 6).clone()
    masked = (10 * torch.arange(slots, dtype=torch.float16)).view(slots, 1, 1, 1, 1).expand(slots, 16, 2, 4, 6)
    region, masks = torch.zeros(2, 4, 6, dtype=torch.bool), torch.zeros(slots, 16, 2, 4, 6)
    clips = [ClipLatents(video[c], None, masked.clone(), masks, region) for c in range(n)]
    latents = LatentSet(clips.__getitem__, n)
    config = Stage1Config(out="x", vae="x", steps=1, negative_fraction=0.5, condition_dropout=0.25)
    kinds = {"negative": 0, "positive": 0, "dropped": 0}
    for index in range(400):
        target, context, noise, sigma, condition = stage1_sample(config, latents, 0, index, (4, 6))
        slot = int(context[0, 0, 0, 0]) // 10
        assert target.shape == noise.shape == (16, 2, 4, 6) and 0 < sigma < 1
        assert (target == target[0, 0, 0, 0]).all()  # some clip, whole
        if slot == 0:
            assert condition == 1
            kinds["negative"] += 1
        else:
            kinds["positive" if condition == 0 else "dropped"] += 1
    assert 160 < kinds["negative"] < 240
    assert 0.15 < kinds["dropped"] / (kinds["positive"] + kinds["dropped"]) < 0.35


@pytest.mark.slow
def test_stage1_checkpoint_runs_in_the_pipeline_with_cfg(stage1_run):
    remover = Remover.from_pretrained(stage1_run / "checkpoint", "cpu", "fp32")
    assert remover.stages.transformer.config.num_condition_tokens == 2
    clip = SyntheticSource(ClipSpec(5, 32, 48, seed=9))(0)
    out = remover(clip.frames, clip.masks, num_inference_steps=2, guidance_scale=2.0, progress=False)
    assert out.shape == (5, 32, 48, 3) and np.isfinite(out).all()
    log = [json.loads(line) for line in (stage1_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log)


def test_stage1_resumes_to_the_same_weights(tiny_vae, stage1_run, tmp_path):
    """Two steps, stop, then two more from the saved state = four steps in one go."""
    out = tmp_path / "resumed"
    train_stage1(stage1_config(tiny_vae, out, steps=2), CPU)
    train_stage1(stage1_config(tiny_vae, out, steps=4), CPU)
    straight = load_transformer(stage1_run / "checkpoint" / "transformer", torch.device("cpu"), torch.float32)
    resumed = load_transformer(out / "checkpoint" / "transformer", torch.device("cpu"), torch.float32)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


def test_bad_noise_follows_the_sign_of_the_gradient():
    """eps* against a finite-difference oracle of dL/deps with the target held at sg(eps)."""
    torch.manual_seed(0)
    model = new_transformer(**TINY_MODEL).train()
    shape = (2, 16, 1, 4, 4)
    noise, original, fresh = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    context = torch.randn(2, 32, 1, 4, 4)
    condition = torch.tensor([0, 0])

    def loss(eps: torch.Tensor) -> float:
        with torch.no_grad():
            velocity = model(torch.cat([eps, context], dim=1), torch.full((2,), 999.0), condition)
            return float((velocity - (noise - original)).square().sum())

    ones = torch.ones(2)
    assert torch.equal(bad_noise(model, noise, original, context, condition, 0 * ones, fresh), noise)
    pushed = bad_noise(model, noise, original, context, condition, ones, fresh)
    assert torch.allclose(pushed.abs(), fresh.abs())
    checked = 0
    for flat in torch.randperm(noise.numel())[:40].tolist():
        step = torch.zeros(noise.numel())
        step[flat] = 1e-2
        step = step.view(shape)
        slope = (loss(noise + step) - loss(noise - step)) / 2e-2
        if abs(slope) > 1e-2:  # the sign of a tiny slope is not resolved by finite differences
            assert np.sign(float(pushed.flatten()[flat])) == -np.sign(slope)
            checked += 1
    assert checked >= 10


def test_hole_weight_counts_the_positions_the_hole_changed_that_many_times_more():
    """A model with a known velocity error at each latent position: the weighted loss is the
    hand-computed weighted mean, where the hole positions are the ones whose masked latent moved."""
    shape = (1, 16, 1, 2, 2)
    target, noise = torch.zeros(shape), torch.zeros(shape)
    masked = target.clone()
    masked[..., 0, 0] = 1.0  # the hole moved one of the four positions by 1 (> HOLE_CHANGE)
    masked[..., 1, 1] = 0.05  # and another by less than HOLE_CHANGE: not a hole position
    context = torch.cat([masked, torch.zeros(shape)], dim=1)
    error = torch.tensor([[2.0, 1.0], [1.0, 1.0]]).expand(shape)  # velocity error at each position

    def model(x, timestep, condition):
        return error

    sigma = torch.zeros(1)
    plain = flow_matching_loss(model, target, context, noise, sigma, sigma, None)
    weighted = flow_matching_loss(model, target, context, noise, sigma, sigma, None, hole_weight=4.0)
    assert plain.item() == pytest.approx((4 + 1 + 1 + 1) / 4)
    assert weighted.item() == pytest.approx((5 * 4 + 1 + 1 + 1) / (5 + 1 + 1 + 1))
    with pytest.raises(RemoverError, match="hole_weight"):
        Stage1Config(out="x", vae="y", steps=1, hole_weight=-1.0).validate("c.json")


def test_curated_samples_are_spread_over_the_batch():
    flags = [is_curated(i, 1 / 3) for i in range(12)]
    assert sum(flags) == 4 and flags[:3].count(True) == 1 and flags[3:6].count(True) == 1


@pytest.mark.slow
@pytest.mark.parametrize("tokens", ["positive", "none"])
def test_stage2_trains_from_stage1_and_serves_without_cfg(stage1_run, tmp_path, tokens):
    config = Stage2Config(
        out=str(tmp_path / "stage2"), stage1=str(stage1_run), steps=2, curation_steps=2, batch_size=3,
        condition_tokens=tokens, warmup=1, log_every=1,
    )  # fmt: skip
    folder = train_stage2(config, CPU)
    kept = json.loads((tmp_path / "stage2" / "curated" / "kept.json").read_text())
    assert len(kept["clip"]) == 2 and kept["score"][0] >= kept["score"][1]  # best half of 3, sorted
    remover = Remover.from_pretrained(folder, "cpu", "fp32")
    transformer = remover.stages.transformer
    expected_tokens = 2 if tokens == "positive" else 0
    assert transformer.config.num_condition_tokens == expected_tokens
    stage1 = load_transformer(stage1_run / "checkpoint" / "transformer", torch.device("cpu"), torch.float32)
    if tokens == "positive":  # the tokens stay as stage 1 left them, everything else trains
        torch.testing.assert_close(transformer.condition_embedding.weight, stage1.condition_embedding.weight)
    assert not torch.equal(transformer.proj_out.weight, stage1.proj_out.weight)
    clip = SyntheticSource(ClipSpec(5, 32, 48, seed=9))(0)
    assert np.isfinite(remover(clip.frames, clip.masks, progress=False)).all()


class FakeStage1:
    """Stands in for the stage-1 remover in curation: its removal is half the noise."""

    loaded = 0

    @classmethod
    def from_pretrained(cls, *args) -> FakeStage1:
        cls.loaded += 1
        return cls()

    def denoise(self, noise: torch.Tensor, context: torch.Tensor, steps: int, guidance_scale: float) -> torch.Tensor:
        return noise / 2


def test_curation_takes_a_seeded_subset_and_resumes_after_an_interruption(tmp_path, monkeypatch):
    scored = []
    monkeypatch.setattr("training.stage2.Remover", FakeStage1)
    monkeypatch.setitem(SCORERS, "fake", lambda latents, clip, removal: scored.append(clip) or float(clip * 7 % 10))
    region, slots = torch.zeros(2, 4, 6, dtype=torch.bool), torch.zeros(2, 16, 2, 4, 6, dtype=torch.float16)
    latents = LatentSet(lambda n: ClipLatents(torch.zeros(16, 2, 4, 6), None, slots, slots, region), 10)
    config = Stage2Config(out=str(tmp_path), stage1="x", steps=1, scorer="fake", curation_clips=4, curation_seed=3)
    folder = tmp_path / "curated"

    curated = curate(config, Path("stage1"), latents, CPU)
    chosen = curation_clips(3, 10, 4)
    assert len(set(chosen)) == 4 and sorted(scored) == chosen
    assert sorted(folder.glob("clip-*.pt")) == [clip_path(folder, clip) for clip in chosen]
    assert curated.clip == sorted(chosen, key=lambda clip: -(clip * 7 % 10))[:2]  # the better half, best first
    best = curated.clip[0]  # its removal: half its noise, drawn from (curation seed, clip), kept in fp16
    noise = torch.randn(16, 2, 4, 6, generator=torch_generator(sample_rng(3, 0, best)))
    assert torch.equal(curated.removal(best), (noise / 2).half())

    # a rerun curates nothing; an interrupted one curates only the clips it lacks
    scored.clear()
    written = {clip: clip_path(folder, clip).stat().st_mtime_ns for clip in chosen}
    loaded = FakeStage1.loaded
    assert curate(config, Path("stage1"), latents, CPU).clip == curated.clip
    assert scored == [] and FakeStage1.loaded == loaded
    clip_path(folder, chosen[1]).unlink()
    temporary_name(clip_path(folder, chosen[1])).write_bytes(b"cut off")  # being written when stopped
    assert curate(config, Path("stage1"), latents, CPU).clip == curated.clip and scored == [chosen[1]]
    assert all(clip_path(folder, clip).stat().st_mtime_ns == written[clip] for clip in chosen if clip != chosen[1])

    # the subset follows the seed; a larger count keeps a smaller one's clips; 0 curates all
    assert curation_clips(3, 10, 4) == chosen and curation_clips(4, 10, 4) != chosen
    assert set(chosen) < set(curation_clips(3, 10, 7)) and curation_clips(3, 10, 0) == list(range(10))
    with pytest.raises(RemoverError, match="curation_clips is 11, but the stage-1 data has only 10 clips"):
        curation_clips(3, 10, 11)
    with pytest.raises(RemoverError, match="curation_clips must be 0"):
        replace(config, curation_clips=-1).validate("stage2.json")


def test_the_kept_index_holds_the_best_fraction_by_score_and_removals_are_read_lazily(tmp_path):
    scores = {0: 1.0, 2: 5.0, 3: -2.0, 5: 5.0, 7: 3.0, 9: 0.5}
    for clip, score in scores.items():
        removal = torch.full((16, 1, 2, 2), clip, dtype=torch.float16)
        torch.save({"removal": removal, "score": score}, clip_path(tmp_path, clip))
    write_kept_index(tmp_path, [0, 3, 9], 0.1)  # at least one
    assert json.loads((tmp_path / "kept.json").read_text()) == {"clip": [0], "score": [1.0]}
    write_kept_index(tmp_path, list(scores), 0.5)  # ties: the lower clip first
    assert json.loads((tmp_path / "kept.json").read_text()) == {"clip": [2, 5, 7], "score": [5.0, 5.0, 3.0]}

    curated = CuratedSet(tmp_path, capacity=2)
    alive = []
    for clip in [2, 5, 7, 2, 7, 5]:
        removal = curated.removal(clip)
        assert removal.dtype == torch.float16 and (removal == clip).all()
        alive.append(weakref.ref(removal))
        del removal
        assert len({id(ref()) for ref in alive if ref() is not None}) <= 2  # the rest were let go
    assert curated.removal(5) is alive[-1]()  # a recent removal is kept


def test_tokenless_stage2_model_keeps_every_other_weight(stage1_run):
    folder = stage1_run / "checkpoint"
    model = stage2_model(folder, "none", torch.device("cpu"))
    stage1 = load_transformer(folder / "transformer", torch.device("cpu"), torch.float32)
    assert model.config.num_condition_tokens == 0 and "condition_embedding.weight" not in model.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, stage1.state_dict()[key], rtol=0, atol=0)


def test_evaluation_writes_the_table(stage1_run, tmp_path):
    config = EvalConfig(
        out=str(tmp_path / "eval"), stage1=str(stage1_run / "checkpoint"), stage2=str(stage1_run / "checkpoint"),
        num_clips=1, num_frames=5, height=32, width=48, stage1_steps=2, stage2_steps=2,
    )  # fmt: skip
    evaluate(config, CPU)
    rows = [line for line in (tmp_path / "eval" / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 5 and "stage 1 (2 steps, CFG 3)" in rows[1] and "stage 2 (2 steps, no CFG)" in rows[2]
    assert rows[3].count("exact (input kept)") == 1 and rows[4].count("exact (input kept)") == 1


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"out": "x", "vae": "y", "steps": 1, "batch_sise": 4}))
    with pytest.raises(Exception, match="batch_sise"):
        load_config(Stage1Config, path)
    result = subprocess.run(
        [sys.executable, "-m", "training.stage1", "--config", str(path)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "batch_sise" in result.stderr


def test_block_average_init_is_an_8x8x4_average_autoencoder():
    """At step 0 the VAE reproduces each 8x8 block's average colour (the oracle: average pooling,
    repeated back), before any training."""
    from training.train_vae import block_average_init

    vae = WanVAE(replace(RELEASED_VAE, base_dim=8, num_res_blocks=1, latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16))
    block_average_init(vae)
    frame = torch.from_numpy(SyntheticSource(ClipSpec(1, 32, 48, seed=4))(0).frames).permute(3, 0, 1, 2)
    video = frame[None].float() / 127.5 - 1.0
    with torch.no_grad():
        decoded = vae.decode(vae.encode(video))[0, :, 0]
    block_means = torch.nn.functional.avg_pool2d(video[0, :, 0], 8).repeat_interleave(8, 1).repeat_interleave(8, 2)
    assert (decoded - block_means).abs().mean() < 0.02 < (video[0, :, 0] - block_means).abs().mean()


def test_make_demo_installs_a_checkpoint_in_fp16(stage1_run, tmp_path):
    from safetensors import safe_open

    from training.make_demo import install_weights

    target = tmp_path / "weights"
    install_weights(stage1_run / "checkpoint", target)
    with safe_open(str(target / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        assert all(handle.get_tensor(key).dtype == torch.float16 for key in handle.keys())
    remover = Remover.from_pretrained(target, "cpu", "fp32")
    assert remover.stages.transformer.config.num_condition_tokens == 2
