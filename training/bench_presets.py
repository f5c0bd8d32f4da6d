"""Benchmark presets: seeded random-weight DeScore models big enough for weights and memory traffic to
matter (`descore bench --preset small`), and the text decoder of one written as a plain Hugging Face
causal LM folder, for onnxruntime-genai's model builder (`--baseline ort-genai`).

    small   a Qwen2.5-VL-shaped and a Qwen3-VL-shaped model, 50-100 M parameters each: text width 512,
            10 layers, 8 query / 2 key-value heads (GQA, head_dim 64), MLP 2048; a 4-block vision tower
            (width 384); 8 frames of at most 224² pixels per video (2 fps sampling, capped at 8).

The weights are random (seeded), so the CoT is gibberish and the rewards mean nothing: the presets
measure speed, with every shape of a real Qwen-VL model but fewer, narrower layers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from descore_sdk.config import SamplingConfig
from descore_sdk.errors import InvalidInputError

from .tiny import _check_family
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

# The families of each preset, the first is the "primary" model of a report.
PRESET_FAMILIES = {"small": ("qwen3_vl", "qwen2_5_vl")}

SMALL_TEXT = dict(hidden_size=512, num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=2,
                  head_dim=64, intermediate_size=2048)
SMALL_VISION = dict(depth=4, hidden_size=384, num_heads=6, intermediate_size=1536)
SMALL_FRAMES = 8
SMALL_MAX_PIXELS = 224 * 224
# M-RoPE over head_dim/2 = 32 frequencies, in each family's proportions (real: 16/24/24 of 64 for
# Qwen2.5-VL, 24/20/20 of 64 interleaved for Qwen3-VL).
_MROPE_SECTION = {"qwen2_5_vl": [8, 12, 12], "qwen3_vl": [12, 10, 10]}


def preset_sampling() -> SamplingConfig:
    """At most 8 frames per video (2 fps: 8 frames from clips of 4 s or more, as all the sample videos
    are), at most 224² pixels each."""
    return SamplingConfig(fps=2.0, min_frames=4, max_frames=SMALL_FRAMES,
                          min_pixels=4 * 28 * 28, max_pixels=SMALL_MAX_PIXELS)


def small_backbone_config(family: str, *, attn_implementation: str = "sdpa"):
    """The transformers config of the `small` preset's `family` backbone (qwen3_vl or qwen2_5_vl)."""
    _check_family(family)
    if family not in _MROPE_SECTION:
        raise InvalidInputError(f"The small preset has qwen3_vl and qwen2_5_vl models, not {family!r}.")
    import transformers

    ids = special_token_ids(build_tokenizer(family=family))
    t, v = SMALL_TEXT, SMALL_VISION
    text = dict(
        vocab_size=max(ids.values()) + 1,
        hidden_size=t["hidden_size"],
        intermediate_size=t["intermediate_size"],
        num_hidden_layers=t["num_hidden_layers"],
        num_attention_heads=t["num_attention_heads"],
        num_key_value_heads=t["num_key_value_heads"],
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": _MROPE_SECTION[family]},
        pad_token_id=ids[PAD_TOKEN],
        tie_word_embeddings=False,
    )
    token_ids = dict(image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD],
                     vision_start_token_id=ids[VISION_START], vision_end_token_id=ids[VISION_END])
    if family == "qwen3_vl":
        text.update(head_dim=t["head_dim"])
        vision = dict(depth=v["depth"], hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
                      num_heads=v["num_heads"], patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                      out_hidden_size=t["hidden_size"], num_position_embeddings=256,
                      deepstack_visual_indexes=[1, 3])  # real Qwen3-VL: 3 of 27 blocks feed text layers 0-2
        config_class = transformers.Qwen3VLConfig
    else:
        text.update(bos_token_id=ids[PAD_TOKEN], eos_token_id=ids[EOS_TOKEN])
        vision = dict(depth=v["depth"], hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
                      num_heads=v["num_heads"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                      out_hidden_size=t["hidden_size"], window_size=112, fullatt_block_indexes=[3],
                      tokens_per_second=2)
        config_class = transformers.Qwen2_5_VLConfig
    config = config_class(text_config=text, vision_config=vision, tie_word_embeddings=False, **token_ids)
    config._attn_implementation = attn_implementation
    return config


def count_parameters(family: str) -> dict:
    """{"total", "text", "vision"} parameter counts of the small `family` backbone, from the config
    instantiated on the meta device (no weights are made)."""
    import torch
    import transformers

    from .model import BACKBONE_CLASSES

    config = small_backbone_config(family)
    with torch.device("meta"):
        backbone = getattr(transformers, BACKBONE_CLASSES[family])(config)
    total = sum(p.numel() for p in backbone.parameters())
    vision = sum(p.numel() for p in backbone.model.visual.parameters())
    return {"total": total, "vision": vision, "text": total - vision}


def build_small_model(family: str, out_dir: str | Path, *, seed: int = 0):
    """The small `family` DeScore model with seeded random weights, saved as a checkpoint in out_dir."""
    import torch
    import transformers

    from .model import BACKBONE_CLASSES, DeScoreModel, descore_config_for

    config = small_backbone_config(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = getattr(transformers, BACKBONE_CLASSES[family])(config).eval()
        # transformers' init draws N(0, 0.02): with 10 layers that keeps activations sane in fp32.
    descore_config = descore_config_for(backbone.config, dimension_names=["overall"], sampling=preset_sampling())
    model = DeScoreModel(backbone, build_tokenizer(family=family), descore_config, head_seed=seed)
    model.save_pretrained(out_dir)
    return model


# -- the text decoder as a plain HF causal LM (for onnxruntime-genai's builder) -------------------------
_CAUSAL_LM = {"qwen2_5_vl": ("Qwen2ForCausalLM", "qwen2"), "qwen3_vl": ("Qwen3ForCausalLM", "qwen3")}


def write_text_decoder(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the text decoder of a DeScore checkpoint as a Qwen2ForCausalLM (Qwen2.5-VL) or
    Qwen3ForCausalLM (Qwen3-VL) folder with the SAME weights (embedding incl. `<Reward>`, layers, final
    norm, LM head) and the checkpoint's tokenizer files. For text tokens M-RoPE with equal t/h/w
    positions is plain 1-D RoPE, so the decode step is the same computation."""
    import torch
    from safetensors.torch import load_file, save_file

    checkpoint, out = Path(checkpoint), Path(out_dir)
    full = json.loads((checkpoint / "config.json").read_text())
    family = full["model_type"]
    if family not in _CAUSAL_LM:
        raise InvalidInputError(f"No causal-LM equivalent for {family!r} (qwen2_5_vl and qwen3_vl only).")
    architecture, model_type = _CAUSAL_LM[family]
    text = dict(full["text_config"])
    rope = dict(text.get("rope_parameters") or {})
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": text["vocab_size"],
        "hidden_size": text["hidden_size"],
        "intermediate_size": text["intermediate_size"],
        "num_hidden_layers": text["num_hidden_layers"],
        "num_attention_heads": text["num_attention_heads"],
        "num_key_value_heads": text["num_key_value_heads"],
        "head_dim": text.get("head_dim", text["hidden_size"] // text["num_attention_heads"]),
        "hidden_act": text.get("hidden_act", "silu"),
        "max_position_embeddings": text["max_position_embeddings"],
        "rms_norm_eps": text["rms_norm_eps"],
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": None,
        "attention_bias": family == "qwen3_vl" and bool(text.get("attention_bias", False)),
        "tie_word_embeddings": bool(full.get("tie_word_embeddings", False)),
        "torch_dtype": "float32",
        "bos_token_id": text.get("bos_token_id"),
        "eos_token_id": text.get("eos_token_id"),
        "pad_token_id": text.get("pad_token_id"),
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": text["num_hidden_layers"],
    }
    weights = {}
    from .model import WEIGHTS_FILE

    for name, tensor in load_file(str(checkpoint / WEIGHTS_FILE)).items():
        if name.startswith("model.language_model."):
            weights["model." + name.removeprefix("model.language_model.")] = tensor
        elif name == "lm_head.weight":
            weights[name] = tensor
    if "lm_head.weight" not in weights:  # tied: the embedding is the head
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    config["tie_word_embeddings"] = False
    config["vocab_size"] = int(weights["model.embed_tokens.weight"].shape[0])  # with the <Reward> row
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous().to(torch.float32) for k, v in weights.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "generation_config.json"):
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out / name)
    return out
