"""Tiny random-weight Qwen-VL backbones and DeScore models, for tests and examples.

They have the real architecture of each family (transformers' own classes), shrunk to 2 text layers of
width 64 and a 2-block vision tower, so a forward pass takes milliseconds on CPU. Their token ids match
the offline tokenizer from `training/tokenizer.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from descore_sdk.config import FAMILIES
from descore_sdk.errors import InvalidInputError

from .tokenizer import (
    EOS_TOKEN,
    IMAGE_PAD,
    PAD_TOKEN,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    build_tokenizer,
    special_token_ids,
)

TEXT_HIDDEN = 64
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
HEAD_DIM = 16  # TEXT_HIDDEN // TEXT_HEADS
VISION_HIDDEN = 32
VISION_HEADS = 2

# M-RoPE splits the head_dim/2 = 8 rotary frequencies between (time, height, width). Qwen2/2.5-VL use
# contiguous sections (real: 16/24/24 of 64); Qwen3-VL interleaves them and reads the H and W sizes as
# strides of 3, so 4/2/2 gives H and W two frequencies each and time the rest (real: 24/20/20).
_MROPE_SECTION = {"qwen2_vl": [2, 3, 3], "qwen2_5_vl": [2, 3, 3], "qwen3_vl": [4, 2, 2]}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise InvalidInputError(f"Unknown model family {family!r}; use one of {', '.join(FAMILIES)}.")


def tiny_backbone_config(
    family: str,
    vocab_size: int | None = None,
    *,
    tie_word_embeddings: bool = False,
    attn_implementation: str = "sdpa",
):
    """A transformers config for a tiny `family` backbone (Qwen3VLConfig / Qwen2_5_VLConfig / Qwen2VLConfig).

    `vocab_size` defaults to the offline tokenizer's size; the image/video/vision-start/end ids are
    that tokenizer's. `attn_implementation` must run on CPU ("sdpa" or "eager").
    """
    _check_family(family)
    import transformers

    ids = special_token_ids(build_tokenizer(family=family))
    vocab_size = vocab_size if vocab_size is not None else max(ids.values()) + 1
    if vocab_size <= max(ids.values()):
        raise InvalidInputError(
            f"vocab_size={vocab_size} is too small for the tokenizer's special ids; use at least {max(ids.values()) + 1}."
        )

    text = dict(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=TEXT_HEADS,
        num_key_value_heads=TEXT_KV_HEADS,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _MROPE_SECTION[family]},
        pad_token_id=ids[PAD_TOKEN],
        tie_word_embeddings=tie_word_embeddings,
    )
    token_ids = dict(
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
    )
    if family == "qwen3_vl":
        text.update(head_dim=HEAD_DIM)
        vision = dict(
            depth=2,
            hidden_size=VISION_HIDDEN,
            intermediate_size=2 * VISION_HIDDEN,
            num_heads=VISION_HEADS,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=TEXT_HIDDEN,
            num_position_embeddings=64,  # an 8×8 learned grid, interpolated to each frame's size
            deepstack_visual_indexes=[0, 1],  # both vision blocks feed the two text layers
        )
        config_class = transformers.Qwen3VLConfig
    elif family == "qwen2_5_vl":
        text.update(bos_token_id=ids[PAD_TOKEN], eos_token_id=ids[EOS_TOKEN])
        vision = dict(
            depth=2,
            hidden_size=VISION_HIDDEN,
            intermediate_size=2 * VISION_HIDDEN,
            num_heads=VISION_HEADS,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=TEXT_HIDDEN,
            # 56 px windows = 2×2 merged tokens: block 0 attends within windows, block 1 globally.
            window_size=56,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        )
        config_class = transformers.Qwen2_5_VLConfig
    else:  # qwen2_vl
        text.update(bos_token_id=ids[PAD_TOKEN], eos_token_id=ids[EOS_TOKEN])
        vision = dict(
            depth=2,
            embed_dim=VISION_HIDDEN,
            hidden_size=TEXT_HIDDEN,  # Qwen2-VL's vision "hidden_size" is the merger's output width
            mlp_ratio=2,
            num_heads=VISION_HEADS,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        config_class = transformers.Qwen2VLConfig

    config = config_class(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=tie_word_embeddings,
        **token_ids,
    )
    config._attn_implementation = attn_implementation
    return config


def build_tiny_backbone(family: str, *, seed: int = 0, vocab_size: int | None = None, tie_word_embeddings: bool = False):
    """A tiny transformers `*ForConditionalGeneration` with seeded random weights (global RNG untouched)."""
    import torch
    import transformers

    from .model import BACKBONE_CLASSES

    config = tiny_backbone_config(family, vocab_size, tie_word_embeddings=tie_word_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = getattr(transformers, BACKBONE_CLASSES[family])(config)
    return backbone.eval()


def build_tiny_model(
    family: str,
    *,
    seed: int = 0,
    dimension_names: Sequence[str] = ("overall",),
    out_dir: str | Path | None = None,
    tie_word_embeddings: bool = False,
):
    """A tiny `DeScoreModel` with seeded random weights; also saved as a full checkpoint if `out_dir`.

    The `<Reward>` token is added the way it is for a real Qwen checkpoint (one new embedding row).
    """
    from .model import DeScoreModel, descore_config_for

    backbone = build_tiny_backbone(family, seed=seed, tie_word_embeddings=tie_word_embeddings)
    descore_config = descore_config_for(backbone.config, dimension_names=list(dimension_names))
    model = DeScoreModel(backbone, build_tokenizer(family=family), descore_config, head_seed=seed)
    if out_dir is not None:
        model.save_pretrained(out_dir)
    return model.eval()
