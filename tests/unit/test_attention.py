"""The engine's decode attention: the library's numbers, and a row's result the same to the bit
whatever the width its batchmates set and whoever shares the call."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from textgen_core.engine.attention import BLOCK, blocked_attention, whole_blocks


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


def test_other_calls_go_to_the_library() -> None:
    query, key, value, mask = inputs(2, 100, [50, 100], torch.float32)  # not whole blocks
    ours, _ = blocked_attention(Layer(9, 3), query, key, value, mask)
    theirs, _ = sdpa_attention_forward(Layer(9, 3), query, key, value, mask)
    assert torch.equal(ours, theirs)
