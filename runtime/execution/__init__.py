"""Execution choices: device, dtype, kernels, compile (choices.py), the attention implementation, the cost model."""
