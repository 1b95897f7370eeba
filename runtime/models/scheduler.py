"""The scheduler's config (scheduler/scheduler_config.json): the flow-matching schedule a checkpoint was
trained with; runtime/pipeline/samplers.py samples with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.errors import RemoverError
from runtime.models.config import ANY, read_config


@dataclass(frozen=True)
class SchedulerConfig:
    """The keys of scheduler/scheduler_config.json that shape a flow-matching UniPC sampler."""

    num_train_timesteps: int
    solver_order: int
    solver_type: str
    lower_order_final: bool
    flow_shift: float
    final_sigmas_type: str
    disable_corrector: tuple[int, ...] = ()

    # Keys that select the mode this implementation is (flow sigmas, x0 prediction), or that only
    # matter for VP-type schedules, which flow sigmas replace.
    IGNORED_KEYS = {
        "use_flow_sigmas": True,
        "prediction_type": "flow_prediction",
        "predict_x0": True,
        "thresholding": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_dynamic_shifting": False,
        "solver_p": None,
        "shift_terminal": None,
        "beta_start": ANY,
        "beta_end": ANY,
        "beta_schedule": ANY,
        "trained_betas": ANY,
        "rescale_betas_zero_snr": ANY,
        "dynamic_thresholding_ratio": ANY,
        "sample_max_value": ANY,
        "timestep_spacing": ANY,  # flow sigmas set the timesteps themselves
        "steps_offset": ANY,
        "time_shift_type": ANY,
        "sigma_min": ANY,
        "sigma_max": ANY,
    }

    def validate(self, source: str) -> None:
        """Reject settings the released scheduler does not use and that cannot reach sigma 0 cleanly."""
        if self.solver_type not in ("bh1", "bh2"):
            raise RemoverError(f"{source}: solver_type must be bh1 or bh2, got {self.solver_type!r}")
        if self.final_sigmas_type != "zero":
            raise RemoverError(f"{source}: only final_sigmas_type='zero' is supported")
        if self.solver_order < 1 or (self.solver_order > 1 and not self.lower_order_final):
            raise RemoverError(f"{source}: solver_order > 1 needs lower_order_final=true to end at sigma 0")


RELEASED_SCHEDULER = SchedulerConfig(
    num_train_timesteps=1000,
    solver_order=2,
    solver_type="bh2",
    lower_order_final=True,
    flow_shift=3.0,
    final_sigmas_type="zero",
)


def read_scheduler_config(path: Path) -> SchedulerConfig:
    """Parse scheduler_config.json (diffusers UniPCMultistepScheduler keys)."""
    return read_config(SchedulerConfig, path, ignored=SchedulerConfig.IGNORED_KEYS)
