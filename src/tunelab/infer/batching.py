"""Continuous batching: the running answers' KV caches as one left-padded batch.

Rows join after their own prefill and leave when they finish, at any decode step. Rows
of different lengths share one [B, H, T, D] tensor per layer: each is left-padded to the
longest, an attention mask hides the padding, and explicit position ids keep every row's
positions its own. When rows leave, columns that are padding in every remaining row are
cut, so a long answer that finished does not tax the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supports_batching(config) -> bool:
    """True when the model's cache is a plain per-layer key/value cache (no sliding windows,
    no recurrent state), which is what rows can be padded, joined and cut in."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=config)
    except Exception:  # a config this cache cannot describe: treat as unsupported
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


class KVBatch:
    """The batch's cache and the [B, T] mask of its cached tokens (1 real, 0 padding)."""

    def __init__(self):
        self.cache = None
        self.mask: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def add(self, cache, mask: torch.Tensor) -> None:
        """Append rows from a prefill's `cache` and its [N, T'] attention mask."""
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, length), _pad_left(theirs.keys, length)])
            mine.values = torch.cat([_pad_left(mine.values, length), _pad_left(theirs.values, length)])
        self.mask = torch.cat([_pad_left(self.mask, length), _pad_left(mask, length)])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in this order) and cut the padding columns they no longer need."""
        if not rows:
            self.cache = self.mask = None
            return
        if rows == list(range(self.size)):
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(0).nonzero()[0])  # first column some remaining row really uses
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self.mask = mask[:, first:]

    def grow(self) -> torch.Tensor:
        """Extend the mask by the column of the tokens about to be fed; return it for the forward."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.size, 1)], dim=1)
        return self.mask


def _pad_left(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pad the sequence dimension (-2 for [B, H, T, D] caches, -1 for [B, T] masks) on the left."""
    if x.dim() == 2:
        return F.pad(x, (length - x.shape[1], 0))
    return F.pad(x, (0, 0, length - x.shape[2], 0))
