"""One small adapter per Qwen-VL family: where its parts live and how its M-RoPE is laid out.

The exportable modules in `vision.py` and `decoder.py` reuse the Hugging Face submodules (linear
layers, norms, MLPs, mergers) as they are and re-implement only what does not trace: attention over
packed sequences, the KV cache, and the index bookkeeping. Everything family-specific they need is
looked up here, so neither has an if/elif over architectures beyond a table lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from descore_sdk.errors import InvalidInputError
from descore_sdk.runtime.vision_inputs import VisionGraphSpec

FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")

# Rotary variants whose angles are a fixed function of the position (inv_freq and a constant scale), so
# the host-free graph can reproduce them from the module's buffers. Dynamic/LongRoPE rescale by length.
STATIC_ROPE_TYPES = ("default", "linear", "yarn", "llama3")


@dataclass(frozen=True)
class BackboneParts:
    """The pieces of a `Qwen*VLForConditionalGeneration` an exporter needs."""

    family: str
    visual: nn.Module
    text_model: nn.Module
    lm_head: nn.Module
    config: Any  # the backbone's top-level transformers config

    @property
    def text_config(self):
        return self.text_model.config

    @property
    def vision_config(self):
        return self.visual.config

    @property
    def num_deepstack(self) -> int:
        """How many early decoder layers get Qwen3-VL DeepStack features added (0 for other families)."""
        if self.family != "qwen3_vl":
            return 0
        return len(self.vision_config.deepstack_visual_indexes)


def split_model(model, reward_head: nn.Module | None = None) -> tuple[nn.Module, nn.Module]:
    """`(backbone, reward_head)` from a DeScoreModel-like object (`.backbone`, `.reward_head`) or from a
    bare backbone plus an explicit head."""
    backbone = getattr(model, "backbone", model)
    head = reward_head if reward_head is not None else getattr(model, "reward_head", None)
    if head is None:
        raise InvalidInputError(
            "No reward head to export: pass a DeScoreModel (with .reward_head) or reward_head=nn.Linear(hidden, K)."
        )
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise InvalidInputError(f"The reward head must be nn.Linear(hidden, K, bias=False); got {head!r}.")
    return backbone, head


def backbone_parts(backbone: nn.Module) -> BackboneParts:
    """Locate the vision tower, text model and LM head of a supported transformers backbone."""
    config = getattr(backbone, "config", None)
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise InvalidInputError(
            f"Cannot export a backbone of type {family!r}; supported Qwen-VL families are {', '.join(FAMILIES)}."
        )
    inner = backbone.model
    parts = BackboneParts(
        family=family, visual=inner.visual, text_model=inner.language_model, lm_head=backbone.lm_head, config=config
    )
    _check_text_config(parts)
    return parts


def _check_text_config(parts: BackboneParts) -> None:
    cfg = parts.text_config
    rope_type = (cfg.rope_parameters or {}).get("rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        raise InvalidInputError(
            f"The text model uses rope_type={rope_type!r}, whose angles depend on the sequence length; the "
            f"exported decoder supports {', '.join(STATIC_ROPE_TYPES)}."
        )
    layer_types = getattr(cfg, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise InvalidInputError(
            "The text model has sliding-window layers (use_sliding_window=True); the exported decoder implements "
            "full causal attention only. Export a checkpoint with use_sliding_window=False."
        )
    if parts.num_deepstack > cfg.num_hidden_layers:
        raise InvalidInputError(
            f"{parts.num_deepstack} DeepStack levels but only {cfg.num_hidden_layers} decoder layers to add them to."
        )


def mrope_frequency_rows(family: str, mrope_section, num_frequencies: int) -> list[int]:
    """Which position row (0 = temporal, 1 = height, 2 = width) drives each rotary frequency.

    Qwen2-VL and Qwen2.5-VL give contiguous sections of the frequencies to T, H, W in turn
    (`mrope_section = [16, 24, 24]` → 16 T, then 24 H, then 24 W). Qwen3-VL interleaves them: frequency
    `f` is H when `f % 3 == 1` and `f < 3·section[1]`, W when `f % 3 == 2` and `f < 3·section[2]`, else T.
    Worked example, Qwen3-VL with 8 frequencies and section [4, 2, 2]: rows = [T, H, W, T, H, W, T, T].
    """
    section = [int(s) for s in mrope_section]
    if family == "qwen3_vl":
        rows = [0] * num_frequencies
        for axis in (1, 2):
            for f in range(axis, min(3 * section[axis], num_frequencies), 3):
                rows[f] = axis
        return rows
    if sum(section) != num_frequencies:
        raise InvalidInputError(
            f"mrope_section {section} sums to {sum(section)} but the head has {num_frequencies} rotary frequencies."
        )
    return [axis % 3 for axis, width in enumerate(section) for _ in range(width)]


def text_mrope_section(parts: BackboneParts) -> list[int]:
    """The text model's mrope_section, with the modeling code's per-family default."""
    default = [24, 20, 20] if parts.family == "qwen3_vl" else [16, 24, 24]
    return list(parts.text_model.rotary_emb.mrope_section or default)


def vision_graph_spec(parts: BackboneParts) -> VisionGraphSpec:
    """The host-side constants of this backbone's vision graph (see runtime/vision_inputs.py)."""
    vc = parts.vision_config
    spec = dict(
        family=parts.family,
        patch_size=int(vc.patch_size),
        merge_size=int(vc.spatial_merge_size),
        temporal_patch_size=int(vc.temporal_patch_size),
    )
    if parts.family == "qwen2_5_vl":
        spec["window_size"] = int(vc.window_size)
    if parts.family == "qwen3_vl":
        spec["num_grid_per_side"] = int(parts.visual.num_grid_per_side)
    return VisionGraphSpec(**spec)
