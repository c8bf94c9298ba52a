"""The KV slots of the running batch: rows keep their own keys and values through joins, leaves,
parking and growth, and a step attends to each row's own tokens only."""

from __future__ import annotations

import torch

from textgen_core.engine.attention import whole_blocks
from textgen_core.engine.slots import MIN_WIDTH, RowsKV, SlotCache

LAYERS, HEADS, DIM = 2, 3, 4


def prefill(lengths: list[int], start_value: float) -> RowsKV:
    """Left-padded rows as a prefill leaves them: every real token of row j holds the value
    ``start_value + j`` in keys and its negative in values, padding holds NaN (never to be read)."""
    width = max(lengths)
    keys = torch.full((len(lengths), HEADS, width, DIM), float("nan"))
    for j, n in enumerate(lengths):
        keys[j, :, width - n:] = start_value + j
    return RowsKV([keys.clone() for _ in range(LAYERS)], [-keys.clone() for _ in range(LAYERS)], lengths,
                  [width - n for n in lengths])


def row_values(cache: SlotCache, row: int) -> set[float]:
    """The distinct key values in a row's own columns, in every layer (checking values mirror keys)."""
    n = cache.lengths[row]
    seen = set()
    for k, v in zip(cache.keys, cache.values, strict=True):
        assert torch.equal(v[row, :, :n], -k[row, :, :n])
        seen |= set(k[row, :, :n].flatten().tolist())
    return seen


def step(cache: SlotCache, value: float) -> torch.Tensor:
    """One decode step through every layer, each row writing ``value``; returns the mask it used."""
    mask, positions = cache.step_inputs()
    assert positions.flatten().tolist() == cache.lengths
    new = torch.full((cache.rows, HEADS, 1, DIM), value)
    for layer in range(LAYERS):
        keys, values = cache.update(new, -new, layer)
        # The longest row and its new token, in whole attention blocks (the rest is masked).
        assert keys.shape == (cache.rows, HEADS, whole_blocks(max(cache.lengths) + 1), DIM)
    cache.advance()
    return mask


def test_rows_of_different_lengths_join_without_their_padding() -> None:
    cache = SlotCache()
    cache.add(prefill([3, 5, 1], start_value=10))
    assert cache.lengths == [3, 5, 1]
    assert [row_values(cache, i) for i in range(3)] == [{10.0}, {11.0}, {12.0}]
    mask = step(cache, 7.0)
    # Row i sees its own length plus the new token; the rest is masked with the dtype's minimum.
    visible = (mask[:, 0, 0, :] == 0).sum(-1).tolist()
    assert visible == [4, 6, 2]
    assert cache.lengths == [4, 6, 2]
    assert [row_values(cache, i) for i in range(3)] == [{10.0, 7.0}, {11.0, 7.0}, {12.0, 7.0}]


def test_a_leaving_row_takes_the_last_row_into_its_slot() -> None:
    cache = SlotCache()
    cache.add(prefill([2, 3, 4, 5, 6], start_value=0))
    moves = cache.remove([1, 4])
    assert moves == [(3, 1)]  # row 4 left too, so only row 3 moves, into row 1's slot
    assert cache.lengths == [2, 5, 4]
    assert [row_values(cache, i) for i in range(3)] == [{0.0}, {3.0}, {2.0}]
    assert cache.remove([0, 1, 2]) == [] and cache.rows == 0


def test_parked_rows_come_back_as_they_were() -> None:
    cache = SlotCache()
    cache.add(prefill([2, 6, 3], start_value=20))
    parked = cache.take([0, 2])
    assert parked.lengths == [2, 3] and parked.starts == [0, 0]
    cache.remove([0, 2])
    assert cache.lengths == [6] and row_values(cache, 0) == {21.0}
    cache.add(parked.take([1]))  # back one at a time, as room allows
    cache.add(parked.take([0]))
    assert cache.lengths == [6, 3, 2]
    assert [row_values(cache, i) for i in range(3)] == [{21.0}, {22.0}, {20.0}]


def test_growing_keeps_every_row_and_doubles() -> None:
    cache = SlotCache()
    cache.add(prefill([MIN_WIDTH - 1, 1], start_value=0))
    rows, width = cache.capacity
    step(cache, 5.0)  # the long row's next token still fits
    assert cache.capacity == (rows, width)
    step(cache, 6.0)  # now it does not: the width doubles
    assert cache.capacity == (rows, 2 * width)
    cache.add(prefill([4] * (rows + 1), start_value=100))  # more rows than the slots hold
    assert cache.capacity[0] >= 2 * rows
    assert row_values(cache, 0) == {0.0, 5.0, 6.0}
    assert row_values(cache, 1) == {1.0, 5.0, 6.0}
    assert [row_values(cache, 2 + j) for j in range(rows + 1)] == [{100.0 + j} for j in range(rows + 1)]
