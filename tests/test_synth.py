"""Synthetic benchmark: videos decode, degradations are measurable in the decoded pixels, labels follow
the factors, splits keep their factor sets apart, and the same seed writes the same bytes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from descore_sdk.errors import InvalidInputError
from descore_sdk.training.data import read_pairs
from descore_sdk.training.synth import (
    COLORS,
    Scene,
    checklist_fidelity,
    encode_mp4,
    generate_benchmark,
    realise_spec,
    read_checklist,
    render_frames,
    with_shared_faults,
    without_path,
)

# Written independently of synth.py's tables: which dimension each factor hurts, and the split plan.
DIMENSION_OF = {"blur": "VQ", "noise": "VQ", "color_cast": "VQ", "frame_drop": "MQ", "jitter": "MQ",
                "wrong_color": "TA", "wrong_shape": "TA", "wrong_motion": "TA"}
IN_DISTRIBUTION = {"blur", "noise", "frame_drop", "jitter", "wrong_color", "wrong_shape"}
HELD_OUT = {"color_cast", "wrong_motion"}
SIZE, FRAMES = 64, 8
# The tints, written out by hand: warm (+30, +10, -30), cool (-30, 0, +30), green (-15, +30, -15) per
# severity, as the two numbers a background strip shows: (R - B, G - (R + B) / 2) per severity.
TINT_SHIFT = {"warm": (60, 10), "cool": (-60, 0), "green": (0, 45), None: (0, 0)}


def centroid_direction(frames: np.ndarray) -> str:
    """Which way the object travels: the centroid of the pixels far from the frame's median colour (the
    background's, a colour cast included; the checker is ±20, the objects are saturated colours) in the
    first and the last frame, the larger axis of the displacement named by hand (y grows downwards)."""
    centres = []
    for frame in (frames[0], frames[-1]):
        base = np.median(frame.reshape(-1, 3), axis=0)
        ys, xs = np.nonzero(np.abs(frame - base).max(axis=-1) > 50)  # the checker: ≤ 40 from either level
        centres.append((xs.mean(), ys.mean()))
    dx, dy = centres[1][0] - centres[0][0], centres[1][1] - centres[0][1]
    if abs(dx) > abs(dy):
        return "left to right" if dx > 0 else "right to left"
    return "top to bottom" if dy > 0 else "bottom to top"


def strip_tint(frames: np.ndarray, motion: str) -> tuple[float, float]:
    """(R - B, G - (R + B) / 2) of the two background-only edge lines beside an object's path: rows 0-1
    for a sideways path, columns 0-1 for a vertical one (the cross axis is centred, so the object stays
    ≥ 4 px away); over 32+ px the checker averages out, so on gray (120) this is the tint alone."""
    strip = frames[:, :2] if motion in ("left to right", "right to left") else frames[:, :, :2]
    r, g, b = strip.mean(axis=(0, 1, 2))
    return r - b, g - (r + b) / 2


def decode(path: Path) -> np.ndarray:
    """(T, H, W, 3) float RGB frames decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float64)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, generate_benchmark(out, n_train=14, n_test=8, n_heldout=8, seed=3)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Decoded clean videos and degraded twins rendered from the same seed (same geometry)."""
    folder = tmp_path_factory.mktemp("twins")

    def make(scene: Scene, factors: dict, seed: int = 11):
        spec = realise_spec(scene, factors, seed, FRAMES)
        name = "_".join(f"{k}{v}" for k, v in factors.items()) or "clean"
        path = folder / f"{scene.shape}_{scene.color}_{scene.background}_{name}_{seed}.mp4"
        encode_mp4(render_frames(spec, width=SIZE, height=SIZE, num_frames=FRAMES), path, 4.0)
        return spec, decode(path)

    return make


def high_frequency_energy(frames: np.ndarray) -> float:
    """Mean squared difference between horizontally and vertically adjacent gray pixels."""
    gray = frames.mean(axis=-1)
    return float(np.mean(np.diff(gray, axis=1) ** 2) + np.mean(np.diff(gray, axis=2) ** 2))


def color_mask(frames: np.ndarray, color: str, tolerance: float = 40.0) -> np.ndarray:
    return np.linalg.norm(frames - np.array(COLORS[color], np.float64), axis=-1) < tolerance


def centroids(mask: np.ndarray) -> np.ndarray:
    """(T, 2) x, y centre of the mask per frame."""
    out = []
    for frame in mask:
        ys, xs = np.nonzero(frame)
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


def shape_from_fill(mask: np.ndarray) -> str:
    """Area / bounding-box area: circle π/4 ≈ 0.79, square 1, triangle 0.5 (measured 0.55-0.6 after
    h264: the rasterised apex adds a little)."""
    ratios = []
    for frame in mask:
        ys, xs = np.nonzero(frame)
        ratios.append(frame.sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1)))
    ratio = float(np.median(ratios))
    return "triangle" if ratio < 0.67 else "circle" if ratio < 0.9 else "square"


# ----------------------------------------------------------------------------------------------------
# The written benchmark


def test_splits_decode_and_read_back(bench):
    out, paths = bench
    assert {k: p.name for k, p in paths.items()} == {
        "train": "train.jsonl", "test_id": "test_id.jsonl", "test_heldout": "test_heldout.jsonl", "info": "benchmark.json"}
    counts = {"train": 14, "test_id": 8, "test_heldout": 8}
    for split, n in counts.items():
        pairs = read_pairs(paths[split], on_missing="error", check_decodable=True)
        assert len(pairs) == n
        for pair in pairs:
            assert pair.video_a != pair.video_b
            assert pair.video_a.stat().st_size < 60_000  # small: noisy clips are the largest
            frames = decode(pair.video_a)
            assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    info = json.loads(paths["info"].read_text())
    assert set(info["heldout_factors"]) == HELD_OUT


def test_labels_follow_the_factors(bench):
    _, paths = bench
    kinds = set()
    for split in ("train", "test_id", "test_heldout"):
        for pair in read_pairs(paths[split]):
            bad = {}
            for side in ("a", "b"):
                factors = pair.meta[f"meta_{side}"]["factors"]
                bad[side] = {dim: 0 for dim in ("VQ", "MQ", "TA")}
                for name, severity in factors.items():
                    bad[side][DIMENSION_OF[name]] += severity
            expected = {}
            for dim in ("VQ", "MQ", "TA"):
                expected[dim] = "A" if bad["a"][dim] < bad["b"][dim] else "B" if bad["a"][dim] > bad["b"][dim] else "same"
            total_a, total_b = sum(bad["a"].values()), sum(bad["b"].values())
            expected["overall"] = "A" if total_a < total_b else "B" if total_a > total_b else "same"
            assert pair.labels == expected, pair.row
            # No pair contradicts itself: overall never goes against a decided dimension.
            decided = {v for k, v in pair.labels.items() if k != "overall" and v != "same"}
            assert decided in (set(), {pair.labels["overall"]})
            kinds.add(pair.meta["kind"])
            # Rationales describe what is actually drawn, and say so when it disagrees with the prompt.
            for side, text in (("a", pair.rationale_a), ("b", pair.rationale_b)):
                meta = pair.meta[f"meta_{side}"]
                scene = pair.meta["scene"]
                assert text.startswith(f"The prompt asks for a {scene['color']} {scene['shape']} moving {scene['motion']} "
                                       f"on a {scene['background']} background. ")
                assert f"colour asked {scene['color']}, seen {meta['color']}, " in text
                assert f"shape asked {scene['shape']}, seen {meta['shape']}, " in text
                assert f"path asked {scene['motion']}, seen {meta['motion']}" in text
                mismatch = (meta["color"], meta["shape"], meta["motion"]) != tuple(
                    pair.meta["scene"][k] for k in ("color", "shape", "motion"))
                assert ("matches the prompt" in text) != mismatch
    assert kinds == {"clean_vs_degraded", "degraded_vs_worse", "tie"}


def test_split_factor_sets_are_disjoint_as_documented(bench):
    _, paths = bench
    used = {}
    scenes = {}
    for split in ("train", "test_id", "test_heldout"):
        pairs = read_pairs(paths[split])
        used[split] = {f for p in pairs for side in ("a", "b") for f in p.meta[f"meta_{side}"]["factors"]}
        scenes[split] = {tuple(p.meta["scene"][k] for k in ("shape", "color", "motion", "background")) for p in pairs}
    assert used["train"] <= IN_DISTRIBUTION and used["test_id"] <= IN_DISTRIBUTION
    assert used["test_heldout"] <= HELD_OUT and used["test_heldout"]
    assert not used["train"] & used["test_heldout"]
    # New scenes in the test splits (far fewer scenes used here than combinations exist).
    assert not scenes["train"] & scenes["test_id"] and not scenes["train"] & scenes["test_heldout"]


def test_same_seed_same_bytes_other_seed_differs(bench, tmp_path):
    out, paths = bench
    again = generate_benchmark(tmp_path / "again", n_train=14, n_test=8, n_heldout=8, seed=3)
    first_files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    second_files = sorted(p.relative_to(again["train"].parent) for p in again["train"].parent.rglob("*") if p.is_file())
    assert first_files == second_files
    for rel in first_files:
        assert (out / rel).read_bytes() == (again["train"].parent / rel).read_bytes(), rel
    other = generate_benchmark(tmp_path / "other", n_train=14, n_test=0, n_heldout=0, seed=4)
    assert other["train"].read_text() != paths["train"].read_text()
    assert other["test_id"].read_text() == ""


def test_bad_arguments():
    with pytest.raises(InvalidInputError):
        generate_benchmark("/tmp/unused", size=(63, 64))
    with pytest.raises(InvalidInputError):
        generate_benchmark("/tmp/unused", num_frames=2)
    with pytest.raises(InvalidInputError):
        realise_spec(Scene("circle", "red", "left to right", "gray"), {"blur": 3}, 0, FRAMES)


# ----------------------------------------------------------------------------------------------------
# Each degradation, measured in decoded pixels against its clean twin

SCENE = Scene("circle", "red", "left to right", "gray")


def test_blur_lowers_and_noise_raises_high_frequency_energy(twins):
    _, clean = twins(SCENE, {})
    base = high_frequency_energy(clean)
    blur1, blur2 = (high_frequency_energy(twins(SCENE, {"blur": s})[1]) for s in (1, 2))
    noise1, noise2 = (high_frequency_energy(twins(SCENE, {"noise": s})[1]) for s in (1, 2))
    # Measured: clean ≈ 100, blur 23 / 9, noise 430 / 1430.
    assert blur2 < blur1 < 0.5 * base
    assert noise2 > noise1 > 2 * base


@pytest.mark.parametrize("seed, tint", [(1, "warm"), (2, "cool"), (4, "green")])
def test_color_cast_shifts_channel_means(twins, seed, tint):
    _, clean = twins(SCENE, {}, seed)
    spec, cast = twins(SCENE, {"color_cast": 2}, seed)
    assert spec.tint == tint  # these seeds cover every tint
    shift = (cast - clean).mean(axis=(0, 1, 2))
    # Main channels of the severity-2 tints (±60, the others ±0-30), on a gray background that does
    # not clip: warm = R up, B down; cool = R down, B up; green = G up, R and B down.
    expected_sign = {"warm": (1, 0, -1), "cool": (-1, 0, 1), "green": (-1, 1, -1)}[spec.tint]
    for channel, sign in enumerate(expected_sign):
        if sign:
            assert sign * shift[channel] > 20, (spec.tint, shift)
    assert np.linalg.norm(shift) > 50


def test_frame_drops_repeat_frames(twins):
    _, clean = twins(SCENE, {})
    spec, dropped = twins(SCENE, {"frame_drop": 2})
    step = np.abs(np.diff(dropped, axis=0)).mean(axis=(1, 2, 3))  # (T-1,) change between frames
    clean_step = np.abs(np.diff(clean, axis=0)).mean(axis=(1, 2, 3))
    repeats = [t + 1 for t in range(len(step)) if step[t] < 0.5]
    assert len(spec.dropped) == 4 and repeats == spec.dropped
    assert spec.dropped == list(range(spec.dropped[0], spec.dropped[0] + 4))  # one freeze, not scattered repeats
    assert clean_step.min() > 2.0  # the clean object moves every frame


def test_jitter_shakes_the_path(twins):
    def worst_deviation_from_straight_line(frames):
        path = centroids(color_mask(frames, "red"))
        t = np.arange(len(path))
        return max(np.abs(path[:, k] - np.polyval(np.polyfit(t, path[:, k], 1), t)).max() for k in range(2))

    clean = worst_deviation_from_straight_line(twins(SCENE, {})[1])
    mild = worst_deviation_from_straight_line(twins(SCENE, {"jitter": 1})[1])
    strong = worst_deviation_from_straight_line(twins(SCENE, {"jitter": 2})[1])
    assert clean < 0.5 < 1.0 < mild < strong  # measured ≈ 0.15, 3.5, 6.6 px


def background_shifts(frames: np.ndarray, object_color: str, search: int = 4) -> list[tuple[int, int]]:
    """Per pair of consecutive frames, the integer (dx, dy), |dx|, |dy| ≤ `search`, that best maps frame
    t's background onto frame t+1's (object pixels and a border excluded): how the camera moved. The
    8 px checker repeats under an (8, 8) shift, so a search wider than ±4 would find aliases."""
    gray = frames.mean(axis=-1)
    keep = ~color_mask(frames, object_color, tolerance=80.0)
    b = search
    shifts = []
    for t in range(len(frames) - 1):
        best, best_err = None, np.inf
        for dy in range(-b, b + 1):
            for dx in range(-b, b + 1):
                # The picture content drifts opposite to the camera: frame t+1 at (y, x) shows what frame t
                # showed at (y + dy, x + dx).
                later = gray[t + 1, b:-b, b:-b]
                earlier = gray[t, b + dy:gray.shape[1] - b + dy, b + dx:gray.shape[2] - b + dx]
                valid = keep[t + 1, b:-b, b:-b] & keep[t, b + dy:gray.shape[1] - b + dy, b + dx:gray.shape[2] - b + dx]
                err = np.abs(later - earlier)[valid].mean()
                if err < best_err:
                    best, best_err = (dx, dy), err
        shifts.append(best)
    return shifts


def test_camera_pans_and_shakes(twins):
    """The background drifts by the same whole-pixel step every frame (a pan); a freeze stops it; camera
    shake (jitter) makes the steps irregular. Measured by matching the decoded background, frame to frame."""
    _, clean = twins(SCENE, {})
    steps = background_shifts(clean, SCENE.color)
    assert len(set(steps)) == 1 and steps[0] != (0, 0), steps  # synth.PAN_PX = (3, 2) → (3, 2)
    spec, frozen = twins(SCENE, {"frame_drop": 2})
    frozen_steps = background_shifts(frozen, SCENE.color)
    assert [t + 1 for t, s in enumerate(frozen_steps) if s == (0, 0)] == spec.dropped
    _, shaken = twins(SCENE, {"jitter": 2})
    shaken_steps = background_shifts(shaken, SCENE.color)
    assert sum(step != steps[0] for step in shaken_steps) >= 4, shaken_steps  # shakes of up to ±8 px


@pytest.mark.parametrize("scene", [SCENE, Scene("square", "green", "top to bottom", "black"),
                                   Scene("triangle", "yellow", "bottom to top", "white")])
def test_wrong_object_differs_in_colour_or_shape(twins, scene):
    _, clean = twins(scene, {})
    assert shape_from_fill(color_mask(clean, scene.color)) == scene.shape
    assert color_mask(clean, scene.color).sum(axis=(1, 2)).min() > 100

    spec, recoloured = twins(scene, {"wrong_color": 1})
    assert spec.color != scene.color
    assert color_mask(recoloured, scene.color).sum() == 0  # the prompt's colour is nowhere
    assert color_mask(recoloured, spec.color).sum(axis=(1, 2)).min() > 100

    spec, reshaped = twins(scene, {"wrong_shape": 1})
    assert spec.shape != scene.shape
    assert shape_from_fill(color_mask(reshaped, scene.color)) == spec.shape


@pytest.mark.parametrize("seed", [1, 2, 4])  # → right to left, top to bottom, bottom to top
def test_wrong_motion_moves_another_way(twins, seed):
    unit = {"left to right": (1, 0), "right to left": (-1, 0), "top to bottom": (0, 1), "bottom to top": (0, -1)}
    _, clean = twins(SCENE, {}, seed)
    spec, moved = twins(SCENE, {"wrong_motion": 1}, seed)
    assert spec.motion != SCENE.motion
    for frames, motion in ((clean, SCENE.motion), (moved, spec.motion)):
        path = centroids(color_mask(frames, "red"))
        travel = path[-1] - path[0]
        direction = travel / np.linalg.norm(travel)
        assert np.dot(direction, unit[motion]) > 0.95, (motion, travel)
        assert np.linalg.norm(travel) > 20


def test_without_path_keeps_the_seen_path_and_drops_the_asked_one(bench):
    """Hand-checked: the prompt loses exactly " moving <path>", and so does the rationales' restated
    request in their first sentence; they replace the path's checklist item by "path not asked, seen <path>"
    (the path the clip shows, from its record); labels, videos and the rest of the text are unchanged."""
    _, paths = bench
    pairs = read_pairs(paths["train"])
    for pair in pairs[:6]:
        scene = pair.meta["scene"]
        out = without_path(pair)
        assert out.prompt == f"a {scene['color']} {scene['shape']} on a {scene['background']} background"
        assert pair.prompt == f"a {scene['color']} {scene['shape']} moving {scene['motion']} on a {scene['background']} background"
        assert (out.video_a, out.video_b, out.labels) == (pair.video_a, pair.video_b, pair.labels)
        for side, before, after in (("a", pair.rationale_a, out.rationale_a), ("b", pair.rationale_b, out.rationale_b)):
            shown = pair.meta[f"meta_{side}"]["motion"]
            assert shown == scene["motion"]  # train clips move the way their scene says (no wrong motion)
            item = f"path asked {scene['motion']}, seen {shown}, match"
            assert item in before and after == before.replace(item, f"path not asked, seen {shown}").replace(
                f" moving {scene['motion']} on a ", " on a ", 1)
            # The restated request loses the path too; the clip's own colour and shape are in the checklist.
            assert before.startswith(f"The prompt asks for a {scene['color']} {scene['shape']} moving {scene['motion']} on a ")
            assert after.startswith(f"The prompt asks for a {scene['color']} {scene['shape']} on a {scene['background']} background. ")
            assert f"colour asked {scene['color']}, seen {pair.meta[f'meta_{side}']['color']}" in after
    with pytest.raises(InvalidInputError, match="synthetic"):
        without_path(dataclasses.replace(pairs[0], meta={}))


@pytest.mark.parametrize("faults", [("color_cast",), ("wrong_motion",), ("color_cast", "wrong_motion")])
def test_shared_faults_show_on_both_clips_and_keep_the_labels(tmp_path, faults):
    """`with_shared_faults` on every pair of a small train split. A shared cast: both new clips show the
    same tint in their decoded pixels (the hand-written offsets, on gray scenes without shake). A shared
    wrong path: both clips' objects move the same way, not the scene's, measured as the direction of the
    object's centroid in the decoded frames. Both records and both rationales say so (hand-written
    words), the factors are the pair's own plus the faults, and the labels `generate_benchmark`
    computed for the original pair still hold."""
    paths = generate_benchmark(tmp_path, n_train=40, n_test=0, n_heldout=0, seed=5, size=(32, 32), num_frames=5)
    rng = np.random.default_rng(0)
    words = {"warm": "an orange tint", "cool": "a blue tint", "green": "a green tint"}
    checked, drawn = {"color_cast": 0, "wrong_motion": 0}, set()
    for index, pair in enumerate(read_pairs(paths["train"])):
        out = with_shared_faults(pair, faults, rng, tmp_path, f"t{index}", size=(32, 32), num_frames=5, fps=2.0)
        shared, scene = out.meta["shared"], pair.meta["scene"]
        assert set(shared) == set(faults)
        assert out.labels == pair.labels and out.prompt == pair.prompt
        assert "colour cast" not in pair.rationale_a + pair.rationale_b and "mismatch" not in (pair.rationale_a + pair.rationale_b).split("path asked")[-1]
        extra = {}
        if "color_cast" in shared:
            extra["color_cast"] = shared["color_cast"]["severity"]
            drawn.add(shared["color_cast"]["tint"])
        if "wrong_motion" in shared:
            extra["wrong_motion"] = 1
            assert shared["wrong_motion"]["motion"] != scene["motion"]
            drawn.add(shared["wrong_motion"]["motion"])
        for side, video, rationale in (("a", out.video_a, out.rationale_a), ("b", out.video_b, out.rationale_b)):
            meta, before = out.meta[f"meta_{side}"], pair.meta[f"meta_{side}"]
            assert meta["factors"] == {**before["factors"], **extra}
            assert (meta["shape"] != scene["shape"]) == ("wrong_shape" in before["factors"])
            assert video.parent == tmp_path / "videos" / "train_shared" and video.is_file()
            frames = decode(video)
            if "color_cast" in shared:
                cast = shared["color_cast"]
                assert meta["tint"] == cast["tint"]
                strength = "strong" if cast["severity"] == 2 else "noticeable"
                assert f"the whole frame has a {strength} colour cast, {words[cast['tint']]}" in rationale
                if scene["background"] == "gray" and "jitter" not in meta["factors"]:
                    red_blue, green = strip_tint(frames, meta["motion"])
                    expected = TINT_SHIFT[cast["tint"]]
                    assert abs(red_blue - expected[0] * cast["severity"]) < 12, (video, red_blue, green)
                    assert abs(green - expected[1] * cast["severity"]) < 12, (video, red_blue, green)
                    checked["color_cast"] += 1
            else:
                assert meta["tint"] is None
            if "wrong_motion" in shared:
                moved = shared["wrong_motion"]["motion"]
                assert meta["motion"] == moved
                assert f"path asked {scene['motion']}, seen {moved}, mismatch" in rationale
                assert f"the prompt asks for movement {scene['motion']} but the object moves {moved}" in rationale
                if not ({"jitter", "frame_drop"} & set(meta["factors"])):
                    assert centroid_direction(frames) == moved, video
                    checked["wrong_motion"] += 1
            else:
                assert meta["motion"] == scene["motion"]
    for fault in faults:
        assert checked[fault] >= 4
    assert len(drawn) >= 3  # several tints / paths were drawn
    with pytest.raises(InvalidInputError, match="synthetic"):
        with_shared_faults(dataclasses.replace(pair, meta={}), faults, rng, tmp_path, "x", size=(32, 32), num_frames=5, fps=2.0)
    with pytest.raises(InvalidInputError, match="already has"):
        with_shared_faults(out, faults, rng, tmp_path, "y", size=(32, 32), num_frames=5, fps=2.0)
    with pytest.raises(InvalidInputError, match="faults must be"):
        with_shared_faults(pair, ("blur",), rng, tmp_path, "z", size=(32, 32), num_frames=5, fps=2.0)


def test_checklist_fidelity_scores_copying_and_reading_by_hand(bench):
    """Three rationales per clip, written here from the pairs' records: the truth (every rate 1), one
    that copies the prompt into "seen" (seen right only where the clip matches its prompt, 0 on the
    mismatched clips) and one that copies the clip into "asked" (the old template's failure: asked right
    only where the clip matches). Rates are checked against counts made here."""
    _, paths = bench
    pairs = read_pairs(paths["train"]) + read_pairs(paths["test_heldout"])
    clips = {}
    for pair in pairs:
        for video, side in ((pair.video_a, "a"), (pair.video_b, "b")):
            clips.setdefault((str(video), pair.prompt), (pair.meta["scene"], pair.meta[f"meta_{side}"]))
    keys = {"colour": "color", "shape": "shape", "path": "motion"}

    def checklist(values_asked, values_seen):
        items = "; ".join(f"{e} asked {values_asked[k]}, seen {values_seen[k]}, {'match' if values_asked[k] == values_seen[k] else 'mismatch'}"
                          for e, k in keys.items())
        return f"The prompt asks for it. Visual quality: fine. Alignment: {items}; so whatever."

    truth = {item: checklist(scene, clip) for item, (scene, clip) in clips.items()}
    copy_prompt = {item: checklist(scene, scene) for item, (scene, clip) in clips.items()}
    copy_clip = {item: checklist(clip, clip) for item, (scene, clip) in clips.items()}
    n = len(clips)
    mismatched = {e: sum(clip[k] != scene[k] for scene, clip in clips.values()) for e, k in keys.items()}
    assert mismatched["colour"] > 0 and mismatched["shape"] + mismatched["colour"] > 0 and mismatched["path"] > 0

    good = checklist_fidelity(pairs, truth)
    for e in keys:
        assert (good[f"{e}_asked"], good[f"{e}_seen"], good[f"{e}_mismatched"]) == (1.0, 1.0, mismatched[e])
        assert good[f"{e}_seen_mismatched"] == (1.0 if mismatched[e] else good[f"{e}_seen_mismatched"])
    copying = checklist_fidelity(pairs, copy_prompt)
    clipping = checklist_fidelity(pairs, copy_clip)
    for e in keys:
        assert copying[f"{e}_asked"] == 1.0 and copying[f"{e}_seen"] == pytest.approx((n - mismatched[e]) / n)
        assert clipping[f"{e}_seen"] == 1.0 and clipping[f"{e}_asked"] == pytest.approx((n - mismatched[e]) / n)
        if mismatched[e]:
            assert copying[f"{e}_seen_mismatched"] == 0.0 and clipping[f"{e}_seen_mismatched"] == 1.0
    # A rationale that states no checklist counts as wrong everywhere; a path-free prompt has no "asked" path.
    assert checklist_fidelity(pairs, dict.fromkeys(clips, "no checklist"))["colour_seen"] == 0.0
    free = [without_path(p) for p in read_pairs(paths["train"])]
    stated = {(str(v), p.prompt): r for p in free for v, r in ((p.video_a, p.rationale_a), (p.video_b, p.rationale_b))}
    scores = checklist_fidelity(free, stated)
    assert np.isnan(scores["path_asked"]) and scores["path_seen"] == 1.0 and scores["colour_asked"] == 1.0
    assert read_checklist(free[0].rationale_a)["path"] == {"asked": None, "seen": free[0].meta["meta_a"]["motion"], "verdict": None}
    with pytest.raises(InvalidInputError, match="synthetic"):
        checklist_fidelity([dataclasses.replace(pairs[0], meta={})], truth)
    with pytest.raises(InvalidInputError, match="No rationale for 1 of"):
        checklist_fidelity(pairs, {k: v for k, v in truth.items() if k != next(iter(truth))})


def test_pretrain_clips_record_what_they_show_and_leave_the_splits_alone(tmp_path):
    """`generate_pretrain_clips`: each record's tint is the one its decoded pixels show (checked on the
    clips whose top rows are background only: gray, sideways motion, no shake), about half the clips have a cast, no clip
    carries a preference label or a prompt, and the splits `generate_benchmark` writes with the same seed
    are byte-identical with or without the clips."""
    from descore_sdk.training.synth import generate_pretrain_clips

    with_clips, without = tmp_path / "with", tmp_path / "without"
    for folder in (with_clips, without):
        generate_benchmark(folder, n_train=6, n_test=2, n_heldout=2, seed=9, size=(32, 32))
    path = generate_pretrain_clips(with_clips, n_clips=60, seed=9, size=(32, 32))
    for name in ("train.jsonl", "test_id.jsonl", "test_heldout.jsonl"):
        assert (with_clips / name).read_bytes() == (without / name).read_bytes()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 60 and all(set(r) == {"video", "meta", "caption"} for r in records)
    tinted = [r for r in records if r["meta"]["tint"]]
    assert 18 <= len(tinted) <= 42  # cast_fraction 0.5 of 60
    assert all(r["video"].startswith("videos/pretrain/") for r in records)
    checked = {"warm": 0, "cool": 0, "green": 0, None: 0}
    for record in records:
        meta = record["meta"]
        assert ("color_cast" in meta["factors"]) == (meta["tint"] is not None)
        assert (f"{meta['tint']} tint" in record["caption"]) == (meta["tint"] is not None)
        if meta["background"] != "gray" or "jitter" in meta["factors"] or meta["motion"] not in ("left to right", "right to left"):
            continue
        red_blue, green = strip_tint(decode(with_clips / record["video"]), meta["motion"])
        severity = meta["factors"].get("color_cast", 0)
        expected = TINT_SHIFT[meta["tint"]]
        assert abs(red_blue - expected[0] * severity) < 12, (record, red_blue, green)
        assert abs(green - expected[1] * severity) < 12, (record, red_blue, green)
        checked[meta["tint"]] += 1
    assert checked[None] and sum(checked.values()) - checked[None]
    with pytest.raises(InvalidInputError, match="n_clips"):
        generate_pretrain_clips(tmp_path / "bad", n_clips=0)
    with pytest.raises(InvalidInputError, match="cast_fraction"):
        generate_pretrain_clips(tmp_path / "bad", n_clips=2, cast_fraction=1.5)
