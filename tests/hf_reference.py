"""Test helper: transformers' own Qwen-VL processors as the prompt-ids reference, with only the video
processor stubbed to return a known grid (transformers 5's video processors need torchvision, which
does not load here; the grid itself is tested against the reference processor in test_preprocess).
Used by test_prompt.py and authors_formats.py."""

from __future__ import annotations

import importlib

import numpy as np
from transformers.feature_extraction_utils import BatchFeature

PROCESSORS = {
    "qwen2_vl": "transformers.models.qwen2_vl.processing_qwen2_vl:Qwen2VLProcessor",
    "qwen2_5_vl": "transformers.models.qwen2_5_vl.processing_qwen2_5_vl:Qwen2_5_VLProcessor",
    "qwen3_vl": "transformers.models.qwen3_vl.processing_qwen3_vl:Qwen3VLProcessor",
}


class GridOnlyVideoProcessor:
    """Stands in for the torchvision video processor: returns the grid (and metadata) we give it."""

    merge_size = 2
    temporal_patch_size = 2

    def __init__(self, grid, metadata):
        self.grid, self.metadata = grid, metadata

    def __call__(self, videos, **kwargs):
        return BatchFeature({"video_grid_thw": np.array([list(self.grid)]), "video_metadata": [self.metadata]})


def processor_with_grid(family: str, tokenizer, grid, metadata):
    """The family's real processor class (placeholder expansion, Qwen3-VL timestamps, tokenization)
    around `tokenizer`, whose video processor reports `grid`."""
    module, _, name = PROCESSORS[family].partition(":")
    cls = getattr(importlib.import_module(module), name)
    proc = cls.__new__(cls)  # bypass the type checks on the (stubbed) sub-processors
    proc.tokenizer = tokenizer
    proc.image_processor = None
    proc.video_processor = GridOnlyVideoProcessor(grid, metadata)
    proc.chat_template = None
    for attr in ("video", "image"):
        setattr(proc, f"{attr}_token", f"<|{attr}_pad|>")
        setattr(proc, f"{attr}_token_id", tokenizer.convert_tokens_to_ids(f"<|{attr}_pad|>"))
    proc.vision_start_token, proc.vision_end_token = "<|vision_start|>", "<|vision_end|>"
    return proc
