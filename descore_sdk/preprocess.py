"""Frames → Qwen-VL vision patches, in numpy.

The layout matches Qwen-VL's image processor exactly: each frame is resized (Pillow bicubic, the
resampler of the reference processor) so both sides are multiples of `patch_size * merge_size`,
rescaled to [0, 1], normalized per channel, then cut into `temporal_patch_size × patch_size²` patches
ordered so that each `merge_size × merge_size` block of patches is contiguous.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InvalidInputError


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 448 * 448) -> tuple[int, int]:
    """Target (height, width) for a frame: multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as the rounding allows (Qwen-VL's rule).

    Example: a 1280×720 frame with factor 28 and max_pixels 448² becomes 476×840 → area 399,840 is over
    the budget, so both sides shrink by sqrt(1280·720 / 200,704) and floor to 28: 336×588.
    """
    if height <= 0 or width <= 0:
        raise InvalidInputError(f"Frame size {height}x{width} is empty; the video has no picture.")
    if max(height, width) / min(height, width) > 200:
        raise InvalidInputError(
            f"Frame aspect ratio {max(height, width) / min(height, width):.0f}:1 is over 200:1, which Qwen-VL "
            "cannot patch; crop the video to a less extreme shape."
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize one uint8 RGB frame (H, W, 3) with Pillow's bicubic filter, as the reference processor does."""
    from PIL import Image

    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), resample=Image.BICUBIC))
