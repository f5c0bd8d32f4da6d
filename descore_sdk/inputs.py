"""Video + prompt → model inputs: the ONE code path shared by the Scorer and by training.

Training must feed the model exactly what the runtime will feed it (same frame sampling, same resize,
same patch order, same prompt ids, same temporal rope scale); any difference is a train/serve skew
that silently costs accuracy. So both call these functions:

    clip = load_clip(video, config)                       # decode + sample (+ resize) frames
    features = clip_features(clip, config)                 # patches, grid, timestamps, sec/grid
    inputs = model_inputs(prompts, features, prompt, "fast")   # ids for scoring

Training caches `VideoFeatures` per video (they do not depend on the prompt) and appends the
rationale and `<Reward>` to the think-layout ids itself (see `descore_sdk.training.batching`).

numpy only (no torch): the runtime imports this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .config import DescoreConfig
from .preprocess import preprocess_frames
from .prompt import PromptBuilder
from .video import VideoClip, load_video

__all__ = ["VideoFeatures", "ModelInputs", "load_clip", "second_per_grid", "clip_features", "video_features", "model_inputs"]


@dataclass(frozen=True)
class VideoFeatures:
    """Everything about one video that the model input needs, independent of the prompt.

    patches:         (N, 3·temporal_patch·patch²) float32, N = t·h·w
    grid_thw:        (3,) int64 patch grid (t, h, w)
    timestamps:      (T,) float64 seconds of each sampled frame (Qwen3-VL writes them into the prompt)
    second_per_grid: seconds spanned by one temporal patch (Qwen2.5-VL's temporal rope scale)
    """

    patches: np.ndarray
    grid_thw: np.ndarray
    timestamps: np.ndarray
    second_per_grid: float

    @property
    def num_frames(self) -> int:
        return int(len(self.timestamps))


@dataclass
class ModelInputs:
    """What a backend receives for one video.

    input_ids: (L,) int64 prompt ids (think: ends with the assistant header; fast: ends with the last
        reward token)
    patches: (N, 3·temporal_patch·patch²) float32; grid_thw: (3,) int64
    second_per_grid: seconds spanned by one temporal patch (Qwen2.5-VL's temporal rope scale)
    prefix_length: leading ids shared by the CoT pass and the scoring pass (user-turn layout: up to the
        template text after the video; elsewhere all of `input_ids`). Adaptive mode reads its fast
        reward right after them.
    rescore: user-turn layout: CoT ids → the scoring pass's full ids (prompt + CoT text + `<Reward>`,
        tokenized whole). None: `<Reward>` follows the CoT in the assistant turn.
    """

    input_ids: np.ndarray
    patches: np.ndarray
    grid_thw: np.ndarray
    second_per_grid: float
    mode: str
    prefix_length: int = -1
    rescore: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self):
        if self.prefix_length < 0:
            self.prefix_length = len(self.input_ids)


def load_clip(
    video,
    config: DescoreConfig,
    *,
    fps: float | None = None,
    min_frames: int | None = None,
    max_frames: int | None = None,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    plan=None,
    resize: str = "pillow",
) -> VideoClip:
    """Decode and sample `video` with the checkpoint's sampling settings; a non-None keyword
    overrides the matching `config.sampling` value (the Scorer passes its ScoreOptions here).
    plan, resize: see `load_video` (the Scorer fits long videos into the context with `plan`)."""
    s = config.sampling
    return load_video(
        video,
        fps=fps or s.fps,
        min_frames=min_frames or s.min_frames,
        max_frames=max_frames or s.max_frames,
        frame_factor=config.vision.temporal_patch_size,
        max_pixels=max_pixels or s.max_pixels,
        min_pixels=min_pixels or s.min_pixels,
        factor=config.vision.factor,
        plan=plan,
        resize=resize,
    )


def second_per_grid(clip: VideoClip, config: DescoreConfig) -> float:
    """Seconds covered by one temporal patch. The sampling rate is frames taken per second of video,
    as qwen-vl-utils computes it (frames kept / duration)."""
    sample_fps = len(clip.frames) / clip.duration_s if clip.duration_s > 0 else clip.source_fps
    return config.vision.temporal_patch_size / sample_fps


def clip_features(clip: VideoClip, config: DescoreConfig, *, max_pixels: int | None = None,
                  min_pixels: int | None = None) -> VideoFeatures:
    """Patches and grid of a decoded clip (`max_pixels` / `min_pixels` override the per-frame bounds)."""
    sampling = config.sampling
    if max_pixels:
        sampling = dataclasses.replace(sampling, max_pixels=max_pixels)
    if min_pixels:
        sampling = dataclasses.replace(sampling, min_pixels=min_pixels)
    patches, grid = preprocess_frames(clip.frames, config.vision, sampling)
    return VideoFeatures(
        patches=patches,
        grid_thw=np.asarray(grid, dtype=np.int64),
        timestamps=np.asarray(clip.timestamps, dtype=np.float64),
        second_per_grid=second_per_grid(clip, config),
    )


def video_features(video, config: DescoreConfig, **sampling_overrides) -> VideoFeatures:
    """`clip_features(load_clip(video, config, ...), config, ...)`; keywords as in `load_clip`."""
    clip = load_clip(video, config, **sampling_overrides)
    return clip_features(clip, config, max_pixels=sampling_overrides.get("max_pixels"))


def model_inputs(prompts: PromptBuilder, features: VideoFeatures, prompt: str, mode: str) -> ModelInputs:
    """Prompt ids for `mode` ("think": ending with the assistant header; "fast": ending with
    `<Reward>`) together with the video's patches."""
    ids = prompts.build(prompt, features.grid_thw, timestamps=features.timestamps, mode=mode)
    rescore = None
    if mode == "think" and prompts.config.layout.cot_position == "user":
        grid, timestamps = features.grid_thw, features.timestamps

        def scoring_ids(cot_ids: np.ndarray) -> np.ndarray:
            return prompts.scoring_ids(prompt, grid, prompts.cot_text(cot_ids), timestamps=timestamps)

        rescore = scoring_ids

    return ModelInputs(
        input_ids=ids.input_ids,
        patches=features.patches,
        grid_thw=features.grid_thw,
        second_per_grid=features.second_per_grid,
        mode=mode,
        prefix_length=ids.prefix_length,
        rescore=rescore,
    )
