"""Scoring options, passed to `Scorer.from_pretrained(**options)` as keyword arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import InvalidInputError

def check_sampling(temperature: float, top_p: float, top_k: int, repetition_penalty: float) -> None:
    """Validate the token-sampling settings (shared by ScoreOptions and runtime.sampling)."""
    if temperature < 0:
        raise InvalidInputError(f"temperature must be ≥ 0 (0 = greedy), got {temperature}.")
    if not 0 < top_p <= 1:
        raise InvalidInputError(f"top_p must be in (0, 1], got {top_p}.")
    if top_k < 0:
        raise InvalidInputError(f"top_k must be ≥ 0 (0 = off), got {top_k}.")
    if repetition_penalty <= 0:
        raise InvalidInputError(f"repetition_penalty must be > 0, got {repetition_penalty}.")


MODES = ("think", "fast", "adaptive")


@dataclass
class ScoreOptions:
    """How a Scorer samples frames and generates the chain of thought.

    Generation is greedy unless `temperature > 0`. `max_new_tokens=None` uses the checkpoint's limit
    (4096 for DeScore). Frame options default to the checkpoint's `descore_config.json` sampling values.

    mode: "think" writes a CoT, then scores; "fast" scores from prompt + video alone; "adaptive" scores
    fast first and writes the CoT only where the fast score leaves the question open:
      - `compare(a, b)`: both videos think when |r_A − r_B| < `adaptive_threshold` (the pair is too
        close to call from the fast scores); otherwise the fast scores are the answer.
      - `score` / `score_batch`: a video thinks when its fast headline reward lies inside
        `adaptive_band = (low, high)` — set it around the reward where your decision flips (e.g. a
        keep/discard threshold ± margin). Rewards are Bradley–Terry logits with no absolute zero, so
        there is no band that suits every model: without one, adaptive scoring returns fast scores.
    `ScoreResult.mode` always says which path was taken ("think" or "fast").

    resize: "pillow" (default) resizes frames exactly as Qwen-VL's image processor does; "swscale" lets
    FFmpeg convert and scale each frame in one pass, ~5x cheaper per 720p frame but not the processor's
    exact pixels (see `descore_sdk.video.load_video`). For throughput where that difference is acceptable.
    """

    mode: str = "think"
    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_tokens: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")
    fps: float | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    max_pixels: int | None = None
    resize: str = "pillow"
    adaptive_threshold: float = 0.5
    adaptive_band: tuple[float, float] | None = None

    def __post_init__(self):
        self.stop_tokens = tuple(self.stop_tokens)
        if self.adaptive_band is not None:
            self.adaptive_band = tuple(self.adaptive_band)
        self.validate()

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {self.mode!r}.")
        check_sampling(self.temperature, self.top_p, self.top_k, self.repetition_penalty)
        if self.max_new_tokens is not None and self.max_new_tokens < 0:
            raise InvalidInputError(f"max_new_tokens must be ≥ 0, got {self.max_new_tokens}.")
        if self.adaptive_threshold < 0:
            raise InvalidInputError(f"adaptive_threshold must be ≥ 0, got {self.adaptive_threshold}.")
        if self.adaptive_band is not None:
            band = self.adaptive_band
            if len(band) != 2 or not all(isinstance(v, (int, float)) for v in band) or band[0] > band[1]:
                raise InvalidInputError(f"adaptive_band must be (low, high) with low ≤ high, got {band!r}.")
        if self.resize not in ("pillow", "swscale"):
            raise InvalidInputError(f"resize must be 'pillow' or 'swscale', got {self.resize!r}.")
        for name in ("fps",):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InvalidInputError(f"{name} must be > 0, got {value}.")
        for name in ("min_frames", "max_frames", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidInputError(f"{name} must be ≥ 1, got {value}.")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "ScoreOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InvalidInputError(f"Unknown scoring option(s) {unknown}; valid options are {sorted(known)}.")
        return cls(**kwargs)

    def replace(self, **changes) -> "ScoreOptions":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
