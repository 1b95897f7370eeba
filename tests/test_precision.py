"""Half precision end to end: the whole pipeline in fp16 and bf16 against the fixture's expected frames
(the reference's fp32 output), judged the flash-attention way: our error may be at most twice the error
of the reference implementation (bench/reference.py, diffusers 0.33.1 parts) running the same inputs in
the same dtype, both against fp32. Measured on 2026-11-25 (max / mean abs): fp16 ours 2.3e-3 / 2.9e-4,
reference 3.4e-3 / 3.7e-4; bf16 ours 1.6e-2 / 2.3e-3, reference 2.5e-2 / 3.1e-3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.reference import ReferencePipeline
from runtime import Remover

FIXTURE = {"height": 64, "width": 96}  # fixture.json; dilation 6 and 6 steps are both sides' defaults
ERROR_FACTOR = 2.0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_as_close_to_fp32_as_the_reference_in_that_dtype(dtype, checkpoint, expected, fixture_inputs):
    frames, masks = fixture_inputs
    truth = expected["expected_frames"].numpy()
    ours = Remover.from_pretrained(checkpoint, device="cpu", dtype=dtype)(
        frames, masks, latents=expected["noise"], paste_back=False, progress=False, **FIXTURE
    )
    reference = ReferencePipeline.from_pretrained(checkpoint, torch.device("cpu"), dtype)(
        frames, masks > 0, latents=expected["noise"], num_inference_steps=6, mask_dilation=6, **FIXTURE
    )
    ours_error, reference_error = np.abs(ours - truth), np.abs(reference - truth)
    assert reference_error.max() > 1e-4  # the reference really ran in half precision
    assert ours_error.max() <= ERROR_FACTOR * reference_error.max(), (ours_error.max(), reference_error.max())
    assert ours_error.mean() <= ERROR_FACTOR * reference_error.mean(), (ours_error.mean(), reference_error.mean())


def test_the_gpu_default_is_fp16_and_the_cpu_default_fp32():
    from runtime.execution.choices import resolve_dtype

    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
