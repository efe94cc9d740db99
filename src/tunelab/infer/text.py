"""Token ids to streamed text: whole characters only, and never a piece of a stop string."""

from __future__ import annotations


class TextStream:
    """Grows one answer token by token and says which new text is safe to show.

    Text is held back while it ends in an incomplete UTF-8 character (the tokenizer decodes
    it as U+FFFD) or in the first characters of a stop string, so a client never sees a
    stop string it would then have to take back.
    """

    def __init__(self, tokenizer, stops: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops or [] if s]
        self.ids: list[int] = []
        self.text = ""  # the answer so far, cut at a stop string once one appears
        self.shown = 0  # characters of `text` already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text that became safe to show (maybe empty)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.stops:
            start = max(0, self.shown - max(map(len, self.stops)))
            hits = [i for s in self.stops if (i := self.text.find(s, start)) >= 0]
            if hits:
                self.text, self.stopped = self.text[:min(hits)], True
                return self._take(len(self.text))
        safe = len(self.text)
        if self.text.endswith("\ufffd"):
            safe = len(self.text.rstrip("\ufffd"))
        tail = self.text[self.shown:safe]
        held = max((k for s in self.stops for k in range(1, min(len(s), len(tail) + 1)) if tail.endswith(s[:k])),
                   default=0)  # the longest tail that could still grow into a stop string
        return self._take(safe - held)

    def finish(self) -> str:
        """The text still held back, at the end of the answer."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        end = max(end, self.shown)
        piece, self.shown = self.text[self.shown:end], end
        return piece
