"""Prompt length in tokens, checked at the API against the model's context (no torch here).

The API counts with the ``tokenizers`` library over the prepared model's ``tokenizer.json``
and reads the context length from the model spec or its ``config.json``. The count covers
the messages the worker will render (``textgen_core.prompt_render``: the mode's system prompt,
the conversation's history as the worker trims it, the new turn) plus the chat template's few
tokens per message. Where the tokenizer is not on this
machine (a hub model never prepared here) the check is skipped and the worker still refuses
a prompt that does not fit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from api.app.errors import APIError
from textgen_core.jobs import ChatMessage, JobInput
from textgen_core.modes import Mode
from textgen_core.prompt_render import prompt_tokens
from textgen_core.settings import ModelSpec, Settings

log = logging.getLogger(__name__)


@dataclass
class ModelBudget:
    tokenizer: Tokenizer
    context_length: int

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def prompt_tokens(self, mode: Mode, job_input: JobInput, history: list[ChatMessage],
                      history_max_tokens: int) -> int:
        return prompt_tokens(self.count, mode, job_input, history, history_max_tokens)


class PromptBudget:
    """Per-model tokenizers, loaded on first use and kept for the life of the process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._budgets: dict[str, ModelBudget | None] = {}

    def check(self, model: str, mode: Mode, job_input: JobInput, max_tokens: int, param: str,
              history: list[ChatMessage] | None = None) -> int | None:
        """Raise 422 naming the maximum if the prompt (with the ``history`` the worker will keep)
        plus ``max_tokens`` exceeds the context. Returns the prompt's token count, or None when the
        model's tokenizer is not available."""
        budget = self._budget(model)
        if budget is None:
            return None
        used = budget.prompt_tokens(mode, job_input, history or [], self.settings.history_max_tokens)
        limit = budget.context_length
        if used + max_tokens > limit:
            with_history = " with the conversation's history" if history else ""
            raise APIError(
                422,
                f"the prompt{with_history} is {used} tokens; with max_tokens={max_tokens} it exceeds the "
                f"model's context of {limit} tokens: at most {max(0, limit - max_tokens)} prompt tokens",
                code="context_length_exceeded", param=param,
            )
        return used

    def warm(self) -> None:
        """Load the default model's tokenizer now, not during the first request."""
        self._budget(self.settings.default_model)

    def _budget(self, model: str) -> ModelBudget | None:
        if model not in self._budgets:
            spec = self.settings.model(model)
            self._budgets[model] = _load(spec, self.settings.cache_dir) if spec else None
        return self._budgets[model]


def _load(spec: ModelSpec, cache_dir: Path) -> ModelBudget | None:
    folder = _model_folder(spec, cache_dir)
    tokenizer_file = folder / "tokenizer.json" if folder else None
    if tokenizer_file is None or not tokenizer_file.is_file():
        log.info("no tokenizer.json for model %s here; prompt length is checked by the worker only", spec.id)
        return None
    context = spec.context_length
    if context is None:
        try:
            config = json.loads((tokenizer_file.parent / "config.json").read_text())
            context = int(config.get("max_position_embeddings", 2048))
        except (OSError, ValueError) as exc:
            log.info("no context length for model %s (%s); checked by the worker only", spec.id, exc)
            return None
    return ModelBudget(tokenizer=Tokenizer.from_file(str(tokenizer_file)), context_length=context)


def _model_folder(spec: ModelSpec, cache_dir: Path) -> Path | None:
    from textgen_core.engine.loader import ModelSourceError, converted_dir  # stdlib-only at import

    if spec.source == "local":
        return Path(spec.location).expanduser()
    if spec.source == "packaged":
        try:
            return converted_dir(spec, cache_dir)
        except (ModelSourceError, OSError):
            return None
    return None
