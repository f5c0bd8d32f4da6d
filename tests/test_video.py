"""descore_sdk.video against independent references.

- Sampling: hand-computed index lists, and an exact-arithmetic (Fraction) statement of Qwen-VL's rule.
- Decoding: a plain sequential PyAV decode of the same file (frame n = n-th frame out), compared
  pixel-exactly at the sampled indices; and the frame index each synthetic frame carries in its pixels.
- Efficiency: the number of frames the decoder produced, compared with the hand-countable minimum for
  the known keyframe layout.
- Real files: the VideoAlign samples, whose CSV lists frame counts and frame rates.
"""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from descore_sdk.errors import InvalidInputError, VideoDecodeError
from descore_sdk.video import VideoClip, load_video, sample_frame_indices

sys.path.insert(0, str(Path(__file__).resolve().parent))
import media  # noqa: E402  (test helper next to this file)


# --------------------------------------------------------------------------------------------------
# Independent statement of the sampling rule (exact rational arithmetic, written from its description)


def rule_indices(total, video_fps, fps=2.0, min_frames=4, max_frames=768, factor=2) -> list[int]:
    if total < factor:
        return [min(i, total - 1) for i in range(factor)]
    low = math.ceil(Fraction(min_frames, factor)) * factor
    high = (min(max_frames, total) // factor) * factor
    wanted = Fraction(total) / Fraction(video_fps) * Fraction(fps)
    count = math.floor(min(max(wanted, low), high, total) / factor) * factor
    return [round(Fraction(i * (total - 1), count - 1)) for i in range(count)]


def fewest_decodes(targets, keyframes) -> int:
    """Frames a decoder must produce to reach each target in turn: forward from the last target, or
    from the keyframe at/before the target when that keyframe lies beyond the last target."""
    produced, position = 0, -1
    for target in sorted(set(int(t) for t in targets)):
        key = max(k for k in keyframes if k <= target)
        start = key if key > position + 1 else position + 1
        produced += target - start + 1
        position = target
    return produced


# --------------------------------------------------------------------------------------------------
# sample_frame_indices


@pytest.mark.parametrize(
    "total, video_fps, expected",
    [
        (126, 24.0, [0, 14, 28, 42, 56, 69, 83, 97, 111, 125]),  # 10.5 → 10
        (152, 30.0, [0, 17, 34, 50, 67, 84, 101, 117, 134, 151]),  # 10.13 → 10
        (60, 16.0, [0, 12, 24, 35, 47, 59]),  # 7.5 → 6
        (120, 24.0, [0, 13, 26, 40, 53, 66, 79, 93, 106, 119]),  # exactly 10
        (30, 30.0, [0, 10, 19, 29]),  # 2 → raised to min_frames 4
        (5, 24.0, [0, 1, 3, 4]),  # 4 of 5
        (3, 24.0, [0, 2]),  # cap floor(3 / 2) * 2 = 2
        (2, 24.0, [0, 1]),
        (1, 24.0, [0, 0]),  # shorter than the temporal patch: last frame repeated
    ],
)
def test_sample_frame_indices_hand_computed(total, video_fps, expected):
    indices = sample_frame_indices(total, video_fps)
    assert indices.dtype == np.int64
    assert indices.tolist() == expected


def test_sample_frame_indices_long_video_clamps_to_max_frames():
    # 10 minutes at 30 fps: 1200 frames wanted at 2 fps, capped at 768, spread over 0..17999.
    indices = sample_frame_indices(18000, 30.0)
    assert len(indices) == 768
    assert indices[:3].tolist() == [0, 23, 47]  # 17999 / 767 = 23.466… per step
    assert indices[-1] == 17999
    assert sample_frame_indices(18000, 30.0, max_frames=9).tolist() == [0, 2571, 5143, 7714, 10285, 12856, 15428, 17999]


def test_sample_frame_indices_options():
    # min_frames rounds up to the factor: 5 → 6 frames over 0..29.
    assert sample_frame_indices(30, 30.0, min_frames=5).tolist() == [0, 6, 12, 17, 23, 29]
    # a higher sampling rate than the source keeps every frame (floored to the factor)
    assert sample_frame_indices(7, 24.0, fps=48.0).tolist() == [0, 1, 2, 4, 5, 6]
    assert sample_frame_indices(3, 24.0, frame_factor=4).tolist() == [0, 1, 2, 2]


def test_sample_frame_indices_matches_exact_rule_on_a_grid():
    for total in (1, 2, 3, 7, 48, 97, 126, 240, 1001, 5000):
        for video_fps in (8.0, 23.976, 24.0, 30.0, 60.0):
            for fps in (0.5, 1.0, 2.0, 4.0):
                for max_frames in (16, 768):
                    got = sample_frame_indices(total, video_fps, fps=fps, max_frames=max_frames).tolist()
                    assert got == rule_indices(total, video_fps, fps, max_frames=max_frames), (total, video_fps, fps)


@pytest.mark.parametrize(
    "kwargs",
    [dict(total_frames=0, video_fps=24.0), dict(total_frames=10, video_fps=0.0),
     dict(total_frames=10, video_fps=24.0, fps=-1.0), dict(total_frames=10, video_fps=24.0, max_frames=1),
     dict(total_frames=10, video_fps=24.0, frame_factor=0)],
)
def test_sample_frame_indices_rejects_bad_arguments(kwargs):
    with pytest.raises(InvalidInputError):
        sample_frame_indices(**kwargs)


# --------------------------------------------------------------------------------------------------
# Synthetic videos: every codec, with and without reordering, regular and single keyframes

# (codec, container, B-frames, keyframe interval)
SYNTHETIC = [
    ("h264", "mp4", 0, 8),
    ("h264", "mp4", 3, 8),
    ("h264", "mkv", 3, 1000),
    ("h264", "ts", 2, 8),  # MPEG-TS seeks by decode time
    ("hevc", "mp4", 3, 8),  # x265 open GOPs: CRA keyframes with leading pictures
    ("hevc", "mkv", 0, 1000),
    ("vp9", "webm", 0, 8),
    ("vp9", "webm", 0, 1000),
    ("av1", "mkv", 0, 8),
    ("av1", "mp4", 0, 1000),
]
NUM_FRAMES, SOURCE_FPS = 96, 24


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


def _synthetic(video_dir: Path, codec: str, container: str, bframes: int, gop: int, **kwargs) -> Path:
    path = video_dir / f"{codec}_b{bframes}_g{gop}_{'_'.join(f'{k}{v}' for k, v in kwargs.items())}.{container}"
    if not path.exists():
        num_frames = kwargs.pop("num_frames", NUM_FRAMES)
        media.write_video(path, codec=codec, bframes=bframes, gop=gop, num_frames=num_frames, **kwargs)
    return path


def _assert_matches_reference(path, clip: VideoClip) -> dict[int, np.ndarray]:
    count, reference = media.reference_frames(path, clip.frame_indices)
    assert clip.total_frames == count
    assert clip.frames.dtype == np.uint8 and clip.frames.flags["C_CONTIGUOUS"]
    for position, index in enumerate(clip.frame_indices.tolist()):
        assert np.array_equal(clip.frames[position], reference[index]), f"frame {index} differs from the reference"
    return reference


@pytest.mark.parametrize("codec, container, bframes, gop", SYNTHETIC)
@pytest.mark.parametrize("fps", [2.0, 6.0])
def test_synthetic_frames_equal_sequential_decode(video_dir, codec, container, bframes, gop, fps):
    path = _synthetic(video_dir, codec, container, bframes, gop)
    clip = load_video(path, fps=fps)

    assert clip.frame_indices.tolist() == rule_indices(NUM_FRAMES, SOURCE_FPS, fps)
    assert clip.source_fps == SOURCE_FPS
    assert clip.duration_s == pytest.approx(NUM_FRAMES / SOURCE_FPS)
    assert clip.frames.shape == (len(clip.frame_indices), 64, 64, 3)
    _assert_matches_reference(path, clip)
    assert [media.read_index(frame) for frame in clip.frames] == clip.frame_indices.tolist()
    # Work done: exactly the minimum for keyframes every `gop` frames (a failed seek or a needless
    # restart would show up here), and a single-keyframe clip is decoded once, front to back. With
    # B-frames, the disposable ones that are not targets are skipped (skip_frame NONREF): fewer.
    keyframes = list(range(0, NUM_FRAMES, gop))
    fewest = fewest_decodes(clip.frame_indices, keyframes) + (1 if container == "ts" else 0)
    if bframes == 0 or codec in ("vp9", "av1"):
        assert clip.decoded_frames == fewest
        if gop >= NUM_FRAMES:
            assert clip.decoded_frames == clip.frame_indices[-1] + 1
    else:
        assert len(set(clip.frame_indices.tolist())) <= clip.decoded_frames < fewest


def test_ts_first_seek_is_the_only_extra_work(video_dir):
    # MPEG-TS lands one keyframe late when seeking by presentation time; the reader must notice once,
    # switch to decode time, and not restart the file.
    path = _synthetic(video_dir, "h264", "ts", 2, 8)
    clip = load_video(path, fps=2.0)
    assert clip.decoded_frames <= fewest_decodes(clip.frame_indices, range(0, NUM_FRAMES, 8)) + 8


@pytest.mark.parametrize("container", ["avi", "h264"])
def test_streams_without_usable_timestamps_fall_back_to_counting(video_dir, container):
    # AVI stores decode-order timestamps (wrong with B-frames); a raw H.264 stream has none at all.
    path = _synthetic(video_dir, "h264", container, 2, 8)
    clip = load_video(path, fps=6.0)
    # The rate the file was written with: the nominal rate (AVI header, H.264 SPS timing), not FFmpeg's
    # average rate, which comes from the broken timestamps (25, FFmpeg's guess, for the raw stream).
    assert clip.source_fps == SOURCE_FPS
    assert clip.frame_indices.tolist() == rule_indices(NUM_FRAMES, SOURCE_FPS, 6.0)
    _assert_matches_reference(path, clip)
    assert [media.read_index(frame) for frame in clip.frames] == clip.frame_indices.tolist()
    assert clip.decoded_frames <= 2 * NUM_FRAMES


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_stream_not_starting_at_zero_and_with_audio(video_dir, container):
    path = _synthetic(video_dir, "h264", container, 2, 8, first_pts=37, audio=True)
    clip = load_video(path, fps=4.0)
    assert clip.frame_indices.tolist() == rule_indices(NUM_FRAMES, SOURCE_FPS, 4.0)
    _assert_matches_reference(path, clip)
    assert [media.read_index(frame) for frame in clip.frames] == clip.frame_indices.tolist()


def test_variable_frame_rate(video_dir):
    # Durations cycle 20, 40, 60, 80, 100 ms: the 60th frame starts at 3.5 s, so the mean rate between
    # first and last frame is 59 / 3.5 = 16.857 fps, while the Matroska header carries a nominal 24 fps.
    durations = [(i % 5 + 1) * 20 for i in range(60)]
    path = video_dir / "vfr.mkv"
    media.write_video(path, num_frames=60, gop=6, bframes=2, frame_durations=durations)
    clip = load_video(path, fps=4.0)
    assert clip.source_fps == pytest.approx(59 / 3.5, rel=1e-12)
    assert clip.duration_s == pytest.approx(60 / (59 / 3.5))
    assert clip.frame_indices.tolist() == rule_indices(60, Fraction(59 * 2, 7), 4.0)
    _assert_matches_reference(path, clip)
    assert [media.read_index(frame) for frame in clip.frames] == clip.frame_indices.tolist()
    np.testing.assert_allclose(clip.timestamps, clip.frame_indices * 3.5 / 59)


def test_ten_minute_video_is_not_decoded_end_to_end(video_dir):
    # 10 minutes at 10 fps, 32x32, a keyframe every 2 s: 6000 frames.
    path = video_dir / "long.mp4"
    media.write_video(path, width=32, height=32, fps=10, num_frames=6000, gop=20)
    clip = load_video(path, max_frames=64)
    assert clip.total_frames == 6000 and clip.duration_s == pytest.approx(600.0)
    assert clip.frame_indices.tolist() == rule_indices(6000, 10, max_frames=64)
    assert clip.decoded_frames == fewest_decodes(clip.frame_indices, range(0, 6000, 20))
    assert clip.decoded_frames <= 64 * 20 < 6000 // 4
    assert [media.read_index(frame) for frame in clip.frames] == clip.frame_indices.tolist()
    _assert_matches_reference(path, clip)


def test_single_frame_video_is_padded_to_the_temporal_patch(video_dir):
    path = _synthetic(video_dir, "h264", "mp4", 0, 8, num_frames=1)
    clip = load_video(path)
    assert clip.frame_indices.tolist() == [0, 0] and clip.total_frames == 1
    _, reference = media.reference_frames(path)
    assert np.array_equal(clip.frames, np.stack([reference[0], reference[0]]))


def test_container_that_refuses_to_seek_is_read_forward(video_dir, monkeypatch):
    import descore_sdk.video as video_module

    def refuse(self, pts):
        raise av.error.PermissionError(1, "Operation not permitted", "seek")

    monkeypatch.setattr(video_module._Decoder, "seek", refuse)
    path = _synthetic(video_dir, "h264", "mp4", 0, 8)  # no B-frames: every frame up to the last target decodes
    clip = load_video(path, fps=2.0)
    assert clip.frame_indices.tolist() == rule_indices(NUM_FRAMES, SOURCE_FPS, 2.0)
    _assert_matches_reference(path, clip)
    # one refused seek, then a single forward pass from the start
    assert clip.decoded_frames == clip.frame_indices[-1] + 1 + 1


def test_resize_while_decoding_matches_pillow_on_reference(video_dir):
    path = _synthetic(video_dir, "h264", "mp4", 3, 8, width=200, height=120)
    clip = load_video(path, max_pixels=64 * 64, factor=16)
    # 120x200 → round to 16 (half to even): 128x192 = 24,576 px > 4,096 → scale by sqrt(24,000 / 4,096) = 2.42:
    # floor(120 / 2.42 / 16) * 16 = 48, floor(200 / 2.42 / 16) * 16 = 80.
    assert clip.frames.shape == (len(clip.frame_indices), 48, 80, 3)
    _, reference = media.reference_frames(path, clip.frame_indices)
    for frame, index in zip(clip.frames, clip.frame_indices.tolist()):
        expected = np.asarray(Image.fromarray(reference[index]).resize((80, 48), Image.BICUBIC))
        assert np.array_equal(frame, expected)


def test_corrupted_packet_mid_stream_is_skipped(video_dir):
    clean = _synthetic(video_dir, "h264", "mp4", 0, 8, num_frames=48)
    with av.open(str(clean)) as handle:
        packets = sorted((p.pts, p.pos, p.size) for p in handle.demux(video=0) if p.size)
    data = bytearray(clean.read_bytes())
    rng = np.random.default_rng(0)
    for damaged in (16, 30):  # the keyframe of the third GOP, and a P-frame of the fourth
        _, pos, size = packets[damaged]
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    broken = video_dir / "broken.mp4"
    broken.write_bytes(bytes(data))

    clip = load_video(broken, fps=24.0)
    assert clip.total_frames == 48 and len(clip.frames) == 48
    used = clip.frame_indices.tolist()
    assert used == sorted(used) and all(u >= t for u, t in zip(used, range(48)))
    _, reference = media.reference_frames(clean, range(48))
    # GOPs the damage cannot reach decode exactly as in the clean file.
    for target in list(range(16)) + list(range(24, 30)) + list(range(32, 48)):
        assert used[target] == target and np.array_equal(clip.frames[target], reference[target])


# --------------------------------------------------------------------------------------------------
# Real sample videos (VideoAlign)


@pytest.fixture(scope="module")
def sample_rows(sample_data_dir) -> dict[str, tuple[float, int]]:
    rows = {}
    with open(sample_data_dir / "example.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            for side in "AB":
                name = Path(row[f"path_{side}"]).name
                rows[name] = (float(row[f"fps_{side}"]), int(float(row[f"num_frames_{side}"])))
    return rows


HAND_INDICES = {
    "example_1_A.mp4": [0, 14, 28, 42, 56, 69, 83, 97, 111, 125],
    "example_1_B.mp4": [0, 17, 34, 50, 67, 84, 101, 117, 134, 151],
    "example_3_B.mp4": [0, 12, 24, 35, 47, 59],
}


def test_real_samples_match_csv_and_reference(sample_data_dir, sample_rows):
    videos = sorted((sample_data_dir / "videos").glob("*.mp4"))
    assert len(videos) == 6
    for path in videos:
        csv_fps, csv_frames = sample_rows[path.name]
        clip = load_video(path)
        assert clip.source_fps == csv_fps and clip.total_frames == csv_frames, path.name
        assert clip.frame_indices.tolist() == rule_indices(csv_frames, csv_fps), path.name
        if path.name in HAND_INDICES:
            assert clip.frame_indices.tolist() == HAND_INDICES[path.name]
        _assert_matches_reference(path, clip)
        # one keyframe per sample file: read once, front to back; of the frames before the last target,
        # the disposable B-frames that are not targets are skipped (about half of these files)
        assert len(clip.frame_indices) <= clip.decoded_frames < 0.75 * (clip.frame_indices[-1] + 1)


def test_real_sample_resized_to_qwen_budget(sample_data_dir):
    path = sample_data_dir / "videos" / "example_1_A.mp4"  # 1360x752
    clip = load_video(path, max_pixels=448 * 448, factor=28)
    # 752x1360 → 756x1372 is over 200,704 px → scale by sqrt(752·1360 / 200,704) = 2.2574:
    # floor(752 / 2.2574 / 28) * 28 = 308, floor(1360 / 2.2574 / 28) * 28 = 588.
    assert clip.frames.shape == (10, 308, 588, 3)
    _, reference = media.reference_frames(path, clip.frame_indices[:3])
    for frame, index in zip(clip.frames[:3], clip.frame_indices[:3].tolist()):
        assert np.array_equal(frame, np.asarray(Image.fromarray(reference[index]).resize((588, 308), Image.BICUBIC)))


# --------------------------------------------------------------------------------------------------
# Input kinds


def test_bytes_and_file_objects_give_the_same_clip(video_dir):
    path = _synthetic(video_dir, "vp9", "webm", 0, 8)
    expected = load_video(path, fps=6.0)

    class OneWayStream(io.RawIOBase):
        """A pipe-like reader that cannot seek."""

        def __init__(self, data: bytes):
            self._inner = io.BytesIO(data)

        def readable(self):
            return True

        def seekable(self):
            return False

        def readinto(self, buffer):
            chunk = self._inner.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    data = path.read_bytes()
    with open(path, "rb") as handle:
        handle.read(100)  # a file object not at its start is still read from the beginning
        from_handle = load_video(handle, fps=6.0)
    for clip in (load_video(data, fps=6.0), load_video(str(path), fps=6.0), from_handle,
                 load_video(io.BytesIO(data), fps=6.0), load_video(OneWayStream(data), fps=6.0)):
        assert np.array_equal(clip.frame_indices, expected.frame_indices)
        assert np.array_equal(clip.frames, expected.frames)


def test_frame_array_is_taken_as_sampled_and_padded():
    frames = np.stack([media.index_frame(i, 32, 48) for i in range(5)])
    clip = load_video(frames, array_fps=4.0)
    assert clip.frame_indices.tolist() == [0, 1, 2, 3, 4, 4]
    assert np.array_equal(clip.frames, frames[[0, 1, 2, 3, 4, 4]])
    assert clip.source_fps == 4.0 and clip.duration_s == 1.25 and clip.decoded_frames == 0
    np.testing.assert_allclose(clip.timestamps, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert load_video(frames[:4]).source_fps == 2.0  # default rate: the sampling fps

    resized = load_video(frames, max_pixels=28 * 28 * 2, min_pixels=28 * 28, factor=28)  # 32x48 → 28x56
    expected = np.asarray(Image.fromarray(frames[4]).resize((56, 28), Image.BICUBIC))
    assert resized.frames.shape == (6, 28, 56, 3) and np.array_equal(resized.frames[-1], expected)


@pytest.mark.parametrize(
    "array",
    [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((2, 8, 8, 4), np.uint8),
     np.zeros((0, 8, 8, 3), np.uint8)],
)
def test_bad_frame_arrays_are_rejected(array):
    with pytest.raises(InvalidInputError):
        load_video(array)


def test_bad_options_are_rejected(video_dir):
    path = _synthetic(video_dir, "h264", "mp4", 0, 8)
    with pytest.raises(InvalidInputError, match="max_pixels and factor"):
        load_video(path, max_pixels=448 * 448)
    with pytest.raises(InvalidInputError):
        load_video(path, max_frames=1)
    with pytest.raises(InvalidInputError):
        load_video(12345)


# --------------------------------------------------------------------------------------------------
# Errors


def _error_inputs(tmp: Path) -> dict[str, tuple[object, str]]:
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "random.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (tmp / "notes.txt").write_text("This is a text file, not a video.\n" * 20)
    media.write_audio_only(tmp / "audio.m4a")
    complete = media.write_video(tmp / "full.mp4", num_frames=24, faststart=True)
    with av.open(str(complete)) as handle:
        first_data = min(p.pos for p in handle.demux(video=0) if p.size)
    (tmp / "cut.mp4").write_bytes(complete.read_bytes()[: first_data + 10])  # index intact, data gone
    mkv = media.write_video(tmp / "full.mkv", num_frames=24)
    (tmp / "cut.mkv").write_bytes(mkv.read_bytes()[:600])  # header only
    return {
        "missing": (tmp / "nope.mp4", "not found"),
        "directory": (tmp, "directory"),
        "empty file": (tmp / "empty.mp4", "empty"),
        "empty bytes": (b"", "empty"),
        "random bytes": ((tmp / "random.mp4").read_bytes(), "not a video"),
        "random file": (tmp / "random.mp4", "not a video"),
        "text file": (tmp / "notes.txt", "not a video"),
        "audio only": (tmp / "audio.m4a", "only audio"),
        "truncated mp4": (tmp / "cut.mp4", "truncated"),
        "truncated mkv": (tmp / "cut.mkv", "truncated"),
    }


def test_unreadable_inputs_raise_video_decode_error(tmp_path):
    for label, (source, phrase) in _error_inputs(tmp_path).items():
        with pytest.raises(VideoDecodeError) as caught:
            load_video(source)
        assert not isinstance(caught.value, av.FFmpegError), label
        assert phrase in str(caught.value), f"{label}: {caught.value}"


def test_module_does_not_import_torch():
    code = "import sys, descore_sdk.video; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _ffmpeg_display_rotation(matrix_bytes: bytes) -> float:
    """FFmpeg's av_display_rotation_get (libavutil/display.c) on a raw 3x3 16.16 display matrix:
    the counter-clockwise angle by which the matrix turns the picture."""
    m = np.frombuffer(matrix_bytes, dtype="<i4").astype(np.float64) / 65536.0
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    return -math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))


def _ffmpeg_autorotate(frame: np.ndarray, ccw_degrees: float) -> np.ndarray:
    """The ffmpeg command line's autorotate (fftools get_rotation): theta = -rotation, mod 360;
    90 → transpose=clock, 180 → hflip+vflip, 270 → transpose=cclock."""
    theta = round(-ccw_degrees) % 360
    if theta == 90:
        return np.rot90(frame, k=-1)  # clockwise
    if theta == 180:
        return frame[::-1, ::-1]
    if theta == 270:
        return np.rot90(frame, k=1)  # counter-clockwise
    return frame


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_display_rotation_is_applied_like_ffmpeg(video_dir, rotation):
    """A phone-style clip (landscape pixels + a display matrix) comes out upright: equal to the same
    clip without the matrix turned the way the ffmpeg CLI turns it, reading the raw matrix."""
    plain = media.write_video(video_dir / "rot_none.mp4", width=64, height=32, num_frames=8, gop=8)
    turned = media.write_video(video_dir / f"rot_{rotation}.mp4", width=64, height=32, num_frames=8, gop=8,
                               display_rotation=rotation)
    with av.open(str(turned)) as container:
        frame = next(container.decode(video=0))
        matrix = next(bytes(sd) for sd in frame.side_data if "DISPLAYMATRIX" in str(sd.type))
    ccw = _ffmpeg_display_rotation(matrix)
    assert round(ccw) % 360 == rotation % 360

    upright = load_video(turned, fps=8.0, min_frames=4, max_frames=8)
    source = load_video(plain, fps=8.0, min_frames=4, max_frames=8)
    assert np.array_equal(upright.frame_indices, source.frame_indices)
    expected = np.stack([_ffmpeg_autorotate(f, ccw) for f in source.frames])
    assert upright.frames.shape == expected.shape  # 90°: a 64x32 landscape picture becomes 32x64
    assert np.array_equal(upright.frames, expected)
    # Resizing happens after turning: the pixel budget is fitted to the upright size.
    small = load_video(turned, fps=8.0, min_frames=4, max_frames=8, max_pixels=16 * 32, min_pixels=16 * 16, factor=16)
    assert small.frames.shape[1:3] == ((16, 32) if rotation % 180 == 0 else (32, 16))
    # swscale scales the stored (sideways) picture, then turns it: the same upright size
    fast = load_video(turned, fps=8.0, min_frames=4, max_frames=8, max_pixels=16 * 32, min_pixels=16 * 16, factor=16,
                      resize="swscale")
    assert fast.frames.shape == small.frames.shape
    assert np.abs(fast.frames.astype(int) - small.frames.astype(int)).mean() < 8  # the same picture, turned alike


def test_swscale_resize_is_close_to_the_processors_pillow_resize(sample_data_dir):
    """resize="swscale" (FFmpeg converts and scales in one pass) against the default Pillow bicubic of the
    full-size RGB frame (the Qwen-VL processor's arithmetic), on the real sample videos at the model's
    usual budget: same frames and sizes, pixels close (measured: mean |Δ| ≈ 0.95, 98.5 % within 4)."""
    for name in ("example_1_A.mp4", "example_2_B.mp4"):
        path = sample_data_dir / "videos" / name
        options = dict(fps=2.0, min_frames=4, max_frames=8, max_pixels=224 * 224, factor=28)
        exact = load_video(path, **options)
        fast = load_video(path, **options, resize="swscale")
        assert np.array_equal(fast.frame_indices, exact.frame_indices) and fast.frames.shape == exact.frames.shape
        diff = np.abs(fast.frames.astype(int) - exact.frames.astype(int))
        assert diff.mean() < 1.5 and (diff <= 4).mean() > 0.97, (name, diff.mean(), (diff <= 4).mean())
        assert (diff == 0).mean() < 0.9  # not the same arithmetic: the option is not a no-op
    with pytest.raises(InvalidInputError, match="resize"):
        load_video(path, resize="bilinear")


def test_shipped_samples_with_zero_timestamps_keep_their_real_rate():
    """The packaged sample videos carry pts 0 on every frame (FFmpeg then reports a 3024 fps average
    over a 0.04 s stream); counting mode takes the nominal 24 fps, so 126 frames span 5.25 s and the
    2 fps rule keeps 10 frames, as the same clip from the original dataset gives."""
    from importlib import resources

    video = resources.files("descore_sdk.assets").joinpath("videos/example_1_A.mp4")
    with resources.as_file(video) as path:
        clip = load_video(path)
    assert clip.total_frames == 126 and clip.source_fps == 24.0
    assert clip.frame_indices.tolist() == rule_indices(126, 24.0)


def test_frames_converted_on_the_worker_thread_equal_the_serial_ones(sample_data_dir, monkeypatch):
    """Sampled frames are converted (RGB + resize) on a worker thread while decoding goes on; with the
    worker switched off the clip is the same, bit for bit. (The worker is the default path, which the
    tests above check against the reference decoder and Pillow.)"""
    import descore_sdk.video as video_module

    path = sample_data_dir / "videos" / "example_2_A.mp4"
    assert video_module._conversion_pool() is not None or len(os.sched_getaffinity(0)) < 2
    threaded = load_video(path, max_pixels=128 * 128, factor=28)
    monkeypatch.setattr(video_module, "_conversion_pool", lambda: None)
    serial = load_video(path, max_pixels=128 * 128, factor=28)
    assert np.array_equal(threaded.frames, serial.frames) and threaded.frame_indices.tolist() == serial.frame_indices.tolist()
    assert threaded.decoded_frames == serial.decoded_frames
