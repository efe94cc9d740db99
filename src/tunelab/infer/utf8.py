"""Valid UTF-8 across token boundaries, for grammar-constrained decoding.

A byte-level vocabulary can spell any byte sequence, and xgrammar's string rule admits
sequences no decoder accepts (encoded surrogates, code points past U+10FFFF), which come
back as U+FFFD and break a schema's `maxLength` or `pattern`. This guard follows the
answer's bytes with the UTF-8 decoder's own state machine and forbids every token that
would make them invalid. Per state, the forbidden tokens are computed once.
"""

from __future__ import annotations

import torch

ACCEPT = (0, 0x80, 0xBF)  # (continuation bytes still due, range of the next one)


def _lead(b: int) -> tuple[int, int, int] | None:
    """The state after a first byte (None: it cannot start a character)."""
    if b < 0x80:
        return ACCEPT
    ranges = {0xE0: (2, 0xA0, 0xBF), 0xED: (2, 0x80, 0x9F), 0xF0: (3, 0x90, 0xBF), 0xF4: (3, 0x80, 0x8F)}
    if b in ranges:
        return ranges[b]
    if 0xC2 <= b <= 0xDF:
        return (1, 0x80, 0xBF)
    if 0xE1 <= b <= 0xEF:
        return (2, 0x80, 0xBF)
    if 0xF1 <= b <= 0xF3:
        return (3, 0x80, 0xBF)
    return None


def advance(state, data: bytes):
    """The state after `data`, or None when the bytes cannot continue valid UTF-8."""
    for b in data:
        due, low, high = state
        if due == 0:
            state = _lead(b)
        elif low <= b <= high:
            state = ACCEPT if due == 1 else (due - 1, 0x80, 0xBF)
        else:
            return None
        if state is None:
            return None
    return state


class Utf8Guard:
    """Which tokens keep an answer valid UTF-8, given its decoder state."""

    def __init__(self, pieces: list[bytes], vocab_size: int):
        self.pieces = list(pieces[:vocab_size]) + [b""] * max(0, vocab_size - len(pieces))
        self._forbidden: dict[tuple, torch.Tensor] = {}

    def forbidden(self, state) -> torch.Tensor:
        """Ids of tokens that cannot follow `state`."""
        if state not in self._forbidden:
            bad = [i for i, piece in enumerate(self.pieces) if piece and advance(state, piece) is None]
            self._forbidden[state] = torch.tensor(bad, dtype=torch.long)
        return self._forbidden[state]

    def after(self, state, token_id: int):
        return advance(state, self.pieces[token_id]) or ACCEPT
