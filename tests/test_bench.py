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


# -- descore-bench/2: presets, baselines, roofline, plot (descore_sdk/bench_suite.py) ----------------------
from descore_sdk import bench_suite  # noqa: E402
from descore_sdk.bench_roofline import kv_cache_bytes, measure_bandwidth, roofline  # noqa: E402

SUITE_STATS = {"median", "p50", "p90", "p95", "min", "max", "n"}


def _genai_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("onnxruntime_genai") is not None


@pytest.fixture(scope="module")
def suite(tmp_path_factory, videos) -> dict:
    # The tiny preset, built in a private folder, with both baselines: the CI smoke of `descore bench`.
    folder = tmp_path_factory.mktemp("suite")
    return bench_suite.run_suite(preset="tiny", videos=videos, prompt=PROMPT, cot_tokens=COT, repeats=1, batch_sizes=(1, 2),
                                 threads=1, baselines=("hf", "ort-genai"), work_dir=folder, bandwidth_bytes=64 << 20)


def _suite_stats(s: dict, n: int) -> None:
    assert set(s) == SUITE_STATS and s["n"] == n
    assert 0 < s["min"] <= s["p50"] <= s["p95"] <= s["max"] and s["p50"] == s["median"]


def test_suite_tiny_smoke_has_the_stable_keys(suite, videos):
    json.dumps(suite)  # plain JSON types only
    assert suite["schema"] == "descore-bench/2" and suite["preset"] == "tiny" and suite["primary"] == "qwen3_vl"
    for key in ("e2e_ms", "stages_ms", "baseline", "speedup", "decode", "batch", "import_ms", "bandwidth", "models", "memory"):
        assert key in suite, key
    n = len(videos)
    _suite_stats(suite["e2e_ms"]["think"], n)
    _suite_stats(suite["e2e_ms"]["fast"], n)
    assert {"decode", "preprocess", "vision", "prefill", "generate", "decode_per_token", "head"} <= set(suite["stages_ms"])
    # decode ms/token is the generate stage over the CoT steps + the <Reward> step
    assert suite["stages_ms"]["decode_per_token"]["median"] == pytest.approx(suite["stages_ms"]["generate"]["median"] / (COT + 1))
    assert suite["decode"]["ms_per_token"] == pytest.approx(suite["stages_ms"]["decode_per_token"]["median"])
    assert 0 < suite["decode"]["roofline_fraction"]
    hf = suite["baseline"]["hf"]
    assert hf["available"] and hf["attn_implementation"] == "eager"
    _suite_stats(hf["e2e_ms"]["think"], n)
    assert {"generate", "score"} <= set(hf["stages_ms"])
    assert suite["speedup"]["think_e2e_vs_hf"]["fp32"] == pytest.approx(hf["e2e_ms"]["think"]["median"] / suite["e2e_ms"]["think"]["median"])
    assert [row["batch_size"] for row in suite["batch"]] == [1, 2]
    for row in suite["batch"]:
        _suite_stats(row["videos_per_s"], 1)
        assert row["results_returned"] == 2 and row["decode_tokens_per_s"] > 0
    assert suite["models"]["qwen3_vl"]["precisions"]["fp32"]["cot_tokens_written"] == [COT]
    assert suite["models"]["qwen3_vl"]["parameters"]["total"] > 0
    assert suite["import_ms"]["n"] == 3 and suite["import_scorer_ms"]["n"] == 3 and suite["bandwidth"]["gb_per_s"] > 0
    v = suite["video_path"]
    assert v["frames_sampled"] == 10  # 5 s at 2 fps
    assert v["frames_decoded_needed"] == 150  # one keyframe: every packet up to the last sampled frame
    assert v["all_frames_rgb_over_ours"] == pytest.approx(v["all_frames_rgb_ms"]["median"] / v["ours_ms"]["median"])
    assert v["ours_swscale_over_needed_packets"] == pytest.approx(v["ours_swscale_ms"]["median"] / v["needed_packets_ms"]["median"])


def test_suite_ort_genai_baseline_runs_the_same_steps_or_says_why_not(suite):
    genai = suite["baseline"]["ort-genai"]
    if not _genai_installed():
        assert genai["available"] is False and "onnxruntime-genai" in genai["reason"]
        return
    assert genai["available"] is True and genai["e2e_ms"] is None
    fp32 = genai["decode"]["fp32"]
    assert fp32["steps"] == [COT + 1]  # as many decode steps as ours (CoT + <Reward>)
    assert fp32["ms_per_token"]["n"] == 2  # one generation per video, alternating with ours
    assert suite["speedup"]["decode_vs_ort_genai"]["fp32"] == pytest.approx(
        suite["decode"]["ms_per_token"] / fp32["ms_per_token"]["median"])


def test_suite_table_and_plot(suite, tmp_path):
    table = bench_suite.format_suite(suite)
    assert "HF eager baseline, think" in table and "decode_per_token" in table and "read bandwidth" in table
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.image

    path = bench_suite.write_plot(suite, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(str(path))
    assert image.shape[0] > 100 and image.shape[1] > 100
    del matplotlib


def test_plot_without_matplotlib_is_a_typed_error(suite, tmp_path, monkeypatch):
    from descore_sdk.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    with pytest.raises(MissingDependencyError, match="pip install matplotlib"):
        bench_suite.write_plot(suite, tmp_path / "x.png")


def test_baselines_skip_with_a_reason_when_unavailable(work_dir, videos, report, monkeypatch):
    # Bundle only: the HF baseline has no checkpoint to run on; onnxruntime-genai "not installed".
    monkeypatch.setattr(bench_suite, "genai_available", lambda: "onnxruntime-genai is not installed (pip install 'descore-sdk[ort-genai]')")
    out = bench_suite.run_suite(model=work_dir / "checkpoint", bundle=work_dir / "bundle", videos=videos[:1], prompt=PROMPT,
                                cot_tokens=2, repeats=1, batch_sizes=(1,), threads=1, baselines=("ort-genai",),
                                bandwidth_bytes=16 << 20, video_probe=False)
    assert out["preset"] is None and out["video_path"] is None
    assert out["baseline"]["ort-genai"] == {"available": False, "reason": "onnxruntime-genai is not installed (pip install 'descore-sdk[ort-genai]')"}
    assert out["speedup"]["decode_vs_ort_genai"] == {} and "hf" not in out["baseline"]
    monkeypatch.setattr("descore_sdk.bench_suite.hf_unavailable", lambda: "torch is not installed (pip install 'descore-sdk[train]')")
    out = bench_suite.run_suite(model=work_dir / "checkpoint", bundle=work_dir / "bundle", videos=videos[:1], prompt=PROMPT,
                                cot_tokens=2, repeats=1, batch_sizes=(1,), threads=1, baselines=("hf",), bandwidth_bytes=16 << 20,
                                video_probe=False)
    assert out["baseline"]["hf"]["available"] is False and "torch is not installed" in out["baseline"]["hf"]["reason"]
    assert out["speedup"]["think_e2e_vs_hf"] == {"fp32": None}
    assert "skipped (torch is not installed" in bench_suite.format_suite(out)


def test_roofline_arithmetic_on_a_hand_computed_case():
    # 10 layers, 2 KV heads of 64, 300 positions, fp32: 2·10·2·64·300·4 = 3,072,000 bytes.
    assert kv_cache_bytes(layers=10, kv_heads=2, head_dim=64, context=300) == 3_072_000
    # 160 MB of weights + 3.072 MB of cache + 2048 B, at 16 GB/s: 163,074,048 B / 16e9 B/s = 10.192128 ms.
    r = roofline(weight_bytes=160_000_000, kv_bytes=3_072_000, other_bytes=2048, ms_per_token=12.0, bandwidth_gb_per_s=16.0)
    assert r["bytes_per_step"] == 163_074_048
    assert r["roofline_ms_per_token"] == pytest.approx(10.192128, rel=1e-12)
    assert r["roofline_fraction"] == pytest.approx(10.192128 / 12.0, rel=1e-12)
    assert r["achieved_gb_per_s"] == pytest.approx(163_074_048 / 0.012 / 1e9, rel=1e-12)


def test_decoder_weight_bytes_count_int4_as_half_a_byte(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from descore_sdk.bench_roofline import graph_weight_bytes

    inits = [helper.make_tensor("w", TensorProto.FLOAT, [4, 8], [0.0] * 32),          # 128 B
             helper.make_tensor("q", TensorProto.UINT8, [16], [0] * 16),               # 16 B
             helper.make_tensor("h", TensorProto.FLOAT16, [10], [0] * 10),             # 20 B
             helper.make_tensor("n", TensorProto.INT4, [6], [0] * 6)]                  # 3 B
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    assert graph_weight_bytes(tmp_path / "g.onnx") == 128 + 16 + 20 + 3


def test_bandwidth_probe_reads_the_whole_array():
    out = measure_bandwidth(2, size_bytes=8 << 20, repeats=2)
    assert out["bytes"] == 8 << 20 and out["threads"] == 2 and out["repeats"] == 2
    assert out["gb_per_s"] >= out["median_gb_per_s"] > 0


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_small_preset_configs_are_within_the_issue_bounds(family):
    # Instantiated by transformers on the meta device (no weights) and counted here.
    import torch
    import transformers

    from descore_sdk.training.bench_presets import small_backbone_config
    from descore_sdk.training.model import BACKBONE_CLASSES

    config = small_backbone_config(family)
    with torch.device("meta"):
        backbone = getattr(transformers, BACKBONE_CLASSES[family])(config)
    total = sum(p.numel() for p in backbone.parameters())
    assert 50e6 <= total <= 100e6, total
    text, vision = config.text_config, config.vision_config
    assert text.hidden_size >= 512 and text.num_hidden_layers >= 8
    assert text.num_key_value_heads < text.num_attention_heads  # GQA
    assert vision.depth >= 4 and len(backbone.model.visual.blocks) == vision.depth
    assert len(backbone.model.language_model.layers) == text.num_hidden_layers
    assert type(backbone).__name__ == {"qwen3_vl": "Qwen3VLForConditionalGeneration",
                                       "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}[family]


def test_small_preset_samples_8_frames_of_at_most_224_squared():
    from descore_sdk.training.bench_presets import preset_sampling

    sampling = preset_sampling()
    assert sampling.max_frames == 8 and sampling.max_pixels == 224 * 224 and sampling.fps == 2.0


@pytest.mark.parametrize("family, causal_lm", [("qwen3_vl", "Qwen3ForCausalLM"), ("qwen2_5_vl", "Qwen2ForCausalLM")])
def test_text_decoder_folder_computes_what_the_backbone_computes(family, causal_lm, tmp_path):
    # The ort-genai baseline is built from this folder: transformers' own causal LM loaded from it must
    # give the DeScore backbone's logits on a text-only input (M-RoPE with equal t/h/w = 1-D RoPE).
    import torch
    import transformers

    from descore_sdk.training.bench_presets import write_text_decoder
    from descore_sdk.training.model import DeScoreModel
    from descore_sdk.training.tiny import build_tiny_model

    build_tiny_model(family, seed=3, out_dir=tmp_path / "ckpt")
    write_text_decoder(tmp_path / "ckpt", tmp_path / "lm")
    lm = getattr(transformers, causal_lm).from_pretrained(tmp_path / "lm").eval()
    model = DeScoreModel.from_pretrained(tmp_path / "ckpt").eval()
    ids = torch.arange(5, 25)[None]
    with torch.inference_mode():
        ours = model.backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        theirs = lm(input_ids=ids).logits
    assert type(lm).__name__ == causal_lm
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_cli_bench_json_and_plot(suite, tmp_path, capsys, videos):
    folder = Path(suite["models"]["qwen3_vl"]["precisions"]["fp32"]["bundle_path"]).parent
    argv = ["bench", "--work-dir", str(folder), "--videos", str(videos[0]), "--prompt", PROMPT, "--cot-tokens", "2",
            "--repeats", "1", "--batch", "2", "--threads", "1", "--plot", str(tmp_path / "b.png"), "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "descore-bench/2" and data["preset"] == "tiny"
    assert data["settings"]["cot_tokens"] == 2 and data["models"]["qwen3_vl"]["precisions"]["fp32"]["cot_tokens_written"] == [2]
    # batch size 1 is always measured; a batch of 2 needs 2 items, so the one video is used twice
    assert [r["batch_size"] for r in data["batch"]] == [1, 2] and all(r["results_returned"] == 2 for r in data["batch"])
    assert (tmp_path / "b.png").is_file() or not _has_matplotlib()
    assert main(["bench", "--plot", "x.jpg"]) == 1
    assert "PNG" in capsys.readouterr().err


def _has_matplotlib() -> bool:
    from importlib.util import find_spec

    return find_spec("matplotlib") is not None


def test_cli_bench_unknown_preset_or_baseline_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "huge"])
    with pytest.raises(SystemExit):
        main(["bench", "--baseline", "vllm"])
    with pytest.raises(InvalidInputError, match="baseline"):
        bench_suite.run_suite(baselines=("vllm",))
