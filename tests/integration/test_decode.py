"""The engine's own decoding step (decode.py) against transformers' forward, with the real model: the
same logits to the bit, and the same keys and values in the slots, step after step."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import DynamicCache

from textgen_core.engine.batching import Engine
from textgen_core.engine.decode import LlamaDecoder, decoder_for
from textgen_core.engine.loader import LoadedModel, load
from textgen_core.engine.slots import RowsKV, SlotCache
from textgen_core.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", params=[("float32", "full"), ("bfloat16", "int8")], ids=["float32", "bf16-int8"])
def model(request: pytest.FixtureRequest) -> LoadedModel:
    dtype, weights = request.param
    settings = Settings(_env_file=None)
    spec = settings.models[0].model_copy(update={"dtype": dtype, "weights": weights})
    return load(spec, settings.cache_dir)


def prefilled(model: LoadedModel, lengths: list[int]) -> SlotCache:
    """Rows of the given prompt lengths (random tokens, seeded) prefilled into a fresh slot cache."""
    gen = torch.Generator().manual_seed(0)
    cache = SlotCache()
    for length in lengths:  # alone: each row's keys as they would be in the engine
        ids = torch.randint(100, 5000, (1, length), generator=gen)
        kv = DynamicCache()
        with torch.no_grad():
            model.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{model.cache_kwarg: kv})
        cache.add(RowsKV([layer.keys for layer in kv.layers], [layer.values for layer in kv.layers], [length], [0]))
    return cache


def test_the_engines_step_gives_the_librarys_logits_to_the_bit(model: LoadedModel) -> None:
    decoder = decoder_for(model.model)
    assert isinstance(decoder, LlamaDecoder)
    lengths = [37, 5, 64, 90]  # widths across a block boundary as the rows grow
    theirs, ours = prefilled(model, lengths), prefilled(model, lengths)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            next_ids = torch.randint(100, 5000, (len(lengths), 1), generator=gen)
            mask, positions = theirs.step_inputs()
            expected = model.model(input_ids=next_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                   **{model.cache_kwarg: theirs}).logits[:, -1, :].float()
            theirs.advance()
            mask, positions = ours.step_inputs()
            got = decoder(next_ids, ours, mask, positions)
            ours.advance()
            assert got.dtype == torch.float32 and got.shape == expected.shape
            assert torch.equal(got, expected)
    n = len(lengths)
    for mine, library in zip(ours.keys + ours.values, theirs.keys + theirs.values, strict=True):
        assert torch.equal(mine[:n], library[:n])


def _padded(lengths: list[int], seed: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random prompts of ``lengths`` left-padded as the engine pads them: ids, mask, positions."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = torch.randint(100, 5000, (n,), generator=gen)
        mask[i, width - n:] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("lengths", [[37, 5, 1, 130], [40, 40]], ids=["padded", "equal"])
def test_the_engines_prefill_gives_the_librarys_logits_keys_and_values(model: LoadedModel, lengths: list[int]) -> None:
    decoder = decoder_for(model.model)
    assert decoder is not None
    if not decoder.prefills:  # float32 prefills through the library's sdpa
        assert model.dtype == "float32"
        return
    ids, mask, positions = _padded(lengths)
    kv = DynamicCache()
    with torch.no_grad():
        expected = model.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                               logits_to_keep=1, **{model.cache_kwarg: kv}).logits[:, -1, :].float()
        got, keys, values = decoder.prefill(ids, mask, positions)
    assert torch.equal(got, expected)
    for mine, library in zip(keys + values, [layer.keys for layer in kv.layers] + [layer.values for layer in kv.layers],
                             strict=True):
        assert torch.equal(mine, library)
        # Until the slots copy them, each holds its own numbers only (not a whole layer's product).
        assert mine.untyped_storage().nbytes() == mine.numel() * mine.element_size()


def test_an_engine_decodes_with_its_own_step_and_a_wrapped_model_through_the_library(model: LoadedModel) -> None:
    assert Engine(model, max_batch=2).decoder is not None

    class Wrapped:  # what the engine tests' fault injectors look like: not a transformers model
        def __init__(self, inner: object) -> None:
            self.inner, self.forward = inner, inner.forward  # type: ignore[attr-defined]

    assert Engine(dataclasses.replace(model, model=Wrapped(model.model)), max_batch=2).decoder is None


def test_a_model_on_another_attention_decodes_through_the_library(model: LoadedModel) -> None:
    """The engine's step computes attention as the blocked kernel does; a model loaded with sdpa
    (outside ``loader.load``) would get other numbers from it than from its own forward."""
    config = model.model.config
    mine = config._attn_implementation
    try:
        config._attn_implementation = "sdpa"
        assert decoder_for(model.model) is None
    finally:
        config._attn_implementation = mine
    assert decoder_for(model.model) is not None
