"""Synthetic test media written with PyAV, and a plain reference decoder to check our decoder against.

Every synthetic frame carries its own index as a grid of black/white blocks (bit k of the index is the
k-th block in row-major order), so a decoded frame can be traced back to the frame that was encoded
without trusting any decoder bookkeeping. The blocks are large enough to survive lossy encoding.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Encoder name and muxer-friendly container extension for each codec family the tests cover.
ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1"}
DEFAULT_CONTAINER = {"h264": "mp4", "hevc": "mp4", "vp9": "webm", "av1": "mkv"}

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr unless told errors only

GRID = 4  # GRID × GRID blocks → indices up to 2**16 - 1 are representable


def index_frame(index: int, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB frame whose block pattern spells `index` in binary.

    The red channel also ramps with the index so that neighbouring frames differ everywhere, not only
    in the blocks whose bit flips.
    """
    if index >= 2 ** (GRID * GRID):
        raise ValueError(f"index {index} does not fit in a {GRID}x{GRID} bit grid")
    bits = (index >> np.arange(GRID * GRID)) & 1
    grid = (bits.reshape(GRID, GRID) * 255).astype(np.uint8)
    block_h, block_w = -(-height // GRID), -(-width // GRID)
    luma = np.kron(grid, np.ones((block_h, block_w), dtype=np.uint8))[:height, :width]
    frame = np.repeat(luma[:, :, None], 3, axis=2)
    frame[:, :, 0] = np.where(luma > 0, 255, (index * 7) % 128)
    return frame


def read_index(frame: np.ndarray) -> int:
    """Recover the index written by `index_frame` from a decoded (H, W, 3) frame (block centres only,
    so compression ringing at block edges does not matter)."""
    height, width = frame.shape[:2]
    block_h, block_w = -(-height // GRID), -(-width // GRID)
    value = 0
    for k in range(GRID * GRID):
        row, col = divmod(k, GRID)
        y0, x0 = row * block_h, col * block_w
        centre = frame[y0 + block_h // 4 : y0 + 3 * block_h // 4, x0 + block_w // 4 : x0 + 3 * block_w // 4, 1]
        if centre.mean() > 127:
            value |= 1 << k
    return value


def _encoder_options(codec: str, gop: int, bframes: int) -> dict[str, str]:
    """Options that pin the keyframe interval (no scene-cut keyframes) and the B-frame count (H.264 and
    HEVC; VP9 and AV1 files carry one displayed frame per packet in presentation order either way)."""
    if codec == "h264":
        return {"preset": "veryfast", "crf": "18",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}"}
    if codec == "hevc":
        # x265 uses open GOPs (CRA keyframes with leading pictures) by default: a harder case for seeking.
        return {"preset": "ultrafast", "crf": "18",
                "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:log-level=error"}
    if codec == "vp9":
        # One-pass libvpx emits no hidden alt-ref frames here, so `bframes` has no effect on VP9.
        return {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b:v": "0", "g": str(gop),
                "keyint_min": str(gop)}
    if codec == "av1":
        return {"preset": "12", "crf": "30", "svtav1-params": f"keyint={gop}:scd=0"}
    raise ValueError(f"unknown codec {codec!r}")


def write_video(
    path: Path,
    *,
    codec: str = "h264",
    width: int = 64,
    height: int = 64,
    fps: int = 24,
    num_frames: int = 48,
    gop: int = 12,
    bframes: int = 0,
    frame_durations: list[int] | None = None,
    first_pts: int = 0,
    audio: bool = False,
    faststart: bool = False,
    display_rotation: int | None = None,
) -> Path:
    """Encode `num_frames` index frames to `path` (container picked from its suffix).

    gop: keyframe interval in frames (use num_frames or more for a single keyframe).
    frame_durations: per-frame durations in milliseconds for a variable-frame-rate file (then the
    stream time base is 1/1000 and `fps` is only the nominal rate given to the encoder).
    first_pts: timestamp of the first frame, in frame periods (a stream that does not start at 0).
    audio: also mux a silent AAC track, interleaved with the video.
    faststart: MP4 only, put the index (moov) before the data, so a truncated copy still opens.
    display_rotation: write a display matrix rotating the picture by this many degrees
        counter-clockwise (what phones write for portrait video; PyAV's `set_display_rotation`).
    """
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(ENCODERS[codec], rate=fps, options=_encoder_options(codec, gop, bframes))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if display_rotation is not None:
            stream.set_display_rotation(display_rotation)
        if frame_durations is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        audio_stream = container.add_stream("aac", rate=16000) if audio else None
        if audio_stream is not None:
            audio_stream.layout = "mono"
        pts_ms = 0
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(index_frame(i, height, width), format="rgb24")
            if frame_durations is not None:
                frame.pts, frame.time_base = pts_ms, Fraction(1, 1000)
                pts_ms += frame_durations[i]
            else:
                frame.pts, frame.time_base = first_pts + i, Fraction(1, fps)
            container.mux(stream.encode(frame))
            if audio_stream is not None:
                _mux_silence(container, audio_stream, start=i * 16000 // fps, stop=(i + 1) * 16000 // fps)
        container.mux(stream.encode(None))
        if audio_stream is not None:
            container.mux(audio_stream.encode(None))
    return path


def _mux_silence(container, audio_stream, start: int, stop: int) -> None:
    samples = np.zeros((1, stop - start), dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
    container.mux(audio_stream.encode(frame))


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An AAC file (container from the suffix, e.g. .m4a / .mp4) with no video stream."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        total = int(seconds * 16000)
        for start in range(0, total, 1024):
            _mux_silence(container, stream, start, min(start + 1024, total))
        container.mux(stream.encode(None))
    return path


def reference_frames(source, indices=None) -> tuple[int, dict[int, np.ndarray]]:
    """(frame count, {n: RGB uint8 frame}) from a plain start-to-end decode of the first video stream,
    no seeking. This is the independent reference: the n-th frame out of a sequential decode is frame n.
    Only the frames in `indices` are converted (all when None).
    """
    wanted = None if indices is None else set(int(i) for i in indices)
    frames: dict[int, np.ndarray] = {}
    count = 0
    with av.open(str(source)) as container:
        for count, frame in enumerate(container.decode(video=0), start=1):
            if wanted is None or count - 1 in wanted:
                frames[count - 1] = frame.to_ndarray(format="rgb24")
    return count, frames


def keyframe_count(source) -> int:
    with av.open(str(source)) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size and packet.is_keyframe)
