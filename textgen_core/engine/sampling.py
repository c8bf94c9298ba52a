"""Token choice for a whole batch in a few tensor operations, each row with its own parameters.

A decoding step used to choose tokens row by row (a handful of small torch calls and a
device-to-host copy per row); here greedy rows share one argmax, sampled rows share one sort and
one softmax with their temperature, top-k and top-p as per-row tensors, penalties are applied to
all rows that ask for them at once, and the step ends with one copy of the chosen ids to the host.

Every sampled row draws its random number from its own generator, so a row's tokens depend only
on its own logits and seed, never on which other jobs share the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from textgen_core.jobs import SamplingParams


def new_generator(params: SamplingParams) -> torch.Generator | None:
    if params.greedy:
        return None
    gen = torch.Generator()
    if params.seed is None:
        gen.seed()
    else:
        gen.manual_seed(params.seed)
    return gen


class RowSampling(Protocol):
    """What the sampler reads of one row: its parameters, generator and tokens so far."""

    @property
    def params(self) -> SamplingParams: ...
    @property
    def generator(self) -> torch.Generator | None: ...
    @property
    def prompt_ids(self) -> Sequence[int]: ...
    @property
    def generated(self) -> Sequence[int]: ...


def has_penalties(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)


def apply_penalties(logits: torch.Tensor, rows: Sequence[RowSampling], which: list[int]) -> torch.Tensor:
    """HF-style repetition penalty over each row's whole context; OpenAI-style presence and
    frequency penalties over its generated tokens only. ``which``: the rows that have any."""
    device, vocab = logits.device, logits.shape[1]
    at = torch.tensor(which, device=device)
    sub = logits[at]
    rep = torch.tensor([rows[i].params.repetition_penalty for i in which], device=device)[:, None]
    flat_rows = [k for k, i in enumerate(which) for _ in range(len(rows[i].prompt_ids) + len(rows[i].generated))]
    if flat_rows and bool((rep != 1.0).any()):
        seen = torch.zeros_like(sub, dtype=torch.bool)
        tokens = [t for i in which for t in (*rows[i].prompt_ids, *rows[i].generated)]
        seen[torch.tensor(flat_rows, device=device), torch.tensor(tokens, device=device)] = True
        penalized = torch.where(sub > 0, sub / rep, sub * rep)
        sub = torch.where(seen, penalized, sub)
    gen_rows = [k for k, i in enumerate(which) for _ in rows[i].generated]
    if gen_rows:
        counts = torch.zeros((len(which), vocab), dtype=sub.dtype, device=device)
        tokens = [t for i in which for t in rows[i].generated]
        counts.index_put_((torch.tensor(gen_rows, device=device), torch.tensor(tokens, device=device)),
                          torch.ones(len(tokens), dtype=sub.dtype, device=device), accumulate=True)
        freq = torch.tensor([rows[i].params.frequency_penalty for i in which], device=device)[:, None]
        pres = torch.tensor([rows[i].params.presence_penalty for i in which], device=device)[:, None]
        sub = sub - freq * counts - pres * (counts > 0).to(sub.dtype)
    out = logits.clone()
    out[at] = sub
    return out


def sample(logits: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    """Tempered sampling for rows that are not greedy: top-k, then top-p over what is left (as
    transformers orders them), from one sort (only the k best when every row has a top-k)."""
    device, vocab = logits.device, logits.shape[1]
    temperature = torch.tensor([r.params.temperature for r in rows], device=device)[:, None]
    ks = [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in rows]
    top_k = torch.tensor(ks, device=device)[:, None]
    top_p = torch.tensor([r.params.top_p for r in rows], device=device)[:, None]
    best, order = torch.topk(logits / temperature, max(ks), dim=-1, sorted=True)
    rank = torch.arange(best.shape[1], device=device)[None, :]
    probs = torch.softmax(best.masked_fill(rank >= top_k, float("-inf")), dim=-1)
    # Of those, keep the first tokens whose mass reaches p (the token that crosses p stays).
    probs = probs * ((probs.cumsum(-1) - probs) < top_p)
    cumulative = probs.cumsum(-1)
    draws = torch.tensor([float(torch.rand(1, generator=r.generator)) for r in rows], device=device)[:, None]
    picked = torch.searchsorted(cumulative, draws * cumulative[:, -1:]).clamp(max=best.shape[1] - 1)
    return order.gather(1, picked).squeeze(1)


def choose_tokens(logits: torch.Tensor, rows: Sequence[RowSampling]) -> list[int]:
    """The next token of every row of ``logits`` ([rows, vocab], float32), as host integers."""
    penalized = [i for i, r in enumerate(rows) if has_penalties(r.params)]
    if penalized:
        logits = apply_penalties(logits, rows, penalized)
    tokens = torch.argmax(logits, dim=-1)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if sampled:
        at = torch.tensor(sampled, device=logits.device)
        tokens[at] = sample(logits[at], [rows[i] for i in sampled])
    return tokens.tolist()  # the step's one device-to-host copy
