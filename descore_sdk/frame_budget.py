"""Fitting a long video into the model's context, as Qwen-VL's own frame sampling does.

Qwen-VL's video loader (qwen-vl-utils `fetch_video`) keeps a video under a total pixel budget by
lowering the per-frame resolution (`max_pixels = min(VIDEO_MAX_PIXELS, total_pixels / nframes *
FRAME_FACTOR)`, never under a floor). Here the budget is the model's context itself: what is left of
`max_context` after the prompt text, the CoT budget and the `<Reward>` token. With the checkpoint's
defaults a clip that does not fit

1. first gets smaller frames, down to `FLOOR_TOKENS_PER_GROUP` video tokens per temporal patch group
   (below that a frame shows too little), then
2. fewer frames (evenly spread, as the sampling rule spreads them), down to one temporal patch group.

Only settings the user left at their defaults move: an explicit `max_pixels` fixes the frame size,
an explicit `fps` or `max_frames` fixes the frame count. What cannot fit then still raises
ContextLengthError (from the prompt builder). `ScoreResult.sampling` says what was taken.

Token counts are exact, not estimated: the prompt is built for the candidate frame count with a
minimal video grid (so Qwen3-VL's per-group timestamp text is counted) and the video tokens are added
from `smart_resize`'s frame size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import DescoreConfig
from .errors import ContextLengthError
from .preprocess import smart_resize
from .video import sample_frame_indices

# Lowest per-group video token count the resolution is lowered to before frames are dropped
# (64 tokens = 256x256 pixels with Qwen3-VL's 32-pixel merged patches, 224x224 with Qwen2/2.5-VL's 28).
FLOOR_TOKENS_PER_GROUP = 64
_NEVER_FITS = 1 << 62  # a token count over any context


@dataclass(frozen=True)
class FramePlan:
    """What to take from a video: at most `max_frames` frames of at most `max_pixels` pixels each.
    fitted: True when these are below the requested settings so that the video fits the context."""

    max_frames: int
    max_pixels: int
    fitted: bool


class ContextFit:
    """Called by the decoder once the video's frame count, rate and size are known (before any frame
    is decoded): returns the FramePlan that fits `prompt` + video + `reserved_tokens` into the context.

    fps, min_frames, max_frames, max_pixels: the sampling settings in force (defaults filled in);
    frames_fixed / pixels_fixed: the user set them explicitly, so they must not move.
    reserved_tokens: tokens after the prompt (the CoT budget and <Reward> in think mode; 0 in fast
    mode, whose prompt already ends with <Reward>).
    """

    def __init__(self, prompts, config: DescoreConfig, prompt: str, layout: str, *, fps: float, min_frames: int,
                 max_frames: int, max_pixels: int, reserved_tokens: int, frames_fixed: bool, pixels_fixed: bool):
        self.prompts, self.config, self.prompt, self.layout = prompts, config, prompt, layout
        self.fps, self.min_frames, self.max_frames, self.max_pixels = fps, min_frames, max_frames, max_pixels
        self.reserved_tokens = reserved_tokens
        self.frames_fixed, self.pixels_fixed = frames_fixed, pixels_fixed

    # -- token counting -----------------------------------------------------------------------------
    def _frames(self, total_frames: int, video_fps: float, cap: int) -> np.ndarray:
        return sample_frame_indices(total_frames, video_fps, fps=self.fps, min_frames=min(self.min_frames, cap),
                                    max_frames=cap, frame_factor=self.config.vision.temporal_patch_size)

    def _frame_size(self, height: int, width: int, max_pixels: int) -> tuple[int, int]:
        return smart_resize(height, width, self.config.vision.factor, self.config.sampling.min_pixels, max_pixels)

    def _tokens(self, indices: np.ndarray, video_fps: float, size: tuple[int, int]) -> int:
        """Prompt + video + reserved tokens for these frames at this frame size."""
        vision = self.config.vision
        groups = -(-len(indices) // vision.temporal_patch_size)
        merge = vision.merge_size
        timestamps = indices / video_fps
        # A grid of one merged token per group: the prompt's text (timestamps included) plus `groups`.
        try:
            ids = self.prompts.build(self.prompt, (groups, merge, merge), timestamps=timestamps, mode=self.layout).input_ids
        except ContextLengthError:
            return _NEVER_FITS  # the text alone (e.g. Qwen3-VL's timestamp per group) is over the context
        text = len(ids) - groups
        per_group = (size[0] // vision.factor) * (size[1] // vision.factor)
        return text + groups * per_group + self.reserved_tokens

    def _fits(self, tokens: int) -> bool:
        return tokens + 1 <= self.config.max_context  # the prompt builder's own bound

    # -- planning -----------------------------------------------------------------------------------
    def __call__(self, total_frames: int, video_fps: float, height: int, width: int) -> FramePlan:
        asked = FramePlan(self.max_frames, self.max_pixels, fitted=False)
        indices = self._frames(total_frames, video_fps, self.max_frames)
        size = self._frame_size(height, width, self.max_pixels)
        if self._fits(self._tokens(indices, video_fps, size)):
            return asked
        factor2 = self.config.vision.factor ** 2
        count = len(indices)
        if not self.pixels_fixed:
            # 1. Smaller frames: the largest per-frame budget that fits, not under the floor.
            floor = max(self.config.sampling.min_pixels, min(size[0] * size[1], FLOOR_TOKENS_PER_GROUP * factor2))
            text_and_reserve = self._tokens(indices, video_fps, (0, 0))
            groups = -(-count // self.config.vision.temporal_patch_size)
            room_per_group = (self.config.max_context - 1 - text_and_reserve) // groups
            pixels = room_per_group * factor2
            if text_and_reserve < _NEVER_FITS and pixels >= floor:
                pixels = min(pixels, self.max_pixels)
                if self._fits(self._tokens(indices, video_fps, self._frame_size(height, width, pixels))):
                    return FramePlan(self.max_frames, int(pixels), fitted=True)
            pixels = floor
        else:
            pixels = self.max_pixels
        if self.frames_fixed:
            return FramePlan(self.max_frames, int(pixels), fitted=not self.pixels_fixed)  # may still not fit: the builder says so
        # 2. Fewer frames at that size: the most (a multiple of the temporal patch) that fit.
        size = self._frame_size(height, width, pixels)
        step = self.config.vision.temporal_patch_size
        low, high = 1, count // step  # in temporal groups
        best = None
        while low <= high:
            middle = (low + high) // 2
            if self._fits(self._tokens(self._frames(total_frames, video_fps, middle * step), video_fps, size)):
                best, low = middle, middle + 1
            else:
                high = middle - 1
        if best is None:
            return asked  # nothing fits: the prompt builder raises ContextLengthError with the numbers
        return FramePlan(best * step, int(pixels), fitted=True)


def context_fit_for(prompts, config: DescoreConfig, prompt: str, options, *, reserved_tokens: int) -> ContextFit:
    """The ContextFit of a Scorer call: `options` (ScoreOptions) fill in over `config.sampling`, and
    whatever the user set explicitly stays fixed."""
    s = config.sampling
    return ContextFit(
        prompts, config, prompt, "fast" if options.mode == "fast" else "think",
        fps=options.fps or s.fps, min_frames=options.min_frames or s.min_frames,
        max_frames=options.max_frames or s.max_frames, max_pixels=options.max_pixels or s.max_pixels,
        reserved_tokens=reserved_tokens,
        frames_fixed=options.fps is not None or options.max_frames is not None,
        pixels_fixed=options.max_pixels is not None,
    )


def sampling_report(clip) -> dict:
    """ScoreResult.sampling: frames taken, their size, frames per second of video, whether fitted."""
    frames = clip.frames
    rate = len(frames) / clip.duration_s if clip.duration_s > 0 else clip.source_fps
    return {"frames": int(len(frames)), "height": int(frames.shape[1]), "width": int(frames.shape[2]),
            "fps": round(float(rate), 4), "fitted": bool(getattr(clip, "fitted", False))}
