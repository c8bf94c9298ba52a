"""Which rows the engine prefills together (engine/batching.py::length_groups)."""

from __future__ import annotations

from textgen_core.engine.batching import PREFILL_SLACK, PREFILL_SPREAD, length_groups


def test_one_long_prompt_is_not_prefilled_beside_short_ones() -> None:
    lengths = [40, 1003, 38, 45, 39, 50, 41, 37]
    groups = length_groups(lengths)
    assert groups[-1] == [1]  # alone: padding seven short rows to it would cost each its width
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert groups[0][0] == 7  # shortest first: their first tokens come soonest


def test_similar_lengths_share_one_prefill_and_groups_stay_within_the_spread() -> None:
    assert length_groups([40, 38, 45, 39]) == [[1, 3, 0, 2]]
    lengths = [1, 5, 70, 140, 300, 700, 1500, 1501, 4000]
    for group in length_groups(lengths):
        shortest, longest = min(lengths[i] for i in group), max(lengths[i] for i in group)
        assert longest <= PREFILL_SPREAD * shortest + PREFILL_SLACK
    assert length_groups([]) == []
