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
trailing blocks that only hold masked columns add exact zeros last. Norms and the rest
compute each row alone already; so do int8 linear layers (``quantize.py``), float32's by margin.

A bf16 or fp16 prefill (every prompt token at once, no cache yet; float32's goes to the
library's kernel) is batched left-padded to the longest row, so every row's last token sits in the
last column. Its attention works in float32, each query over key blocks of ``PREFILL_BLOCK``
columns counted from that last column, summed in column order: a row's tokens sit at the same
offsets within their blocks alone or beside longer rows, and the extra padding only adds leading
blocks of masked columns, exact zeros (skipped where no query of the call sees them). Masked
columns get a weight of exactly 0 and a padding query that sees nothing gets zeros, finite, so a
zero weight never meets a NaN. ``tests/unit/test_attention.py`` checks the
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
PREFILL_BLOCK = 64
# A prefill takes its queries this many at a time, whatever the batch, and never one alone: one
# query a chunk took another kernel path, and a row's numbers changed with its batchmates.
PREFILL_QUERIES = 32
# Scores held at once by a prefill (float32 numbers): more rows are taken in slices.
PREFILL_SCORES = 4 << 20


# Scores this far below a row's largest are weighted exp(EXP_FLOOR), about 2e-35, rather than less:
# the CPU's vectorized exp leaves its fast path below about -87 (a masked column's -3e38 made it 8x
# slower), and beside the largest weight, 1, such a weight adds nothing to a float32 sum.
EXP_FLOOR = -80.0
# An additive mask's hidden columns hold its dtype's minimum; float16's (-65504) is the highest.
MASKED = torch.finfo(torch.float16).min / 2


def _exp_seen(shifted: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``exp`` of scores less their row's largest, with the columns ``hidden`` (broadcast) exactly 0."""
    return torch.exp(shifted.clamp_(min=EXP_FLOOR)).masked_fill_(hidden, 0.0)


def whole_blocks(width: int, block: int = BLOCK) -> int:
    """``width`` rounded up to whole blocks: the widths the slots hand out."""
    return -(-width // block) * block


def blocked_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of one new token per row over ``[rows, kv_heads, width, dim]`` keys and values and an
    additive ``[rows, 1, 1, width]`` mask; any other call (a prefill, a width not cut in blocks) goes
    to the library's sdpa."""
    rows, heads, q_len, dim = query.shape
    width = key.shape[2]
    if q_len > 1 and q_len == width and query.dtype != torch.float32 and (
            attention_mask is None or tuple(attention_mask.shape) == (rows, 1, q_len, width)):
        return blocked_prefill(query, key, value, attention_mask, scaling), None
    if (q_len != 1 or width % BLOCK or attention_mask is None or not attention_mask.is_floating_point()
            or tuple(attention_mask.shape) != (rows, 1, 1, width)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    scale = scaling if scaling is not None else dim ** -0.5
    return blocked_decode(query, key, value, decode_bias(attention_mask), scale).reshape(rows, 1, heads, dim), None


def decode_bias(mask: torch.Tensor) -> torch.Tensor:
    """An additive ``[rows, 1, 1, width]`` decode mask as :func:`blocked_decode` adds it (once per
    step rather than once per layer)."""
    rows, width = mask.shape[0], mask.shape[-1]
    return mask.float().view(rows, 1, width // BLOCK, 1, BLOCK)


def blocked_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """One query token per row (``query`` ``[rows, heads, ..., dim]``, 1 token) over ``[rows,
    kv_heads, width, dim]`` keys and values, ``bias`` from :func:`decode_bias`; returns
    ``[rows, heads, dim]`` in the query's dtype."""
    rows, dim = query.shape[0], query.shape[-1]
    kv_heads, width = key.shape[1], key.shape[2]
    heads = query.numel() // (rows * dim)
    groups, blocks = heads // kv_heads, width // BLOCK
    # Query heads grouped by the key/value head they share (as transformers' repeat_kv orders them).
    q = query.reshape(rows, kv_heads, 1, groups, dim)
    scores = torch.matmul(q, key.view(rows, kv_heads, blocks, BLOCK, dim).transpose(-1, -2)).float() * scale
    scores = scores + bias  # [rows, kv, blocks, groups, BLOCK]
    weights = _exp_seen(scores - scores.amax(dim=(2, 4), keepdim=True), bias < MASKED)
    total = weights.sum(-1).cumsum(2)[:, :, -1].clamp_(min=1)  # [rows, kv, groups]; see _prefill_rows
    parts = torch.matmul(weights.to(value.dtype), value.view(rows, kv_heads, blocks, BLOCK, dim)).float()
    out = parts.cumsum(2)[:, :, -1] / total[..., None]  # [rows, kv, groups, dim]
    return out.to(query.dtype).reshape(rows, heads, dim)


def blocked_prefill(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                    scaling: float | None) -> torch.Tensor:
    """Causal self-attention of left-padded ``[rows, heads, width, dim]`` queries over as many keys
    (``mask``: ``[rows, 1, width, width]``, True or 0 where a query may look, or None for causal
    alone), in the column order the module's docstring describes. Returns ``[rows, width, heads, dim]``.

    Blocks are counted from the last column (left padding puts every row's last token there), the
    first one filled on the left with masked columns. Blocks no query of a chunk sees (the batch's
    common padding; under a causal mask, the keys after the chunk's last query) hold only zero
    weights and are skipped: leaving out an exact zero changes no sum, so the cost follows the real
    tokens."""
    rows, heads, width, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    extra = -width % PREFILL_BLOCK  # masked key columns before the first, to whole blocks
    keys, values = key.float(), value.float()
    if mask is None:  # causal: a query sees the keys up to its own column
        mask = torch.ones(width, width, dtype=torch.bool, device=query.device).tril()[None, None]
    elif mask.dtype != torch.bool:
        mask = mask >= 0  # additive: 0 where a query may look, the dtype's minimum elsewhere
    if extra:
        keys = torch.nn.functional.pad(keys, (0, 0, extra, 0))
        values = torch.nn.functional.pad(values, (0, 0, extra, 0))
        mask = torch.nn.functional.pad(mask, (extra, 0), value=False)
    q = query.float().view(rows, kv_heads, groups, width, dim)
    out = torch.zeros(rows, kv_heads, groups, width, dim, dtype=torch.float32, device=query.device)
    per = max(1, PREFILL_SCORES // (heads * PREFILL_QUERIES * (width + extra)))  # rows a slice
    for r0 in range(0, rows, per):
        r1 = min(rows, r0 + per)
        _prefill_rows(q[r0:r1], keys[r0:r1], values[r0:r1], mask[r0:r1] if mask.shape[0] > 1 else mask,
                      out[r0:r1], scale)
    return out.view(rows, heads, width, dim).transpose(1, 2).to(query.dtype)


def _prefill_rows(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                  out: torch.Tensor, scale: float) -> None:
    """``blocked_prefill`` for some rows, their queries ``PREFILL_QUERIES`` at a time, into ``out``."""
    rows, kv_heads, groups, width, dim = q.shape
    lowest = torch.finfo(torch.float32).min
    starts = list(range(0, width, PREFILL_QUERIES))
    if width > 1 and width - starts[-1] == 1:  # no chunk of one query (another kernel path): take two
        starts[-1] -= 1
    for start in starts:
        end = min(width, start + PREFILL_QUERIES)
        n = end - start
        seen = mask[:, :, start:end].any(dim=(0, 1, 2)).nonzero()  # the key columns these queries see
        if not len(seen):
            continue  # every query here is padding and sees nothing; it is never read
        lo = int(seen[0]) // PREFILL_BLOCK * PREFILL_BLOCK
        hi = whole_blocks(int(seen[-1]) + 1, PREFILL_BLOCK)
        blocks = (hi - lo) // PREFILL_BLOCK
        scores = torch.matmul(q[:, :, :, start:end].reshape(rows, kv_heads, groups * n, dim),
                              keys[:, :, lo:hi].transpose(-1, -2)) * scale
        scores = scores.view(rows, kv_heads, groups, n, hi - lo)
        hidden = ~mask[:, :, None, start:end, lo:hi]
        scores.masked_fill_(hidden, lowest)
        weights = _exp_seen(scores - scores.amax(-1, keepdim=True), hidden)
        cut = weights.view(rows, kv_heads, groups * n, blocks, PREFILL_BLOCK)
        # A query that sees a column has a total of at least 1 (its largest weight is exp(0)); one
        # that sees none (padding) gets zeros, finite, rather than 0 / 0.
        total = cut.sum(-1).cumsum(-1)[..., -1].clamp_(min=1)  # [rows, kv, groups * n]
        block_values = values[:, :, lo:hi].reshape(rows, kv_heads, blocks, PREFILL_BLOCK, dim)
        parts = torch.matmul(cut.transpose(2, 3), block_values)  # [rows, kv, blocks, groups * n, dim]
        summed = parts[:, :, 0].clone()
        for b in range(1, blocks):  # in column order, block by block (a cumsum over this dim is slow)
            summed += parts[:, :, b]
        out[:, :, :, start:end] = (summed / total[..., None]).view(rows, kv_heads, groups, n, dim)


def register() -> str:
    """Make ``NAME`` an attention implementation transformers accepts (its masks built as for sdpa)."""
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(NAME, blocked_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
