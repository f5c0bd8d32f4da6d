"""A synthetic video-preference benchmark with known, controlled quality factors.

Why: real preference data is scarce and noisy; here every label is known by construction, so a
training recipe can be checked end to end (does the reward model learn blur < sharp? does it
generalise to a factor it never saw?) on a laptop. ``descore data synth OUT_DIR`` calls
`generate_benchmark`.

Scenes
------
A scene is one object (circle / square / triangle; red / green / blue / yellow / purple) moving in one
direction (left to right, right to left, top to bottom, bottom to top) over a gray, black or white
background with a checker texture, filmed by a slowly panning camera (the texture drifts by
`PAN_PX` per frame). Its prompt says exactly that: "a red circle moving left to right on a gray
background". The clean video matches the prompt. Videos are tiny (default 64×64,
8 frames at 2 fps), h264/yuv420p in MP4, a few KB each (noisy ones a few tens of KB).

Every factor must survive the model's own preprocessing, or its labels are noise to the model:
* the default frame rate is the models' sampling rate (2 fps), so every rendered frame is a model frame
  (at 4 fps the sampler kept 4 of 8 frames and most dropped frames were never seen);
* the object's diameter is 60 % of the frame side (`OBJECT_RADIUS`): with Qwen-VL's 16 px patches
  merged 2×2, a 64 px frame is only 2×2 tokens; at 30 % a tiny model's captions never used the video's
  colour or shape (measured over 1,000+ steps); at 40 % of 96 px it learned colour within 400
  captioning steps, but after 1,000 steps it still told the shapes apart only ~80 % of the time, and
  the cold start's text-alignment errors were almost all wrong-shape pairs (colour 0.93, shape 0.60).
* motion faults change the whole picture: the camera pans, so in a clean clip every pair of frames
  differs all over the textured background, a freeze (2 / 4 consecutive frames repeat the one before
  them) stops the whole picture, and jitter is camera shake (the whole picture, object included, is
  offset by up to ±4 / ±8 px per frame). Measured on the tiny model (BT on MQ pairs only, fast layout,
  800 steps): with a static background and only the object shaking, MQ stayed at chance (0.50-0.57); with
  the pan and camera shake it reached 0.90.
* the rationale's alignment section is a checklist (colour / shape / path: asked, seen, verdict) before
  its conclusion, so each verdict follows the two words it compares.

Quality factors (each with a severity; a video's "badness" in a dimension is the sum of the
severities of its factors in that dimension):

=================  =====  ============================================================  ========
factor             dim    what it does                                                  severity
=================  =====  ============================================================  ========
``blur``           VQ     Gaussian blur, sigma 1.0 / 2.0 px                              1, 2
``noise``          VQ     Gaussian pixel noise, sigma 14 / 28 (of 255)                   1, 2
``color_cast``     VQ     whole-frame warm / cool / green tint, ±30 / ±60 per channel    1, 2
``frame_drop``     MQ     a freeze: 2 / 4 consecutive frames repeat the one before them   1, 2
``jitter``         MQ     camera shake: the whole picture offset by up to ±4 / ±8 px     1, 2
``wrong_color``    TA     object drawn in another colour than the prompt says            1
``wrong_shape``    TA     object drawn as another shape than the prompt says             1
``wrong_motion``   TA     object moves in another direction than the prompt says         1
=================  =====  ============================================================  ========

Pairs and labels
----------------
Per pair, one of: clean vs one degraded twin (≈50 %); degraded vs more degraded (the same factors
plus one more factor or one severity step, ≈30 %); a tie (≈20 %: two clean renders, or two renders
with the same factors, that differ only in a small start offset and the random noise/tint draws).
Labels per dimension (VQ, MQ, TA) prefer the video with the lower badness in that dimension, "same"
when equal. ``overall`` prefers the lower total badness (sum over dimensions); since the second video
of a pair always has a superset of the first one's factors, it never contradicts a dimension label.
Which video is A and which is B is random.

Each video also gets a templated rationale (`describe`): the prompt's request restated, what is seen
(sharpness, noise, tint, smoothness; colour, shape and path in the alignment checklist) and whether that
matches the prompt: the chain-of-thought target. `read_checklist` / `checklist_fidelity` read a
generated checklist back and say whether it copied the prompt and read the clip right.

Splits (DeScore JSONL, see ``training/data.py``; extra keys ``scene``, ``meta_a``, ``meta_b`` record the
ground truth: actual shape/colour/motion/background, factors with severities, tint):

* ``train.jsonl`` — factors ``blur, noise, frame_drop, jitter, wrong_color, wrong_shape``.
* ``test_id.jsonl`` — the same factors on new scenes (scene combinations not used in train while
  any are left; always new render seeds).
* ``test_heldout.jsonl`` — only the held-out factors ``color_cast`` (VQ) and ``wrong_motion`` (TA),
  which never appear in train or test_id.

Caption-only clips for pre-training (`generate_pretrain_clips`, ``descore data synth --pretrain-clips N``):
``pretrain_clips.jsonl`` lists clips of the same scenes, half of them with a colour cast, with their ground
truth and caption but no prompt and no label: the world a VLM's pre-training saw, so that the backbone
has seen a tint before the held-out split shows it one; the held-out judgement is never trained.

Shared faults (`with_shared_faults`, the benchmark's mix stage): a train pair re-rendered with one colour
cast or one wrong path on BOTH clips, so that rationales describe a held-out fault while no pair is
decided by it; the train split itself never has one.

Videos go under ``OUT_DIR/videos/<split>/``; ``OUT_DIR/benchmark.json`` records the seed, sizes and
the factor sets per split. Everything is a pure function of ``seed`` and the arguments: the same call
writes byte-identical files (see `encode_mp4` for what that takes from x264).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from descore_sdk.errors import InvalidInputError

from .data import PreferencePair, write_pairs_jsonl
from .grpo import CHECKLIST_ITEM

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
}
BACKGROUNDS = {"gray": (120, 120, 120), "black": (20, 20, 20), "white": (235, 235, 235)}
# Unit direction (dx, dy) in image coordinates (y grows downwards).
MOTIONS = {
    "left to right": (1, 0),
    "right to left": (-1, 0),
    "top to bottom": (0, 1),
    "bottom to top": (0, -1),
}
# Per-channel RGB offsets of a severity-1 cast; severity 2 doubles them.
TINTS = {"warm": (30, 10, -30), "cool": (-30, 0, 30), "green": (-15, 30, -15)}

FACTOR_DIMENSION = {
    "blur": "VQ",
    "noise": "VQ",
    "color_cast": "VQ",
    "frame_drop": "MQ",
    "jitter": "MQ",
    "wrong_color": "TA",
    "wrong_shape": "TA",
    "wrong_motion": "TA",
}
MAX_SEVERITY = {"blur": 2, "noise": 2, "color_cast": 2, "frame_drop": 2, "jitter": 2, "wrong_color": 1, "wrong_shape": 1, "wrong_motion": 1}
DIMENSIONS = ("VQ", "MQ", "TA")
BLUR_SIGMA = {1: 1.0, 2: 2.0}
NOISE_SIGMA = {1: 14.0, 2: 28.0}
DROPPED_FRAMES = {1: 2, 2: 4}
JITTER_PX = {1: 4.0, 2: 8.0}
OBJECT_RADIUS = 0.3  # of the frame's shorter side
PAN_PX = (3.0, 2.0)  # camera pan: the background texture drifts this far (x, y) per frame
CHECKER_PX = 8  # side of the background's checker squares
CHECKER_CONTRAST = 20.0  # ± levels of the checker around the background colour

HELDOUT_FACTORS = ("color_cast", "wrong_motion")
TRAIN_FACTORS = tuple(f for f in FACTOR_DIMENSION if f not in HELDOUT_FACTORS)
SPLIT_FACTORS = {"train": TRAIN_FACTORS, "test_id": TRAIN_FACTORS, "test_heldout": HELDOUT_FACTORS}
SPLIT_FILES = {"train": "train.jsonl", "test_id": "test_id.jsonl", "test_heldout": "test_heldout.jsonl"}
PAIRS_PER_SCENE = 4


@dataclass(frozen=True)
class Scene:
    """What the prompt describes."""

    shape: str
    color: str
    motion: str
    background: str
    path_in_prompt: bool = True  # False: the prompt does not say which way the object moves (`without_path`)

    @property
    def prompt(self) -> str:
        if not self.path_in_prompt:
            return f"a {self.color} {self.shape} on a {self.background} background"
        return f"a {self.color} {self.shape} moving {self.motion} on a {self.background} background"


@dataclass
class VideoSpec:
    """One video to render: the scene, its factors {name: severity} and the random draws."""

    scene: Scene
    factors: dict[str, int]
    seed: int
    shape: str = ""  # actually drawn (differs from scene.shape under wrong_shape)
    color: str = ""
    motion: str = ""
    tint: str | None = None
    start_offset: tuple[float, float] = (0.0, 0.0)
    dropped: list[int] = field(default_factory=list)

    def badness(self) -> dict[str, int]:
        out = {dim: 0 for dim in DIMENSIONS}
        for name, severity in self.factors.items():
            out[FACTOR_DIMENSION[name]] += severity
        return out

    def meta(self) -> dict:
        return {
            "factors": dict(sorted(self.factors.items())),
            "badness": self.badness(),
            "shape": self.shape,
            "color": self.color,
            "motion": self.motion,
            "background": self.scene.background,
            "tint": self.tint,
            "dropped_frames": list(self.dropped),
        }


# ----------------------------------------------------------------------------------------------------
# Rendering (numpy, float32 RGB in [0, 255])


def realise_spec(scene: Scene, factors: dict[str, int], seed: int, num_frames: int) -> VideoSpec:
    """Draw every random choice of a video up front, so the spec alone determines its pixels."""
    for name, severity in factors.items():
        if name not in FACTOR_DIMENSION or not 1 <= severity <= MAX_SEVERITY[name]:
            raise InvalidInputError(f"Unknown factor or severity {name}={severity}; factors: {MAX_SEVERITY}.")
    rng = np.random.default_rng(seed)
    spec = VideoSpec(scene=scene, factors=dict(factors), seed=seed, shape=scene.shape, color=scene.color, motion=scene.motion)
    # Drawn first, so a clean video and a degraded twin with the same seed share their geometry.
    spec.start_offset = tuple(float(v) for v in rng.uniform(-2.0, 2.0, size=2))
    if "wrong_shape" in factors:
        spec.shape = str(rng.choice([s for s in SHAPES if s != scene.shape]))
    if "wrong_color" in factors:
        spec.color = str(rng.choice([c for c in COLORS if c != scene.color]))
    if "wrong_motion" in factors:
        spec.motion = str(rng.choice([m for m in MOTIONS if m != scene.motion]))
    if "color_cast" in factors:
        spec.tint = str(rng.choice(list(TINTS)))
    if "frame_drop" in factors:
        # One freeze: `count` consecutive frames repeat the frame before them, then the object jumps.
        count = min(DROPPED_FRAMES[factors["frame_drop"]], num_frames - 2)
        first = int(rng.integers(1, num_frames - count))
        spec.dropped = list(range(first, first + count))
    return spec


def _object_mask(shape: str, cx: float, cy: float, radius: float, height: int, width: int) -> np.ndarray:
    """Boolean (height, width) mask of `shape` centred at (cx, cy) with half-size `radius` px."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    # Upward isosceles triangle in the same 2r × 2r box: half-width grows linearly from 0 at the apex.
    frac_down = (dy + radius) / (2 * radius)
    return (frac_down >= 0) & (frac_down <= 1) & (np.abs(dx) <= radius * frac_down)


def _gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (T, H, W, C) frames with edge replication."""
    radius = max(1, int(round(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * frames.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(frames, pad, mode="edge")
        size = frames.shape[axis]
        frames = sum(w * np.take(padded, np.arange(i, i + size), axis=axis) for i, w in enumerate(taps))
    return frames


def render_frames(spec: VideoSpec, *, width: int, height: int, num_frames: int) -> np.ndarray:
    """(num_frames, height, width, 3) uint8 RGB frames of `spec`."""
    rng = np.random.default_rng(spec.seed + 1_000_003)  # pixel-level draws (shake, noise)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.array(BACKGROUNDS[spec.scene.background], np.float32)

    radius = OBJECT_RADIUS * min(width, height)
    margin = radius + 2
    dx, dy = MOTIONS[spec.motion]
    # Travel along the motion axis from one margin to the other; the cross axis stays centred.
    start = np.array([width / 2, height / 2]) + np.array(spec.start_offset)
    span = np.array([width - 2 * margin, height - 2 * margin])
    start = start - np.array([dx, dy]) * span / 2
    step = np.array([dx, dy]) * span / max(1, num_frames - 1)
    shake = JITTER_PX.get(spec.factors.get("jitter", 0), 0.0)

    frames = np.empty((num_frames, height, width, 3), np.float32)
    color = np.array(COLORS[spec.color], np.float32)
    for t in range(num_frames):
        # Camera: a steady pan (the textured background drifts), plus a random offset per frame when
        # it shakes; a shake moves everything in the frame, the object included.
        offset = rng.uniform(-shake, shake, size=2) if shake else np.zeros(2)
        camera = np.array(PAN_PX) * t + offset
        checker = ((np.floor((ys + camera[1]) / CHECKER_PX) + np.floor((xs + camera[0]) / CHECKER_PX)) % 2) * 2 - 1
        background = base + CHECKER_CONTRAST * checker[..., None]
        cx, cy = start + t * step + offset
        mask = _object_mask(spec.shape, cx, cy, radius, height, width)
        frames[t] = np.where(mask[..., None], color, background)
    for t in spec.dropped:  # a dropped frame shows the previous one again: the whole picture freezes
        frames[t] = frames[t - 1]

    if "blur" in spec.factors:
        frames = _gaussian_blur(frames, BLUR_SIGMA[spec.factors["blur"]])
    if spec.tint is not None:
        frames = frames + spec.factors["color_cast"] * np.array(TINTS[spec.tint], np.float32)
    if "noise" in spec.factors:
        frames = frames + rng.normal(0.0, NOISE_SIGMA[spec.factors["noise"]], size=frames.shape)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def encode_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    """Write (T, H, W, 3) uint8 RGB frames as h264/yuv420p MP4, reproducibly.

    x264 runs single-threaded and without its assembly kernels: with them, the same frames encoded
    twice in one process gave different (decoded!) output now and then (measured with PyAV 18 /
    FFmpeg 8: about 1 video in 4 over 10 repeats). The C path costs ~2x encode time, on 64x64 frames
    a few ms per video.
    """
    import av  # lazy: PyAV loads FFmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "18", "preset": "medium", "threads": "1", "x264-params": "asm=0"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ----------------------------------------------------------------------------------------------------
# Rationales


def describe(spec: VideoSpec) -> str:
    """Templated rationale: the prompt's request restated, what the video shows section by section, and
    how it compares with the prompt.

    The request comes first, copied from the prompt ("The prompt asks for a red circle moving left to
    right on a gray background."); what the clip shows is stated only in the checklist's "seen" slots,
    read from the video. An earlier template opened with "I see a <seen colour> <seen shape> ...";
    with the seen words written first, a 2-layer model's checklist copied the nearest colour word into
    "asked" too: the cold start wrote "colour asked purple, seen purple, match" on every wrong-colour
    train clip it was asked about (training/BENCHMARK.md, session 12).
    """
    scene, factors = spec.scene, spec.factors
    bg = scene.background
    request = f"{scene.color} {scene.shape}" + (f" moving {scene.motion}" if scene.path_in_prompt else "")
    parts = [f"The prompt asks for a {request} on a {bg} background."]

    visual = []
    if "blur" in factors:
        visual.append("the image is very blurry and the object's edges smear into the background"
                      if factors["blur"] == 2 else "the image is slightly soft, with blurred edges")
    if "noise" in factors:
        visual.append("heavy grainy noise covers every frame" if factors["noise"] == 2 else "there is visible grain in every frame")
    if spec.tint is not None:
        tint_words = {"warm": "an orange", "cool": "a blue", "green": "a green"}[spec.tint]
        strength = "strong" if factors["color_cast"] == 2 else "noticeable"
        visual.append(f"the whole frame has a {strength} colour cast, {tint_words} tint")
    parts.append("Visual quality: " + ("; ".join(visual) if visual else "sharp, clean and with natural colours") + ".")

    motion = []
    if spec.dropped:
        motion.append(f"it stutters: {len(spec.dropped)} of the frames repeat the previous one, so the picture freezes and then jumps")
    if "jitter" in factors:
        motion.append("the camera shakes " + ("violently" if factors["jitter"] == 2 else "slightly")
                      + ", so the whole picture jumps around")
    parts.append("Motion: " + ("; ".join(motion) if motion else "smooth and steady along a straight path") + ".")

    # A checklist first (each prompt element: asked, seen, verdict), then the conclusion: the verdict
    # on each element sits right after the two words it compares, where even a tiny model can learn it.
    checks = [("colour", scene.color, spec.color), ("shape", scene.shape, spec.shape), ("path", scene.motion, spec.motion)]
    checklist = "; ".join(f"{name} asked {asked}, seen {seen}, {'match' if asked == seen else 'mismatch'}" for name, asked, seen in checks)
    if not scene.path_in_prompt:  # nothing asked about the path: only what is seen
        checklist = "; ".join(checklist.split("; ")[:2] + [f"path not asked, seen {spec.motion}"])
    mismatches = []
    if spec.color != scene.color or spec.shape != scene.shape:
        mismatches.append(f"the prompt asks for a {scene.color} {scene.shape} but the object is a {spec.color} {spec.shape}")
    if spec.motion != scene.motion:
        mismatches.append(f"the prompt asks for movement {scene.motion} but the object moves {spec.motion}")
    parts.append(f"Alignment: {checklist}; so " + ("; ".join(mismatches) if mismatches else "the video matches the prompt") + ".")
    return " ".join(parts)


def without_path(pair: PreferencePair) -> PreferencePair:
    """The same synthetic pair with a prompt that does not name the path ("a red circle on a gray
    background") and rationales rebuilt for it: they still say which way the object moves ("path not
    asked, seen left to right"), which can then only be read from the video. Labels and videos are
    unchanged: the clips still match the (vaguer) prompt; nothing of the held-out factor is made (a
    train pair's clips move the scene's way).

    Why: in every training pair the path the rationale states is the prompt's, so a cold-started CoT
    copies it from the prompt (training/BENCHMARK.md, "Held-out wrong motion"); with some prompts
    that leave it out, reading it from the video is the one rule that fits all the rationales.
    """
    meta = pair.meta or {}
    if "scene" not in meta or "meta_a" not in meta or "meta_b" not in meta:
        raise InvalidInputError("without_path needs a synthetic pair with scene / meta_a / meta_b records (`generate_benchmark`).")
    info = meta["scene"]
    scene = Scene(info["shape"], info["color"], info["motion"], info["background"], path_in_prompt=False)

    def rationale(clip: dict) -> str:
        spec = VideoSpec(scene=scene, factors=dict(clip["factors"]), seed=0, shape=clip["shape"], color=clip["color"],
                         motion=clip["motion"], tint=clip["tint"], dropped=list(clip["dropped_frames"]))
        return describe(spec)

    return dataclasses.replace(pair, prompt=scene.prompt, rationale_a=rationale(meta["meta_a"]), rationale_b=rationale(meta["meta_b"]),
                               meta={**meta, "path_in_prompt": False})


SHARED_FAULTS = ("color_cast", "wrong_motion")  # the held-out factors `with_shared_faults` can put on both clips of a pair


def with_shared_faults(pair: PreferencePair, faults, rng: np.random.Generator, out_dir: str | os.PathLike, name: str, *,
                       size: tuple[int, int], num_frames: int, fps: float) -> PreferencePair:
    """The same synthetic pair (scene, factors, labels) re-rendered with each of `faults` (a subset of
    `SHARED_FAULTS`) drawn ONCE for the pair and shown by both clips: one colour cast (tint and severity)
    and / or one wrong path (another direction than the scene's). `rng` draws these and the two fresh
    render seeds. The videos are written under `out_dir/videos/train_shared/` as `<name>_a_<factors>.mp4`
    and `<name>_b_...` (`name` must be unique per pair); the rationales (`describe`) state what each clip
    shows: "the whole frame has a ... colour cast", "path asked X, seen Y, mismatch". Labels do not move:
    a fault on both sides adds the same badness to each. `meta["shared"]` records what was drawn.

    Why: both are held-out factors, so no training rationale ever names one. The cold start's CoT says
    "natural colours" about a tinted clip and copies the prompt's path into "seen", although its
    backbone tells both apart (rationale discrimination 0.50 against caption discrimination 0.96 for a
    cast; "seen" path right on 0 of 453 wrong-motion clips; BENCHMARK.md, session 15). Pairs whose clips
    share the fault teach the CoT to state what it sees, while no pair prefers a clean clip to a tinted
    one or the prompt's path to another: the held-out judgement stays untrained.
    """
    meta = pair.meta or {}
    if "scene" not in meta or "meta_a" not in meta or "meta_b" not in meta:
        raise InvalidInputError("with_shared_faults needs a synthetic pair with scene / meta_a / meta_b records (`generate_benchmark`).")
    faults = tuple(faults)
    if not faults or not set(faults) <= set(SHARED_FAULTS):
        raise InvalidInputError(f"faults must be one or more of {SHARED_FAULTS}, got {faults}.")
    present = [f for f in SHARED_FAULTS if any(f in meta[k]["factors"] for k in ("meta_a", "meta_b"))]
    if present:
        raise InvalidInputError(f"Pair {pair.video_a} / {pair.video_b} already has {present}; share faults only on pairs without them.")
    width, height = _render_size(size, num_frames, fps)
    info = meta["scene"]
    scene = Scene(info["shape"], info["color"], info["motion"], info["background"], path_in_prompt=meta.get("path_in_prompt", True))
    shared: dict[str, dict] = {}
    if "color_cast" in faults:
        shared["color_cast"] = {"tint": str(rng.choice(list(TINTS))), "severity": int(rng.integers(1, MAX_SEVERITY["color_cast"] + 1))}
    if "wrong_motion" in faults:
        shared["wrong_motion"] = {"motion": str(rng.choice([m for m in MOTIONS if m != scene.motion]))}
    specs, paths = [], []
    for key in ("meta_a", "meta_b"):
        spec = realise_spec(scene, meta[key]["factors"], int(rng.integers(0, 2**31)), num_frames)
        if "color_cast" in shared:  # drawn once for the pair, not once per clip as `realise_spec` would
            spec.factors["color_cast"], spec.tint = shared["color_cast"]["severity"], shared["color_cast"]["tint"]
        if "wrong_motion" in shared:
            spec.factors["wrong_motion"], spec.motion = MAX_SEVERITY["wrong_motion"], shared["wrong_motion"]["motion"]
        path = Path(out_dir) / "videos" / "train_shared" / f"{name}_{key[-1]}_{_clip_name(spec.factors)}.mp4"
        encode_mp4(render_frames(spec, width=width, height=height, num_frames=num_frames), path, fps)
        specs.append(spec)
        paths.append(path)
    labels = pair_labels(*specs)
    if {dim: labels[dim] for dim in pair.labels} != dict(pair.labels):  # cannot happen with equal faults: a guard on the invariant
        raise AssertionError(f"Shared faults changed the labels of {pair.video_a} / {pair.video_b}: {pair.labels} → {labels}.")
    return dataclasses.replace(pair, video_a=paths[0], video_b=paths[1], rationale_a=describe(specs[0]), rationale_b=describe(specs[1]),
                               meta={**meta, "meta_a": specs[0].meta(), "meta_b": specs[1].meta(), "shared": shared})


CHECKLIST_ELEMENTS = {"colour": "color", "shape": "shape", "path": "motion"}  # checklist word → scene / clip record key


def read_checklist(text: str) -> dict[str, dict]:
    """The alignment checklist `describe` writes, read back from a (generated) rationale:
    {element: {"asked": word or None ("not asked"), "seen": word, "verdict": "match" / "mismatch" /
    None}} for each of colour / shape / path that the text states after "Alignment:"; an element the
    text does not state is absent."""
    start = text.find("Alignment:")
    if start < 0:
        return {}
    body = text[start + len("Alignment:"):]
    body = body.split("; so ", 1)[0]
    out: dict[str, dict] = {}
    for match in CHECKLIST_ITEM.finditer(body):
        element = match.group(1)
        if element not in out:
            out[element] = {"asked": match.group(2), "seen": match.group(3), "verdict": match.group(4)}
    return out


def checklist_fidelity(pairs, rationales) -> dict[str, float]:
    """Does a model's generated checklist copy the prompt right and read the clip right? Over the
    distinct (clip, prompt) of synthetic `pairs` (with `generate_benchmark`'s scene / meta_a / meta_b
    records), given `rationales`: {(video path, prompt): generated rationale} (think mode's CoTs).

    Per element (colour, shape, path):
      <element>_asked            the "asked" slot states the prompt's value (asked elements only)
      <element>_seen             the "seen" slot states what the clip shows
      <element>_seen_mismatched  the same, on the clips whose value differs from the prompt's (NaN if
                                 none): copying the prompt scores 0 here, reading the video 1
      <element>_mismatched       how many such clips there were
    An element the rationale does not state counts as wrong. `read_checklist` reads the slots."""
    seen: dict[tuple[str, str], tuple[dict, dict, bool]] = {}
    for pair in pairs:
        meta = pair.meta or {}
        if "scene" not in meta:
            raise InvalidInputError("checklist_fidelity needs synthetic pairs with scene / meta_a / meta_b records (`generate_benchmark`).")
        for video, clip in ((pair.video_a, meta["meta_a"]), (pair.video_b, meta["meta_b"])):
            seen.setdefault((str(video), pair.prompt), (meta["scene"], clip, meta.get("path_in_prompt", True)))
    missing = [item for item in seen if item not in rationales]
    if missing:
        raise InvalidInputError(f"No rationale for {len(missing)} of the pairs' clips (first: {missing[0]}); score every "
                                "(video, prompt) of the pairs in think mode first (`evaluation.score_pairs`).")
    out: dict[str, float] = {}
    for element, key in CHECKLIST_ELEMENTS.items():
        asked, shown, mismatched = [], [], []
        for item, (scene, clip, path_asked) in seen.items():
            stated = read_checklist(rationales[item]).get(element, {})
            if path_asked or element != "path":
                asked.append(stated.get("asked") == scene[key])
            right = stated.get("seen") == clip[key]
            shown.append(right)
            if clip[key] != scene[key]:
                mismatched.append(right)
        out[f"{element}_asked"] = float(np.mean(asked)) if asked else float("nan")
        out[f"{element}_seen"] = float(np.mean(shown)) if shown else float("nan")
        out[f"{element}_seen_mismatched"] = float(np.mean(mismatched)) if mismatched else float("nan")
        out[f"{element}_mismatched"] = len(mismatched)
    return out


def caption(meta: dict) -> str:
    """What a video shows, from its `VideoSpec.meta()` record, without reference to any prompt: the
    target of the tiny backbones' captioning pre-training (`training/pretrain.py`).

    It names what is drawn (colour, shape, path, background) and how it looks and moves, in words of
    its own (not the rationale's phrases): pre-training teaches seeing, not the rationale template.
    """
    factors = meta.get("factors", {})
    look = []
    if "blur" in factors:
        look.append("very blurry" if factors["blur"] == 2 else "slightly blurry")
    if "noise" in factors:
        look.append("heavy noise" if factors["noise"] == 2 else "light noise")
    if meta.get("tint"):
        look.append(f"{meta['tint']} tint")
    moves = []
    if meta.get("dropped_frames"):
        moves.append("the picture freezes and then jumps")
    if "jitter" in factors:
        moves.append("the camera shakes " + ("violently" if factors["jitter"] == 2 else "slightly"))
    return (f"A {meta['color']} {meta['shape']} moving {meta['motion']} on a {meta['background']} background. "
            f"Image: {', '.join(look) or 'sharp and clean'}. Motion: {', '.join(moves) or 'smooth'}.")


def grounding_answer(meta: dict, color: str, shape: str) -> str:
    """The answer to "Is this a `color` `shape`?" about a video with ground truth `meta`
    (`VideoSpec.meta()`): the pre-training grounding questions of `training/pretrain.py`."""
    if (meta["color"], meta["shape"]) == (color, shape):
        return "Yes."
    return f"No, it is a {meta['color']} {meta['shape']}."


def path_answer(meta: dict, path: str) -> str:
    """The answer to "Is it moving `path`?" about a video with ground truth `meta`: "Yes." or "No, it
    moves top to bottom." (the path the video SHOWS). The pre-training path questions of
    `training/pretrain.py`; the asked path is often not the shown one, so the answer cannot be copied
    from the question (unlike a training rationale's path, which always equals its prompt's)."""
    if path not in MOTIONS:
        raise InvalidInputError(f"Unknown path {path!r}; paths: {list(MOTIONS)}.")
    return "Yes." if meta["motion"] == path else f"No, it moves {meta['motion']}."


# ----------------------------------------------------------------------------------------------------
# Pairs


def _label(badness_a: int, badness_b: int) -> str:
    return "A" if badness_a < badness_b else "B" if badness_b < badness_a else "same"


def pair_labels(spec_a: VideoSpec, spec_b: VideoSpec) -> dict[str, str]:
    """Per-dimension labels (lower badness wins) plus `overall` (lower total badness wins)."""
    bad_a, bad_b = spec_a.badness(), spec_b.badness()
    labels = {dim: _label(bad_a[dim], bad_b[dim]) for dim in DIMENSIONS}
    labels["overall"] = _label(sum(bad_a.values()), sum(bad_b.values()))
    return labels


def _random_factor(rng: np.random.Generator, pool: tuple[str, ...], exclude=()) -> tuple[str, int]:
    name = str(rng.choice([f for f in pool if f not in exclude]))
    return name, int(rng.integers(1, MAX_SEVERITY[name] + 1))


def _worsen(rng: np.random.Generator, factors: dict[str, int], pool: tuple[str, ...]) -> dict[str, int]:
    """`factors` plus one severity step or one more factor (so it is strictly worse somewhere)."""
    worse = dict(factors)
    steppable = [f for f, s in factors.items() if s < MAX_SEVERITY[f]]
    addable = [f for f in pool if f not in factors]
    if steppable and (not addable or rng.random() < 0.5):
        name = str(rng.choice(steppable))
        worse[name] += 1
    else:
        name, severity = _random_factor(rng, pool, exclude=factors)
        worse[name] = severity
    return worse


def _plan_pair(rng: np.random.Generator, pool: tuple[str, ...]) -> tuple[str, dict[str, int], dict[str, int]]:
    """(kind, factors of the better video, factors of the worse one)."""
    roll = rng.random()
    if roll < 0.5:
        name, severity = _random_factor(rng, pool)
        return "clean_vs_degraded", {}, {name: severity}
    if roll < 0.8:
        name, severity = _random_factor(rng, pool)
        base = {name: severity}
        return "degraded_vs_worse", base, _worsen(rng, base, pool)
    if rng.random() < 0.5:
        return "tie", {}, {}
    name, severity = _random_factor(rng, pool)
    return "tie", {name: severity}, {name: severity}


def _scenes_in_order(rng: np.random.Generator) -> list[Scene]:
    combos = [Scene(*c) for c in itertools.product(SHAPES, COLORS, MOTIONS, BACKGROUNDS)]
    return [combos[i] for i in rng.permutation(len(combos))]


def _render_size(size, num_frames: int, fps: float) -> tuple[int, int]:
    """(width, height) of `size`, after checking what rendering and encoding need."""
    width, height = (int(v) for v in size)
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise InvalidInputError(f"size must be (width, height) with even sides ≥ 16 (h264 yuv420p), got {size}.")
    if num_frames < 5:
        raise InvalidInputError(f"num_frames must be ≥ 5 so frame drops leave visible motion, got {num_frames}.")
    if not fps > 0:
        raise InvalidInputError(f"fps must be positive, got {fps}.")
    return width, height


def _clip_name(factors: dict[str, int]) -> str:
    return "clean" if not factors else "_".join(f"{f}{s}" for f, s in sorted(factors.items()))


def generate_benchmark(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 160,
    n_test: int = 40,
    n_heldout: int = 40,
    seed: int = 0,
    size: tuple[int, int] = (64, 64),
    num_frames: int = 8,
    fps: float = 2.0,
) -> dict[str, Path]:
    """Write the synthetic benchmark under `out_dir`; return {"train", "test_id", "test_heldout",
    "info"} → path of train.jsonl, test_id.jsonl, test_heldout.jsonl, benchmark.json.

    size: (width, height) in pixels, both even (yuv420p) and ≥ 16. num_frames ≥ 5, so that with 4
    dropped frames the object still visibly moves. n_*: pairs per split (0 writes an empty file).
    Pairs come in groups of up to 4 per scene, sharing the scene's clean render.
    """
    width, height = _render_size(size, num_frames, fps)
    counts = {"train": n_train, "test_id": n_test, "test_heldout": n_heldout}
    for split, n in counts.items():
        if int(n) != n or n < 0:
            raise InvalidInputError(f"n_{split} must be a non-negative integer, got {n}.")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes = _scenes_in_order(rng)
    scene_cursor = 0  # splits take consecutive scene combinations, so test scenes are new while any are left
    render_seed = itertools.count(int(rng.integers(0, 2**31)))  # one fresh seed per rendered video

    paths: dict[str, Path] = {}
    for split, n_pairs in counts.items():
        pool = SPLIT_FACTORS[split]
        split_rng = np.random.default_rng([seed, list(counts).index(split)])
        pairs: list[PreferencePair] = []
        while len(pairs) < n_pairs:
            scene = scenes[scene_cursor % len(scenes)]
            scene_cursor += 1
            scene_id = f"s{scene_cursor:04d}"
            cache: dict[tuple, tuple[VideoSpec, Path]] = {}

            def video(factors: dict[str, int], variant: int = 0) -> tuple[VideoSpec, Path]:
                key = (tuple(sorted(factors.items())), variant)
                if key not in cache:
                    spec = realise_spec(scene, factors, next(render_seed), num_frames)
                    path = out_dir / "videos" / split / f"{scene_id}_{_clip_name(factors)}_v{variant}.mp4"
                    encode_mp4(render_frames(spec, width=width, height=height, num_frames=num_frames), path, fps)
                    cache[key] = (spec, path)
                return cache[key]

            for index in range(min(PAIRS_PER_SCENE, n_pairs - len(pairs))):
                kind, better, worse = _plan_pair(split_rng, pool)
                # The clean render is shared by the scene's pairs; every other video is new, so no two
                # pairs are the same and a tie's two videos are distinct renders.
                first = video(better, variant=0 if not better else 2 * index + 1)
                second = video(worse, variant=2 * index + 2)
                if split_rng.random() < 0.5:
                    first, second = second, first
                (spec_a, path_a), (spec_b, path_b) = first, second
                pairs.append(
                    PreferencePair(
                        prompt=scene.prompt,
                        video_a=path_a,
                        video_b=path_b,
                        labels=pair_labels(spec_a, spec_b),
                        rationale_a=describe(spec_a),
                        rationale_b=describe(spec_b),
                        meta={
                            "kind": kind,
                            "scene": {"id": scene_id, "shape": scene.shape, "color": scene.color,
                                      "motion": scene.motion, "background": scene.background},
                            "meta_a": spec_a.meta(),
                            "meta_b": spec_b.meta(),
                        },
                    )
                )
        paths[split] = write_pairs_jsonl(pairs, out_dir / SPLIT_FILES[split])

    info = {
        "seed": seed,
        "size": [width, height],
        "num_frames": num_frames,
        "fps": fps,
        "pairs": counts,
        "factors": {split: list(pool) for split, pool in SPLIT_FACTORS.items()},
        "heldout_factors": list(HELDOUT_FACTORS),
        "factor_dimension": FACTOR_DIMENSION,
    }
    info_path = out_dir / "benchmark.json"
    info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    paths["info"] = info_path
    return paths


PRETRAIN_CLIPS_FILE = "pretrain_clips.jsonl"
# The faults a pre-training clip may show besides its colour cast: the ones a clip shows without a prompt.
PRETRAIN_EXTRA_FACTORS = ("blur", "noise", "frame_drop", "jitter")


def generate_pretrain_clips(
    out_dir: str | os.PathLike,
    *,
    n_clips: int,
    seed: int = 0,
    size: tuple[int, int] = (64, 64),
    num_frames: int = 8,
    fps: float = 2.0,
    cast_fraction: float = 0.5,
) -> Path:
    """Write `n_clips` caption-only clips under `out_dir/videos/pretrain/` and their ground truth to
    `out_dir/pretrain_clips.jsonl` (one JSON object per line: ``video`` relative to the file's folder,
    ``meta`` as `VideoSpec.meta`, ``caption`` as `caption`); return the file's path.

    Why: a real VLM's pre-training has seen colour casts and can name them; the preference splits never
    render one (it is a held-out factor), so without these clips the tiny backbone has no word for a
    cast and nothing in it separates a tinted frame from a clean one (caption discrimination 0.50,
    training/BENCHMARK.md, session 14). A seeded `cast_fraction` of the clips has a colour cast (random
    hue, severity 1 or 2); independently, half of all clips also show one of `PRETRAIN_EXTRA_FACTORS`.
    They are clips, not pairs: no prompt, no preference label, so no held-out judgement (a tinted clip is
    worse than a clean one) is ever trained; the scenes are the benchmark's, the render seeds a stream
    of their own, so the preference splits `generate_benchmark` writes with the same seed are untouched.
    """
    width, height = _render_size(size, num_frames, fps)
    if int(n_clips) != n_clips or n_clips < 1:
        raise InvalidInputError(f"n_clips must be a positive integer, got {n_clips}.")
    if not 0.0 <= cast_fraction <= 1.0:
        raise InvalidInputError(f"cast_fraction must lie in [0, 1], got {cast_fraction}.")
    out_dir = Path(out_dir)
    rng = np.random.default_rng([seed, 1_000])  # a stream of its own: the preference splits do not move
    scenes = _scenes_in_order(rng)
    records = []
    for index in range(int(n_clips)):
        scene = scenes[index % len(scenes)]
        factors: dict[str, int] = {}
        if rng.random() < cast_fraction:
            factors["color_cast"] = int(rng.integers(1, MAX_SEVERITY["color_cast"] + 1))
        if rng.random() < 0.5:
            name, severity = _random_factor(rng, PRETRAIN_EXTRA_FACTORS)
            factors[name] = severity
        spec = realise_spec(scene, factors, int(rng.integers(0, 2**31)), num_frames)
        path = out_dir / "videos" / "pretrain" / f"c{index:05d}_{_clip_name(factors)}.mp4"
        encode_mp4(render_frames(spec, width=width, height=height, num_frames=num_frames), path, fps)
        meta = spec.meta()
        records.append({"video": path.relative_to(out_dir).as_posix(), "meta": meta, "caption": caption(meta)})
    target = out_dir / PRETRAIN_CLIPS_FILE
    target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return target
