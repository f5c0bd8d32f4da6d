"""runtime/vision_inputs.py (numpy) against the index tensors transformers 5.23 computes in torch
(`transformers.vision_utils`), over grids with and without cut-off windows and odd frame counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.vision_utils import (
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
    get_vision_window_index,
)

from descore_sdk.errors import InvalidInputError
from descore_sdk.runtime.vision_inputs import (
    VisionGraphSpec,
    patch_position_ids,
    position_interpolation,
    vision_graph_inputs,
    window_ids,
)

# (t, h, w) patch grids: square, wide, tall, one merged row, sizes that do and do not fill windows.
GRIDS = [(1, 4, 4), (2, 12, 16), (3, 6, 10), (1, 8, 8), (2, 32, 18), (1, 2, 14), (4, 16, 16)]


def test_patch_position_ids_worked_example():
    """The docstring's 4×4, merge-2 layout, written out by hand."""
    expected = [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3],
                [2, 0], [2, 1], [3, 0], [3, 1], [2, 2], [2, 3], [3, 2], [3, 3]]
    np.testing.assert_array_equal(patch_position_ids(4, 4, 2), expected)


@pytest.mark.parametrize("grid", GRIDS)
def test_patch_position_ids_match_transformers(grid):
    t, h, w = grid
    reference = get_vision_position_ids(torch.tensor([grid]), 2).numpy()  # (t·h·w, 2), per-frame ids repeated
    ours = patch_position_ids(h, w, 2)
    assert ours.dtype == np.int64 and ours.shape == (h * w, 2)
    np.testing.assert_array_equal(np.tile(ours, (t, 1)), reference)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("num_grid_per_side", [7, 8, 48])
def test_position_interpolation_matches_transformers(grid, num_grid_per_side):
    t, h, w = grid
    ref_idx, ref_w = get_vision_interpolation_indices_and_weights(
        torch.tensor([grid]), num_grid_per_side, mode="bilinear", align_corners=True, spatial_merge_size=2
    )
    idx, weights = position_interpolation(h, w, num_grid_per_side, 2)
    assert idx.dtype == np.int64 and weights.dtype == np.float32
    np.testing.assert_array_equal(np.tile(idx, (t, 1)), ref_idx.numpy())
    np.testing.assert_array_equal(np.tile(weights, (t, 1)), ref_w.numpy())  # bit for bit


def _reference_window_of_patch(grid, window_size=112, patch_size=14, merge=2) -> np.ndarray:
    """Window number of every patch (original order) from transformers' permutation + cu_window_seqlens."""
    window_index, cu = get_vision_window_index(torch.tensor([grid]), merge, window_size, patch_size)
    unit = merge * merge
    permuted_patch = (window_index.numpy()[:, None] * unit + np.arange(unit)).reshape(-1)  # j-th patch in window order
    window_of_slot = np.searchsorted(cu.numpy(), np.arange(len(permuted_patch)), side="right") - 1
    window = np.empty(len(permuted_patch), dtype=np.int64)
    window[permuted_patch] = window_of_slot
    return window


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("window_size", [112, 56])
def test_window_ids_partition_patches_like_transformers(grid, window_size):
    """Same-window pairs must be exactly transformers' pairs, frame by frame (frames never share windows)."""
    t, h, w = grid
    reference = _reference_window_of_patch(grid, window_size).reshape(t, h * w)
    ours = window_ids(h, w, 2, window_size, 14)
    assert ours.shape == (h * w,) and ours.dtype == np.int64
    same_ours = ours[:, None] == ours[None, :]
    for frame in reference:
        np.testing.assert_array_equal(same_ours, frame[:, None] == frame[None, :])
    assert len(np.unique(reference)) == t * len(np.unique(ours))


def test_vision_graph_inputs_per_family():
    pixels = np.zeros((2 * 4 * 6, 3 * 2 * 14 * 14), dtype=np.float64)
    qwen25 = VisionGraphSpec("qwen2_5_vl", patch_size=14, merge_size=2, temporal_patch_size=2, window_size=112)
    inputs = vision_graph_inputs(qwen25, pixels, (2, 4, 6))
    assert list(inputs) == list(qwen25.input_names) == ["pixel_values", "patch_position_ids", "window_ids"]
    assert inputs["pixel_values"].dtype == np.float32 and inputs["patch_position_ids"].shape == (24, 2)
    qwen3 = VisionGraphSpec("qwen3_vl", patch_size=16, merge_size=2, temporal_patch_size=2, num_grid_per_side=48)
    assert list(vision_graph_inputs(qwen3, pixels[:, :1536], (2, 4, 6))) == list(qwen3.input_names)
    assert VisionGraphSpec.from_dict(qwen3.to_dict()) == qwen3


def test_bad_inputs_raise_typed_errors():
    spec = VisionGraphSpec("qwen2_vl", patch_size=14, merge_size=2, temporal_patch_size=2)
    with pytest.raises(InvalidInputError, match="whole frames"):
        vision_graph_inputs(spec, np.zeros((25, 1176), np.float32), (1, 4, 6))
    with pytest.raises(InvalidInputError, match="multiple of the merge size"):
        patch_position_ids(3, 4, 2)
    with pytest.raises(InvalidInputError, match="window_size"):
        VisionGraphSpec("qwen2_5_vl", patch_size=14, merge_size=2, temporal_patch_size=2)
    with pytest.raises(InvalidInputError, match="Unknown vision family"):
        VisionGraphSpec("llava", patch_size=14, merge_size=2, temporal_patch_size=2)
