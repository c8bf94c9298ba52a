"""Incremental detokenization and stop strings for streamed output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TextState:
    """A row's generated text, built token by token, with what has been streamed so far.

    Decodes a small window of tokens each step (as TGI does) instead of the whole output, and
    holds back an incomplete UTF-8 character or a possible beginning of a stop string.
    """

    stop: list[str]
    text: str = ""
    emitted: int = 0
    ids: list[int] = field(default_factory=list)
    _prefix_offset: int = 0
    _read_offset: int = 0

    def push(self, tokenizer: Any, token_id: int) -> bool:
        """Add a token; True when a stop string now ends the text (which is cut before it)."""
        self.ids.append(token_id)
        prefix = tokenizer.decode(self.ids[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        full = tokenizer.decode(self.ids[self._prefix_offset:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            before = len(self.text)
            self.text += full[len(prefix):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            return self._cut_at_stop(max(0, before - max((len(s) for s in self.stop), default=0)))
        return False

    def _cut_at_stop(self, search_from: int) -> bool:
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def take_delta(self, final: bool = False) -> str:
        """Text not yet streamed that can no longer change."""
        end = len(self.text) if final else len(self.text) - self._held_back()
        end = max(end, self.emitted)
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
