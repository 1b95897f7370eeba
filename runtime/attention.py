"""The single attention entry point of the runtime: softmax(q k^T / sqrt(d)) v, no mask."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q [B, Lq, heads, d], k and v [B, Lk, heads, d] -> [B, Lq, heads, d], through PyTorch SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
