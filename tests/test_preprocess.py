"""Parity of descore_sdk.preprocess with Qwen-VL's own processor.

Reference: transformers 4.57's slow (PIL + numpy) `Qwen2VLImageProcessor` on `videos=[frames]`, run in a
subprocess from a private install (tests/reference/setup_reference_env.sh; the test runs that script
itself when the install is missing). All reference outputs are computed in one subprocess call.

Measured: patches are bit-identical to the reference (max abs diff 0.0) for frames already at the
target size and for real decoded video frames resized on both sides, so the asserts demand exact
equality; `smart_resize` matches the reference's on every size tried.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from descore_sdk.config import DescoreConfig, SamplingConfig, VisionConfig
from descore_sdk.errors import InvalidInputError
from descore_sdk.preprocess import frames_to_patches, preprocess_frames, smart_resize

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT / "tests" / "reference"
REFERENCE_ENV = Path(os.environ.get("DESCORE_REF_ENV", REPO_ROOT / ".cache" / "ref-transformers-4.57"))

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# Unusual constants, to show nothing is tied to the shipped families: temporal_patch 3 pads 4 frames to 6.
ODD_VISION = VisionConfig(patch_size=8, merge_size=3, temporal_patch_size=3, image_mean=(0.1, 0.6, 0.3), image_std=(0.2, 0.9, 0.4))


def family_configs(family: str) -> tuple[VisionConfig, SamplingConfig]:
    config = DescoreConfig.for_family(family)
    return config.vision, config.sampling


@dataclass
class Case:
    """One clip for the reference: `frames_key` in the frames file, processed with these settings."""

    name: str
    frames_key: str
    vision: VisionConfig
    sampling: SamplingConfig
    do_resize: bool

    def request(self) -> dict:
        return dict(
            name=self.name,
            frames_key=self.frames_key,
            patch_size=self.vision.patch_size,
            temporal_patch_size=self.vision.temporal_patch_size,
            merge_size=self.vision.merge_size,
            min_pixels=self.sampling.min_pixels,
            max_pixels=self.sampling.max_pixels,
            image_mean=list(self.vision.image_mean),
            image_std=list(self.vision.image_std),
            do_resize=self.do_resize,
        )


# Frames already at a multiple of the factor: (vision source, T, H, W). Even and odd T, several shapes.
AT_SIZE = [
    ("qwen2_vl", 2, 28, 28),
    ("qwen2_vl", 3, 56, 84),
    ("qwen2_vl", 5, 112, 56),
    ("qwen2_5_vl", 1, 56, 56),
    ("qwen2_5_vl", 4, 84, 140),
    ("qwen3_vl", 2, 32, 32),
    ("qwen3_vl", 3, 64, 96),
    ("qwen3_vl", 4, 128, 64),
    ("qwen3_vl", 1, 96, 160),
    ("odd", 4, 48, 72),
]

# Real frames decoded from the sample videos: (video, frame indices, crop (y, x, h, w) or None).
# Crops make frames smaller than min_pixels, to exercise the upscaling branch of smart_resize.
REAL = [
    ("example_1_A.mp4", (0, 4, 8), None),  # 752x1360, odd frame count
    ("example_1_B.mp4", (0, 3, 6, 9), None),  # 720x1280 (16:9 lands exactly on a factor-28 boundary)
    ("example_2_A.mp4", (0, 5, 10), None),  # 384x672
    ("example_3_B.mp4", (0, 2), None),  # 688x384
    ("example_2_B.mp4", (0, 1, 2), (100, 200, 20, 30)),  # tiny crop → min_pixels upscale
    ("example_3_A.mp4", (0, 4), (300, 500, 50, 70)),
]

# smart_resize queries: common video sizes, tiny, extreme aspect (incl. over 200:1, which must be
# rejected), exact multiples, and random sizes.
_rng = np.random.default_rng(1234)
SIZES = [
    (720, 1280), (1280, 720), (1080, 1920), (1920, 1080), (480, 854), (360, 640), (2160, 3840), (752, 1360),
    (384, 672), (768, 1280), (336, 588), (448, 448), (1, 1), (5, 7), (13, 13), (14, 14), (15, 15), (27, 29),
    (28, 28), (20, 30), (10, 1500), (3, 600), (1, 200), (1, 201), (200, 1), (28, 5600), (5000, 25), (30, 6001),
] + [tuple(int(v) for v in _rng.integers(1, 4000, size=2)) for _ in range(150)]
BUDGETS = [(28, 4 * 28 * 28, 448 * 448), (32, 4 * 32 * 32, 448 * 448), (28, 56 * 56, 28 * 28 * 1280), (14, 1, 10**9)]


def at_size_cases() -> list[Case]:
    cases = []
    for source, t, h, w in AT_SIZE:
        vision, sampling = (ODD_VISION, SamplingConfig()) if source == "odd" else family_configs(source)
        cases.append(Case(f"at_size_{source}_{t}x{h}x{w}", f"at_size_{source}_{t}x{h}x{w}", vision, sampling, do_resize=False))
    # Frames already at their smart_resize target, with resizing on: the reference's resize is a no-op.
    vision, sampling = family_configs("qwen2_vl")
    cases.append(Case("noop_resize_qwen2_vl", "noop_resize", vision, sampling, do_resize=True))
    return cases


def real_cases() -> list[Case]:
    cases = []
    for video, _, _ in REAL:
        for family in FAMILIES:
            vision, sampling = family_configs(family)
            cases.append(Case(f"real_{video}_{family}", f"real_{video}", vision, sampling, do_resize=True))
    return cases


def synthetic_frames() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    frames = {f"at_size_{source}_{t}x{h}x{w}": rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8) for source, t, h, w in AT_SIZE}
    frames["noop_resize"] = rng.integers(0, 256, size=(3, 336, 588, 3), dtype=np.uint8)
    return frames


def decode_frames(path: Path, indices: tuple[int, ...]) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in islice(container.decode(video=0), max(indices) + 1)]
    return np.stack([decoded[i] for i in indices])


# -- reference fixtures ------------------------------------------------------------------------------


def ensure_reference_env() -> Path:
    """The 4.57 reference install; created with the setup script when missing (never skipped)."""
    # The stamp is written last by the setup script and versioned with its requirement list, so an
    # older or half-made install is redone rather than trusted.
    if not (REFERENCE_ENV / "descore-reference-v2.txt").is_file():
        result = subprocess.run(
            ["bash", str(REFERENCE_DIR / "setup_reference_env.sh"), str(REFERENCE_ENV)],
            capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable},
        )
        if result.returncode != 0:
            pytest.fail(f"Could not install the preprocessing reference into {REFERENCE_ENV}:\n{result.stdout}\n{result.stderr}")
    return REFERENCE_ENV


@pytest.fixture(scope="session")
def clips(sample_data_dir) -> dict[str, np.ndarray]:
    frames = synthetic_frames()
    for video, indices, crop in REAL:
        clip = decode_frames(sample_data_dir / "videos" / video, indices)
        if crop is not None:
            y, x, h, w = crop
            clip = np.ascontiguousarray(clip[:, y : y + h, x : x + w])
        frames[f"real_{video}"] = clip
    return frames


@pytest.fixture(scope="session")
def reference(clips, tmp_path_factory) -> dict[str, np.ndarray]:
    env = ensure_reference_env()
    work = tmp_path_factory.mktemp("qwen_reference")
    np.savez(work / "frames.npz", **clips)
    request = {
        "frames_file": str(work / "frames.npz"),
        "videos": [case.request() for case in at_size_cases() + real_cases()],
        "smart_resize": [[h, w, *budget] for budget in BUDGETS for h, w in SIZES],
    }
    (work / "request.json").write_text(json.dumps(request))
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(env), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REFERENCE_DIR / "qwen_processor_reference.py"), str(work / "request.json"), str(work / "out.npz")],
        capture_output=True, text=True, env=child_env, cwd=work,
    )
    if result.returncode != 0:
        pytest.fail(f"Reference processor failed (rc {result.returncode}):\n{result.stderr[-4000:]}")
    with np.load(work / "out.npz") as out:
        return dict(out)


def assert_matches_reference(case: Case, clips, reference) -> None:
    frames = clips[case.frames_key]
    if case.do_resize:
        patches, grid = preprocess_frames(frames, case.vision, case.sampling)
    else:
        patches, grid = frames_to_patches(frames, case.vision)
    ref_patches = reference[f"{case.name}/pixel_values_videos"]
    ref_grid = reference[f"{case.name}/video_grid_thw"]
    assert ref_grid.shape == (1, 3)
    np.testing.assert_array_equal(grid, ref_grid[0])
    assert grid.dtype == np.int64 and patches.dtype == np.float32
    assert patches.shape == ref_patches.shape
    max_diff = float(np.abs(patches - ref_patches).max())
    assert max_diff == 0.0, f"{case.name}: max abs diff {max_diff} vs the reference"


# -- parity tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", at_size_cases(), ids=lambda c: c.name)
def test_patches_match_reference_for_frames_at_target_size(case, clips, reference):
    assert_matches_reference(case, clips, reference)


@pytest.mark.parametrize("case", real_cases(), ids=lambda c: c.name)
def test_resize_and_patches_match_reference_on_real_video(case, clips, reference):
    frames = clips[case.frames_key]
    target = smart_resize(frames.shape[1], frames.shape[2], case.vision.factor, case.sampling.min_pixels, case.sampling.max_pixels)
    assert target != frames.shape[1:3], "real-video cases must exercise the resize"
    assert_matches_reference(case, clips, reference)


def test_smart_resize_matches_reference(reference):
    queries = [(h, w, *budget) for budget in BUDGETS for h, w in SIZES]
    expected = reference["smart_resize"]
    assert expected.shape == (len(queries), 2)
    rejected = 0
    for (h, w, factor, min_pixels, max_pixels), ref in zip(queries, expected):
        if tuple(ref) == (-1, -1):  # the reference raised: aspect ratio over 200
            rejected += 1
            with pytest.raises(InvalidInputError, match="aspect ratio"):
                smart_resize(h, w, factor, min_pixels, max_pixels)
        else:
            assert smart_resize(h, w, factor, min_pixels, max_pixels) == tuple(ref), (h, w, factor, min_pixels, max_pixels)
    assert 0 < rejected < len(queries)


# -- hand-computed checks ----------------------------------------------------------------------------


def test_smart_resize_hand_computed():
    # 720x1280 rounds to 728x1288 (over 448²); beta = sqrt(720·1280/448²) = 15/7; 720/beta = 336 = 12·28,
    # 1280/beta = 597.3 → floor to 21·28 = 588.
    assert smart_resize(720, 1280, 28, 3136, 448 * 448) == (336, 588)
    # 20x30 rounds to 28x28 = 784 < 3136; beta = sqrt(3136/600) = 2.286; 20·beta = 45.7 → ceil to 56,
    # 30·beta = 68.6 → ceil to 84.
    assert smart_resize(20, 30, 28, 3136, 448 * 448) == (56, 84)
    # Already a multiple of the factor and within budget: unchanged.
    assert smart_resize(336, 588, 28, 3136, 448 * 448) == (336, 588)
    # Qwen3-VL factor 32: 720x1280 → beta 15/7 → 336/32 = 10.5 → 320, 597.3/32 = 18.7 → 576.
    assert smart_resize(720, 1280, 32, 4096, 448 * 448) == (320, 576)


def test_patch_layout_hand_indexed():
    """Every patch value checked against an explicit loop over the Qwen-VL layout definition."""
    vision = VisionConfig(patch_size=2, merge_size=2, temporal_patch_size=2, image_mean=(0.25, 0.5, 0.75), image_std=(0.5, 0.25, 2.0))
    p, m, tp = 2, 2, 2
    frames = np.random.default_rng(7).integers(0, 256, size=(3, 8, 12, 3), dtype=np.uint8)
    patches, grid = frames_to_patches(frames, vision)
    gt, gh, gw = 2, 4, 6
    assert tuple(grid) == (gt, gh, gw)
    assert patches.shape == (gt * gh * gw, 3 * tp * p * p)
    padded = np.concatenate([frames, frames[-1:]])  # odd T: the last frame fills the last temporal patch
    row = 0
    for t in range(gt):
        for bh in range(gh // m):
            for bw in range(gw // m):
                for mh in range(m):
                    for mw in range(m):
                        ph, pw = bh * m + mh, bw * m + mw  # patch coordinates in the frame
                        col = 0
                        for c in range(3):
                            for dt in range(tp):
                                for y in range(p):
                                    for x in range(p):
                                        v = padded[t * tp + dt, ph * p + y, pw * p + x, c] / 255.0
                                        want = (v - vision.image_mean[c]) / vision.image_std[c]
                                        assert patches[row, col] == pytest.approx(want, abs=1e-6), (row, col)
                                        col += 1
                        row += 1


def test_preprocess_frames_resizes_to_smart_resize_target():
    vision, sampling = family_configs("qwen3_vl")
    frames = np.random.default_rng(3).integers(0, 256, size=(2, 720, 1280, 3), dtype=np.uint8)
    _, grid = preprocess_frames(frames, vision, sampling)
    assert tuple(grid) == (1, 320 // 16, 576 // 16)


# -- user errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((2, 56, 56, 3), dtype=np.float32), "uint8"),
        (np.zeros((56, 56, 3), dtype=np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((2, 56, 56, 4), dtype=np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((0, 56, 56, 3), dtype=np.uint8), "empty"),
        ([[[[0, 0, 0]]]], "numpy array"),
        (np.zeros((2, 56, 60, 3), dtype=np.uint8), "multiple of 28"),
    ],
)
def test_frames_to_patches_rejects_bad_frames(frames, message):
    with pytest.raises(InvalidInputError, match=message):
        frames_to_patches(frames, VisionConfig())


def test_preprocess_frames_rejects_extreme_aspect():
    with pytest.raises(InvalidInputError, match="aspect ratio"):
        preprocess_frames(np.zeros((1, 1, 300, 3), dtype=np.uint8), VisionConfig(), SamplingConfig())
