"""The video path of `descore bench`: sample + preprocess a 5 s 720p h264 clip at 2 fps, against two
references measured in the same run on the same file (the issue's target):

    ours            the Scorer's own decode + frame sampling (`load_clip`, 2 fps, the model's pixel
                    budget) and preprocessing (resize + patches) of the sampled frames
    ours_swscale    the same with `resize="swscale"` (FFmpeg converts and scales each sampled frame in
                    one pass instead of RGB at full size + Pillow bicubic; not bit-exact, see video.py)
    all_frames_rgb  decode EVERY frame and convert each to RGB (PyAV `to_ndarray(format="rgb24")`):
                    what a naive loader does; ours should be ≥ 2× faster
    needed_packets  decode only the packets the sampled frames need, with no conversion at all: demux
                    and decode up to the last sampled frame (an h264 clip with one keyframe needs every
                    packet before it), never converting a frame; ours should be within 1.2× of it

The clip is generated here (PyAV + libx264, seeded moving pattern, default GOP: one keyframe, as
generated clips often have), 1280×720 at 30 fps for 5 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

CLIP_SECONDS, CLIP_FPS, CLIP_SIZE = 5, 30, (1280, 720)


def make_clip(path: Path, *, seconds: int = CLIP_SECONDS, fps: int = CLIP_FPS, size=CLIP_SIZE, seed: int = 0) -> Path:
    import av

    width, height = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            frame = np.roll(base, shift=(i * 4, i * 6), axis=(0, 1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _all_frames_rgb(path: Path) -> int:
    import av

    count = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            count += 1
    return count


def _needed_packets(path: Path, last_time: float) -> int:
    import av

    count = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            count += 1
            if frame.time is not None and frame.time >= last_time - 1e-6:
                break
    return count


def measure_video_path(config, work_dir: Path, *, repeats: int = 3) -> dict:
    """{ours_ms, all_frames_rgb_ms, needed_packets_ms (stats), frames_sampled, ratios} on a generated clip,
    with `config` (a DescoreConfig) giving the pixel budget and patching."""
    from .bench_suite import stats
    from .inputs import load_clip
    from .preprocess import preprocess_frames

    path = make_clip(Path(work_dir) / "bench-720p-5s.mp4")

    def ours(resize: str = "pillow") -> tuple[float, object]:
        t0 = time.perf_counter()
        clip = load_clip(path, config, fps=2.0, min_frames=4, max_frames=768, max_pixels=config.sampling.max_pixels,
                         resize=resize)
        preprocess_frames(clip.frames, config.vision, config.sampling)
        return (time.perf_counter() - t0) * 1e3, clip

    _, clip = ours()  # warm-up
    last = float(np.max(clip.timestamps)) if getattr(clip, "timestamps", None) is not None and len(clip.timestamps) else CLIP_SECONDS
    _all_frames_rgb(path), _needed_packets(path, last), ours("swscale")
    samples = {"ours_ms": [], "ours_swscale_ms": [], "all_frames_rgb_ms": [], "needed_packets_ms": []}
    for _ in range(repeats):  # alternating
        samples["ours_ms"].append(ours()[0])
        samples["ours_swscale_ms"].append(ours("swscale")[0])
        t0 = time.perf_counter()
        _all_frames_rgb(path)
        samples["all_frames_rgb_ms"].append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        decoded = _needed_packets(path, last)
        samples["needed_packets_ms"].append((time.perf_counter() - t0) * 1e3)
    out = {key: stats(values) for key, values in samples.items()}
    ours_ms = out["ours_ms"]["median"]
    out.update({
        "clip": {"seconds": CLIP_SECONDS, "fps": CLIP_FPS, "width": CLIP_SIZE[0], "height": CLIP_SIZE[1], "codec": "h264"},
        "frames_sampled": int(len(clip.frames)),
        "frames_decoded_needed": int(decoded),
        "last_sampled_time_s": last,
        "all_frames_rgb_over_ours": out["all_frames_rgb_ms"]["median"] / ours_ms,
        "ours_over_needed_packets": ours_ms / out["needed_packets_ms"]["median"],
        "all_frames_rgb_over_ours_swscale": out["all_frames_rgb_ms"]["median"] / out["ours_swscale_ms"]["median"],
        "ours_swscale_over_needed_packets": out["ours_swscale_ms"]["median"] / out["needed_packets_ms"]["median"],
    })
    return out
