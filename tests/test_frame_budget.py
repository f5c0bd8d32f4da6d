"""Long videos are fitted into the model's context (descore_sdk/frame_budget.py), as Qwen-VL's own
sampling fits a video into a pixel budget: smaller frames first, then fewer, never silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from descore_sdk.config import DescoreConfig
from descore_sdk.errors import ContextLengthError
from descore_sdk.inputs import clip_features, load_clip, model_inputs
from descore_sdk.options import ScoreOptions
from descore_sdk.prompt import PromptBuilder
from descore_sdk.frame_budget import FLOOR_TOKENS_PER_GROUP, context_fit_for, sampling_report

import media  # noqa: E402  (test helper next to this file)

pytest.importorskip("torch")

PROMPT = "a red fox running through fresh snow"
COT_RESERVE = 129  # a 128-token CoT budget + <Reward>


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_5_vl"])
def tiny(request, tmp_path_factory):
    """(PromptBuilder, DescoreConfig) of a tiny checkpoint with a 4,096-token context: Qwen3-VL (32-pixel
    merged patches, a timestamp per group) and Qwen2.5-VL (28 pixels, no timestamps)."""
    from descore_sdk.training.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("budget")
    build_tiny_model(request.param, seed=0, out_dir=root / "ckpt")
    config = DescoreConfig.load(root / "ckpt")
    assert config.max_context == 4096 and config.sampling.max_pixels == 448 * 448
    return PromptBuilder.from_dir(root / "ckpt", config), config


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """2 minutes at 4 fps, 448x448: 240 frames at the default 2 fps, 120 groups of 196 tokens — about
    six times the tiny model's context."""
    return media.write_video(tmp_path_factory.mktemp("long") / "long.mp4", width=448, height=448, fps=4,
                             num_frames=480, gop=48)


def _prompt_tokens(prompts, config, clip, mode="think") -> int:
    return len(model_inputs(prompts, clip_features(clip, config), PROMPT, mode).input_ids)


def test_without_fitting_the_long_video_is_over_the_context(tiny, long_video):
    prompts, config = tiny
    clip = load_clip(long_video, config)
    assert len(clip.frames) == 240
    with pytest.raises(ContextLengthError):
        _prompt_tokens(prompts, config, clip)


def test_default_settings_are_fitted_into_the_context(tiny, long_video):
    prompts, config = tiny
    fit = context_fit_for(prompts, config, PROMPT, ScoreOptions(), reserved_tokens=COT_RESERVE)
    clip = load_clip(long_video, config, plan=fit)
    report = sampling_report(clip)
    assert report["fitted"] is True
    used = _prompt_tokens(prompts, config, clip) + COT_RESERVE
    assert used + 1 <= config.max_context  # prompt + video + CoT + <Reward> fit
    # The frames still span the whole video, evenly (the sampling rule with fewer frames).
    total = 480
    assert clip.frame_indices[0] == 0 and clip.frame_indices[-1] == total - 1
    expected = np.round(np.linspace(0, total - 1, len(clip.frames))).astype(np.int64)
    assert np.array_equal(clip.frame_indices, expected)
    # Resolution went down to the floor before frames were dropped, and no further.
    h, w = clip.frames.shape[1:3]
    factor = config.vision.factor
    assert (h // factor) * (w // factor) <= FLOOR_TOKENS_PER_GROUP
    assert len(clip.frames) < 240 and len(clip.frames) % 2 == 0
    # Not over-shrunk: one more temporal group at this size would not fit.
    per_group = (h // factor) * (w // factor)
    assert used + 1 + per_group + 8 > config.max_context


def test_a_shorter_video_only_gets_smaller_frames(tiny, tmp_path):
    """48 s: 96 frames at 448² = 48 groups of 196 (Qwen3-VL) or 256 tokens, over 4,096; at ~70 tokens a group all fit."""
    prompts, config = tiny
    video = media.write_video(tmp_path / "mid.mp4", width=448, height=448, fps=4, num_frames=192, gop=48)
    fit = context_fit_for(prompts, config, PROMPT, ScoreOptions(), reserved_tokens=COT_RESERVE)
    clip = load_clip(video, config, plan=fit)
    assert len(clip.frames) == 96 and sampling_report(clip)["fitted"]
    h, w = clip.frames.shape[1:3]
    factor = config.vision.factor
    assert FLOOR_TOKENS_PER_GROUP <= (h // factor) * (w // factor) < (448 // factor) ** 2
    assert _prompt_tokens(prompts, config, clip) + COT_RESERVE + 1 <= config.max_context


def test_a_video_that_fits_is_untouched(tiny, tmp_path):
    prompts, config = tiny
    video = media.write_video(tmp_path / "short.mp4", width=64, height=64, fps=4, num_frames=16, gop=16)
    fit = context_fit_for(prompts, config, PROMPT, ScoreOptions(), reserved_tokens=COT_RESERVE)
    fitted, plain = load_clip(video, config, plan=fit), load_clip(video, config)
    assert not sampling_report(fitted)["fitted"]
    assert np.array_equal(fitted.frames, plain.frames)


def test_explicit_settings_that_cannot_fit_still_raise(tiny, long_video):
    """The user's own max_frames and max_pixels are kept, so the typed error stays."""
    prompts, config = tiny
    options = ScoreOptions(max_frames=240, max_pixels=448 * 448)
    fit = context_fit_for(prompts, config, PROMPT, options, reserved_tokens=COT_RESERVE)
    clip = load_clip(long_video, config, max_frames=240, max_pixels=448 * 448, plan=fit)
    assert len(clip.frames) == 240 and clip.frames.shape[1:3] == (448, 448)
    with pytest.raises(ContextLengthError):
        _prompt_tokens(prompts, config, clip)
