"""`descore bench`: the report has the documented keys and self-consistent values, the CLI prints it,
bad arguments give typed errors. No timing thresholds: speed targets belong to the benchmark itself."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from descore_sdk import InvalidInputError, ModelLoadError  # noqa: E402
from descore_sdk.bench import SCHEMA, format_report, parse_batch_sizes, run_bench  # noqa: E402
from descore_sdk.cli import main  # noqa: E402

COT = 4
PROMPT = "a girl sits on a chair"
STATS_KEYS = {"median", "p90", "min", "max", "n"}


@pytest.fixture(scope="module")
def videos(sample_data_dir) -> list[Path]:
    return [sample_data_dir / "videos" / "example_1_A.mp4", sample_data_dir / "videos" / "example_1_B.mp4"]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def report(work_dir, videos) -> dict:
    # No --model/--bundle: the tiny model and its bundle are built (and kept in work_dir).
    return run_bench(videos=videos, prompt=PROMPT, cot_tokens=COT, repeats=1, batch_sizes=(1, 2), threads=1, work_dir=work_dir)


def _check_stats(s: dict, n: int) -> None:
    assert set(s) == STATS_KEYS
    assert s["n"] == n
    assert 0 < s["min"] <= s["median"] <= s["p90"] <= s["max"]


def test_report_has_the_documented_keys(report):
    assert report["schema"] == SCHEMA
    assert set(report) == {"schema", "settings", "environment", "inputs", "stages", "backends", "ratios",
                           "agreement", "batch", "layouts", "memory", "notes"}
    layouts = report["layouts"]
    assert set(layouts) == {"assistant", "user", "user_over_assistant_think"}
    # Same CoT length in both layouts: the comparison is like for like.
    assert layouts["user"]["cot_tokens_written"] == report["backends"]["onnxruntime"]["think"]["cot_tokens_written"]
    assert layouts["user_over_assistant_think"] == pytest.approx(
        layouts["user"]["think_latency_ms"]["median"] / layouts["assistant"]["think_latency_ms"]["median"])
    assert set(report["settings"]) == {"model", "bundle", "tiny_model", "videos", "prompts", "cot_tokens", "repeats",
                                       "warmup", "batch_sizes", "threads", "think_equal_work"}
    assert set(report["environment"]) == {"cpu_count", "usable_cpus", "threads", "omp_num_threads", "python", "platform", "versions"}
    assert set(report["environment"]["versions"]) == {"descore_sdk", "numpy", "onnxruntime", "torch", "transformers", "av"}
    assert set(report["stages"]) == {"decode_ms", "preprocess_ms", "prompt_ms", "frames"}
    assert set(report["backends"]) == {"torch", "onnxruntime"}
    for backend in report["backends"].values():
        assert set(backend) == {"available", "path", "load_ms", "threads", "fast", "think", "peak_rss_mb_after"}
        assert set(backend["fast"]) == {"latency_ms", "model_ms", "timings_ms"}
        assert set(backend["think"]) == {"latency_ms", "model_ms", "timings_ms", "cot_tokens_written",
                                         "cot_tokens_per_s", "generate_tokens_per_s"}
    assert set(report["ratios"]) == {f"{m}_{k}_torch_over_onnxruntime" for m in ("fast", "think") for k in ("latency", "model")}
    assert set(report["agreement"]) == {"same_cot", "max_abs_reward_diff"}
    assert set(report["batch"]) == {"backend", "mode", "cot_tokens", "videos", "results"}
    assert set(report["memory"]) == {"peak_rss_mb", "peak_rss_source", "current_rss_mb", "current_rss_source",
                                     "model_size_mb", "bundle_size_mb"}
    json.dumps(report)  # plain JSON types only


def test_settings_and_environment_are_what_was_asked_and_what_runs(report, videos, work_dir):
    import numpy
    import onnxruntime
    import torch

    s = report["settings"]
    assert s["tiny_model"] is True and s["model"] == str(work_dir / "checkpoint") and s["bundle"] == str(work_dir / "bundle")
    assert s["videos"] == [str(v) for v in videos] and s["prompts"] == [PROMPT, PROMPT]
    assert (s["cot_tokens"], s["repeats"], s["warmup"], s["batch_sizes"], s["threads"]) == (COT, 1, 1, [1, 2], 1)
    env = report["environment"]
    assert env["cpu_count"] == os.cpu_count() and env["threads"] == 1
    assert env["versions"]["onnxruntime"] == onnxruntime.__version__
    assert env["versions"]["numpy"] == numpy.__version__
    assert env["versions"]["torch"] == torch.__version__


def test_stage_and_latency_numbers_are_positive_with_one_sample_per_video_and_repeat(report, videos):
    n = len(videos)  # repeats = 1
    for key in ("decode_ms", "preprocess_ms", "prompt_ms", "frames"):
        _check_stats(report["stages"][key], n)
    for name, backend in report["backends"].items():
        assert backend["available"] is True and backend["load_ms"] > 0 and backend["threads"] == 1
        for mode in ("fast", "think"):
            section = backend[mode]
            _check_stats(section["latency_ms"], n)
            _check_stats(section["model_ms"], n)
            # the backend part is a part of the end-to-end latency of the same calls
            assert section["model_ms"]["median"] < section["latency_ms"]["median"]
            for stage in section["timings_ms"].values():
                _check_stats(stage, n)
        assert "generate" in backend["think"]["timings_ms"], name


def test_think_mode_does_equal_work_on_both_backends(report):
    # Stop tokens are off: every think run writes exactly COT tokens, on torch and onnxruntime alike.
    for backend in report["backends"].values():
        assert backend["think"]["cot_tokens_written"] == [COT]
        gen = backend["think"]["timings_ms"]["generate"]["median"]
        assert backend["think"]["generate_tokens_per_s"] == pytest.approx(COT * 1000 / gen, rel=1e-12)
    # Greedy decoding of the same model: the same CoT text and (nearly) the same reward on both backends.
    assert report["agreement"]["same_cot"] == 1.0
    assert report["agreement"]["max_abs_reward_diff"] < 1e-4


def test_ratios_are_ratios_of_the_reported_medians(report):
    be = report["backends"]
    for mode in ("fast", "think"):
        for kind in ("latency", "model"):
            expected = be["torch"][mode][f"{kind}_ms"]["median"] / be["onnxruntime"][mode][f"{kind}_ms"]["median"]
            assert report["ratios"][f"{mode}_{kind}_torch_over_onnxruntime"] == pytest.approx(expected, rel=1e-12)


def test_batch_results_count_and_speedups(report, videos):
    batch = report["batch"]
    assert (batch["backend"], batch["mode"], batch["cot_tokens"]) == ("onnxruntime", "think", COT)
    assert batch["videos"] == len(videos)
    assert [row["batch_size"] for row in batch["results"]] == [1, 2]
    base = batch["results"][0]["videos_per_s"]["median"]
    for row in batch["results"]:
        assert row["results_returned"] == batch["videos"]
        _check_stats(row["videos_per_s"], 1)
        assert row["speedup_vs_batch_1"] == pytest.approx(row["videos_per_s"]["median"] / base, rel=1e-12)
    assert batch["results"][0]["speedup_vs_batch_1"] == 1.0


def test_memory_and_sizes_on_disk(report, work_dir):
    m = report["memory"]
    # ru_maxrss is this process's peak: it can only have grown since the report was taken (KiB on Linux).
    now_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 2**20
    assert 0 < m["peak_rss_mb"] <= now_peak_mb
    assert "getrusage" in m["peak_rss_source"]
    after = [report["backends"][n]["peak_rss_mb_after"] for n in ("onnxruntime", "torch")]
    assert 0 < after[0] <= after[1] <= m["peak_rss_mb"]  # onnxruntime phase first, peaks never shrink
    for key, folder in (("model_size_mb", "checkpoint"), ("bundle_size_mb", "bundle")):
        on_disk = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(work_dir / folder) for f in files)
        assert m[key] == pytest.approx(on_disk / 2**20, rel=1e-12)


def test_cli_json_parses(work_dir, videos, capsys):
    argv = ["bench", "--model", str(work_dir / "checkpoint"), "--bundle", str(work_dir / "bundle"),
            "--videos", str(videos[0]), "--prompt", PROMPT, "--cot-tokens", "2", "--repeats", "1", "--batch-sizes", "2",
            "--threads", "1"]
    assert main(argv + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == SCHEMA and data["settings"]["tiny_model"] is False
    assert data["settings"]["cot_tokens"] == 2 and data["backends"]["torch"]["think"]["cot_tokens_written"] == [2]
    # batch size 1 is always measured as the baseline; a batch of 2 needs 2 items, so the one video is used twice
    assert [r["batch_size"] for r in data["batch"]["results"]] == [1, 2] and data["batch"]["videos"] == 2
    assert all(r["results_returned"] == 2 for r in data["batch"]["results"])


def test_table_shows_every_section(report):
    table = format_report(report)
    ratio = report["ratios"]["think_model_torch_over_onnxruntime"]
    assert f"think ({COT} CoT tokens), model only" in table and f"{ratio:6.2f}x" in table
    assert "video decode + sampling" in table and "score_batch throughput" in table and "peak RSS" in table


def test_bundle_only_run_never_imports_torch(work_dir, videos):
    code = (
        "import sys, json\n"
        "from descore_sdk.bench import run_bench\n"
        f"r = run_bench(bundle={str(work_dir / 'bundle')!r}, videos=[{str(videos[0])!r}], cot_tokens=2, repeats=1,"
        " batch_sizes=[1], threads=1)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'report': r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["torch"] is False
    r = out["report"]
    assert r["backends"]["torch"] == {"available": False, "reason": "no --model given"}
    assert all(v is None for v in r["ratios"].values()) and r["agreement"] is None
    assert r["memory"]["model_size_mb"] is None and r["memory"]["bundle_size_mb"] > 0
    assert any("one backend" in note for note in r["notes"])


def test_default_videos_are_the_packaged_samples_with_their_prompts():
    from contextlib import ExitStack
    from importlib import resources

    from descore_sdk.bench import _resolve_videos

    samples = json.loads(resources.files("descore_sdk.assets").joinpath("samples.json").read_text())
    expected = [(Path(p[k]).name, p["prompt"]) for p in samples["pairs"] for k in ("video_a", "video_b")]
    with ExitStack() as stack:
        paths, prompts = _resolve_videos(None, None, stack)
        assert all(p.is_file() for p in paths)
        assert [(p.name, q) for p, q in zip(paths, prompts)] == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cot_tokens=0), "cot_tokens"),
        (dict(repeats=0), "repeats"),
        (dict(repeats=1.5), "repeats"),
        (dict(threads=0), "threads"),
        (dict(batch_sizes="1,x"), "batch-sizes"),
        (dict(batch_sizes=""), "empty"),
        (dict(batch_sizes=(1, 0)), "batch size"),
        (dict(videos=["/nonexistent/clip.mp4"]), "not found"),
        (dict(prompt="  "), "prompt"),
    ],
)
def test_bad_arguments_raise_invalid_input(kwargs, match, work_dir, report):
    with pytest.raises(InvalidInputError, match=match):
        run_bench(bundle=work_dir / "bundle", **kwargs)


def test_wrong_model_folders_raise_typed_errors(work_dir, tmp_path, report):
    with pytest.raises(InvalidInputError, match="pass it as --bundle"):
        run_bench(model=work_dir / "bundle")
    with pytest.raises(ModelLoadError, match="not an exported bundle"):
        run_bench(bundle=work_dir / "checkpoint")
    with pytest.raises(ModelLoadError, match="not a folder"):
        run_bench(model=tmp_path / "missing")


def test_cli_bad_arguments_exit_nonzero_with_one_line(capsys):
    assert main(["bench", "--repeats", "0", "--json"]) == 1
    err = capsys.readouterr().err
    assert "repeats" in err and "Traceback" not in err
    assert main(["bench", "--batch-sizes", "four"]) == 1
    assert "batch-sizes" in capsys.readouterr().err


def test_parse_batch_sizes():
    assert parse_batch_sizes("1,4, 8") == (1, 4, 8)
    assert parse_batch_sizes("2") == (2,)
