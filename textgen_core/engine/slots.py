"""The running batch's KV cache as preallocated slots, so a row joins or leaves at the cost of its own tokens.

transformers' DynamicCache concatenates every layer's keys and values on every decoding step, and a
batch built on it must concatenate the whole cache to admit rows and re-index it to drop one: each
costs a copy of the batch. Here each layer's keys and values live in one buffer
``[rows, kv_heads, width, head_dim]``, grown by doubling (rows or width) and otherwise written in
place. Row ``i`` holds slot ``i``, its tokens in columns ``[0, length_i)``; a step writes each row's
new token at its own column and attends over the first ``max(length) + 1`` columns through a mask
per row, so a row's numbers never depend on its batchmates' lengths (the width is a whole number of
attention blocks, which ``attention.py`` reduces in an order that no width changes). A row that leaves takes the
last row into its slot (one row's copy): the rows in use stay ``0..n-1`` and a step computes
exactly them.

The model's attention layers call :meth:`SlotCache.update` as they would a transformers ``Cache``;
the engine hands the forward a ready 4D mask (:meth:`SlotCache.step_inputs`), which transformers
uses as it is. That holds for models whose layers all use full attention (no sliding window).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from textgen_core.engine.attention import whole_blocks

# Columns allocated at least; the width then doubles when a row outgrows it.
MIN_WIDTH = 128
MIN_ROWS = 4


@dataclass
class RowsKV:
    """Some rows' keys and values outside the slots: per layer ``[rows, kv_heads, width, head_dim]``,
    row ``i``'s tokens in columns ``[starts[i], starts[i] + lengths[i])`` (a prefill is left-padded,
    rows taken out of the slots start at 0)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: list[int]
    starts: list[int]

    def take(self, index: Sequence[int]) -> RowsKV:
        at = torch.tensor(list(index), device=self.keys[0].device)
        return RowsKV([k[at] for k in self.keys], [v[at] for v in self.values],
                      [self.lengths[i] for i in index], [self.starts[i] for i in index])


class SlotCache:
    """Keys and values of the running batch, one slot per row (see the module's docstring)."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []  # tokens in the cache per row; the next one goes at this column
        self._rows_at: torch.Tensor | None = None  # set by step_inputs for the next forward
        self._columns_at: torch.Tensor | None = None
        self._width = 0

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> tuple[int, int]:
        """(rows, columns) allocated."""
        return (self.keys[0].shape[0], self.keys[0].shape[2]) if self.keys else (0, 0)

    def add(self, kv: RowsKV) -> None:
        """Put rows into the next free slots (copying only their own tokens)."""
        n, m = self.rows, len(kv.lengths)
        if not m:
            return
        self._reserve(n + m, max(kv.lengths) + 1, kv)  # +1: the next token's column
        if len(set(kv.starts)) == 1:  # one copy per buffer: columns past a row's length are never read
            start, width = kv.starts[0], max(kv.lengths)
            for mine, theirs in zip(self.keys + self.values, kv.keys + kv.values, strict=True):
                mine[n:n + m, :, :width] = theirs[:, :, start:start + width]
        else:  # a left-padded prefill: each row from its own first column
            for mine, theirs in zip(self.keys + self.values, kv.keys + kv.values, strict=True):
                for j, (start, length) in enumerate(zip(kv.starts, kv.lengths, strict=True)):
                    mine[n + j, :, :length] = theirs[j, :, start:start + length]
        self.lengths.extend(kv.lengths)

    def take(self, index: Sequence[int]) -> RowsKV:
        """Copies of the given rows' keys and values (to park them); the slots keep theirs."""
        at = torch.tensor(list(index), device=self.keys[0].device)
        width = max(self.lengths[i] for i in index)
        return RowsKV([k[at, :, :width] for k in self.keys], [v[at, :, :width] for v in self.values],
                      [self.lengths[i] for i in index], [0] * len(index))

    def remove(self, drop: Iterable[int]) -> list[tuple[int, int]]:
        """Free the slots of rows ``drop``; surviving rows past the new end move into the holes.
        Returns those moves as ``(from, to)`` so the caller reorders its own per-row state alike."""
        gone = set(drop)
        end = self.rows - len(gone)
        holes = sorted(i for i in gone if i < end)
        movers = [i for i in range(end, self.rows) if i not in gone]
        moves = list(zip(movers, holes, strict=True))
        if moves:
            src = torch.tensor(movers, device=self.keys[0].device)
            dst = torch.tensor(holes, device=self.keys[0].device)
            width = max(self.lengths[i] for i in movers)
            for buffer in self.keys + self.values:
                buffer[dst, :, :width] = buffer[src, :, :width]
            for i, j in moves:
                self.lengths[j] = self.lengths[i]
        del self.lengths[end:]
        return moves

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention mask ``[rows, 1, 1, width]`` and position ids ``[rows, 1]`` of the next
        decoding step (one new token per row), which the next :meth:`update` calls write at."""
        device = self.keys[0].device
        self._width = whole_blocks(max(self.lengths) + 1)  # whole attention blocks (attention.py)
        self._reserve(self.rows, self._width)
        columns = torch.tensor(self.lengths, device=device)
        self._rows_at = torch.arange(self.rows, device=device)
        self._columns_at = columns
        # Additive (0 or the dtype's minimum), which eager attention and sdpa both take.
        unseen = torch.arange(self._width, device=device)[None, :] > columns[:, None]
        dtype = self.keys[0].dtype
        mask = torch.zeros(unseen.shape, dtype=dtype, device=device).masked_fill_(unseen, torch.finfo(dtype).min)
        return mask[:, None, None, :], columns[:, None]

    def advance(self) -> None:
        """The step's forward wrote every row's token: count it."""
        self.lengths = [n + 1 for n in self.lengths]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by each attention layer with the step's new keys and values ``[rows, heads, 1, dim]``:
        writes them at each row's column and returns the layer's keys and values so far."""
        if key_states.shape[2] != 1 or self._rows_at is None:
            raise RuntimeError("SlotCache takes one token per row per step, after step_inputs()")
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self._rows_at, :, self._columns_at] = key_states[:, :, 0]
        values[self._rows_at, :, self._columns_at] = value_states[:, :, 0]
        n = self.rows
        return keys[:n, :, :self._width], values[:n, :, :self._width]

    def _reserve(self, rows: int, width: int, like: RowsKV | None = None) -> None:
        """Room for ``rows`` rows of ``width`` columns (the first buffers shaped ``like``); growing
        copies the rows in use once, and doubling keeps that to a constant cost per token."""
        have_rows, have_width = self.capacity
        if rows <= have_rows and width <= have_width:
            return
        new_rows = max(rows, 2 * have_rows, MIN_ROWS) if rows > have_rows else have_rows
        new_width = whole_blocks(max(width, 2 * have_width, MIN_WIDTH)) if width > have_width else have_width
        old = self.keys + self.values
        shapes = old or (like.keys + like.values if like else [])
        # Zeros, not empty: a masked column still meets a zero weight, and 0 * NaN is NaN.
        fresh = [torch.zeros((new_rows, t.shape[1], new_width, t.shape[3]), dtype=t.dtype, device=t.device)
                 for t in shapes]
        if old:
            n, used = self.rows, max(self.lengths, default=0)
            for was, now in zip(old, fresh, strict=True):
                now[:n, :, :used] = was[:n, :, :used]
        half = len(fresh) // 2
        self.keys, self.values = fresh[:half], fresh[half:]

