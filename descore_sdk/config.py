"""`DescoreConfig`: the DeScore-specific half of a checkpoint (descore_config.json).

The backbone's own `config.json` stays a plain Hugging Face config; everything DeScore adds (reward
token, head size, prompt layout, frame sampling, vision preprocessing constants) lives here so the
torch-free runtime can read it without transformers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelLoadError

CONFIG_NAME = "descore_config.json"
# 2: adds `layout` (where the CoT goes, which reward tokens are read, template markers, generation
# settings, normalisation). Version-1 files get the SDK's original layout, filled in explicitly.
CONFIG_FORMAT_VERSION = 2

FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")

DEFAULT_PROMPT_TEMPLATE = (
    "You are judging a generated video against the prompt it was generated from. "
    "Think about its visual quality, motion quality and text alignment, then rate it.\n"
    "Prompt: {prompt}"
)

# Per-family defaults of the Qwen-VL vision preprocessing. Real checkpoints override them from their
# config.json / preprocessor_config.json when converted; these are what the families ship with.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FAMILY_VISION_DEFAULTS = {
    "qwen2_vl": dict(patch_size=14, merge_size=2, temporal_patch_size=2, image_mean=_CLIP_MEAN, image_std=_CLIP_STD),
    "qwen2_5_vl": dict(patch_size=14, merge_size=2, temporal_patch_size=2, image_mean=_CLIP_MEAN, image_std=_CLIP_STD),
    "qwen3_vl": dict(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)),
}
# Qwen2-VL / Qwen2.5-VL chat templates insert this system turn when none is given; Qwen3-VL's does not.
FAMILY_SYSTEM_PROMPT = {
    "qwen2_vl": "You are a helpful assistant.",
    "qwen2_5_vl": "You are a helpful assistant.",
    "qwen3_vl": None,
}


@dataclass
class VisionConfig:
    """Constants of the Qwen-VL patch layout (pixels → patches)."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, float, float] = _CLIP_MEAN
    image_std: tuple[float, float, float] = _CLIP_STD

    @property
    def factor(self) -> int:
        """Resize granularity in pixels: both sides must be multiples of patch × merge."""
        return self.patch_size * self.merge_size


@dataclass
class SamplingConfig:
    """How frames are taken from a video (qwen-vl-utils semantics)."""

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 448 * 448  # per frame, as in the DeScore paper


COT_POSITIONS = ("assistant", "user", "none")
DIMENSION_MAPS = ("all", "per_token")
HEADLINES = ("overall", "mean", "sum")


@dataclass
class PromptLayout:
    """How a checkpoint lays out its scoring prompt and reads its reward (descore_config.json "layout").

    Three layouts exist in the wild, all covered explicitly here:

    - SDK / DeScore RL (`cot_position="assistant"`): `user: {video}{template}` then the assistant turn
      `{CoT}<Reward>`; the CoT is generated and the reward read in one pass over the KV cache.
    - DeScore cold start and the authors' `inference.py` (`cot_position="user"`): the CoT is generated
      after `user: {before}{video}{after}` + the assistant header, then the reward is read from
      `user: {before}{video}{after}{CoT}<Reward>` (no assistant turn at all). The runtime reuses the
      shared prefix: one video prefill, then a short prefill of `{CoT}<Reward>`.
    - VideoAlign's VideoReward (`cot_position="none"`, `dimension_map="per_token"`): no CoT; the
      template holds one reward token per dimension and dimension i is read at token i.

    reward_tokens: tokens whose final hidden states are read (None: the config's `reward_token`).
    dimension_map: "all": every reward-token position gives all head outputs (several positions are
        averaged); "per_token": dimension i comes from the i-th reward token, head output i (or output
        0 when the head has one output, as VideoReward's).
    head_outputs: outputs of `Linear(hidden, head_outputs)`; None: one per dimension.
    video_marker: where the video goes inside the template (None: before the template text).
    prompt_marker: the text replaced by the user's prompt.
    repetition_penalty / temperature: the generation settings the model was released with (the
        Scorer's defaults unless the user sets them). `max_new_tokens` stays at the config's top level.
    cot_after: keep only the CoT text after the last occurrence of this marker (DeScore on a
        "Thinking" backbone keeps what follows "</think>\n\n"); None keeps all of it.
    normalization: {dimension: [mean, std]}: reported reward = (raw − mean) / std.
    headline: the `reward` of a result: "overall" (the dimension called overall, else the mean),
        "mean" of the dimensions, or "sum" of them (VideoReward's Overall = VQ + MQ + TA).
    score_max_pixels / score_min_pixels: per-frame pixel bounds of the SCORING pass when it should
        differ from the CoT pass (the authors generate at their library's default resolution and score
        at ≤ 200,704 pixels). None: both passes share the same frames and one vision encode.
    """

    cot_position: str = "assistant"
    reward_tokens: list[str] | None = None
    dimension_map: str = "all"
    head_outputs: int | None = None
    video_marker: str | None = None
    prompt_marker: str = "{prompt}"
    repetition_penalty: float = 1.0
    temperature: float = 0.0
    cot_after: str | None = None
    normalization: dict[str, list[float]] | None = None
    headline: str = "overall"
    score_max_pixels: int | None = None
    score_min_pixels: int | None = None

    def validate(self, config: "DescoreConfig") -> None:
        """Raise ModelLoadError unless the layout is consistent with the rest of the config."""
        where = f"{CONFIG_NAME} layout"
        if self.cot_position not in COT_POSITIONS:
            raise ModelLoadError(f"{where}: cot_position must be one of {COT_POSITIONS}, got {self.cot_position!r}.")
        if self.dimension_map not in DIMENSION_MAPS:
            raise ModelLoadError(f"{where}: dimension_map must be one of {DIMENSION_MAPS}, got {self.dimension_map!r}.")
        if self.headline not in HEADLINES:
            raise ModelLoadError(f"{where}: headline must be one of {HEADLINES}, got {self.headline!r}.")
        tokens = self.tokens(config)
        if not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise ModelLoadError(f"{where}: reward_tokens must be a non-empty list of token strings, got {tokens!r}.")
        outputs = self.num_head_outputs(config)
        if self.dimension_map == "per_token":
            if len(tokens) != config.num_dims:
                raise ModelLoadError(
                    f"{where}: per_token reads one reward token per dimension, but there are {len(tokens)} tokens "
                    f"{tokens} for {config.num_dims} dimensions {config.dimension_names}."
                )
            if outputs not in (1, config.num_dims):
                raise ModelLoadError(
                    f"{where}: with per_token the head has 1 output or one per dimension ({config.num_dims}), got {outputs}."
                )
        elif outputs != config.num_dims:
            raise ModelLoadError(f"{where}: head_outputs {outputs} must equal the {config.num_dims} dimensions.")
        template = config.prompt_template
        if self.prompt_marker not in template:
            raise ModelLoadError(f"{where}: the prompt template has no prompt marker {self.prompt_marker!r}.")
        if self.video_marker is not None and template.count(self.video_marker) != 1:
            raise ModelLoadError(
                f"{where}: the prompt template must hold the video marker {self.video_marker!r} exactly once "
                f"(found {template.count(self.video_marker)})."
            )
        if self.normalization:
            for name, pair in self.normalization.items():
                if name not in config.dimension_names:
                    raise ModelLoadError(f"{where}: normalization names unknown dimension {name!r}.")
                if len(pair) != 2 or not float(pair[1]) > 0:
                    raise ModelLoadError(f"{where}: normalization for {name!r} must be [mean, std > 0], got {pair!r}.")

    def tokens(self, config: "DescoreConfig") -> list[str]:
        return list(self.reward_tokens) if self.reward_tokens else [config.reward_token]

    def num_head_outputs(self, config: "DescoreConfig") -> int:
        return int(self.head_outputs) if self.head_outputs else config.num_dims


@dataclass
class DescoreConfig:
    """Everything DeScore adds to a Qwen-VL backbone.

    `dimension_names` has one entry per reward output (K = len(dimension_names)); the first is the
    headline `reward` unless a dimension called "overall" exists.
    """

    family: str = "qwen3_vl"
    dimension_names: list[str] = field(default_factory=lambda: ["overall"])
    reward_token: str = "<Reward>"
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    system_prompt: str | None = None
    vision: VisionConfig = field(default_factory=VisionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_new_tokens: int = 4096
    max_context: int = 32768
    method: str = "descore"  # "descore" (think, then score) or "jrm" (scores without a CoT)
    layout: PromptLayout = field(default_factory=PromptLayout)
    format_version: int = CONFIG_FORMAT_VERSION
    sdk_version: str = ""

    @property
    def num_dims(self) -> int:
        return len(self.dimension_names)

    @property
    def reward_tokens(self) -> list[str]:
        """Every token whose hidden state is read for the reward, in dimension order for per_token."""
        return self.layout.tokens(self)

    @property
    def thinks(self) -> bool:
        """Whether the model writes a CoT before scoring (False: fast mode only)."""
        return self.method != "jrm" and self.layout.cot_position != "none"

    @classmethod
    def for_family(cls, family: str, **overrides) -> "DescoreConfig":
        if family not in FAMILIES:
            raise ModelLoadError(f"Unknown model family {family!r}; supported families are {', '.join(FAMILIES)}.")
        vision = VisionConfig(**FAMILY_VISION_DEFAULTS[family])
        sampling = SamplingConfig(min_pixels=4 * vision.factor**2)
        kwargs = dict(family=family, vision=vision, sampling=sampling, system_prompt=FAMILY_SYSTEM_PROMPT[family])
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        from ._version import __version__

        d = dataclasses.asdict(self)
        d["sdk_version"] = __version__
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DescoreConfig":
        d = dict(d)
        version = int(d.get("format_version", 1))
        if version > CONFIG_FORMAT_VERSION:
            raise ModelLoadError(
                f"descore_config.json has format_version {version}, newer than this SDK understands "
                f"({CONFIG_FORMAT_VERSION}). Upgrade descore-sdk."
            )
        family = d.get("family")
        if family not in FAMILIES:
            raise ModelLoadError(f"descore_config.json names unknown family {family!r}; expected one of {FAMILIES}.")
        # Fill keys that older checkpoints lack explicitly from the family defaults.
        base = cls.for_family(family)
        vision = {**dataclasses.asdict(base.vision), **d.pop("vision", {})}
        sampling = {**dataclasses.asdict(base.sampling), **d.pop("sampling", {})}
        # Version 1 had no layout: those checkpoints were all trained in the assistant-turn layout.
        layout_fields = {f.name for f in dataclasses.fields(PromptLayout)}
        layout_dict = d.pop("layout", None) or {}
        if not isinstance(layout_dict, dict) or set(layout_dict) - layout_fields:
            raise ModelLoadError(
                f"descore_config.json layout has unknown keys {sorted(set(layout_dict) - layout_fields)}; "
                "was it written by a newer SDK?"
            )
        layout = PromptLayout(**layout_dict)
        vision["image_mean"] = tuple(vision["image_mean"])
        vision["image_std"] = tuple(vision["image_std"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ModelLoadError(f"descore_config.json has unknown keys {sorted(unknown)}; was it written by a newer SDK?")
        d.setdefault("system_prompt", base.system_prompt)
        d["format_version"] = CONFIG_FORMAT_VERSION
        config = cls(**{**d, "vision": VisionConfig(**vision), "sampling": SamplingConfig(**sampling), "layout": layout})
        config.layout.validate(config)
        return config

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "DescoreConfig":
        path = Path(directory) / CONFIG_NAME
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ModelLoadError(f"{path} not found: {directory} is not a DeScore checkpoint.") from None
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{path} is not valid JSON ({exc}); re-save the checkpoint.") from None
