"""Test helper: tiny O(1)-weight models exported as bundles once per session, and transformers' own
uncached forward as the parity reference (used by test_onnx_scorer, test_bundle, test_decode_loop).

Weights are redrawn at O(1) scale so logits and rewards are O(1) and the 1e-4 tolerance means
something (default init makes every output ~0.02).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from weights import spread_weights

DIMENSIONS = {"qwen3_vl": ("overall",), "qwen2_5_vl": ("VQ", "MQ", "TA"), "qwen2_vl": ("overall",)}
MAX_FRAMES = 4
MAX_PIXELS = 160 * 160  # a few merged tokens per frame: every code path, little compute


def tiny_bundle(tmp_path_factory, family: str) -> tuple[Path, Path]:
    """(checkpoint folder, bundle folder) of a tiny O(1)-weight model, exported once per session.
    qwen2_vl goes through `descore export` (the CLI), the others through `export_bundle`."""
    root = tmp_path_factory.getbasetemp() / "descore_bundles" / family
    checkpoint, bundle = root / "checkpoint", root / "bundle"
    if (bundle / "manifest.json").is_file():
        return checkpoint, bundle
    from descore_sdk.training.tiny import build_tiny_model

    model = build_tiny_model(family, seed=0, dimension_names=DIMENSIONS[family])
    spread_weights(model, seed=1)
    model.save_pretrained(checkpoint)
    if family == "qwen2_vl":
        from descore_sdk.cli import main

        argv = ["export", str(checkpoint), str(bundle), "--format", "onnx", "--max-frames", str(MAX_FRAMES),
                "--max-pixels", str(MAX_PIXELS)]
        assert main(argv) == 0
    else:
        from descore_sdk.export.bundle import export_bundle

        export_bundle(model, bundle, max_frames=MAX_FRAMES, max_pixels=MAX_PIXELS, progress=False, parity_threads=1)
    return checkpoint, bundle


_MODELS: dict = {}


def torch_model(checkpoint: Path):
    from descore_sdk.training.model import DeScoreModel

    if checkpoint not in _MODELS:
        _MODELS[checkpoint] = DeScoreModel.from_pretrained(checkpoint).eval()
    return _MODELS[checkpoint]


def hf_forward(model, inputs, ids) -> dict:
    """transformers' uncached forward over `ids` with the video of `inputs`: logits (L, V), the final
    hidden state of the last position (H,), and the reward head on it (K,)."""
    backbone = model.backbone
    input_ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))[None]
    kwargs = dict(
        pixel_values_videos=torch.from_numpy(inputs.patches),
        video_grid_thw=torch.from_numpy(np.asarray(inputs.grid_thw))[None],
        mm_token_type_ids=(input_ids == backbone.config.video_token_id).int() * 2,
    )
    if backbone.config.model_type == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = torch.tensor([inputs.second_per_grid])
    with torch.no_grad():
        hidden = backbone.model(input_ids=input_ids, **kwargs).last_hidden_state[0]
        logits = backbone.lm_head(hidden)
        reward = hidden[-1] @ model.reward_head.weight.T
    return {"logits": logits.numpy(), "hidden": hidden[-1].numpy(), "reward": reward.numpy()}
