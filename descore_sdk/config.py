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
CONFIG_FORMAT_VERSION = 1

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
    format_version: int = CONFIG_FORMAT_VERSION
    sdk_version: str = ""

    @property
    def num_dims(self) -> int:
        return len(self.dimension_names)

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
        vision["image_mean"] = tuple(vision["image_mean"])
        vision["image_std"] = tuple(vision["image_std"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ModelLoadError(f"descore_config.json has unknown keys {sorted(unknown)}; was it written by a newer SDK?")
        d.setdefault("system_prompt", base.system_prompt)
        return cls(**{**d, "vision": VisionConfig(**vision), "sampling": SamplingConfig(**sampling)})

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
