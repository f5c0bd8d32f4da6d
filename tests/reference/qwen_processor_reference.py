"""Reference outputs of transformers 4.57's slow (PIL + numpy) Qwen2VLImageProcessor, for parity tests.

Runs in a subprocess with the reference environment first on PYTHONPATH (see setup_reference_env.sh),
never inside the test process, whose transformers is version 5:

    PYTHONPATH=.cache/ref-transformers-4.57 python tests/reference/qwen_processor_reference.py \
        REQUEST.json OUTPUT.npz

REQUEST.json:
    {"frames_file": "frames.npz",            # arrays of (T, H, W, 3) uint8 frames, by key
     "videos": [{"name": "a", "frames_key": "a", "patch_size": 14, "temporal_patch_size": 2,
                 "merge_size": 2, "min_pixels": 3136, "max_pixels": 200704,
                 "image_mean": [...], "image_std": [...], "do_resize": true}, ...],
     "smart_resize": [[height, width, factor, min_pixels, max_pixels], ...]}

OUTPUT.npz holds, per video, `<name>/pixel_values_videos` (N, C·tp·p·p) and `<name>/video_grid_thw`
(1, 3), plus `smart_resize` (S, 2) int64 with (-1, -1) where the reference raised ValueError.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

os.environ.setdefault("USE_TORCH", "0")  # the slow processor is PIL + numpy; keep torch out of it
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers  # noqa: E402
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor, smart_resize  # noqa: E402

REQUIRED_VERSION = "4.57."


def run_video(frames: np.ndarray, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    processor = Qwen2VLImageProcessor(
        patch_size=spec["patch_size"],
        temporal_patch_size=spec["temporal_patch_size"],
        merge_size=spec["merge_size"],
        min_pixels=spec["min_pixels"],
        max_pixels=spec["max_pixels"],
        image_mean=spec["image_mean"],
        image_std=spec["image_std"],
    )
    out = processor(images=None, videos=[frames], do_resize=spec.get("do_resize", True), return_tensors=None)
    return np.asarray(out["pixel_values_videos"]), np.asarray(out["video_grid_thw"])


def run_smart_resize(queries: list[list[int]]) -> np.ndarray:
    results = []
    for height, width, factor, min_pixels, max_pixels in queries:
        try:
            results.append(smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels))
        except ValueError:
            results.append((-1, -1))
    return np.asarray(results, dtype=np.int64).reshape(-1, 2)


def main(request_path: str, output_path: str) -> None:
    if not transformers.__version__.startswith(REQUIRED_VERSION):
        sys.exit(
            f"reference needs transformers {REQUIRED_VERSION}x but imported {transformers.__version__} from "
            f"{transformers.__file__}; put the reference env first on PYTHONPATH"
        )
    with open(request_path) as f:
        request = json.load(f)
    outputs: dict[str, np.ndarray] = {"smart_resize": run_smart_resize(request.get("smart_resize", []))}
    if request.get("videos"):
        with np.load(request["frames_file"]) as frames_file:
            for spec in request["videos"]:
                pixels, grid = run_video(frames_file[spec["frames_key"]], spec)
                outputs[f"{spec['name']}/pixel_values_videos"] = pixels
                outputs[f"{spec['name']}/video_grid_thw"] = grid
    np.savez(output_path, **outputs)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} REQUEST.json OUTPUT.npz")
    main(sys.argv[1], sys.argv[2])
