"""The `descore` command line: quickstart builds a usable checkpoint, score/compare print results,
bad inputs give one-line errors and a non-zero exit while the other videos still get results."""

from __future__ import annotations

import io
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
        assert set(line) == {"video", "reward", "rewards", "rationale", "mode", "backend", "timings_ms", "num_frames",
                             "num_cot_tokens", "cot_stop", "cot_repeating", "sampling"}
        assert line["cot_stop"] is None and line["sampling"]["frames"] == line["num_frames"]
        assert line["backend"] == "torch" and line["mode"] == "fast"
    assert "not_a_video.mp4" in captured.err and "Traceback" not in captured.err
    assert captured.err.startswith("descore: error: ")  # the same prefix as every other CLI error


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


def test_version_and_help_name_every_command(capsys):
    from descore_sdk import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "pretrain" in top and "benchmark" in top
    with pytest.raises(SystemExit):
        main(["train", "benchmark", "--help"])
    assert capsys.readouterr().out.startswith("usage: descore train benchmark")
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for words in ("the text prompt the videos were generated from", "nucleus sampling", "(0 = off)", "(> 1 discourages loops"):
        assert words in help_text


@pytest.mark.parametrize("flag", [["--threads", "0"], ["--threads", "-2"], ["--max-new-tokens", "-1"], ["--top-k", "-1"]])
def test_out_of_range_numbers_are_refused_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit) as done:
        main(["score", "a.mp4", "--prompt", "x", "--model", "m", *flag])
    assert done.value.code == 2 and "must be" in capsys.readouterr().err


def test_model_paths_expand_the_home_folder(quickstart_dir, sample_videos, monkeypatch, capsys):
    """A quoted "~/..." (no shell expansion) and the README's Python example both work."""
    from descore_sdk import Scorer

    monkeypatch.setenv("HOME", str(quickstart_dir.parent))
    tilde = f"~/{quickstart_dir.name}"
    assert Scorer.from_pretrained(tilde, mode="fast").config.family == "qwen3_vl"
    assert main(["score", str(sample_videos[0]), "--prompt", PROMPT, "--model", tilde, "--mode", "fast", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "torch"


def test_a_training_run_folder_is_taken_as_its_model(quickstart_dir, sample_videos, tmp_path):
    import shutil

    from descore_sdk import Scorer
    from descore_sdk.errors import ModelLoadError

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="has not finished"):
        Scorer.from_pretrained(run)
    shutil.copytree(quickstart_dir, run / "model", ignore=shutil.ignore_patterns("onnx", "training"))
    by_run = Scorer.from_pretrained(run, mode="fast").score(sample_videos[0], PROMPT)
    by_model = Scorer.from_pretrained(run / "model", mode="fast").score(sample_videos[0], PROMPT)
    assert by_run.rewards == by_model.rewards
    assert main(["export", str(run), str(tmp_path / "bundle"), "--no-parity"]) == 0
    assert (tmp_path / "bundle" / "manifest.json").is_file()


def test_export_refuses_to_replace_a_folder_without_overwrite(quickstart_dir, tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "mine.txt").write_text("do not delete")
    assert main(["export", str(quickstart_dir), str(out), "--no-parity"]) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and (out / "mine.txt").read_text() == "do not delete"
    # --overwrite replaces a bundle, never a folder of other files.
    assert main(["export", str(quickstart_dir), str(out), "--no-parity", "--overwrite"]) == 1
    assert "no DeScore bundle" in capsys.readouterr().err and (out / "mine.txt").is_file()
    bundle = quickstart_dir / "onnx"
    (bundle / "stale.txt").write_text("from an earlier export")
    assert main(["export", str(quickstart_dir), str(bundle), "--no-parity", "--overwrite"]) == 0
    assert (bundle / "manifest.json").is_file() and not (bundle / "stale.txt").exists()


def test_runaway_cot_is_reported_in_text_and_json(capsys):
    from descore_sdk.cli import _print_result
    from descore_sdk.results import ScoreResult

    result = ScoreResult(reward=0.5, rewards={"overall": 0.5}, rationale="around " * 64, mode="think", backend="onnxruntime",
                         num_prompt_tokens=100, num_cot_tokens=64, num_frames=4, timings_ms={"total": 1.0}, video="v.mp4",
                         cot_stop="budget", cot_repeating=True)
    _print_result(result, as_json=False)
    out = capsys.readouterr().out
    assert "warning: the CoT hit the max_new_tokens budget (64 tokens)" in out and "repetition loop" in out
    _print_result(result, as_json=True)
    data = json.loads(capsys.readouterr().out)
    assert data["cot_stop"] == "budget" and data["cot_repeating"] is True


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_only_and_never_with_json(quickstart_dir, sample_videos, monkeypatch, capsys):
    argv = ["score", str(sample_videos[0]), str(sample_videos[1]), "--prompt", PROMPT, "--model", str(quickstart_dir), "--mode", "fast"]
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "scoring" in terminal.getvalue() and "2/2" in terminal.getvalue()  # the bar, on stderr
    assert out.count("reward") == 2 and "scoring" not in out and "Loading weights" not in terminal.getvalue()
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(argv + ["--json"]) == 0
    assert terminal.getvalue() == ""
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
