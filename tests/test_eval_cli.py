"""`descore data synth`, `descore train ...` option parsing and `descore eval`, run through the
training CLI's `main` (the same `add_subcommands` the `descore` command mounts).

References: rewards from the Scorer called directly in the test, with accuracies and tie thresholds
recomputed here by brute force (not with training/metrics.py), and the files `generate_benchmark`
is documented to write.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from descore_sdk import Scorer  # noqa: E402
from descore_sdk.training import arguments, cli  # noqa: E402
from descore_sdk.training.data import read_pairs  # noqa: E402
from descore_sdk.training.tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert cli.main(["data", "synth", str(out), "--n-train", "0", "--n-test", "10", "--n-heldout", "8", "--seed", "4"]) == 0
    return {"test_id": out / "test_id.jsonl", "test_heldout": out / "test_heldout.jsonl", "info": out / "benchmark.json"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    build_tiny_model("qwen2_vl", seed=11, dimension_names=("VQ", "overall"), out_dir=path)
    return path


def test_data_synth_writes_the_benchmark(bench, capsys):
    info = json.loads(bench["info"].read_text())
    assert info["pairs"] == {"train": 0, "test_id": 10, "test_heldout": 8} and info["seed"] == 4
    assert len(read_pairs(bench["test_id"])) == 10 and len(read_pairs(bench["test_heldout"])) == 8
    assert not (bench["info"].parent / "pretrain_clips.jsonl").exists()  # only on request


def test_data_synth_writes_pretrain_clips_on_request(tmp_path, capsys):
    from descore_sdk.training.pretrain import read_pretrain_clips

    out = tmp_path / "bench"
    assert cli.main(["data", "synth", str(out), "--n-train", "2", "--n-test", "0", "--n-heldout", "0", "--size", "32x32",
                     "--pretrain-clips", "5"]) == 0
    assert f"pretrain_clips {out / 'pretrain_clips.jsonl'}" in capsys.readouterr().out
    assert len(read_pretrain_clips(out / "pretrain_clips.jsonl")) == 5
    refused = tmp_path / "refused"
    assert cli.main(["data", "synth", str(refused), "--n-train", "2", "--pretrain-clips", "-1"]) == 1
    assert "--pretrain-clips must be 0 or more" in capsys.readouterr().err and not refused.exists()


def _brute_force(delta, codes):
    """(accuracy without ties, best with-ties accuracy, its smallest ε) by trying every threshold."""
    decided = codes != 0
    without = float(np.mean(np.sign(delta[decided]) == codes[decided])) if decided.any() else float("nan")

    def with_ties(eps):
        predicted = np.where(np.abs(delta) <= eps, 0, np.sign(delta))
        return float(np.mean(predicted == codes))

    candidates = sorted({0.0, *np.abs(delta).tolist()})
    scores = [with_ties(e) for e in candidates]
    best = max(scores)
    return without, best, candidates[scores.index(best)], with_ties


def _reference(model_dir, data, dim):
    scorer = Scorer.from_pretrained(model_dir, backend="torch", mode="fast")
    pairs = [p for p in read_pairs(data) if dim in p.labels]

    def reward(video, prompt):
        result = scorer.score(video, prompt)
        return result.rewards[dim] if dim in result.rewards else result.reward

    delta = np.array([reward(p.video_a, p.prompt) - reward(p.video_b, p.prompt) for p in pairs])
    codes = np.array([{"A": 1, "B": -1, "same": 0}[p.labels[dim]] for p in pairs])
    return delta, codes


def test_eval_json_matches_scores_computed_here(bench, model_dir, capsys):
    code = cli.main(["eval", str(model_dir), str(bench["test_id"]), "--json", "--mode", "fast", "--calib", str(bench["test_heldout"])])
    assert code == 0
    out = capsys.readouterr().out
    assert "NaN" not in out  # strict JSON
    report = json.loads(out)
    assert report["mode"] == "fast" and report["backend"] == "torch" and report["n_pairs"] == 10
    assert report["cot_runaway"] == 0 and report["videos_scored"] > 0  # fast mode writes no CoT
    assert set(report["dims"]) == {"VQ", "MQ", "TA", "overall"}
    assert report["scored_with"] == {"VQ": "VQ", "overall": "overall", "MQ": "reward (headline)", "TA": "reward (headline)"}
    finite = 0
    for dim in ("VQ", "MQ", "TA", "overall"):
        delta, codes = _reference(model_dir, bench["test_id"], dim)
        without, best, eps, with_ties = _brute_force(delta, codes)
        got = report["dims"][dim]
        assert got["n_pairs"] == len(codes) and got["n_human_ties"] == int(np.sum(codes == 0))
        # null (NaN) when every label of the dimension is a human tie
        assert (got["accuracy_without_ties"] is None) if np.isnan(without) else got["accuracy_without_ties"] == pytest.approx(without)
        finite += not np.isnan(without)
        assert got["accuracy_with_ties_in_sample"] == pytest.approx(best)
        assert got["epsilon_in_sample"] == pytest.approx(eps, rel=1e-6)
        calib_delta, calib_codes = _reference(model_dir, bench["test_heldout"], dim)
        _, _, calib_eps, _ = _brute_force(calib_delta, calib_codes)
        assert got["epsilon_calibrated"] == pytest.approx(calib_eps, rel=1e-6)
        assert got["accuracy_with_ties_calibrated"] == pytest.approx(with_ties(got["epsilon_calibrated"]))
    assert finite >= 3
    assert report["mean_over"] == ["VQ", "MQ", "TA"]
    means = [report["dims"][d]["accuracy_without_ties"] for d in ("VQ", "MQ", "TA")]
    assert report["mean"]["accuracy_without_ties"] == pytest.approx(np.mean([m for m in means if m is not None]))


def test_eval_table_and_default_modes(bench, model_dir, tmp_path, capsys):
    assert cli.main(["eval", str(model_dir), str(bench["test_heldout"]), "--mode", "fast"]) == 0
    text = capsys.readouterr().out
    for word in ("VQ", "MQ", "TA", "overall", "mean(VQ,MQ,TA)", "acc w/o ties", "headline reward"):
        assert word in text
    # A DeScore checkpoint defaults to think mode (CoT capped short here), a JRM one to fast mode.
    assert cli.main(["eval", str(model_dir), str(bench["test_heldout"]), "--json", "--max-new-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "think"
    config_path = tmp_path / "jrm"
    build_tiny_model("qwen2_vl", seed=11, dimension_names=("VQ", "overall"), out_dir=config_path)
    config = json.loads((config_path / "descore_config.json").read_text())
    config["method"] = "jrm"
    (config_path / "descore_config.json").write_text(json.dumps(config))
    assert cli.main(["eval", str(config_path), str(bench["test_heldout"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "fast"


def test_eval_errors_are_one_line_and_exit_1(bench, model_dir, tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "nope"), str(bench["test_id"])]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["eval", str(model_dir), str(tmp_path / "missing.jsonl")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_train_options_parse_into_a_train_config():
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "train", "cold-start", "--model", "m", "--data", "d.jsonl", "--out", "o", "--resume", "--lora", "--lora-r", "16",
        "--lora-targets", "q_proj,v_proj", "--freeze-vision", "--steps", "7", "--batch-size", "4", "--max-grad-norm", "0",
        "--ties", "rao_kupper", "--cot-drop", "0.3", "--lm-weight", "0.2", "--video-cache-mb", "0",
    ])
    assert args.func is cli.cmd_train_cold_start and args.resume and args.ties == "rao_kupper" and args.cot_drop == 0.3
    config = arguments.train_config_from_args(args)
    assert (config.lora, config.lora_r, config.lora_targets, config.train_vision) == (True, 16, ("q_proj", "v_proj"), False)
    assert (config.steps, config.batch_size, config.max_grad_norm, config.video_cache_mb) == (7, 4, None, 0)
    jrm = parser.parse_args(["train", "jrm", "--model", "m", "--data", "d", "--out", "o"])
    assert jrm.func is cli.cmd_train_jrm and jrm.lm_weight == arguments.DEFAULT_JRM_LM_WEIGHT


def test_building_the_parser_does_not_import_torch():
    code = (
        "import argparse, sys\n"
        "from descore_sdk.training import cli\n"
        "p = argparse.ArgumentParser(); cli.add_subcommands(p.add_subparsers())\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
