"""The chat a model reads for a job: mode, the history that fits, the new turn.

One renderer for the worker (which then applies the model's chat template) and the API (which
counts the same messages at submit, without transformers), so both keep the same turns of a
conversation's history and a prompt refused by the worker is refused at submit instead.
Tokenizers differ by side, so each passes its own ``count`` (text -> number of tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from textgen_core.jobs import ChatMessage, JobInput
from textgen_core.modes import Mode, build_messages

TokenCount = Callable[[str], int]

# ChatML-style templates spend about this many tokens around each message (start marker, role,
# newlines, end marker), and a few to open the assistant's turn. Counting a little under the
# truth never refuses a prompt that fits; the worker still refuses the rare one that does not.
TOKENS_PER_MESSAGE = 5
TOKENS_FOR_REPLY = 3


def trim_history(count: TokenCount, history: list[dict[str, str]], max_tokens: int) -> list[dict[str, str]]:
    """Drop the oldest turns until the history fits ``max_tokens``."""
    sizes = [count(m["content"]) + TOKENS_PER_MESSAGE for m in history]
    while history and sum(sizes) > max_tokens:
        history, sizes = history[1:], sizes[1:]
    return history


def chat_messages(count: TokenCount, mode: Mode, job_input: JobInput, history: Sequence[ChatMessage],
                  history_max_tokens: int) -> list[dict[str, str]]:
    """The messages the chat template renders for a (non-raw) job."""
    kept = trim_history(count, [m.model_dump() for m in history], history_max_tokens)
    return build_messages(
        mode,
        prompt=job_input.prompt,
        messages=[m.model_dump() for m in job_input.messages] if job_input.messages else None,
        history=kept,
    )


def prompt_tokens(count: TokenCount, mode: Mode, job_input: JobInput, history: Sequence[ChatMessage],
                  history_max_tokens: int) -> int:
    """About how many tokens the model reads for the job (a little under the template's truth)."""
    if job_input.raw:
        return count(job_input.prompt or "")
    messages = chat_messages(count, mode, job_input, history, history_max_tokens)
    return sum(count(m["content"]) for m in messages) + TOKENS_PER_MESSAGE * len(messages) + TOKENS_FOR_REPLY
