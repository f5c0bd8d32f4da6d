"""M-RoPE position ids for Qwen-VL prompts, computed on the host in numpy (no torch).

Qwen-VL language models rotate queries/keys with three position rows (temporal, height, width)
instead of one. Text tokens get the same running index on all three rows; the tokens of an image or
video get their grid coordinates, offset by the running index. This module reproduces, integer for
integer, what transformers 5.23's `Qwen2VLModel.get_rope_index`, `Qwen2_5_VLModel.get_rope_index`
and `Qwen3VLModel.get_rope_index` compute, so the torch-free runtime can feed an exported decoder
the exact positions the model was trained with.

The rules (transformers 5.23):

* The prompt is cut into runs of consecutive tokens of one type (text / image / video; padding is
  dropped first). Each image or video run consumes the next grid of its modality, in order, across
  the whole batch.
* A text run of length n gets ``start .. start+n-1`` on all three rows; ``start += n``.
* A vision run with grid (t, h, w) covers ``t * (h/m) * (w/m)`` tokens (m = spatial merge size),
  laid out t-major, then rows, then columns. Height/width rows are ``start + row`` / ``start + col``;
  the temporal row is ``start + int(k * interval)`` for temporal index k. ``interval`` is 1, except
  for Qwen2.5-VL videos where it is ``tokens_per_second * second_per_grid_ts[video]`` (in float32,
  truncated toward zero, as torch does). Afterwards ``start += max(h/m, w/m)`` — only the spatial
  extent, so a long video's temporal row may run past the text that follows it (Qwen2-VL /
  Qwen2.5-VL; transformers < 5 continued text at the vision block's maximum + 1 instead).
* Qwen3-VL puts a ``<t seconds>`` timestamp and its own vision_start/vision_end around every
  temporal group of a video, so each video grid (t, h, w) is split into t grids (1, h, w), one per
  run of video tokens.
* Padding positions (attention_mask == 0) are 0 on all rows.

How the HF text models consume ``position_ids`` (transformers 5.23), and what an exporter feeds:

* ``Qwen2VLTextModel`` / ``Qwen2_5_VLTextModel``: (3, B, L) → the t/h/w rows, used as is. A (4, B, L)
  tensor is split into a plain text row (row 0) + the three M-RoPE rows. (B, L) is copied to all 3
  rows; None means ``arange(L) + cache length`` on all rows.
* ``Qwen3VLTextModel``: the same, except its defaults build 4 rows (text row + 3 copies).
* The text row (row 0 of a 4-row tensor) is never rotated with; it is only used to build the causal
  mask when *no* attention mask and *no* cache are given (it then detects packed sequences from
  position resets) and is handed to flash-attention kernels for var-len packing. Rotary embeddings
  only ever see the 3 M-RoPE rows.

So a KV-cached decoder export needs only the 3 rows of `mrope_position_ids` (prefill) and
`decode_position_ids` (each step), together with an explicit attention mask; no fourth text row is
needed for any family. (Do not pass a 4-row tensor without an attention mask for left-padded input:
the zeros at padded positions would be read as packed-sequence boundaries.)
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")

# Token types, as in transformers' `mm_token_type_ids`.
TEXT, IMAGE, VIDEO = 0, 1, 2


def mm_token_types(input_ids, *, image_token_id: int, video_token_id: int) -> np.ndarray:
    """Modality of every token: 0 text, 1 image placeholder, 2 video placeholder.

    Args:
        input_ids: int array of any shape, usually (B, L).
    Returns:
        int64 array of the same shape.
    """
    ids = np.asarray(input_ids)
    types = np.zeros(ids.shape, dtype=np.int64)
    types[ids == image_token_id] = IMAGE
    types[ids == video_token_id] = VIDEO
    return types


def mrope_position_ids(
    input_ids,
    *,
    family: str,
    image_token_id: int,
    video_token_id: int,
    image_grid_thw=None,
    video_grid_thw=None,
    attention_mask=None,
    second_per_grid_ts=None,
    spatial_merge_size: int = 2,
    tokens_per_second: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """3-row M-RoPE positions of a (batch of) prompt(s), and each row's decode offset.

    Args:
        input_ids: (B, L) int token ids; image/video placeholders already expanded to one token per
            merged patch (as the Qwen-VL processors do).
        family: "qwen2_vl", "qwen2_5_vl" or "qwen3_vl".
        image_token_id / video_token_id: the placeholder token ids.
        image_grid_thw: (I, 3) patch grids (t, h, w) of the images, in prompt order over the batch.
        video_grid_thw: (V, 3) patch grids of the videos, in prompt order over the batch. For
            qwen3_vl this is one row per *video* (t = number of temporal groups), as the processor
            returns it; the per-group split is done here.
        attention_mask: (B, L) 1 for real tokens, 0 for padding (left or right). None: no padding.
        second_per_grid_ts: (V,) seconds covered by one temporal grid step of each video
            (temporal_patch_size / fps); qwen2_5_vl only. None means 1.0 for every video.
            Computed in float32, like the torch tensors the processor returns.
        spatial_merge_size: the vision tower's spatial merge size m (h and w are divided by it).
        tokens_per_second: qwen2_5_vl's `vision_config.tokens_per_second` (Qwen2.5-VL checkpoints
            ship 2; transformers' config default is 4).

    Returns:
        position_ids: (3, B, L) int64 — rows are temporal, height, width. Padding positions are 0.
        deltas: (B, 1) int64 — position of the next token after the prompt minus the number of real
            prompt tokens; text appended after the prompt continues at ``index + delta`` on all three
            rows (see `decode_position_ids`). It equals transformers' ``rope_deltas``
            (``max position + 1 - length``) whenever the prompt's highest position is its last token,
            which holds for prompts that end in text, except after a Qwen2/2.5-VL video whose
            temporal row outruns its spatial extent (then HF's own ``generate`` and a full-sequence
            forward also continue at this value, not at ``rope_deltas``).

    Example (qwen2_vl, merge size 2): 3 text tokens, a video with grid (t, h, w) = (2, 2, 4), i.e.
    2 × 1 × 2 = 4 video tokens, then 2 text tokens::

        tokens     T  T  T  V  V  V  V  T  T
        temporal   0  1  2  3  3  4  4  5  6
        height     0  1  2  3  3  3  3  5  6
        width      0  1  2  3  4  3  4  5  6

    The video starts at 3; its temporal index k adds k, its column adds 0/1; after it the running
    index grows by max(h/2, w/2) = 2, so the text resumes at 5. The next token would be 7 = 9 + (-2),
    so the delta is -2.

    >>> V = 9
    >>> pos, delta = mrope_position_ids(np.array([[1, 2, 3, V, V, V, V, 4, 5]]), family="qwen2_vl",
    ...     image_token_id=8, video_token_id=V, video_grid_thw=np.array([[2, 2, 4]]))
    >>> pos[:, 0]
    array([[0, 1, 2, 3, 3, 4, 4, 5, 6],
           [0, 1, 2, 3, 3, 3, 3, 5, 6],
           [0, 1, 2, 3, 4, 3, 4, 5, 6]])
    >>> delta
    array([[-2]])
    """
    if family not in FAMILIES:
        raise InvalidInputError(f"Unknown model family {family!r}; expected one of {', '.join(FAMILIES)}.")
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise InvalidInputError(f"input_ids must be a (batch, length) array; got shape {ids.shape}.")
    batch, length = ids.shape
    if attention_mask is None:
        keep = np.ones((batch, length), dtype=bool)
    else:
        keep = np.asarray(attention_mask).astype(bool)
        if keep.shape != ids.shape:
            raise InvalidInputError(f"attention_mask shape {keep.shape} does not match input_ids shape {ids.shape}.")
    if spatial_merge_size < 1:
        raise InvalidInputError(f"spatial_merge_size must be a positive integer; got {spatial_merge_size}.")

    types = mm_token_types(ids, image_token_id=image_token_id, video_token_id=video_token_id)
    grids = {
        IMAGE: _image_grids(image_grid_thw, spatial_merge_size),
        VIDEO: _video_grids(family, video_grid_thw, second_per_grid_ts, spatial_merge_size, tokens_per_second),
    }
    next_grid = {IMAGE: 0, VIDEO: 0}

    position_ids = np.zeros((3, batch, length), dtype=np.int64)
    deltas = np.zeros((batch, 1), dtype=np.int64)
    for b in range(batch):
        row_types = types[b, keep[b]]
        if row_types.size == 0:
            raise InvalidInputError(f"Batch row {b} has no attended tokens (attention_mask is all 0).")
        pieces = []
        start = 0
        for kind, run_start, run_end in _runs(row_types):
            run_len = run_end - run_start
            if kind == TEXT:
                pieces.append(np.broadcast_to(np.arange(start, start + run_len), (3, run_len)))
                start += run_len
                continue
            name = "image" if kind == IMAGE else "video"
            if next_grid[kind] >= len(grids[kind]):
                raise InvalidInputError(
                    f"The prompt has more {name} placeholder runs than the {len(grids[kind])} {name} grid(s) "
                    f"given{_layout_hint(family, kind)}. Pass one {name}_grid_thw row per {name}, in prompt order."
                )
            grid_t, grid_h, grid_w, interval = grids[kind][next_grid[kind]]
            next_grid[kind] += 1
            if run_len != grid_t * grid_h * grid_w:
                raise InvalidInputError(
                    f"A run of {run_len} {name} tokens in batch row {b} does not match its grid (t={grid_t}, "
                    f"h={grid_h * spatial_merge_size}, w={grid_w * spatial_merge_size}), which needs "
                    f"{grid_t * grid_h * grid_w} tokens{_layout_hint(family, kind)}."
                )
            pieces.append(_grid_positions(start, grid_t, grid_h, grid_w, interval))
            start += max(grid_h, grid_w)
        position_ids[:, b, keep[b]] = np.concatenate(pieces, axis=1)
        deltas[b, 0] = start - row_types.size

    for kind, name in ((IMAGE, "image"), (VIDEO, "video")):
        if next_grid[kind] != len(grids[kind]):
            raise InvalidInputError(
                f"{len(grids[kind])} {name} grid(s) were given but the prompt has {next_grid[kind]} {name} "
                f"placeholder run(s); every {name} needs its placeholder tokens in input_ids."
            )
    return position_ids, deltas


def decode_position_ids(cache_len, deltas, num_new: int = 1) -> np.ndarray:
    """M-RoPE positions of text tokens generated after the prompt (KV-cached decoding).

    Every token after a prompt that ends in text is plain text, so its position is the same on all
    three rows: ``index + delta``, where index counts the *real* (non-padding) tokens before it.

    Args:
        cache_len: number of real tokens already in the cache for each row — an int, or a (B,) array
            when rows are left-padded (then it is ``attention_mask.sum(-1)`` over the cached part,
            i.e. the padded cache length minus that row's padding).
        deltas: (B, 1) from `mrope_position_ids`.
        num_new: how many new tokens are fed this step.

    Returns:
        (3, B, num_new) int64.

    This is what HF ``generate()`` feeds the language model in transformers 5.23: it extends every
    position row by +1 per step from the prompt's last token. (HF's ``model.forward`` with a cache but
    without ``position_ids`` instead uses ``cache length + rope_deltas``: the same value without
    padding, unless a Qwen2/2.5-VL video's temporal row outran the text after it; with a 2-D
    attention mask that fallback fails in 5.23, so always pass explicit positions.)
    """
    deltas = np.asarray(deltas, dtype=np.int64).reshape(-1, 1)
    cache_len = np.asarray(cache_len, dtype=np.int64).reshape(-1, 1)
    if cache_len.shape[0] not in (1, deltas.shape[0]):
        raise InvalidInputError(
            f"cache_len has {cache_len.shape[0]} entries but deltas has {deltas.shape[0]} rows; pass one "
            "length per batch row or a single int."
        )
    positions = cache_len + deltas + np.arange(num_new, dtype=np.int64)  # (B, num_new)
    return np.ascontiguousarray(np.broadcast_to(positions, (3, *positions.shape)))


# -- helpers ---------------------------------------------------------------------------------------


def _runs(types: np.ndarray):
    """(type, start, end) of each maximal run of equal values in a 1-D array."""
    starts = np.flatnonzero(np.r_[True, types[1:] != types[:-1]])
    ends = np.r_[starts[1:], types.size]
    return zip(types[starts].tolist(), starts.tolist(), ends.tolist())


def _layout_hint(family: str, kind: int) -> str:
    """How placeholders must be laid out, for error messages."""
    if kind == VIDEO and family == "qwen3_vl":
        return (
            " (qwen3_vl wants one run of h*w/merge² video tokens per frame group, each after its own"
            " timestamp text and between its own vision_start/vision_end)"
        )
    return " (each image/video is one run of t*h*w/merge² placeholder tokens)"


def _as_grid_array(grid_thw, name: str) -> np.ndarray:
    grid = np.asarray(grid_thw, dtype=np.int64)
    if grid.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise InvalidInputError(f"{name} must have shape (N, 3) with rows (t, h, w); got shape {grid.shape}.")
    if (grid < 1).any():
        raise InvalidInputError(f"{name} has a non-positive entry: {grid.tolist()}.")
    return grid


def _merged(grid: np.ndarray, merge: int, name: str) -> np.ndarray:
    """Grids (N, 3) in patches → (N, 3) in language-model tokens (h and w divided by the merge size)."""
    if (grid[:, 1:] % merge).any():
        raise InvalidInputError(
            f"{name} heights/widths must be multiples of the spatial merge size {merge}; got {grid.tolist()}."
        )
    out = grid.copy()
    out[:, 1:] //= merge
    return out


def _image_grids(image_grid_thw, merge: int) -> list[tuple[int, int, int, float]]:
    if image_grid_thw is None:
        return []
    grid = _merged(_as_grid_array(image_grid_thw, "image_grid_thw"), merge, "image_grid_thw")
    return [(t, h, w, 1) for t, h, w in grid.tolist()]


def _video_grids(family, video_grid_thw, second_per_grid_ts, merge, tokens_per_second):
    """(t, h, w, temporal interval) per video placeholder run, in consumption order."""
    if video_grid_thw is None:
        if second_per_grid_ts is not None and np.size(second_per_grid_ts):
            raise InvalidInputError("second_per_grid_ts was given without video_grid_thw.")
        return []
    grid = _merged(_as_grid_array(video_grid_thw, "video_grid_thw"), merge, "video_grid_thw")
    if family == "qwen3_vl":
        # One run per temporal group: every group has its own timestamp and vision_start/end.
        return [(1, h, w, 1) for t, h, w in grid.tolist() for _ in range(t)]
    if family == "qwen2_vl":
        return [(t, h, w, 1) for t, h, w in grid.tolist()]
    # qwen2_5_vl: temporal step = tokens_per_second * seconds per grid, in float32 like torch.
    if second_per_grid_ts is None:
        seconds = np.ones(len(grid), dtype=np.float32)
    else:
        seconds = np.asarray(second_per_grid_ts, dtype=np.float32).reshape(-1)
        if seconds.size != len(grid):
            raise InvalidInputError(
                f"second_per_grid_ts has {seconds.size} values but video_grid_thw has {len(grid)} videos; "
                "pass one value (temporal_patch_size / fps) per video."
            )
    intervals = np.float32(tokens_per_second) * seconds
    return [(t, h, w, interval) for (t, h, w), interval in zip(grid.tolist(), intervals)]


def _grid_positions(start: int, grid_t: int, grid_h: int, grid_w: int, interval) -> np.ndarray:
    """(3, t*h*w) positions of one vision run laid out t-major, then rows, then columns."""
    if isinstance(interval, np.floating):
        # torch: (arange(t) * float32 interval).long() — float32 product, truncated toward zero.
        temporal = (np.arange(grid_t, dtype=np.float32) * interval).astype(np.int64)
    else:
        temporal = np.arange(grid_t, dtype=np.int64) * int(interval)
    t_row = np.repeat(temporal, grid_h * grid_w)
    h_row = np.tile(np.repeat(np.arange(grid_h), grid_w), grid_t)
    w_row = np.tile(np.arange(grid_w), grid_t * grid_h)
    return np.stack([t_row, h_row, w_row]).astype(np.int64) + start
