"""Decode-step attention whose result for a row does not depend on its batchmates, to the bit.

A batch attends over ``max(lengths) + 1`` columns (``slots.py``), so a row's attention runs over a
width its batchmates set. Library kernels reduce over that width in an order that depends on it:
the masked columns add zeros, but the real ones are summed in other groupings, and the last bits
differ. In float32 that noise rarely flips a greedy token; in bfloat16 (activations rounded to 8
bits after every layer) it flips one within a few dozen tokens, and a job's text would depend on
which jobs shared its steps.

Here the width is cut into blocks of ``BLOCK`` columns (the slots hand out widths that are
multiples of it). Within a block every reduction has the same shape whatever the width; across
blocks the partial sums are added in column order by a cumulative sum, which is sequential, so the
trailing blocks that only hold masked columns add exact zeros last. Linear layers, norms and the
rest compute each row alone already; in bf16 and fp16 prefills are not batched across rows for the
same reason (``batching.py``), and use the library's kernel. ``tests/unit/test_attention.py`` checks the
function, ``tests/integration/test_engine.py`` the whole engine's greedy text alone and in a batch,
in float32 and bfloat16.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

NAME = "textgen_blocked"
BLOCK = 64


def whole_blocks(width: int) -> int:
    """``width`` rounded up to whole blocks: the widths the slots hand out."""
    return -(-width // BLOCK) * BLOCK


def blocked_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of one new token per row over ``[rows, kv_heads, width, dim]`` keys and values and an
    additive ``[rows, 1, 1, width]`` mask; any other call (a prefill, a width not cut in blocks) goes
    to the library's sdpa."""
    rows, heads, q_len, dim = query.shape
    kv_heads, width = key.shape[1], key.shape[2]
    if (q_len != 1 or width % BLOCK or attention_mask is None or not attention_mask.is_floating_point()
            or tuple(attention_mask.shape) != (rows, 1, 1, width)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    groups, blocks = heads // kv_heads, width // BLOCK
    scale = scaling if scaling is not None else dim ** -0.5
    # Query heads grouped by the key/value head they share (as transformers' repeat_kv orders them).
    q = query.reshape(rows, kv_heads, 1, groups, dim)
    scores = torch.matmul(q, key.view(rows, kv_heads, blocks, BLOCK, dim).transpose(-1, -2)).float() * scale
    scores = scores + attention_mask.float().view(rows, 1, blocks, 1, BLOCK)  # [rows, kv, blocks, groups, BLOCK]
    weights = torch.exp(scores - scores.amax(dim=(2, 4), keepdim=True))
    total = weights.sum(-1).cumsum(2)[:, :, -1]  # [rows, kv, groups]
    parts = torch.matmul(weights.to(value.dtype), value.view(rows, kv_heads, blocks, BLOCK, dim)).float()
    out = parts.cumsum(2)[:, :, -1] / total[..., None]  # [rows, kv, groups, dim]
    return out.to(query.dtype).reshape(rows, 1, heads, dim), None


def register() -> str:
    """Make ``NAME`` an attention implementation transformers accepts (its masks built as for sdpa)."""
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(NAME, blocked_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
