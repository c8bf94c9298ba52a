"""The engine's decode and prefill attention: the library's numbers, and a row's result the same to
the bit whatever the width its batchmates set and whoever shares the call."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from textgen_core.engine import attention
from textgen_core.engine.attention import BLOCK, blocked_attention, blocked_prefill, whole_blocks


class Layer(torch.nn.Module):
    """What the attention reads of its layer (as transformers' Llama attention has it)."""

    def __init__(self, heads: int, kv_heads: int):
        super().__init__()
        self.num_key_value_groups, self.is_causal, self.training = heads // kv_heads, True, False


def inputs(rows: int, width: int, lengths: list[int], dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(rows, 9, 1, 64, generator=gen).to(dtype)
    key = torch.randn(rows, 3, width, 64, generator=gen).to(dtype)
    value = torch.randn(rows, 3, width, 64, generator=gen).to(dtype)
    unseen = torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None]
    mask = torch.zeros(rows, width, dtype=dtype).masked_fill_(unseen, torch.finfo(dtype).min)[:, None, None, :]
    return query, key, value, mask


def test_it_computes_what_the_library_computes() -> None:
    query, key, value, mask = inputs(4, 2 * BLOCK, [5, 64, 100, 128], torch.float32)
    ours, _ = blocked_attention(Layer(9, 3), query, key, value, mask, scaling=0.125)
    theirs, _ = sdpa_attention_forward(Layer(9, 3), query, key, value, mask, scaling=0.125)
    assert ours.shape == theirs.shape == (4, 1, 9, 64)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_reads_the_same_alone_at_its_own_width_and_in_a_wider_batch(dtype: torch.dtype) -> None:
    query, key, value, mask = inputs(6, 4 * BLOCK, [30, 256, 70, 129, 1, 200], dtype)
    batch, _ = blocked_attention(Layer(9, 3), query, key, value, mask)
    for row, length in enumerate([30, 256, 70, 129, 1, 200]):
        width = min(whole_blocks(length + 1), 4 * BLOCK)  # the narrowest whole blocks that hold it
        alone, _ = blocked_attention(Layer(9, 3), query[row:row + 1], key[row:row + 1, :, :width].contiguous(),
                                     value[row:row + 1, :, :width].contiguous(), mask[row:row + 1, ..., :width])
        assert torch.equal(alone[0], batch[row]), f"row {row} differs alone"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_decoding_row_that_sees_nothing_gets_zeros_and_its_batchmates_are_untouched(dtype: torch.dtype) -> None:
    """Every dtype's mask minimum counts as hidden (float16's is only -65504): hidden columns weigh
    exactly 0, so a row that sees no column gets zeros, never 0 / 0 or the mean of its values."""
    query, key, value, mask = inputs(3, 2 * BLOCK, [5, 0, 100], dtype)
    ours, _ = blocked_attention(Layer(9, 3), query, key, value, mask, scaling=0.125)
    assert torch.equal(ours[1], torch.zeros_like(ours[1]))
    for row in (0, 2):
        alone, _ = blocked_attention(Layer(9, 3), query[row:row + 1], key[row:row + 1], value[row:row + 1],
                                     mask[row:row + 1], scaling=0.125)
        assert torch.equal(alone[0], ours[row])


def test_other_calls_go_to_the_library() -> None:
    query, key, value, mask = inputs(2, 100, [50, 100], torch.float32)  # not whole blocks
    ours, _ = blocked_attention(Layer(9, 3), query, key, value, mask)
    theirs, _ = sdpa_attention_forward(Layer(9, 3), query, key, value, mask)
    assert torch.equal(ours, theirs)


def prefill_inputs(lengths: list[int], width: int, dtype: torch.dtype, seed: int = 1):
    """Rows left-padded to ``width``; the mask as transformers builds it (True: may look)."""
    gen = torch.Generator().manual_seed(seed)
    rows = len(lengths)
    query = torch.randn(rows, 9, width, 64, generator=gen).to(dtype)
    key = torch.randn(rows, 3, width, 64, generator=gen).to(dtype)
    value = torch.randn(rows, 3, width, 64, generator=gen).to(dtype)
    real = torch.arange(width)[None, :] >= (width - torch.tensor(lengths))[:, None]  # [rows, width]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (causal[None] & real[:, None, :])[:, None]
    return query, key, value, mask


def prefilled_alone(query, key, value, mask, row: int, length: int) -> torch.Tensor:
    """Row ``row``'s last ``length`` columns (its tokens) prefilled alone, at its own width."""
    part = slice(query.shape[2] - length, query.shape[2])
    alone, _ = blocked_attention(Layer(9, 3), query[row:row + 1, :, part].contiguous(),
                                 key[row:row + 1, :, part].contiguous(), value[row:row + 1, :, part].contiguous(),
                                 mask[row:row + 1, :, part, part])
    return alone[0]


def test_a_prefill_computes_what_the_library_computes() -> None:
    query, key, value, mask = prefill_inputs([40, 17, 48], 48, torch.float32)
    ours = blocked_prefill(query, key, value, mask, scaling=0.125)  # float32 calls go to sdpa
    theirs, _ = sdpa_attention_forward(Layer(9, 3), query, key, value, mask, scaling=0.125)
    assert ours.shape == theirs.shape == (3, 48, 9, 64)
    for row, length in enumerate([40, 17, 48]):  # the real queries; padding queries are never read
        torch.testing.assert_close(ours[row, -length:], theirs[row, -length:], atol=1e-5, rtol=1e-5)
    alone = blocked_prefill(query[2:], key[2:], value[2:], None, scaling=0.125)
    torch.testing.assert_close(alone[0], theirs[2], atol=1e-5, rtol=1e-5)  # no mask: causal


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_prompt_prefilled_beside_longer_ones_reads_the_same_as_alone(dtype: torch.dtype) -> None:
    """Alone a row has its own width; in a batch it is left-padded to the longest row's. Blocks are
    counted from the last column, so its tokens keep their offsets within them, and its numbers are
    the same to the bit (the blocks only it or only the others fill are skipped or add exact zeros)."""
    lengths = [5, 40, 16, 77, 33, 1, 64, 65]
    width = max(lengths)
    query, key, value, mask = prefill_inputs(lengths, width, dtype)
    batch, _ = blocked_attention(Layer(9, 3), query, key, value, mask)
    for row, length in enumerate(lengths):
        alone = prefilled_alone(query, key, value, mask, row, length)
        assert torch.equal(alone[-length:], batch[row, -length:]), f"row {row} differs alone"
        assert torch.isfinite(batch[row]).all()  # padding queries see nothing, and stay finite


def test_a_long_prefill_is_taken_in_chunks_of_queries_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    query, key, value, mask = prefill_inputs([64, 50], 64, torch.bfloat16)
    whole, _ = blocked_attention(Layer(9, 3), query, key, value, mask)
    monkeypatch.setattr(attention, "PREFILL_QUERIES", 5)
    chunked, _ = blocked_attention(Layer(9, 3), query, key, value, mask)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1, -50:], chunked[1, -50:])  # padding: never read
    monkeypatch.setattr(attention, "PREFILL_SCORES", 1)  # one row a slice
    sliced, _ = blocked_attention(Layer(9, 3), query, key, value, mask)
    assert torch.equal(sliced[0], chunked[0]) and torch.equal(sliced[1, -50:], chunked[1, -50:])


def test_a_rows_prefill_does_not_depend_on_how_many_rows_share_the_call() -> None:
    """Regression: chunks were sized by rows x width, and at one query a chunk (64 long prompts) the
    numbers changed; now every call takes the same number of queries at a time."""
    lengths = [200, 190, 170, 199]
    query, key, value, mask = prefill_inputs(lengths, 200, torch.bfloat16)
    batch, _ = blocked_attention(Layer(9, 3), query, key, value, mask)
    for row, length in enumerate(lengths):
        alone = prefilled_alone(query, key, value, mask, row, length)
        assert torch.equal(alone[-length:], batch[row, -length:]), f"row {row} differs alone"
