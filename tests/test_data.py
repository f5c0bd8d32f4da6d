"""Preference-pair readers: the real VideoAlign sample CSV, and JSON / JSONL / CSV files written here."""

from __future__ import annotations

import json
import shutil
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from descore_sdk.errors import DataError, InvalidInputError
from descore_sdk.training.data import DataWarning, PreferencePair, read_pairs, write_pairs_jsonl


def _tiny_video(path: Path) -> Path:
    """A real 2-frame 16×16 MP4, written with PyAV directly (independent of the code under test)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(2))
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for value in (0, 200):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), value, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def video_dir(tmp_path) -> Path:
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        _tiny_video(tmp_path / "videos" / name)
    return tmp_path


def test_videoalign_sample_csv(sample_data_dir):
    pairs = read_pairs(sample_data_dir / "example.csv", on_missing="error", check_decodable=True)
    # Expected values read off example.csv by eye (header is line 1).
    assert [p.row for p in pairs] == [2, 3, 4]
    assert [p.labels for p in pairs] == [
        {"VQ": "B", "MQ": "B", "TA": "A"},
        {"VQ": "same", "MQ": "same", "TA": "A"},
        {"VQ": "A", "MQ": "same", "TA": "same"},
    ]
    root = sample_data_dir.absolute()
    for i, pair in enumerate(pairs, start=1):
        # path_A is written "videos/x.mp4", path_B "./videos/x.mp4": both normalise the same way.
        assert pair.video_a == root / "videos" / f"example_{i}_A.mp4"
        assert pair.video_b == root / "videos" / f"example_{i}_B.mp4"
        assert "overall" not in pair.labels  # the file has no overall column: none is invented
        assert pair.rationale_a is None and pair.meta == {}
    assert pairs[0].prompt.startswith("The camera remains still, a girl with braided hair")
    assert pairs[2].prompt.endswith("the smooth, light movements.")


def test_csv_with_overall_column_extra_columns_and_multiline_prompt(video_dir):
    csv_path = video_dir / "pairs.csv"
    csv_path.write_text(
        "path_A,path_B,prompt,Overall,note\n"
        'videos/a.mp4,videos/b.mp4,"two\nlines",b,whatever\n'
        "videos/b.mp4,videos/c.mp4,plain,Same,x\n"
    )
    pairs = read_pairs(csv_path)
    assert [p.labels for p in pairs] == [{"overall": "B"}, {"overall": "same"}]
    assert [p.row for p in pairs] == [2, 4]  # the quoted prompt spans lines 2-3
    assert pairs[0].prompt == "two\nlines"


def test_csv_malformed(video_dir):
    bad_header = video_dir / "h.csv"
    bad_header.write_text("video1,video2,prompt,VQ\nvideos/a.mp4,videos/b.mp4,p,A\n")
    with pytest.raises(DataError, match="path_A"):
        read_pairs(bad_header)
    no_labels = video_dir / "n.csv"
    no_labels.write_text("path_A,path_B,prompt,fps_A\nvideos/a.mp4,videos/b.mp4,p,24\n")
    with pytest.raises(DataError, match="no label column"):
        read_pairs(no_labels)
    bad_label = video_dir / "l.csv"
    bad_label.write_text("path_A,path_B,prompt,VQ,MQ\nvideos/a.mp4,videos/b.mp4,p,A,A\nvideos/a.mp4,videos/b.mp4,p,A,better\n")
    with pytest.raises(DataError, match=r"row 3: MQ = 'better'"):
        read_pairs(bad_label)
    short = video_dir / "s.csv"
    short.write_text("path_A,path_B,prompt,VQ\nvideos/a.mp4,videos/b.mp4,p\n")
    with pytest.raises(DataError, match="row 2"):
        read_pairs(short)


def test_genai_bench_json(video_dir):
    items = [
        {"prompt": "p1", "video_left": "videos/a.mp4", "video_right": "videos/b.mp4", "vote_type": "leftvote"},
        {"prompt": "p2", "video_left": "videos/b.mp4", "video_right": "videos/c.mp4", "vote_type": "rightvote", "model": "x"},
        {"prompt": "p3", "video_left": "videos/a.mp4", "video_right": "videos/c.mp4", "vote_type": "tievote"},
        {"prompt": "p4", "video_left": "videos/c.mp4", "video_right": "videos/a.mp4", "vote_type": "bothbad_vote"},
    ]
    path = video_dir / "genai.json"
    path.write_text(json.dumps(items, indent=2))
    pairs = read_pairs(path)
    assert [p.labels for p in pairs] == [{"overall": "A"}, {"overall": "B"}, {"overall": "same"}, {"overall": "same"}]
    assert [p.row for p in pairs] == [1, 2, 3, 4]
    assert pairs[1].video_a == video_dir.absolute() / "videos" / "b.mp4"
    assert pairs[1].video_b == video_dir.absolute() / "videos" / "c.mp4"

    items[2]["vote_type"] = "maybe"
    path.write_text(json.dumps(items))
    with pytest.raises(DataError, match="row 3: vote_type 'maybe'"):
        read_pairs(path)
    path.write_text('[{"prompt": "p",')
    with pytest.raises(DataError, match="invalid JSON"):
        read_pairs(path)


def test_jsonl_format_and_round_trip(video_dir):
    lines = [
        {"prompt": "p1", "video_a": "videos/a.mp4", "video_b": "videos/b.mp4", "label": "a"},
        {"prompt": "p2", "video_a": "videos/b.mp4", "video_b": "videos/c.mp4",
         "labels": {"VQ": "B", "TA": "same"}, "rationale_a": "blurry", "rationale_b": "sharp", "source": "synth"},
    ]
    path = video_dir / "pairs.jsonl"
    # A blank line in between: skipped, and the second pair keeps its real line number (3).
    path.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n")
    pairs = read_pairs(path)
    assert [p.row for p in pairs] == [1, 3]
    assert pairs[0].labels == {"overall": "A"}
    assert pairs[1].labels == {"VQ": "B", "TA": "same"}
    assert (pairs[1].rationale_a, pairs[1].rationale_b) == ("blurry", "sharp")
    assert pairs[1].meta == {"source": "synth"}

    # Round trip through the writer, into a file in the same folder.
    out = write_pairs_jsonl(pairs, video_dir / "copy.jsonl")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[1]["video_a"] == "videos/b.mp4" and records[1]["source"] == "synth"
    again = read_pairs(out)
    assert [(p.prompt, p.video_a, p.video_b, p.labels, p.rationale_a, p.meta) for p in again] == [
        (p.prompt, p.video_a, p.video_b, p.labels, p.rationale_a, p.meta) for p in pairs
    ]

    # Content sniffing: the same JSONL under an unknown suffix.
    sniffed = video_dir / "pairs.data"
    sniffed.write_text(path.read_text())
    assert len(read_pairs(sniffed)) == 2


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "p", "video_a": "videos/a.mp4", "video_b": "videos/b.mp4", "label": "A"', "row 2: invalid JSON"),
        ('{"prompt": "p", "video_a": "videos/a.mp4", "video_b": "videos/b.mp4"}', "row 2: give exactly one"),
        ('{"prompt": "p", "video_a": "videos/a.mp4", "video_b": "videos/b.mp4", "label": "A", "labels": {"VQ": "A"}}', "row 2: give exactly one"),
        ('{"prompt": "p", "video_a": "videos/a.mp4", "video_b": "videos/b.mp4", "labels": {"VQ": "win"}}', "row 2: labels.VQ"),
        ('{"prompt": "p", "video_a": "videos/a.mp4", "label": "A"}', "row 2: missing key"),
        ('{"prompt": "", "video_a": "videos/a.mp4", "video_b": "videos/b.mp4", "label": "A"}', "row 2: 'prompt'"),
        ('{"prompt": "p", "video_a": "videos/a.mp4", "video_b": "videos/b.mp4", "label": "A", "rationale_a": 3}', "row 2: 'rationale_a'"),
        ('["not", "an", "object"]', "row 2: expected a JSON object"),
    ],
)
def test_jsonl_malformed(video_dir, line, message):
    good = '{"prompt": "p", "video_a": "videos/a.mp4", "video_b": "videos/b.mp4", "label": "B"}'
    path = video_dir / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_pairs(path)


@pytest.mark.parametrize("escape", ["../outside.mp4", "videos/../../outside.mp4", "/etc/passwd", "."])
def test_paths_may_not_escape_the_data_folder(video_dir, escape):
    _tiny_video(video_dir.parent / "outside.mp4")
    path = video_dir / "pairs.jsonl"
    records = [
        {"prompt": "p", "video_a": "videos/a.mp4", "video_b": "videos/b.mp4", "label": "A"},
        {"prompt": "p", "video_a": "videos/a.mp4", "video_b": escape, "label": "A"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError, match=r"row 2: video_b .* outside the data folder"):
        read_pairs(path)


def test_paths_that_stay_inside_are_accepted(video_dir):
    absolute_inside = str((video_dir / "videos" / "c.mp4").absolute())
    path = video_dir / "pairs.csv"
    path.write_text(f"path_A,path_B,prompt,TA\nvideos/../videos/a.mp4,{absolute_inside},p,A\n")
    (pair,) = read_pairs(path, on_missing="error")
    assert pair.video_a == video_dir.absolute() / "videos" / "a.mp4"
    assert pair.video_b == video_dir.absolute() / "videos" / "c.mp4"


def test_missing_videos_skip_or_error_with_rows(video_dir):
    path = video_dir / "pairs.jsonl"
    records = [
        {"prompt": "p", "video_a": "videos/a.mp4", "video_b": "videos/b.mp4", "label": "A"},
        {"prompt": "p", "video_a": "videos/gone.mp4", "video_b": "videos/b.mp4", "label": "A"},
        {"prompt": "p", "video_a": "videos/c.mp4", "video_b": "videos/b.mp4", "label": "B"},
        {"prompt": "p", "video_a": "videos/c.mp4", "video_b": "videos/also_gone.mp4", "label": "same"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.warns(DataWarning, match=r"skipped 2 of 4 .*rows 2, 4\)") as caught:
        pairs = read_pairs(path, on_missing="skip")
    assert "gone.mp4 is missing" in str(caught[0].message)
    assert [p.row for p in pairs] == [1, 3]
    with pytest.raises(DataError, match=r"rows 2, 4") as err:
        read_pairs(path, on_missing="error")
    assert "also_gone.mp4" in str(err.value)
    with pytest.raises(InvalidInputError):
        read_pairs(path, on_missing="ignore")


def test_undecodable_videos_only_caught_when_asked(video_dir, sample_videos):
    (video_dir / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 200)
    shutil.copy(sample_videos[0], video_dir / "videos" / "real.mp4")
    path = video_dir / "pairs.csv"
    path.write_text(
        "path_A,path_B,prompt,VQ\n"
        "videos/real.mp4,videos/a.mp4,p,A\n"
        "videos/broken.mp4,videos/a.mp4,p,B\n"
    )
    assert len(read_pairs(path, on_missing="error")) == 2  # exists, so fine without probing
    with pytest.raises(DataError, match=r"rows 3\).*broken.mp4 cannot be decoded"):
        read_pairs(path, on_missing="error", check_decodable=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = read_pairs(path, on_missing="skip", check_decodable=True)
    assert [p.row for p in pairs] == [2]
    assert any(issubclass(w.category, DataWarning) and "rows 3" in str(w.message) for w in caught)


def test_unknown_format_and_missing_file(tmp_path):
    odd = tmp_path / "pairs.txt"
    odd.write_text("hello\n")
    with pytest.raises(DataError, match="Cannot tell the format"):
        read_pairs(odd)
    with pytest.raises(DataError, match="does not exist"):
        read_pairs(tmp_path / "nope.csv")


def test_writer_rejects_videos_outside_its_folder(tmp_path):
    pair = PreferencePair("p", tmp_path / "v" / "a.mp4", tmp_path.parent / "b.mp4", {"overall": "A"})
    with pytest.raises(InvalidInputError, match="outside"):
        write_pairs_jsonl([pair], tmp_path / "pairs.jsonl")
