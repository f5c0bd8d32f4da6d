"""Frames → Qwen-VL vision patches, in numpy.

The layout matches Qwen-VL's image processor exactly: each frame is resized (Pillow bicubic, the
resampler of the reference processor) so both sides are multiples of `patch_size * merge_size`,
rescaled to [0, 1], normalized per channel, then cut into `temporal_patch_size × patch_size²` patches
ordered so that each `merge_size × merge_size` block of patches is contiguous.

Resize parity
-------------
The parity reference (tests/test_preprocess.py) is transformers 4.57's slow `Qwen2VLImageProcessor`
called with `videos=`: it computes one `smart_resize` target from the first frame, resizes every frame
with Pillow bicubic (uint8 in, uint8 out), rescales by 1/255 in float64 and casts to float32, then
normalizes in float32. This module does the same operations in the same precision, so patches and grid
are bit-identical to the reference, on synthetic frames and on frames decoded from real videos.

transformers 5's video processors (`Qwen2VLVideoProcessor`, `Qwen3VLVideoProcessor`) instead resize
torch tensors through torchvision: uint8 frames are cast to float32, resized with antialiased bicubic
(`interpolate(..., antialias=True)`, the same a = -0.5 cubic kernel as Pillow in that mode, but float
arithmetic where Pillow uses fixed-point), clamped and rounded back to uint8. They need torchvision,
which does not load in this environment, so they cannot be the test reference. Measured with that torch
kernel on 3 frames of each sample video, shrunk to the 448² per-frame budget with factors 28 and 32
(tests/reference/measure_torch_resize_gap.py): 90 % of uint8 values identical, 99.996 % within one
level, mean gap 0.1 level, worst 13 levels on a sharp edge. One level is 1/255/std after normalization
(0.015 for the CLIP std of Qwen2/2.5-VL, 0.008 for Qwen3-VL's 0.5): small noise, but not bit-exact.

Pixel budget: DeScore budgets pixels PER FRAME — every frame gets at most `sampling.max_pixels`
(448² = 200,704 by default) and at least `sampling.min_pixels`, regardless of clip length, as in the
DeScore paper. Qwen3-VL's own video processor instead budgets over the whole clip (its `smart_resize`
takes `num_frames` and bounds `frames × height × width`, by default 768·32² pixels in total), so long
clips get smaller frames there; `smart_resize` here is the per-frame rule of Qwen2-VL's processor.
"""

from __future__ import annotations

import math

import numpy as np

from .config import SamplingConfig, VisionConfig
from .errors import InvalidInputError


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 448 * 448) -> tuple[int, int]:
    """Target (height, width) for a frame: multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as the rounding allows (Qwen-VL's rule).

    Example: a 720×1280 (height × width) frame with factor 28 rounds to 728×1288 = 937,664 pixels, over
    the 448² = 200,704 budget, so both sides shrink by beta = sqrt(720·1280 / 200,704) = 15/7 and floor
    to multiples of 28: 720/beta = 336 = 12·28 and 1280/beta = 597.3 → 21·28 = 588, giving 336×588.
    """
    if height <= 0 or width <= 0:
        raise InvalidInputError(f"Frame size {height}x{width} is empty; the video has no picture.")
    if max(height, width) / min(height, width) > 200:
        raise InvalidInputError(
            f"Frame aspect ratio {max(height, width) / min(height, width):.0f}:1 is over 200:1, which Qwen-VL "
            "cannot patch; crop the video to a less extreme shape."
        )
    # Plain rounding, no floor at `factor`: a side under factor/2 rounds to 0, which sends the frame to
    # the min_pixels branch below exactly as the reference processor does.
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    # Only reachable with min_pixels <= 0 (the reference would return a 0-pixel side there).
    return max(factor, h_bar), max(factor, w_bar)


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize one uint8 RGB frame (H, W, 3) with Pillow's bicubic filter, as the reference processor does."""
    from PIL import Image

    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), resample=Image.BICUBIC))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise InvalidInputError(f"Frames must be a numpy array (T, H, W, 3) of uint8, got {type(frames).__name__}.")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InvalidInputError(
            f"Frames must have shape (T, H, W, 3) (RGB, channels last), got {frames.shape}; decode with "
            "format='rgb24' and stack the frames."
        )
    if frames.dtype != np.uint8:
        raise InvalidInputError(f"Frames must be uint8 RGB in 0..255, got dtype {frames.dtype}; convert with .astype(np.uint8).")
    if 0 in frames.shape:
        raise InvalidInputError(f"Frames array {frames.shape} is empty; the video produced no frames.")
    return frames


def _group_to_rows(group: np.ndarray, rows: np.ndarray, vision: VisionConfig, mean: np.ndarray, std: np.ndarray) -> None:
    """Write one temporal group of frames into its patch rows, normalized.

    group: (tp, H, W, C) uint8. rows: (gh·gw, C·tp·p·p) float32, written in place. Row order is
    (h-block, w-block, y-in-block, x-in-block) so each merge_size² block of patches is contiguous; inside
    a row the layout is (channel, time, y, x). mean, std: (C, 1) float32.
    """
    p, m, tp = vision.patch_size, vision.merge_size, vision.temporal_patch_size
    _, h, w, c = group.shape
    # Axes after reshape: 0 time, 1 h-block, 2 y-block-in-merge, 3 y-in-patch, 4 w-block,
    # 5 x-block-in-merge, 6 x-in-patch, 7 channel.
    blocks = group.reshape(tp, h // (p * m), m, p, w // (p * m), m, p, c).transpose(1, 4, 2, 5, 7, 0, 3, 6)
    # One strided pass does both the reorder and the uint8 → float32 cast.
    rows.reshape(blocks.shape)[...] = blocks
    # Same float32 operations as the reference (x / 255, then (x - mean) / std per channel), done in
    # place while the group is cache-hot; float32(v) / 255 equals the reference's
    # float32(float64(v) * (1/255)) for every uint8 v, so the result is bit-identical.
    by_channel = rows.reshape(rows.shape[0], c, -1)
    by_channel /= np.float32(255)
    by_channel -= mean
    by_channel /= std


def frames_to_patches(frames: np.ndarray, vision: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cut frames that already have the target size into normalized Qwen-VL patches.

    frames: (T, H, W, 3) uint8 RGB, H and W multiples of `vision.factor`.
    Returns (patches (N, 3·tp·p·p) float32, grid_thw (3,) int64 = (ceil(T/tp), H/p, W/p)), with
    N = prod(grid_thw), tp = temporal_patch_size and p = patch_size. When T is not a multiple of tp the
    last frame is repeated to fill the final temporal patch, as Qwen-VL's processor does.
    """
    frames = _check_frames(frames)
    p, tp = vision.patch_size, vision.temporal_patch_size
    t, h, w, c = frames.shape
    if h % vision.factor or w % vision.factor:
        raise InvalidInputError(
            f"Frame size {h}x{w} is not a multiple of {vision.factor} (patch_size × merge_size); resize "
            "with smart_resize/resize_frame first, or call preprocess_frames which does both."
        )
    gt, gh, gw = -(-t // tp), h // p, w // p
    rows_per_group = gh * gw
    patches = np.empty((gt * rows_per_group, c * tp * p * p), dtype=np.float32)
    mean = np.asarray(vision.image_mean, dtype=np.float32).reshape(c, 1)
    std = np.asarray(vision.image_std, dtype=np.float32).reshape(c, 1)
    # Group by group: the writes stay local (a whole-clip strided scatter into fresh memory is several
    # times slower, page faults all over the output) and normalization runs on cache-hot rows.
    for g in range(gt):
        group = frames[g * tp : (g + 1) * tp]
        if group.shape[0] < tp:  # ragged tail: repeat the last frame, only for this small group
            group = np.concatenate([group, np.repeat(group[-1:], tp - group.shape[0], axis=0)])
        _group_to_rows(group, patches[g * rows_per_group : (g + 1) * rows_per_group], vision, mean, std)
    return patches, np.array([gt, gh, gw], dtype=np.int64)


def preprocess_frames(frames: np.ndarray, vision: VisionConfig, sampling: SamplingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Resize decoded frames to the Qwen-VL target size and cut them into patches.

    frames: (T, H, W, 3) uint8 RGB, all frames the same size. Every frame is resized (Pillow bicubic) to
    `smart_resize(H, W, vision.factor, sampling.min_pixels, sampling.max_pixels)`, a per-frame pixel
    budget; frames already at that size are used as they are.
    Returns (patches (N, 3·tp·p·p) float32, grid_thw (3,) int64), as `frames_to_patches`.
    """
    frames = _check_frames(frames)
    t, h, w, c = frames.shape
    target_h, target_w = smart_resize(h, w, factor=vision.factor, min_pixels=sampling.min_pixels, max_pixels=sampling.max_pixels)
    if (target_h, target_w) != (h, w):
        resized = np.empty((t, target_h, target_w, c), dtype=np.uint8)
        for i in range(t):
            resized[i] = resize_frame(frames[i], target_h, target_w)
        frames = resized
    return frames_to_patches(frames, vision)
