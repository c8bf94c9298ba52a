"""int8 weights (engine/quantize.py): close to the float layer, and each row computed alone."""

from __future__ import annotations

import torch

from textgen_core.engine.quantize import Int8Linear, int8_linears


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
    assert rel < 0.02, rel  # int8 per channel plus bf16 activations: about 1% of the output's size


def test_a_rows_result_does_not_depend_on_the_other_rows() -> None:
    """The property the engine's greedy text rests on: one row alone, or among 63 others at any
    position, gives the same bits."""
    q = Int8Linear(layer(1536, 576))
    x = (torch.randn(64, 1536) * torch.rand(64, 1) * 4).bfloat16()
    together = q(x)
    for i in (0, 1, 17, 63):
        assert torch.equal(q(x[i:i + 1]), together[i:i + 1])
    assert torch.equal(q(x[:5])[0], together[0])


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


def test_a_prefill_takes_the_bf16_weights_and_a_decoding_step_the_int8_ones() -> None:
    """Many tokens per row compute a lot per weight, where the bf16 kernel is the fast one; one token
    per row (a decoding step) reads every weight once, where int8 is. Both keep a row's numbers
    whatever its batchmates (the bf16 kernel for the many rows of a prefill: this CPU's, checked)."""
    lin = layer(576, 1536).bfloat16()
    q = Int8Linear(lin)
    x = (torch.randn(8, 48, 576) * 2).bfloat16()
    assert torch.equal(q(x), torch.nn.functional.linear(x, lin.weight))
    step = x[:, :1]
    assert torch.equal(q(step), torch.ops.aten._weight_int8pack_mm(step.reshape(8, 576), q.qweight, q.scale)
                       .reshape(8, 1, 1536))
    assert not torch.equal(q(step), torch.nn.functional.linear(step, lin.weight))
    for rows, tokens in ((1, 16), (1, 48), (3, 32), (8, 48)):
        assert torch.equal(q(x[:rows, :tokens])[0, :16], q(x[:1, :16])[0])
