"""int8 weights and activations (engine/quantize.py): close to the float layer, and each row computed alone."""

from __future__ import annotations

import torch

from textgen_core.engine.quantize import PRODUCT_ROWS, Int8Linear, int8_linears


def layer(inp: int, out: int, bias: bool = False) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(inp, out, bias=bias)


def test_an_int8_layer_stays_close_to_the_float_one_and_keeps_shapes_and_bias() -> None:
    lin = layer(576, 192, bias=True)
    x = torch.randn(2, 5, 576)
    want = lin(x)
    got = Int8Linear(lin)(x.bfloat16())
    assert got.shape == (2, 5, 192) and got.dtype == torch.bfloat16
    rel = (got.float() - want).norm() / want.norm()
    assert rel < 0.02, rel  # int8 weights per channel, int8 activations per row: about 1% of the output's size


def test_a_rows_result_does_not_depend_on_the_other_rows() -> None:
    """The property the engine's greedy text rests on: one row alone, or among 63 others at any
    position, gives the same bits."""
    q = Int8Linear(layer(1536, 576))
    x = (torch.randn(64, 1536) * torch.rand(64, 1) * 4).bfloat16()
    together = q(x)
    for i in (0, 1, 17, 63):
        assert torch.equal(q(x[i:i + 1]), together[i:i + 1])
    assert torch.equal(q(x[:5])[0], together[0])


def test_a_prefill_of_many_rows_taken_in_slices_gives_each_row_its_own_numbers() -> None:
    """More than PRODUCT_ROWS rows go through the product a slice at a time; a row's bits are the
    same in any slice, at a slice's edge, and alone. The input is left as the caller had it."""
    q = Int8Linear(layer(576, 3072))
    x = (torch.randn(2 * PRODUCT_ROWS + 37, 576) * torch.rand(2 * PRODUCT_ROWS + 37, 1) * 4).bfloat16()
    kept = x.clone()
    together = q(x)
    assert together.shape == (2 * PRODUCT_ROWS + 37, 3072) and together.dtype == torch.bfloat16
    for i in (0, PRODUCT_ROWS - 1, PRODUCT_ROWS, 2 * PRODUCT_ROWS + 36):
        assert torch.equal(q(x[i:i + 1]), together[i:i + 1])
    assert torch.equal(x, kept)
    x32 = torch.randn(3, 576)
    before = x32.clone()
    Int8Linear(layer(576, 96))(x32)
    assert torch.equal(x32, before)  # a float32 input is not divided in place


def test_every_linear_of_a_model_is_replaced_and_a_tied_embedding_is_kept() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(100, 64)
            self.block = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.SiLU(), torch.nn.Linear(128, 64))
            self.head = torch.nn.Linear(64, 100, bias=False)
            self.head.weight = self.embed.weight  # tied, as small models do

    model = Tiny().bfloat16()
    assert int8_linears(model) == 3
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert model.embed.weight.dtype == torch.bfloat16  # the lookup keeps its table
    ids = torch.tensor([[1, 2, 3]])
    assert model.head(model.block(model.embed(ids))).shape == (1, 3, 100)


def test_a_token_gets_the_same_numbers_in_a_prefill_as_in_a_decoding_step() -> None:
    """Integer sums are exact: a token's result does not depend on its row's other tokens or on the
    other rows, whatever the kernel's blocking (many tokens per row as a prefill, one as a step)."""
    q = Int8Linear(layer(576, 1536))
    x = (torch.randn(8, 48, 576) * 2).bfloat16()
    prefill = q(x)
    assert prefill.shape == (8, 48, 1536) and prefill.dtype == torch.bfloat16
    for rows, tokens in ((1, 1), (1, 16), (3, 32), (8, 48)):
        assert torch.equal(q(x[:rows, :tokens]), prefill[:rows, :tokens])
    assert torch.equal(q(x[5:6, 20:21]), prefill[5:6, 20:21])


def test_layers_that_read_one_input_share_its_product_and_match_their_own() -> None:
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = layer(64, 96), layer(64, 32, bias=True), layer(64, 32)
            self.o_proj = layer(96, 64)

    block = Block()
    alone = {name: Int8Linear(getattr(block, name)) for name in ("q_proj", "k_proj", "v_proj")}
    assert int8_linears(block) == 4
    assert block.q_proj.product is block.k_proj.product is block.v_proj.product
    assert block.o_proj.product is not block.q_proj.product
    x = torch.randn(3, 5, 64)
    for name, own in alone.items():  # each column range of the stacked product is that layer's
        assert torch.allclose(getattr(block, name)(x), own(x), atol=1e-5)
    shared = block.q_proj.product
    assert shared._last is None  # read by all three: nothing held
    y = x.clone()
    block.q_proj(y)
    y.add_(1)  # changed in place after q read it: k must not take q's product
    assert torch.allclose(block.k_proj(y), alone["k_proj"](y), atol=1e-5)


def test_a_zero_row_stays_zero_and_no_product_overflows() -> None:
    big = torch.nn.Linear(8192, 4, bias=False)
    with torch.no_grad():
        big.weight.fill_(1.0)
    q = Int8Linear(big)
    x = torch.full((2, 8192), 1000.0)
    x[1] = 0
    y = q(x)
    assert torch.allclose(y[0], torch.full((4,), 8192 * 1000.0), rtol=1e-2) and torch.equal(y[1], torch.zeros(4))


def test_a_group_works_under_inference_mode_too() -> None:
    """Regression: the shared product read the input's version counter, which inference-mode tensors
    do not keep, and every forward under ``torch.inference_mode`` (bench/throughput.py) raised."""
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate_proj, self.up_proj = layer(64, 96), layer(64, 96)

    block = Block()
    int8_linears(block)
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        want = block.gate_proj(x) * block.up_proj(x)
    with torch.inference_mode():
        y = x.clone()
        assert torch.equal(block.gate_proj(y) * block.up_proj(y), want)
