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

from descore_sdk.errors import ContextLengthError

from .decode import StepOutput

# Capacity grows in steps of this many columns (at least doubling), copying the filled part once.
_GRANULE = 64


def refuse_growth(columns: int, capacity: int) -> None:
    """ContextLengthError: a row of `columns` tokens does not fit a static-capacity cache (never grown)."""
    raise ContextLengthError(
        f"A row of {columns} tokens does not fit the decoder's static KV cache of {capacity} columns (a bundle "
        "built for TensorRT with --max-seq); lower the CoT budget or the frame count, or rebuild with a larger --max-seq."
    )


def kept_columns(lengths: np.ndarray, width: int, rows: np.ndarray, start: int, stop: int | None):
    """An in-place cache's `select` in the loop's coordinates: (tokens each kept row keeps, the new mask width)
    for rows `rows` and mask columns [start, stop). Rows are packed from column 0, so cutting columns may drop
    padding before a row or tokens at its end, never real tokens at its start (the decode loop never asks
    for that; a packed row could not give it without moving every column)."""
    stop = width if stop is None else min(int(stop), width)
    first_real = width - lengths[rows]
    if np.any(start > first_real):
        raise ValueError("an in-place KV cache cannot drop real tokens at the start of a row")  # decode-loop bug
    return np.clip(stop - first_real, 0, lengths[rows]), stop - int(start)


class SharedKVCache:
    """Per name (`past_key_values.{i}.key|value`) a (B, kv_heads, capacity, head_dim) buffer."""

    def __init__(self, buffers: dict[str, np.ndarray], lengths: np.ndarray, width: int, fixed: bool = False):
        self.buffers = buffers
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.width = int(width)
        self.fixed = bool(fixed)  # the graph's capacity is static (a TensorRT bundle's): never grown

    @classmethod
    def empty(cls, names_shapes: dict[str, tuple[int, int]], batch: int, dtype=np.float32,
              capacity: int | None = None) -> "SharedKVCache":
        """No tokens yet; `names_shapes`: {name: (kv_heads, head_dim)}. Buffers are sized on first use, or
        allocated at `capacity` columns (zeros) once when the graph's cache capacity is static."""
        buffers = {name: np.zeros((batch, heads, capacity or 0, dim), dtype=dtype) for name, (heads, dim) in names_shapes.items()}
        return cls(buffers, np.zeros(batch, dtype=np.int64), 0, fixed=capacity is not None)

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
        if self.fixed:
            refuse_growth(columns, self.capacity)
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
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        lengths, width = kept_columns(self.lengths, self.width, rows, start, stop)
        keep = int(lengths.max()) if len(rows) else 0
        buffers = {}
        for name, old in self.buffers.items():
            new = np.zeros((len(rows),) + old.shape[1:], dtype=old.dtype)
            new[:, :, :keep] = old[rows, :, :keep]
            buffers[name] = new
        return SharedKVCache(buffers, lengths, width, fixed=self.fixed)

    def row(self, b: int) -> dict[str, np.ndarray]:
        """Row b's buffers as (1, ...) views: writes through them land in this cache."""
        return {name: buffer[b : b + 1] for name, buffer in self.buffers.items()}


class InPlaceSteps:
    """The decode loop's `step` on an in-place cache (`SharedKVCache` or a device form of it with the same
    `lengths` / `width` / `reserve` / `row` / `buffers`), shared by every backend whose decoder has the
    in-place contract (onnxruntime host and device caches, TensorRT's in-place engines). A subclass gives
    `_run_shared(inputs_embeds, position_ids, deepstack_embeds, buffers, lengths, width)` (one decoder call
    on `buffers`: a cache's, or one row's; its inputs from `_in_place_inputs`), `num_deepstack`,
    `takes_total_length`, `table`, `counters` and `prefix_store` (a PrefixStore, or None)."""

    def _step_shared(self, inputs_embeds, attention_mask, position_ids, deepstack_embeds, cache):
        """One loop step on the in-place cache. Rows are left-padded in the loop's coordinates, so row b's
        new tokens are its last `new[b]` columns. onnxruntime's GroupQueryAttention takes several rows
        only one token each (decode steps); longer pieces (prefill chunks, the scoring pass) go row by row,
        where the work is matrix products that one row already fills. The same order on every backend
        keeps their results comparable bit for bit (the in-place graphs' contract, export/gqa.py)."""
        batch, width = inputs_embeds.shape[:2]
        new = np.asarray(attention_mask, dtype=np.int64)[:, -width:].sum(axis=1)
        cache.reserve(int((cache.lengths + new).max()))
        if width == 1 and np.all(new == 1):
            out = self._run_shared(inputs_embeds, position_ids, deepstack_embeds, cache.buffers, cache.lengths, 1)
        else:
            out = None
            for b in np.flatnonzero(new):
                n = int(new[b])
                embeds = inputs_embeds[b, width - n :]
                positions = position_ids[:, b, width - n :]
                deepstack = None if deepstack_embeds is None else deepstack_embeds[:, b, width - n :]
                row, done = cache.row(b), 0
                head = self.prefix_store.head_length(positions) if self.prefix_store is not None and cache.lengths[b] == 0 else 0
                if 0 < head < n:  # the prompt head: copied from the store and/or in calls of its own (PrefixStore)
                    features = self._deepstack_or_zeros(None if deepstack is None else deepstack[:, :head], head)
                    done, stored = self.prefix_store.match(embeds[:head], positions[:, :head], features)
                    for name, buffer in (row.items() if done else ()):
                        buffer[0, :, :done] = stored["kv"][name][:, :done]
                    self.counters["prefix_positions_reused"] += done
                    for begin, end in self.prefix_store.blocks(done, head):
                        self._run_shared(embeds[None, begin:end], positions[:, None, begin:end],
                                         None if deepstack is None else deepstack[:, None, begin:end],
                                         row, cache.lengths[b : b + 1] + begin, end - begin)
                    if done < head:
                        self.prefix_store.remember(embeds[:head], positions[:, :head], features, row)
                    done = head
                part = self._run_shared(
                    embeds[None, done:],
                    positions[:, None, done:],
                    None if deepstack is None else deepstack[:, None, done:],
                    row,
                    cache.lengths[b : b + 1] + done,
                    n - done,
                )
                if out is None:  # rows with nothing new in this chunk get zeros (the loop never reads them)
                    out = {k: np.zeros((batch,) + v.shape[1:], dtype=v.dtype) for k, v in part.items()}
                for k, v in part.items():
                    out[k][b] = v[0]
        cache.lengths = cache.lengths + new
        cache.width = int(attention_mask.shape[1])
        return StepOutput(out["logits"], out["hidden"], out["reward"]), cache

    def _in_place_inputs(self, inputs_embeds, position_ids, deepstack_embeds, lengths, width: int) -> dict:
        """The host inputs of one in-place decoder call for rows holding `lengths` tokens before it and `width`
        new ones each: embeddings, positions, `seqlens_k` (tokens after the call − 1), `total_sequence_length`
        where the graph takes it (`takes_total_length`), DeepStack features (zeros for text-only columns)."""
        rows = inputs_embeds.shape[0]
        total = np.asarray(lengths, dtype=np.int64) + width
        feed = {
            "inputs_embeds": np.ascontiguousarray(inputs_embeds, dtype=np.float32),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
            "seqlens_k": (total - 1).astype(np.int32),
        }
        if self.takes_total_length:
            feed["total_sequence_length"] = np.asarray(total.max(), dtype=np.int32)
        if self.num_deepstack:
            if deepstack_embeds is None:
                deepstack_embeds = np.zeros((self.num_deepstack, rows, width, inputs_embeds.shape[-1]), dtype=np.float32)
            feed["deepstack_embeds"] = np.ascontiguousarray(deepstack_embeds, dtype=np.float32)
        return feed

    def _deepstack_or_zeros(self, deepstack, n: int):
        """What the graph is fed for these tokens' DeepStack input (zeros when the loop passes none)."""
        if not self.num_deepstack:
            return None
        if deepstack is None:
            return np.zeros((self.num_deepstack, n, self.table.shape[1]), dtype=np.float32)
        return deepstack


class PrefixStore:
    """The KV of recently prefilled prompt heads, reused by later rows whose prompt starts the same way.

    Every prompt of a layout starts with the same text (the system turn and the template up to the
    video; in the authors' layout also the text prompt, so the two videos of a `compare`, or the videos
    an RL group scores for one prompt, share it). The head is the text before the video (`head_length`
    finds it from the M-RoPE positions alone). The backend prefills it in calls of its own, one per
    `block` tokens from the row's start, then the rest of the prompt; a later row whose first inputs —
    embeddings, positions, DeepStack features — equal a stored head's, element for element, copies the
    cache columns of the whole blocks they share (or of the whole head) and prefills from there. Keys and
    values at a token depend only on the inputs up to it (causal attention), and every block is the
    same call on the same inputs whether it was run now or copied, so a row's results never depend on
    what was scored before it, bit for bit (tests/test_fuzz.py compares threaded and serial calls
    exactly). Holds the `entries` most recently used heads of at most `max_tokens` tokens.
    Thread-safe (one Scorer serves concurrent threads)."""

    def __init__(self, entries: int = 4, max_tokens: int = 1024, block: int = 16):
        self.entries = int(entries)
        self.max_tokens = int(max_tokens)
        self.block = int(block)
        self._heads: list[dict] = []  # most recently used first
        self._lock = threading.Lock()

    def head_length(self, positions: np.ndarray) -> int:
        """positions (3, n): the head's length, or 0 for no head (then the row is prefilled in one call).
        Text tokens sit at 0, 1, 2, … on all three rows; the first video token does too (its frame,
        row and column offsets are all 0), the second never does. So the head is the run of such
        tokens without its last one, when something else follows (a prompt of text only has no head),
        and when it is 2 to `max_tokens` tokens long."""
        plain = (positions == np.arange(positions.shape[1])).all(axis=0)
        if plain.all():
            return 0
        length = int(np.argmin(plain)) - 1
        return length if 2 <= length <= self.max_tokens else 0

    def blocks(self, start: int, length: int) -> list[tuple[int, int]]:
        """The head's calls from `start` (a block boundary) on: [start, start + block), …, up to `length`."""
        return [(b, min(b + self.block, length)) for b in range(start, length, self.block)]

    def match(self, embeds: np.ndarray, positions: np.ndarray, deepstack: np.ndarray | None):
        """(k, head) for a row's head inputs (embeds (P, H), positions (3, P), deepstack (levels, P, H) |
        None): k columns of the stored `head` are the row's own, k being the whole head when all P
        tokens match a head of that length, else the whole blocks the longest exact match covers;
        (0, None) when nothing is shared."""
        best, chosen = 0, None
        length = len(embeds)
        with self._lock:
            for head in self._heads:
                m = min(length, head["length"])
                same = ~(head["embeds"][:m] != embeds[:m]).any(axis=1)
                same &= (head["positions"][:, :m] == positions[:, :m]).all(axis=0)
                if deepstack is not None and head["deepstack"] is not None:
                    same &= ~(head["deepstack"][:, :m] != deepstack[:, :m]).any(axis=(0, 2))
                k = m if same.all() else int(np.argmin(same))
                k = k if k == length == head["length"] else k // self.block * self.block
                if k > best:
                    best, chosen = k, head
            if chosen is not None:  # most recently used first (by identity: heads hold arrays)
                self._heads = [chosen] + [h for h in self._heads if h is not chosen]
        return best, chosen

    def remember(self, embeds: np.ndarray, positions: np.ndarray, deepstack: np.ndarray | None,
                 row: dict[str, np.ndarray]) -> None:
        """Store a head just prefilled block by block (`row`: the row's cache views (1, heads, capacity,
        dim), whose first P columns hold it)."""
        length = len(embeds)
        head = {
            "length": length,
            "embeds": np.array(embeds),
            "positions": np.array(positions),
            "deepstack": None if deepstack is None else np.array(deepstack),
            "kv": {name: np.array(buffer[0, :, :length]) for name, buffer in row.items()},
        }
        with self._lock:
            self._heads.insert(0, head)
            del self._heads[self.entries:]
