"""Incremental detokenisation with stop strings, for one completion."""

from __future__ import annotations

from typing import Any


class OutputText:
    """Turns committed tokens into text deltas.

    Text is held back while it could still become a stop string, or while it ends in an incomplete
    multi-byte character, so a streamed delta is never retracted.
    """

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.emitted = ""
        self.stopped = False

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def add(self, tokens: list[int]) -> str:
        """Append tokens; return the text that became final. Sets `stopped` at a stop string, and then
        trims `tokens` to the shortest prefix whose text contains it."""
        before = len(self.tokens)
        self.tokens.extend(tokens)
        full = self._decode(self.tokens)
        cut = self._first_stop(full)
        if cut is not None:
            self.stopped = True
            self._trim_tokens_to_stop(before)
            return self._emit(full[:cut])
        return self._emit(full[: len(full) - self._holdback(full)])

    def flush(self) -> str:
        """At the end of generation (not at a stop string): release the held-back text."""
        return "" if self.stopped else self._emit(self._decode(self.tokens))

    def _emit(self, final: str) -> str:
        if not final.startswith(self.emitted):  # a tokenizer that rewrote earlier text: emit nothing
            return ""
        delta = final[len(self.emitted) :]
        self.emitted = final
        return delta

    def _first_stop(self, text: str) -> int | None:
        start = max(0, len(self.emitted) - max((len(s) for s in self.stop), default=0))
        hits = [i for s in self.stop if (i := text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _holdback(self, text: str) -> int:
        held = 1 if text.endswith("\ufffd") else 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    held = max(held, n)
                    break
        return held

    def _trim_tokens_to_stop(self, before: int) -> None:
        for end in range(before + 1, len(self.tokens) + 1):
            if self._first_stop(self._decode(self.tokens[:end])) is not None:
                del self.tokens[end:]
                return
