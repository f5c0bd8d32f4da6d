"""A KV cache updated in place: one preallocated buffer per layer and key/value, rows packed from column 0.

Decoder graphs exported with `--kv-cache shared` (export/decoder.py) attend through onnxruntime's
GroupQueryAttention and write each step's new keys/values into the buffer they are given, so a decode
step moves only what it computes. The concatenating graphs instead read the whole past and write a grown
copy every step (2 × the cache size in memory traffic, plus an allocation), which at batch 8 and a
400-token context is about a third of a step on this CPU (docs/BENCHMARKS.md).

The decode loop (`runtime/decode.py`) talks about the cache in its own coordinates: a 2-D mask whose
rows are left-padded, so every row's real tokens end at the last column. `SharedKVCache` keeps, per
row, how many tokens it holds (`lengths`) and the loop's mask width (`width`); row b's real tokens are
mask columns [width − lengths[b], width). `select` maps the loop's column cuts onto that.
"""

from __future__ import annotations

import numpy as np

# Capacity grows in steps of this many columns (at least doubling), copying the filled part once.
_GRANULE = 64


class SharedKVCache:
    """Per name (`past_key_values.{i}.key|value`) a (B, kv_heads, capacity, head_dim) buffer."""

    def __init__(self, buffers: dict[str, np.ndarray], lengths: np.ndarray, width: int):
        self.buffers = buffers
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.width = int(width)

    @classmethod
    def empty(cls, names_shapes: dict[str, tuple[int, int]], batch: int, dtype=np.float32) -> "SharedKVCache":
        """No tokens yet; `names_shapes`: {name: (kv_heads, head_dim)}. Buffers are sized on first use."""
        buffers = {name: np.zeros((batch, heads, 0, dim), dtype=dtype) for name, (heads, dim) in names_shapes.items()}
        return cls(buffers, np.zeros(batch, dtype=np.int64), 0)

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return next(iter(self.buffers.values())).shape[2] if self.buffers else 0

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers.values())

    def reserve(self, columns: int) -> None:
        """Make room for `columns` tokens per row (grows by doubling; the filled part is copied once)."""
        if columns <= self.capacity:
            return
        capacity = max(columns, 2 * self.capacity)
        capacity = -(-capacity // _GRANULE) * _GRANULE
        filled = int(self.lengths.max()) if self.batch else 0
        for name, old in self.buffers.items():
            new = np.zeros(old.shape[:2] + (capacity,) + old.shape[3:], dtype=old.dtype)
            new[:, :, :filled] = old[:, :, :filled]
            self.buffers[name] = new

    def select(self, rows: np.ndarray, start: int, stop: int | None = None) -> "SharedKVCache":
        """The decode loop's `slice_cache`: rows `rows`, mask columns [start, stop). Cutting columns may
        drop padding before a row or tokens at its end, never real tokens at its start (the loop never
        asks for that; a packed row could not give it without moving every column)."""
        rows = np.asarray(rows, dtype=np.int64)
        stop = self.width if stop is None else min(int(stop), self.width)
        first_real = self.width - self.lengths[rows]
        if np.any(start > first_real):
            raise ValueError("SharedKVCache.select would drop real tokens at the start of a row")  # decode-loop bug
        lengths = np.clip(stop - first_real, 0, self.lengths[rows])
        keep = int(lengths.max()) if len(rows) else 0
        buffers = {}
        for name, old in self.buffers.items():
            new = np.zeros((len(rows),) + old.shape[1:], dtype=old.dtype)
            new[:, :, :keep] = old[rows, :, :keep]
            buffers[name] = new
        return SharedKVCache(buffers, lengths, stop - int(start))

    def row(self, b: int) -> dict[str, np.ndarray]:
        """Row b's buffers as (1, ...) views: writes through them land in this cache."""
        return {name: buffer[b : b + 1] for name, buffer in self.buffers.items()}
