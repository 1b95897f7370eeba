"""Flow-matching samplers: UniPC multistep (as the released scheduler_config.json sets it up) and Euler.

The model predicts the velocity v = noise - x0 at sigma, where x_sigma = sigma * noise + (1 - sigma) * x0.
Schedules are fixed once the step count is known, so every update is a linear combination of the
current sample and earlier x0 predictions with coefficients computed up front in float64; this is
also what lets an exported graph bake the whole sampler in as constants.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

from runtime.errors import RemoverError
from runtime.models.scheduler import SchedulerConfig


def flow_sigmas(num_steps: int, num_train_timesteps: int, shift: float) -> np.ndarray:
    """The released schedule: sigmas [num_steps + 1] in float64, the last one 0.

    Unshifted sigmas are 1 - linspace(1, 1/T, n+1), reversed, without the final 0; each is then
    shifted by s * shift / (1 + (shift - 1) * s). Six steps give 0.9997, 0.9371, ..., 0.3747, 0.
    """
    if num_steps < 1:
        raise RemoverError(f"the number of steps must be at least 1, got {num_steps}")
    base = (1.0 - np.linspace(1.0, 1.0 / num_train_timesteps, num_steps + 1))[::-1][:-1]
    shifted = shift * base / (1.0 + (shift - 1.0) * base)
    return np.concatenate([shifted, [0.0]])


class FlowSampler(ABC):
    """Base: the schedule (timesteps, sigmas) and the step counter; subclasses define `step`."""

    def __init__(self, config: SchedulerConfig, num_steps: int) -> None:
        self.config = config
        sigmas = flow_sigmas(num_steps, config.num_train_timesteps, config.flow_shift)
        # the released scheduler keeps sigmas in float32 and truncates float64 sigma * T to the timestep
        self.sigmas: list[float] = [float(s) for s in sigmas.astype(np.float32)]
        self.timesteps = torch.from_numpy((sigmas[:-1] * config.num_train_timesteps).astype(np.int64))
        self.index = 0

    def __len__(self) -> int:
        return len(self.timesteps)

    @abstractmethod
    def step(self, velocity: Tensor, sample: Tensor) -> Tensor:
        """Advance one step: sample at sigmas[index] -> sample at sigmas[index + 1] (fp32)."""


class EulerSampler(FlowSampler):
    """Plain flow-matching Euler: x <- x + (sigma_next - sigma) * v."""

    def step(self, velocity: Tensor, sample: Tensor) -> Tensor:
        sigma, sigma_next = self.sigmas[self.index], self.sigmas[self.index + 1]
        self.index += 1
        return sample.float() + (sigma_next - sigma) * velocity.float()


def _log_snr(sigma: float) -> float:
    """lambda = log(alpha) - log(sigma) with alpha = 1 - sigma (inf at sigma 0)."""
    return math.inf if sigma == 0.0 else math.log(1.0 - sigma) - math.log(sigma)


class UniPCSampler(FlowSampler):
    """UniPC multistep (UniP predictor + UniC corrector, B(h) = bh1 or bh2) in x0-prediction form.

    Step i: m_i = x_i - sigma_i v_i; if i > 0 the corrector refines x_i with m_i, then the
    predictor moves to sigma_{i+1} with order min(solver_order, steps left, i + 1).
    """

    def __init__(self, config: SchedulerConfig, num_steps: int) -> None:
        super().__init__(config, num_steps)
        self.lambdas = [_log_snr(s) for s in self.sigmas]
        self.x0_history: list[Tensor] = []  # m_0 .. m_i, latest last
        self.last_sample: Tensor | None = None  # the (corrected) sample the last predictor started from
        self.last_order = 0

    def _order(self, index: int) -> int:
        order = min(self.config.solver_order, index + 1)
        return min(order, len(self) - index) if self.config.lower_order_final else order

    def _coefficients(self, target: int, source: int, order: int, corrector: bool) -> tuple[float, list[float]]:
        """Update from sigma[source] to sigma[target] using x0 predictions m_source, m_source-1, ...

        Returns (c_x, c_m) with x_target = c_x * x_source + sum_k c_m[k] * m_{source - k}, and for
        the corrector an extra last c_m entry for the new prediction m_target.
        """
        sigma_t, sigma_s = self.sigmas[target], self.sigmas[source]
        alpha_t = 1.0 - sigma_t
        h = self.lambdas[target] - self.lambdas[source]
        rks = [(self.lambdas[source - k] - self.lambdas[source]) / h for k in range(1, order)] + [1.0]
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = hh if self.config.solver_type == "bh1" else h_phi_1
        rows, rhs = [], []
        h_phi_k, factorial = h_phi_1 / hh - 1.0, 1
        for i in range(1, order + 1):
            rows.append([rk ** (i - 1) for rk in rks])
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        if corrector:
            rhos = [0.5] if order == 1 else list(np.linalg.solve(np.array(rows), np.array(rhs)))
        elif order == 1:
            rhos = []
        else:
            rhos = [0.5] if order == 2 else list(np.linalg.solve(np.array(rows)[:-1, :-1], np.array(rhs)[:-1]))
        # x = (sigma_t / sigma_s) x_s - alpha_t h_phi_1 m_s - alpha_t B_h sum_k rho_k D_k
        # D_k = (m_{s-k} - m_s) / r_k for earlier predictions; the corrector's last D is m_t - m_s.
        c_m = [-alpha_t * h_phi_1] + [0.0] * (order - 1)
        if corrector:
            c_m.append(0.0)
        for k, rho in enumerate(rhos):
            scale = -alpha_t * b_h * rho
            if k < order - 1:  # an earlier prediction, D_k = (m_{s-k-1} - m_s) / r_k
                c_m[k + 1] += scale / rks[k]
                c_m[0] -= scale / rks[k]
            else:  # the corrector's new prediction, D = m_t - m_s
                c_m[-1] += scale
                c_m[0] -= scale
        return sigma_t / sigma_s, c_m

    def step(self, velocity: Tensor, sample: Tensor) -> Tensor:
        index = self.index
        sample = sample.float()
        x0 = sample - self.sigmas[index] * velocity.float()
        if index > 0 and (index - 1) not in self.config.disable_corrector:
            c_x, c_m = self._coefficients(index, index - 1, self.last_order, corrector=True)
            previous = [self.x0_history[-1 - k] for k in range(self.last_order)]
            sample = _combine(c_x, self.last_sample, c_m, [*previous, x0])
        self.x0_history = [*self.x0_history, x0][-self.config.solver_order :]
        order = self._order(index)
        c_x, c_m = self._coefficients(index + 1, index, order, corrector=False)
        self.last_sample, self.last_order = sample, order
        self.index += 1
        return _combine(c_x, sample, c_m, [self.x0_history[-1 - k] for k in range(order)])


def _combine(c_x: float, x: Tensor, c_m: list[float], predictions: list[Tensor]) -> Tensor:
    """c_x * x + sum_k c_m[k] * predictions[k], skipping zero coefficients (c_x is 0 at sigma 0)."""
    out = x * c_x if c_x else torch.zeros_like(x)
    for c, m in zip(c_m, predictions):
        if c:
            out = out + c * m
    return out


SAMPLERS = {"unipc": UniPCSampler, "euler": EulerSampler}
SAMPLER_CHOICES = tuple(SAMPLERS)  # the names the front doors offer (runtime.options)


def check_sampler(kind: str) -> None:
    """A RemoverError unless `kind` names a sampler: the library's one check of the name (the front
    doors' ModelOptions refuses it first, naming --sampler)."""
    if kind not in SAMPLERS:
        raise RemoverError(f"unknown sampler {kind!r}; choose one of {sorted(SAMPLERS)}")


def make_sampler(kind: str, config: SchedulerConfig, num_steps: int) -> FlowSampler:
    """A fresh sampler of `kind` ("unipc" or "euler") for `num_steps` steps."""
    check_sampler(kind)
    return SAMPLERS[kind](config, num_steps)
