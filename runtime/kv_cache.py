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

import threading

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


class PrefixStore:
    """The KV of recently prefilled prompt heads, reused by later rows whose prompt starts the same way.

    Every prompt of a layout starts with the same text (the system turn, the template up to the video;
    in the authors' layout also the text prompt, so the two videos of a `compare` share it). A row's
    keys and values at token j depend only on the inputs of tokens 0..j (causal attention), so when the
    first k inputs of a new row — embeddings, M-RoPE positions and DeepStack features — equal, element
    for element, those of a stored head, its first k cache columns are the stored ones: the backend
    copies them and prefills only the rest. The comparison is exact, so nothing is ever reused for a
    different prompt. Only the head before the video is stored (the leading tokens whose three position
    rows read 0, 1, 2, …: text, and at most the first video token), a few hundred tokens at most, for
    the `entries` most recently seen heads. Thread-safe (one Scorer serves concurrent threads)."""

    def __init__(self, entries: int = 4, max_tokens: int = 1024):
        self.entries = int(entries)
        self.max_tokens = int(max_tokens)
        self._heads: list[dict] = []  # most recently used first
        self._lock = threading.Lock()

    @staticmethod
    def shareable_length(positions: np.ndarray) -> int:
        """positions (3, n): how many leading tokens sit at 0, 1, 2, … on all three rows (text before the video)."""
        plain = (positions == np.arange(positions.shape[1])).all(axis=0)
        return int(plain.size if plain.all() else np.argmin(plain))

    def match(self, embeds: np.ndarray, positions: np.ndarray, deepstack: np.ndarray | None, limit: int):
        """(k, head): the longest stored head whose first k ≤ `limit` tokens have exactly these inputs
        (embeds (n, H), positions (3, n), deepstack (levels, n, H) | None); (0, None) if none."""
        best, chosen = 0, None
        with self._lock:
            for head in self._heads:
                m = min(limit, head["length"], len(embeds))
                if m <= best:
                    continue
                same = ~(head["embeds"][:m] != embeds[:m]).any(axis=1)
                same &= (head["positions"][:, :m] == positions[:, :m]).all(axis=0)
                if deepstack is not None:
                    same &= ~(head["deepstack"][:, :m] != deepstack[:, :m]).any(axis=(0, 2))
                k = m if same.all() else int(np.argmin(same))
                if k > best:
                    best, chosen = k, head
            if chosen is not None:  # most recently used first (by identity: heads hold arrays)
                self._heads = [chosen] + [h for h in self._heads if h is not chosen]
        return best, chosen

    def remember(self, embeds: np.ndarray, positions: np.ndarray, deepstack: np.ndarray | None,
                 row: dict[str, np.ndarray], known: int) -> None:
        """Store the head of a row just prefilled from its first token (`row`: its cache views (1, heads,
        capacity, dim)), unless `known` (the tokens a stored head already matched) covers it."""
        length = min(self.shareable_length(positions), self.max_tokens)
        if length < 2 or length <= known:
            return
        head = {
            "length": length,
            "embeds": np.array(embeds[:length]),
            "positions": np.array(positions[:, :length]),
            "deepstack": None if deepstack is None else np.array(deepstack[:, :length]),
            "kv": {name: np.array(buffer[0, :, :length]) for name, buffer in row.items()},
        }
        with self._lock:
            self._heads.insert(0, head)
            del self._heads[self.entries:]

    def clear(self) -> None:
        with self._lock:
            self._heads.clear()
