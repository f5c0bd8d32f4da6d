"""Plain result records returned by `Scorer`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class ScoreResult:
    """The reward of one video.

    `reward` is the headline number: the "overall" dimension when the model has one, else the mean of
    all dimensions. `rewards` maps every dimension name to its value.

    cot_stop: why the CoT ended (think mode; None in fast mode): "stop_token" (the model finished it),
        "budget" (max_new_tokens written without finishing) or "context" (the context filled first).
    cot_repeating: the CoT ends in a repetition loop (see descore_sdk.cot). With "budget"/"context",
        this is a runaway CoT (`cot_runaway`): the reward that follows it is unreliable.
    sampling: what was taken from the video — frames, frame height/width, frames per second of video
        ("fps"), and "fitted": True when frame count and size were lowered to fit the model's context.
    """

    reward: float
    rewards: dict[str, float]
    rationale: str | None
    mode: str  # the path actually taken: "think" or "fast"
    backend: str
    num_prompt_tokens: int
    num_cot_tokens: int
    num_frames: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    video: str | None = None
    cot_stop: str | None = None
    cot_repeating: bool = False
    sampling: dict | None = None

    @property
    def cot_runaway(self) -> bool:
        """The CoT did not end by itself, or ends in a loop."""
        return self.cot_stop in ("budget", "context") or self.cot_repeating

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PairResult:
    """A comparison of two videos for the same prompt; P(A better) = sigmoid(reward_a − reward_b)."""

    a: ScoreResult
    b: ScoreResult

    @property
    def margin(self) -> float:
        return self.a.reward - self.b.reward

    @property
    def prob_a_better(self) -> float:
        m = self.margin
        # Numerically stable logistic for large |margin|.
        return 1.0 / (1.0 + math.exp(-m)) if m >= 0 else math.exp(m) / (1.0 + math.exp(m))

    @property
    def preferred(self) -> str:
        return "A" if self.margin > 0 else "B" if self.margin < 0 else "tie"

    def to_dict(self) -> dict:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "prob_a_better": self.prob_a_better, "preferred": self.preferred}


def headline_reward(rewards: dict[str, float]) -> float:
    if "overall" in rewards:
        return float(rewards["overall"])
    return float(sum(rewards.values()) / len(rewards))
