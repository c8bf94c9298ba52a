"""The batched sampler: each row is chosen with its own parameters and generator, whatever
shares its batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from textgen_core.engine.sampling import choose_tokens, new_generator
from textgen_core.jobs import SamplingParams

VOCAB = 50


@dataclass
class Row:
    params: SamplingParams
    prompt_ids: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        self.generator = new_generator(self.params)


def logits_for(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((rows, VOCAB), generator=torch.Generator().manual_seed(seed))


def run(rows: list[Row], steps: int, seeds: list[int]) -> list[list[int]]:
    """Tokens each row chooses over ``steps`` steps, row i reading logits drawn from seeds[i]."""
    per_row = [torch.Generator().manual_seed(s) for s in seeds]
    for _ in range(steps):
        logits = torch.cat([torch.randn((1, VOCAB), generator=g) for g in per_row])
        for row, token in zip(rows, choose_tokens(logits, rows), strict=True):
            row.generated.append(token)
    return [r.generated for r in rows]


def test_a_greedy_row_and_a_sampled_row_in_one_batch_keep_their_own_parameters() -> None:
    logits = logits_for(2)
    greedy = Row(SamplingParams(temperature=0))
    hot = Row(SamplingParams(temperature=2.0, seed=7))
    picks = [choose_tokens(logits, [greedy, hot]) for _ in range(40)]
    assert {p[0] for p in picks} == {int(logits[0].argmax())}
    assert len({p[1] for p in picks}) > 5  # a hot row really samples


def test_top_k_and_top_p_are_per_row() -> None:
    logits = logits_for(3, seed=3)
    k1 = Row(SamplingParams(temperature=1.5, top_k=1, seed=1))
    p_tiny = Row(SamplingParams(temperature=1.5, top_p=1e-6, seed=2))
    k3 = Row(SamplingParams(temperature=1.5, top_k=3, seed=3))
    seen: set[int] = set()
    for _ in range(60):
        a, b, c = choose_tokens(logits, [k1, p_tiny, k3])
        assert a == int(logits[0].argmax()) and b == int(logits[1].argmax())
        seen.add(c)
    assert seen <= set(torch.topk(logits[2], 3).indices.tolist()) and len(seen) > 1


def test_seeded_rows_reproduce_alone_and_in_a_batch() -> None:
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=11), SamplingParams(temperature=0.8, top_k=20, seed=12)]
    together = run([Row(p) for p in params], 16, seeds=[100, 200])
    alone = [run([Row(params[0])], 16, seeds=[100])[0], run([Row(params[1])], 16, seeds=[200])[0]]
    crowded = run([Row(SamplingParams(temperature=1.0)), Row(params[1]), Row(SamplingParams(temperature=0))], 16,
                  seeds=[5, 200, 6])
    assert together == alone
    assert crowded[1] == alone[1]
    assert run([Row(params[0].model_copy(update={"seed": 13}))], 16, seeds=[100])[0] != alone[0]


def test_penalties_apply_per_row_over_the_right_tokens() -> None:
    logits = torch.zeros((3, VOCAB))
    logits[:, 4] = 2.0  # the favourite, already generated once
    logits[:, 5] = 1.9
    plain = Row(SamplingParams(temperature=0), prompt_ids=[1], generated=[4])
    frequency = Row(SamplingParams(temperature=0, frequency_penalty=0.5), prompt_ids=[1], generated=[4])
    repetition = Row(SamplingParams(temperature=0, repetition_penalty=1.1), prompt_ids=[4], generated=[])
    assert choose_tokens(logits, [plain, frequency, repetition]) == [4, 5, 5]
    presence_in_prompt = Row(SamplingParams(temperature=0, presence_penalty=1.0), prompt_ids=[4], generated=[])
    assert choose_tokens(logits[:1], [presence_in_prompt]) == [4]  # presence counts generated tokens only
