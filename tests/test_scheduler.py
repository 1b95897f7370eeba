"""Samplers against the fixture's schedule, diffusers' UniPC (the released version) and exact paths."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from conftest import fixed_seed, fresh_seed, relative_error

from runtime.errors import RemoverError
from runtime.models.scheduler import RELEASED_SCHEDULER, read_scheduler_config
from runtime.pipeline.samplers import make_sampler


def test_schedule_matches_reference_fixture(checkpoint, expected):
    config = read_scheduler_config(checkpoint / "scheduler" / "scheduler_config.json")
    assert config == RELEASED_SCHEDULER
    sampler = make_sampler("unipc", config, 6)
    assert sampler.timesteps.tolist() == expected["timesteps"].long().tolist() == [999, 937, 856, 749, 599, 374]
    assert torch.tensor(sampler.sigmas, dtype=torch.float32).equal(expected["sigmas"])


def _diffusers_unipc(config, num_steps):
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=config.num_train_timesteps,
        solver_order=config.solver_order,
        solver_type=config.solver_type,
        lower_order_final=config.lower_order_final,
        flow_shift=config.flow_shift,
        final_sigmas_type=config.final_sigmas_type,
        disable_corrector=list(config.disable_corrector),
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        predict_x0=True,
    )
    scheduler.set_timesteps(num_steps)
    return scheduler


@pytest.mark.parametrize("trial", range(12))
def test_unipc_matches_diffusers_on_random_configs(trial):
    seed = fresh_seed()
    rng = random.Random(seed)
    num_steps = rng.randint(1, 14)
    config = replace(
        RELEASED_SCHEDULER,
        solver_order=rng.choice([1, 2, 3]),
        solver_type=rng.choice(["bh1", "bh2"]),
        flow_shift=rng.uniform(1.0, 8.0),
        disable_corrector=tuple(i for i in range(num_steps) if rng.random() < 0.2),
    )
    reference = _diffusers_unipc(config, num_steps)
    ours = make_sampler("unipc", config, num_steps)
    assert ours.timesteps.tolist() == reference.timesteps.tolist(), f"seed {seed} {config}"
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 3, 5, 6, generator=generator)
    ref_sample = sample.clone()
    for step, timestep in enumerate(reference.timesteps):
        velocity = torch.randn(sample.shape, generator=generator)
        ref_sample = reference.step(velocity, timestep, ref_sample).prev_sample
        sample = ours.step(velocity, sample)
        if config.solver_type == "bh1" and step == num_steps - 1:
            # diffusers multiplies B(h) = -inf by a zero correction at sigma 0 and returns NaN there
            assert torch.isnan(ref_sample).all()
            break
        assert relative_error(sample, ref_sample) < 1e-5, f"seed {seed} step {step} {config}"


@pytest.mark.parametrize("kind", ["unipc", "euler"])
@pytest.mark.parametrize("num_steps", [1, 2, 6, 11])
def test_exact_velocity_lands_on_the_clean_sample(kind, num_steps):
    """On a straight flow path (v = noise - x0 exactly) every consistent sampler reaches x0."""
    generator = torch.Generator().manual_seed(fixed_seed())
    clean, noise = torch.randn(3, 7, generator=generator), torch.randn(3, 7, generator=generator)
    sampler = make_sampler(kind, RELEASED_SCHEDULER, num_steps)
    sample = sampler.sigmas[0] * noise + (1 - sampler.sigmas[0]) * clean
    for _ in sampler.timesteps:
        sample = sampler.step(noise - clean, sample)
    assert relative_error(sample, clean) < 1e-5


def test_bad_scheduler_settings_are_clear_errors(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text(
        '{"num_train_timesteps": 1000, "solver_order": 2, "solver_type": "bh2", "lower_order_final": true,'
        ' "flow_shift": 3.0, "final_sigmas_type": "zero", "use_flow_sigmas": false}'
    )
    with pytest.raises(RemoverError, match="use_flow_sigmas"):
        read_scheduler_config(path)
    with pytest.raises(RemoverError, match="unknown sampler"):
        make_sampler("ddim", RELEASED_SCHEDULER, 6)
    with pytest.raises(RemoverError, match="at least 1"):
        make_sampler("unipc", RELEASED_SCHEDULER, 0)
