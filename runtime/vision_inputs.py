"""Host-side index inputs of the exported vision encoders, in numpy (no torch).

The Qwen-VL vision towers derive index tensors from each video's patch grid `(t, h, w)` with
data-dependent loops (`repeat_interleave`, `.tolist()`, window padding). Those do not belong in an
ONNX graph, so the exported `vision.onnx` takes them as inputs and this module computes them.

Every index below is *per frame*: the three towers attend within one temporal patch at a time
(`cu_seqlens` has one segment per temporal step) and lay the `h × w` patches of every temporal step out
identically, so one frame's indices serve all `t` of them. The graph learns the frame size `h·w` from
the leading dimension of `patch_position_ids`.

Patch order (shared with `descore_sdk.preprocess`): patches are grouped in `merge × merge` blocks,
blocks in raster order. For h=4, w=4, merge=2 the 16 patches of a frame are::

    patch k:   0  1  2  3 | 4  5  6  7 | 8  9 10 11 | 12 13 14 15
    (row,col): block (0,0)  block (0,1)  block (1,0)   block (1,1)
               (0,0)(0,1)(1,0)(1,1) (0,2)(0,3)(1,2)(1,3) ...

so `patch_position_ids` starts `[[0,0],[0,1],[1,0],[1,1],[0,2],[0,3],[1,2],[1,3],[2,0],...]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from descore_sdk.errors import InvalidInputError

VISION_FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")


@dataclass(frozen=True)
class VisionGraphSpec:
    """The vision-tower constants the host needs to build `vision.onnx` inputs.

    `window_size` (pixels) is Qwen2.5-VL's window attention; `num_grid_per_side` is the side of
    Qwen3-VL's learned square position-embedding grid. Both are None for families without them.
    """

    family: str
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    window_size: int | None = None
    num_grid_per_side: int | None = None

    def __post_init__(self):
        if self.family not in VISION_FAMILIES:
            raise InvalidInputError(f"Unknown vision family {self.family!r}; expected one of {VISION_FAMILIES}.")
        if self.family == "qwen2_5_vl" and not self.window_size:
            raise InvalidInputError("A qwen2_5_vl vision spec needs window_size (pixels), e.g. 112.")
        if self.family == "qwen3_vl" and not self.num_grid_per_side:
            raise InvalidInputError("A qwen3_vl vision spec needs num_grid_per_side, e.g. 48.")

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of `vision.onnx`'s inputs, in graph order."""
        names = ("pixel_values", "patch_position_ids")
        if self.family == "qwen2_5_vl":
            names += ("window_ids",)
        if self.family == "qwen3_vl":
            names += ("pos_interp_indices", "pos_interp_weights")
        return names

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VisionGraphSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _check_grid(grid_h: int, grid_w: int, merge_size: int) -> None:
    if grid_h <= 0 or grid_w <= 0 or grid_h % merge_size or grid_w % merge_size:
        raise InvalidInputError(
            f"Patch grid {grid_h}x{grid_w} is not a positive multiple of the merge size {merge_size}; "
            "resize frames with descore_sdk.preprocess.smart_resize first."
        )


def _patch_rows_cols(grid_h: int, grid_w: int, merge_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each patch of one frame, in merge-block order. Both `(h·w,)` int64."""
    _check_grid(grid_h, grid_w, merge_size)
    m = merge_size
    # Index the frame as (block_row, in_row, block_col, in_col), then walk it as
    # (block_row, block_col, in_row, in_col): that is the merge-block order.
    rows = np.broadcast_to(np.arange(grid_h).reshape(grid_h // m, m, 1, 1), (grid_h // m, m, grid_w // m, m))
    cols = np.broadcast_to(np.arange(grid_w).reshape(1, 1, grid_w // m, m), (grid_h // m, m, grid_w // m, m))
    rows = rows.transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.transpose(0, 2, 1, 3).reshape(-1)
    return rows.astype(np.int64), cols.astype(np.int64)


def patch_position_ids(grid_h: int, grid_w: int, merge_size: int) -> np.ndarray:
    """Rotary (row, col) coordinates of one frame's patches: `(h·w, 2)` int64, merge-block order."""
    rows, cols = _patch_rows_cols(grid_h, grid_w, merge_size)
    return np.stack([rows, cols], axis=-1)


def window_ids(grid_h: int, grid_w: int, merge_size: int, window_size: int, patch_size: int) -> np.ndarray:
    """Qwen2.5-VL attention window of each patch of one frame: `(h·w,)` int64, merge-block order.

    Windows tile the merged grid (`h/merge × w/merge` tokens) with squares of
    `window_size / patch_size / merge` tokens, the last row/column of windows cut short. Two patches
    attend to each other in a windowed layer iff their ids are equal. (The reference reorders tokens so
    each window is contiguous and splits by `cu_window_seqlens`; masking in the original order gives the
    same attention, because attention is permutation-equivariant once rotary angles travel with tokens.)
    """
    side = window_size // merge_size // patch_size
    if side <= 0:
        raise InvalidInputError(
            f"window_size {window_size} is smaller than one merged patch ({patch_size * merge_size} px)."
        )
    rows, cols = _patch_rows_cols(grid_h, grid_w, merge_size)
    windows_per_row = -(-(grid_w // merge_size) // side)  # ceil
    return (rows // merge_size // side) * windows_per_row + (cols // merge_size // side)


def position_interpolation(grid_h: int, grid_w: int, num_grid_per_side: int, merge_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen3-VL's learned position grid resampled (bilinear, align_corners=True) to one frame.

    Returns `indices (h·w, 4)` int64 into the flattened `(side·side, hidden)` table and
    `weights (h·w, 4)` float32; the patch's position embedding is `sum_j weights[:, j] · table[indices[:, j]]`.
    Arithmetic is float32 in the reference's order so the weights match it bit for bit.
    """
    side = num_grid_per_side
    rows, cols = _patch_rows_cols(grid_h, grid_w, merge_size)
    row_taps, row_weights = _bilinear_axis(rows, grid_h, side)
    col_taps, col_weights = _bilinear_axis(cols, grid_w, side)
    # Outer product of the two axes: taps (r0,c0), (r0,c1), (r1,c0), (r1,c1).
    indices = (row_taps[:, :, None] * side + col_taps[:, None, :]).reshape(-1, 4)
    weights = (row_weights[:, :, None] * col_weights[:, None, :]).reshape(-1, 4)
    return indices.astype(np.int64), weights.astype(np.float32)


def _bilinear_axis(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Two taps (floor, floor+1, clamped into the table) and hat weights along one axis, align_corners=True."""
    f32 = np.float32
    # Source coordinate: endpoints of the target axis map onto 0 and side-1 of the table.
    src = index.astype(f32) * f32(side - 1) / f32(max(size - 1, 1))
    floor = np.floor(src)
    taps = floor.astype(np.int64)[:, None] + np.arange(2)
    distance = np.abs(src[:, None] - floor[:, None] - np.arange(2, dtype=f32))
    weights = np.clip(f32(1) - distance, f32(0), None)
    return np.clip(taps, 0, side - 1), weights.astype(f32)


def vision_graph_inputs(spec: VisionGraphSpec, pixel_values: np.ndarray, grid_thw) -> dict[str, np.ndarray]:
    """All inputs of `vision.onnx` for one video: `pixel_values (t·h·w, C·tp·p²)` + its per-frame indices.

    The graph treats the `t` temporal steps independently, so a long video may also be fed a slice of
    whole temporal steps at a time (rows `[i·h·w, j·h·w)`) and the outputs concatenated.
    """
    t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(3))
    pixel_values = np.asarray(pixel_values)
    if pixel_values.ndim != 2 or pixel_values.shape[0] % (h * w):
        raise InvalidInputError(
            f"pixel_values of shape {pixel_values.shape} do not hold whole frames of {h}x{w} patches; "
            "pass the (t·h·w, C·tp·p²) patches from descore_sdk.preprocess."
        )
    inputs = {
        "pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32),
        "patch_position_ids": patch_position_ids(h, w, spec.merge_size),
    }
    if spec.family == "qwen2_5_vl":
        inputs["window_ids"] = window_ids(h, w, spec.merge_size, spec.window_size, spec.patch_size)
    if spec.family == "qwen3_vl":
        indices, weights = position_interpolation(h, w, spec.num_grid_per_side, spec.merge_size)
        inputs["pos_interp_indices"] = indices
        inputs["pos_interp_weights"] = weights
    return inputs


def encode_in_chunks(run, spec: "VisionGraphSpec", patches: np.ndarray, grid_thw, max_patches: int):
    """Run a vision graph (`run(feed) -> outputs`) over whole temporal steps of at most `max_patches`
    patches per call (attention there is per frame, so this bounds activations, not results; a frame
    larger than that still goes in one call). Returns visual (N/m², H) [, deepstack (levels, N/m², H)]."""
    t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(3))
    per_step = h * w
    steps_per_call = max(1, int(max_patches) // per_step)
    visual, deepstack = [], []
    for first in range(0, t, steps_per_call):
        last = min(first + steps_per_call, t)
        out = run(vision_graph_inputs(spec, patches[first * per_step : last * per_step], (last - first, h, w)))
        visual.append(out["visual_embeds"])
        if "deepstack_embeds" in out:
            deepstack.append(out["deepstack_embeds"])
    return np.concatenate(visual), (np.concatenate(deepstack, axis=1) if deepstack else None)
