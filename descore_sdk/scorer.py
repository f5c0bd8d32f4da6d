"""`Scorer`: the one class users meet. Video in, reward out.

    scorer = Scorer.from_pretrained("ckpt_or_bundle", mode="think")
    result = scorer.score("clip.mp4", "a red fox running through snow")
    result.reward, result.rewards, result.rationale, result.timings_ms

The Scorer owns everything that is the same for every backend — frame sampling, patching, the prompt —
and hands the backend token ids and patches. Backends only run the model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import CONFIG_NAME, DescoreConfig
from .errors import DescoreError, InvalidInputError, ModelLoadError
from .options import ScoreOptions
from .preprocess import preprocess_frames
from .prompt import PromptBuilder
from .results import PairResult, ScoreResult, headline_reward
from .video import VideoClip, load_video


@dataclass
class ModelInputs:
    """What a backend receives for one video.

    input_ids: (L,) int64 prompt ids (think: ends with the assistant header; fast: ends with <Reward>)
    patches: (N, 3·temporal_patch·patch²) float32; grid_thw: (3,) int64
    second_per_grid: seconds spanned by one temporal patch (Qwen2.5-VL's temporal rope scale)
    """

    input_ids: np.ndarray
    patches: np.ndarray
    grid_thw: np.ndarray
    second_per_grid: float
    mode: str


@dataclass
class BackendOutput:
    rewards: np.ndarray  # (K,) float
    cot_ids: np.ndarray  # (C,) int64 generated CoT ids, stop token excluded
    timings_ms: dict


# File kind → backend. "auto" picks by what the folder holds; see `_resolve_backend`.
BACKENDS = {
    "torch": "descore_sdk.runtime.torch_backend:TorchBackend",
}


def _load_backend_class(name: str):
    import importlib

    try:
        target = BACKENDS[name]
    except KeyError:
        raise InvalidInputError(f"Unknown backend {name!r}; available: {', '.join(BACKENDS)} (or 'auto').") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _resolve_backend(path: Path, backend: str) -> str:
    if backend != "auto":
        return backend
    if (path / "manifest.json").is_file():
        if "onnxruntime" in BACKENDS:
            return "onnxruntime"
        raise ModelLoadError(f"{path} is an exported bundle, but this SDK build has no onnxruntime backend.")
    if (path / "config.json").is_file():
        return "torch"
    raise ModelLoadError(f"{path} holds neither a bundle (manifest.json) nor a checkpoint (config.json).")


def _describe(video) -> str:
    if isinstance(video, (str, os.PathLike)):
        return str(video)
    if isinstance(video, (bytes, bytearray)):
        return f"<{len(video)} bytes>"
    if isinstance(video, np.ndarray):
        return f"<array {tuple(video.shape)}>"
    return f"<{type(video).__name__}>"


class Scorer:
    """Scores videos with a DeScore checkpoint (torch backend) or exported bundle."""

    def __init__(self, backend, config: DescoreConfig, prompts: PromptBuilder, options: ScoreOptions):
        self.backend = backend
        self.config = config
        self.prompts = prompts
        self.options = options
        self.stop_ids = self._stop_ids(options.stop_tokens)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, backend: str = "auto", device: str = "cpu", **options) -> "Scorer":
        """Load a checkpoint folder (torch) or exported bundle. `options` are `ScoreOptions` fields
        (mode, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop_tokens, fps,
        min_frames, max_frames, max_pixels)."""
        opts = ScoreOptions.from_kwargs(**options)
        path = Path(path)
        if not path.exists():
            raise ModelLoadError(f"Model path {path} does not exist; pass a DeScore checkpoint or bundle folder.")
        if not path.is_dir():
            raise ModelLoadError(f"Model path {path} is a file; pass the folder that holds {CONFIG_NAME}.")
        name = _resolve_backend(path, backend)
        runner = _load_backend_class(name)(path, device=device)
        return cls(runner, runner.descore_config, PromptBuilder.from_dir(path, runner.descore_config), opts)

    # -- public API ----------------------------------------------------------------------------------
    def score(self, video, prompt: str, **overrides) -> ScoreResult:
        """Score one video (path, bytes, binary file object or (T,H,W,3) uint8 array) for `prompt`."""
        options = self.options.replace(**overrides) if overrides else self.options
        timings = {}
        t0 = time.perf_counter()
        self.prompts.instruction(prompt)  # reject an empty prompt before decoding anything
        clip = self._load(video, options)
        t1 = time.perf_counter()
        inputs = self._prepare(clip, prompt, options)
        t2 = time.perf_counter()
        out = self.backend.score(inputs, options, self.stop_ids, self._max_new_tokens(inputs, options))
        t3 = time.perf_counter()
        timings.update(decode=(t1 - t0) * 1e3, preprocess=(t2 - t1) * 1e3, **out.timings_ms, total=(t3 - t0) * 1e3)
        rewards = {name: float(v) for name, v in zip(self.config.dimension_names, np.asarray(out.rewards).reshape(-1))}
        return ScoreResult(
            reward=headline_reward(rewards),
            rewards=rewards,
            rationale=self.prompts.decode(out.cot_ids) if options.mode == "think" else None,
            mode=options.mode,
            backend=self.backend.name,
            num_prompt_tokens=int(len(inputs.input_ids)),
            num_cot_tokens=int(len(out.cot_ids)),
            num_frames=int(len(clip.frames)),
            timings_ms={k: round(v, 3) for k, v in timings.items()},
            video=_describe(video),
        )

    def score_batch(self, videos: Sequence, prompts: str | Sequence[str], **overrides) -> list[ScoreResult]:
        """Score several videos; `prompts` is one prompt for all or one per video."""
        if isinstance(prompts, str):
            prompts = [prompts] * len(videos)
        if len(prompts) != len(videos):
            raise InvalidInputError(f"{len(videos)} videos but {len(prompts)} prompts; pass one prompt or one per video.")
        return [self.score(v, p, **overrides) for v, p in zip(videos, prompts)]

    def compare(self, video_a, video_b, prompt: str, **overrides) -> PairResult:
        """Score two videos for the same prompt; `PairResult.prob_a_better` = sigmoid(r_A − r_B)."""
        return PairResult(a=self.score(video_a, prompt, **overrides), b=self.score(video_b, prompt, **overrides))

    # -- steps ---------------------------------------------------------------------------------------
    def _load(self, video, options: ScoreOptions) -> VideoClip:
        s = self.config.sampling
        return load_video(
            video,
            fps=options.fps or s.fps,
            min_frames=options.min_frames or s.min_frames,
            max_frames=options.max_frames or s.max_frames,
            frame_factor=self.config.vision.temporal_patch_size,
            max_pixels=options.max_pixels or s.max_pixels,
            min_pixels=s.min_pixels,
            factor=self.config.vision.factor,
        )

    def _prepare(self, clip: VideoClip, prompt: str, options: ScoreOptions) -> ModelInputs:
        sampling = self.config.sampling
        if options.max_pixels:
            from dataclasses import replace

            sampling = replace(sampling, max_pixels=options.max_pixels)
        patches, grid = preprocess_frames(clip.frames, self.config.vision, sampling)
        ids = self.prompts.build(prompt, grid, timestamps=clip.timestamps, mode=options.mode)
        return ModelInputs(
            input_ids=ids.input_ids,
            patches=patches,
            grid_thw=np.asarray(grid, dtype=np.int64),
            second_per_grid=self._second_per_grid(clip),
            mode=options.mode,
        )

    def _second_per_grid(self, clip: VideoClip) -> float:
        """Seconds covered by one temporal patch (Qwen2.5-VL's temporal rope scale). The sampling rate is
        frames taken per second of video, as qwen-vl-utils computes it (nframes / total_frames · fps)."""
        sample_fps = len(clip.frames) / clip.duration_s if clip.duration_s > 0 else clip.source_fps
        return self.config.vision.temporal_patch_size / sample_fps

    def _max_new_tokens(self, inputs: ModelInputs, options: ScoreOptions) -> int:
        if inputs.mode == "fast":
            return 0
        wanted = self.config.max_new_tokens if options.max_new_tokens is None else options.max_new_tokens
        room = self.config.max_context - len(inputs.input_ids) - 1  # keep one slot for <Reward>
        return max(0, min(wanted, room))

    def _stop_ids(self, stop_tokens) -> tuple[int, ...]:
        ids = []
        for token in stop_tokens:
            token_id = self.prompts.tokenizer.token_to_id(token)
            if token_id is None:
                raise InvalidInputError(f"Stop token {token!r} is not in the tokenizer; use single special tokens like '<|im_end|>'.")
            ids.append(token_id)
        return tuple(ids)


__all__ = ["Scorer", "ModelInputs", "BackendOutput", "DescoreError"]
