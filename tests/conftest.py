"""Shared fixtures: where the real sample videos live, and CPU thread settings for a 2-core machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _sample_data_dir() -> Path:
    env = os.environ.get("DESCORE_SAMPLE_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "videoalign_examples"


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """The VideoAlign sample folder (example.csv + videos/). Tests that need it fail loudly if it is
    missing: it is part of the project's test data, not an optional extra."""
    path = _sample_data_dir()
    if not (path / "example.csv").is_file():
        pytest.fail(
            f"Sample data not found at {path}. Clone the repo next to the 'shared' folder or set "
            "DESCORE_SAMPLE_DATA to the videoalign_examples directory."
        )
    return path


@pytest.fixture(scope="session")
def sample_videos(sample_data_dir) -> list[Path]:
    return sorted((sample_data_dir / "videos").glob("*.mp4"))


@pytest.fixture(scope="session")
def scale_bundle(tmp_path_factory) -> Path:
    """A tiny random-weight qwen2_5_vl bundle (VQ/MQ/TA heads, 4 frames of ≤160² pixels) for the
    scoring-at-scale tests (test_serve.py, test_dataset_scoring.py): built and exported once per session;
    its torch checkpoint is in the sibling folder "checkpoint"."""
    pytest.importorskip("torch")
    from descore_sdk.export.bundle import export_bundle
    from descore_sdk.training.tiny import build_tiny_model
    from weights import spread_weights

    out = tmp_path_factory.mktemp("scale") / "bundle"
    model = build_tiny_model("qwen2_5_vl", seed=0, dimension_names=("VQ", "MQ", "TA"))
    spread_weights(model, seed=1)  # O(1) rewards, so comparisons at 1e-4 mean something
    model.save_pretrained(out.parent / "checkpoint")  # the same weights for the torch backend
    export_bundle(model, out, max_frames=4, max_pixels=160 * 160, progress=False, parity=False)
    return out
