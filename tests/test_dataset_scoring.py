"""`descore score-dataset`: every row against a direct `Scorer` call, resume after an interruption,
error rows, and the Ray Data pipeline row for row against the local run.

References: direct `Scorer.score` calls on the same bundle (rewards, rationales), `descore eval`'s own
`evaluate_with_scorer` (the accuracy report), and hand-counted distinct videos.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("pyarrow")

from descore_sdk import Scorer  # noqa: E402
from descore_sdk.cli import main  # noqa: E402
from descore_sdk.dataset_scoring import DatasetJob, RowStore, read_units, run_job  # noqa: E402
from descore_sdk.errors import InvalidInputError  # noqa: E402

MAX_NEW_TOKENS = 6
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def scorer(scale_bundle):
    return Scorer.from_pretrained(scale_bundle, max_new_tokens=MAX_NEW_TOKENS, backend_options={"threads": 1})


@pytest.fixture(scope="module")
def direct(scorer, sample_data_dir):
    """{(video relative to the data folder, prompt): ScoreResult} for every video of example.csv."""
    units, _ = read_units(sample_data_dir / "example.csv")
    return {u.key: scorer.score(u.video, u.prompt) for u in units}


def _job(data, bundle, out, **kw) -> DatasetJob:
    return DatasetJob(data=str(data), model=str(bundle), out=str(out), threads=1, progress=False,
                      score_options={"max_new_tokens": MAX_NEW_TOKENS}, **kw)


def _rows(out) -> dict:
    return {(r["video"], r["prompt"]): r for r in RowStore(out, ["VQ", "MQ", "TA"]).rows()}


def _assert_rows_match(rows: dict, expected: dict) -> None:
    assert set(rows) == set(expected)
    for key, ref in expected.items():
        row = rows[key]
        assert row["error_type"] is None, row
        assert row["rewards"] == pytest.approx(ref.rewards, abs=TOLERANCE), key
        assert row["reward"] == pytest.approx(ref.reward, abs=TOLERANCE)
        assert (row["rationale"], row["num_frames"], row["num_cot_tokens"]) == (ref.rationale, ref.num_frames, ref.num_cot_tokens)


def test_units_are_distinct_videos_and_a_folder_needs_a_prompt(tmp_path, sample_videos):
    videos = tmp_path / "v"
    videos.mkdir()
    for video in sample_videos[:3]:
        shutil.copy(video, videos / video.name)
    a, b, c = (f"v/{v.name}" for v in sample_videos[:3])
    lines = [{"prompt": "p1", "video_a": a, "video_b": b, "label": "A"},
             {"prompt": "p1", "video_a": b, "video_b": c, "label": "B"},  # b shared with the first pair
             {"prompt": "p2", "video_a": a, "video_b": c, "label": "same"}]  # a, c again, but another prompt
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    units, pairs = read_units(data)
    assert [u.key for u in units] == [(a, "p1"), (b, "p1"), (c, "p1"), (a, "p2"), (c, "p2")] and len(pairs) == 3
    genai = tmp_path / "bench.json"
    genai.write_text(json.dumps([{"prompt": "p", "video_left": a, "video_right": b, "vote_type": "leftvote"}]))
    assert [u.key for u in read_units(genai)[0]] == [(a, "p"), (b, "p")]
    folder_units, _ = read_units(videos, "a prompt")
    assert [u.name for u in folder_units] == sorted(v.name for v in sample_videos[:3])
    with pytest.raises(InvalidInputError, match="--prompt"):
        read_units(videos)


def test_every_row_equals_a_direct_scorer_call_and_the_report_equals_descore_eval(tmp_path, scale_bundle, sample_data_dir,
                                                                                 scorer, direct):
    from descore_sdk.training.evaluation import evaluate_with_scorer
    from descore_sdk.training.data import read_pairs

    out = tmp_path / "results.parquet"
    summary = run_job(_job(sample_data_dir / "example.csv", scale_bundle, out))
    assert (summary["units"], summary["scored"], summary["failed"], summary["rows_in_output"]) == (6, 6, 0, 6)
    assert not (tmp_path / "results.parquet.parts").exists()
    _assert_rows_match(_rows(out), direct)
    expected = evaluate_with_scorer(scorer, read_pairs(sample_data_dir / "example.csv"), mode="think")
    for dim, values in expected["dims"].items():
        for metric in ("accuracy_without_ties", "accuracy_with_ties_in_sample", "n_pairs"):
            assert summary["report"]["dims"][dim][metric] == pytest.approx(values[metric], nan_ok=True), (dim, metric)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, scale_bundle, sample_data_dir, direct, suffix):
    out = tmp_path / f"results{suffix}"
    first = run_job(_job(sample_data_dir / "example.csv", scale_bundle, out, limit=2, batch_size=2))
    assert (first["scored"], first["remaining"]) == (2, 4)
    if suffix == ".jsonl":
        with open(out, "a") as handle:  # what a crash in the middle of a write leaves behind
            handle.write('{"video": "videos/example_3_B.mp4", "prompt": "cut sh')
    else:
        (out.with_name(out.name + ".parts")).mkdir(exist_ok=True)  # a crash before the merge leaves parts
        shutil.move(out, out.with_name(out.name + ".parts") / "part-000000.parquet")
    second = run_job(_job(sample_data_dir / "example.csv", scale_bundle, out, batch_size=3))
    assert (second["already_done"], second["scored"], second["rows_in_output"]) == (2, 4, 6)
    _assert_rows_match(_rows(out), direct)
    third = run_job(_job(sample_data_dir / "example.csv", scale_bundle, out))
    assert (third["already_done"], third["scored"]) == (6, 0)


def test_a_killed_run_resumes(tmp_path, scale_bundle, sample_data_dir, direct):
    """A real interruption: the CLI is SIGKILLed once it has written some rows; the rerun completes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed.jsonl"
    argv = [sys.executable, "-m", "descore_sdk.cli", "score-dataset", str(sample_data_dir / "example.csv"), "--model", str(scale_bundle),
            "--out", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS), "--threads", "1", "--batch-size", "1", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_file() and out.read_bytes().count(b"\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(60)
    written = out.read_bytes().count(b"\n")
    assert proc.returncode == -signal.SIGKILL and 2 <= written < 6, (proc.returncode, written)
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["already_done"] == written and summary["scored"] == 6 - written
    _assert_rows_match(_rows(out), direct)


def test_a_folder_of_videos_on_a_torch_checkpoint(tmp_path, scale_bundle, sample_videos):
    checkpoint = scale_bundle.parent / "checkpoint"
    folder = tmp_path / "generated"
    folder.mkdir()
    for video in sample_videos[:2]:
        shutil.copy(video, folder / video.name)
    out = tmp_path / "torch.jsonl"
    summary = run_job(DatasetJob(data=str(folder), model=str(checkpoint), out=str(out), prompt="a girl sits down", progress=False,
                                 score_options={"mode": "fast"}))
    assert (summary["scored"], summary["report"]) == (2, None)
    torch_scorer = Scorer.from_pretrained(checkpoint, mode="fast")
    rows = _rows(out)
    for video in sample_videos[:2]:
        row = rows[(video.name, "a girl sits down")]
        assert row["backend"] == "torch"
        assert row["rewards"] == pytest.approx(torch_scorer.score(folder / video.name, "a girl sits down").rewards, abs=TOLERANCE)


def test_videos_that_cannot_be_scored_become_error_rows_and_can_be_retried(tmp_path, scale_bundle, sample_videos, capsys):
    good, other = sample_videos[0], sample_videos[1]
    (tmp_path / "good.mp4").write_bytes(good.read_bytes())
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video")
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "a girl", "video_a": "good.mp4", "video_b": "junk.mp4", "label": "A"}) + "\n"
                    + json.dumps({"prompt": "a girl", "video_a": "good.mp4", "video_b": "missing.mp4", "label": "B"}) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["score-dataset", str(data), "--model", str(scale_bundle), "--out", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS),
            "--threads", "1", "--json"]
    assert main(argv) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["scored"], summary["failed"]) == (1, 2) and summary["report"]["n_pairs_evaluated"] == 0
    rows = _rows(out)
    assert rows[("junk.mp4", "a girl")]["error_type"] == "VideoDecodeError" and rows[("junk.mp4", "a girl")]["reward"] is None
    assert rows[("missing.mp4", "a girl")]["error_type"] is not None
    # fixed on disk: a plain rerun keeps the error rows, --retry-errors scores them again
    (tmp_path / "junk.mp4").write_bytes(other.read_bytes())
    (tmp_path / "missing.mp4").write_bytes(other.read_bytes())
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["scored"] == 0
    assert main(argv + ["--retry-errors"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["scored"], summary["errors_in_output"], summary["rows_in_output"]) == (2, 0, 3)
    assert summary["report"]["n_pairs_evaluated"] == 2


@pytest.mark.slow
def test_the_ray_pipeline_gives_the_local_rows_and_resumes(tmp_path, scale_bundle, sample_data_dir, direct):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        out = tmp_path / "ray.parquet"
        first = run_job(_job(sample_data_dir / "example.csv", scale_bundle, out, use_ray=True, workers=2, worker_cpus=0.5,
                             batch_size=2, limit=3))
        assert (first["engine"], first["scored"], first["remaining"]) == ("ray", 3, 3)
        second = run_job(_job(sample_data_dir / "example.csv", scale_bundle, out, use_ray=True, workers=2, worker_cpus=0.5,
                              batch_size=2))
        assert (second["already_done"], second["scored"], second["rows_in_output"]) == (3, 3, 6)
    finally:
        ray.shutdown()
    _assert_rows_match(_rows(out), direct)
    local = tmp_path / "local.parquet"
    run_job(_job(sample_data_dir / "example.csv", scale_bundle, local))
    ray_rows, local_rows = _rows(out), _rows(local)
    for key, row in local_rows.items():
        assert ray_rows[key]["rewards"] == pytest.approx(row["rewards"], abs=TOLERANCE)
        assert ray_rows[key]["rationale"] == row["rationale"]
    assert second["report"]["mean"] == pytest.approx(run_job(_job(sample_data_dir / "example.csv", scale_bundle, local))["report"]["mean"])
