"""The `descore` command line: quickstart builds a usable checkpoint, score/compare print results,
bad inputs give one-line errors and a non-zero exit while the other videos still get results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from descore_sdk.cli import main  # noqa: E402

PROMPT = "a girl sits on a chair"


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    assert main(["quickstart", "--out", str(out), "--mode", "fast", "--untrained"]) == 0
    return out


def test_quickstart_prints_a_table_and_reuses_its_model(quickstart_dir, capsys):
    capsys.readouterr()
    assert main(["quickstart", "--out", str(quickstart_dir), "--mode", "fast", "--untrained"]) == 0
    out = capsys.readouterr().out
    assert "Using the tiny model already in" in out
    assert "example_1_A.mp4" in out and "example_3_B.mp4" in out and "P(A better)" in out


def test_score_json_one_object_per_video_and_errors_do_not_stop_others(quickstart_dir, sample_videos, tmp_path, capsys):
    bad = tmp_path / "not_a_video.mp4"
    bad.write_text("hello, I am text")
    argv = ["score", str(sample_videos[0]), str(bad), str(sample_videos[1]),
            "--prompt", PROMPT, "--model", str(quickstart_dir), "--mode", "fast", "--json"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [line["video"] for line in lines] == [str(sample_videos[0]), str(sample_videos[1])]
    for line in lines:
        assert set(line) == {"video", "reward", "rewards", "rationale", "mode", "backend", "timings_ms"}
        assert line["backend"] == "torch" and line["mode"] == "fast"
    assert "not_a_video.mp4" in captured.err and "Traceback" not in captured.err


def test_compare_json(quickstart_dir, sample_videos, capsys):
    assert main(["compare", str(sample_videos[0]), str(sample_videos[1]), "--prompt", PROMPT,
                 "--model", str(quickstart_dir), "--mode", "fast", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert 0.0 < data["prob_a_better"] < 1.0 and data["preferred"] in ("A", "B")


def test_cli_errors_exit_nonzero_without_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "descore_sdk.cli", "score", "x.mp4", "--prompt", PROMPT, "--model", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_train_rl_is_mounted_and_unknown_options_are_still_refused(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "rl", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "descore train rl" in out and "--kl-coef" in out and "--num-samples" in out
    with pytest.raises(SystemExit) as done:
        main(["compare", "a.mp4", "b.mp4", "--prompt", "x", "--model", "m", "--bogus"])
    assert done.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
