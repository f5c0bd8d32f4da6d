"""`descore train plot` and the end-of-run summary of the RL stage.

The summary logic (`metrics.block_trend`, `accuracy_change`, `rl_run_summary`) is checked on hand-made
series with hand-computed block means and standard errors; the plot on the log of a real short RL run
(a tiny random model, a few steps) and on a hand-written supervised log, read back as a PNG image.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from descore_sdk.errors import DataError, InvalidInputError
from descore_sdk.training.metrics import accuracy_change, block_trend, format_rl_summary, rl_run_summary


# -- the trend of a series ------------------------------------------------------------------------------
def test_block_trend_up_with_hand_computed_errors():
    # Two blocks of 4: [.4 .6 .4 .6] and [.8 1 .8 1]: means .5 and .9; sample sd √(4·.01/3) = .11547,
    # SE .057735 each; change .4 with SE .057735·√2 = .081650 → 2 SE .1633 < .4: up.
    trend = block_trend([0.4, 0.6, 0.4, 0.6, 0.8, 1.0, 0.8, 1.0], blocks=2)
    assert trend["trend"] == "up"
    assert [b["start"] for b in trend["blocks"]] == [0, 4] and [b["end"] for b in trend["blocks"]] == [4, 8]
    assert [b["mean"] for b in trend["blocks"]] == pytest.approx([0.5, 0.9])
    assert [b["se"] for b in trend["blocks"]] == pytest.approx([0.057735, 0.057735], abs=1e-6)
    assert trend["change"] == pytest.approx(0.4)
    assert trend["change_se"] == pytest.approx(0.081650, abs=1e-6)


def test_block_trend_down_none_and_too_short():
    assert block_trend([0.8, 1.0, 0.8, 1.0, 0.4, 0.6, 0.4, 0.6], blocks=2)["trend"] == "down"
    # No trend: the same values in every block.
    flat = block_trend([0.4, 0.6] * 10, blocks=5)
    assert flat["trend"] == "none" and flat["change"] == pytest.approx(0.0) and len(flat["blocks"]) == 5
    # A change smaller than 2 SE: blocks [.2 .8 .2 .8] (SE .17321) and [.3 .9 .3 .9]: change .1 < 2·.24495.
    small = block_trend([0.2, 0.8, 0.2, 0.8, 0.3, 0.9, 0.3, 0.9], blocks=2)
    assert small["trend"] == "none" and small["change_se"] == pytest.approx(0.244949, abs=1e-6)
    assert block_trend([0.1, 0.9, 0.5])["trend"] == "too short"
    # Fewer than 2 values per block: fewer blocks (6 values, asked 5 → 3 blocks of 2). NaNs are dropped.
    assert len(block_trend([0.1, 0.2, float("nan"), 0.3, 0.4, 0.5, 0.6], blocks=5)["blocks"]) == 3


def test_accuracy_change_hand_values():
    # se = √((.9·.1 + .75·.25)/100) = .052678; delta −.15 < −2 se → down.
    change = accuracy_change(0.9, 0.75, 100)
    assert change["se"] == pytest.approx(0.052678, abs=1e-6) and change["change"] == "down"
    # .9 → .8 on 100: se = √((.09 + .16)/100) = .05, delta −.1 = −2 se exactly: not beyond → none.
    assert accuracy_change(0.9, 0.8, 100)["change"] == "none"
    assert accuracy_change(0.8, 0.95, 100)["change"] == "up"
    assert accuracy_change(0.8, float("nan"), 100)["change"] == "unknown"


def _history(rewards):
    return [{"step": i + 1, "rule_reward": r, "rule_accuracy": r} for i, r in enumerate(rewards)]


def test_rl_summary_verdicts():
    rising = _history([0.4, 0.6] * 5 + [0.8, 1.0] * 5)
    flat = _history([0.4, 0.6] * 10)
    good_eval = [{"step": 0, "think_accuracy": 0.80, "fast_accuracy": 0.95, "cot_accuracy": 0.6, "n_decided": 100, "n_cot_items": 300},
                 {"step": 20, "think_accuracy": 0.92, "fast_accuracy": 0.95, "cot_accuracy": 0.7, "n_decided": 100, "n_cot_items": 300}]
    bad_eval = [{"step": 0, "think_accuracy": 0.90, "fast_accuracy": 0.95, "n_decided": 100},
                {"step": 20, "think_accuracy": 0.75, "fast_accuracy": 0.95, "n_decided": 100}]

    summary = rl_run_summary(rising, good_eval)
    assert summary["verdict"] == "improved" and summary["rule_reward"]["trend"] == "up"
    assert summary["eval"]["think_accuracy"]["delta"] == pytest.approx(0.12)
    assert summary["eval"]["before_step"] == 0 and summary["eval"]["after_step"] == 20
    # The CoT verdicts are judged on all 300 labelled entries: se = √((.24 + .21)/300) = .038730.
    assert summary["eval"]["cot_accuracy"]["se"] == pytest.approx(0.038730, abs=1e-6)
    assert summary["eval"]["cot_accuracy"]["change"] == "up"
    # se = √((.16 + .0736)/100) = .0483: +0.12 is beyond 2 SE
    assert summary["eval"]["think_accuracy"]["se"] == pytest.approx(((0.16 + 0.0736) / 100) ** 0.5)
    line = format_rl_summary(summary)
    assert line.startswith("RL improved over 20 steps") and "think 0.800 → 0.920" in line

    a_little_higher = [dict(good_eval[0]), dict(good_eval[1], think_accuracy=0.85)]  # +0.05, within 2 SE (0.107)
    assert rl_run_summary(rising, a_little_higher)["verdict"] == "reward up, think accuracy within noise"
    assert rl_run_summary(rising)["verdict"] == "reward up, not evaluated"

    slightly_lower = [dict(good_eval[0]), dict(good_eval[1], think_accuracy=0.76)]  # −0.04, within 2 SE (0.11)
    assert rl_run_summary(rising, slightly_lower)["verdict"] == "reward up, think accuracy not"
    assert rl_run_summary(flat)["verdict"] == "no measurable change"
    assert rl_run_summary(flat, good_eval)["verdict"] == "no measurable change"
    # A rising reward does not hide a think-mode accuracy that fell beyond 2 SE.
    assert rl_run_summary(rising, bad_eval)["verdict"] == "worse"
    assert rl_run_summary(list(reversed(rising)))["verdict"] == "worse"
    assert rl_run_summary(_history([0.5, 0.9]))["verdict"] == "no measurable change"  # too short to tell
    json.dumps(summary)  # the summary is written as JSON

    # The verdict probe: reported per word when both evaluations have it; a fall beyond 0.1 is a warning.
    assert "verdict_probe" not in summary["eval"] and "warnings" not in summary
    probed = [dict(good_eval[0], verdict_probe_mismatch=0.70, verdict_probe_mismatch_items=15, verdict_probe_match=0.90, verdict_probe_match_items=150),
              dict(good_eval[1], verdict_probe_mismatch=0.62, verdict_probe_mismatch_items=15, verdict_probe_match=0.97, verdict_probe_match_items=150)]
    held = rl_run_summary(rising, probed)
    assert held["eval"]["verdict_probe"] == {"mismatch": {"before": 0.70, "after": 0.62, "items": 15},
                                             "match": {"before": 0.90, "after": 0.97, "items": 150}} and "warnings" not in held
    assert "mismatch verdict probe 0.700 → 0.620" in format_rl_summary(held) and "WARNING" not in format_rl_summary(held)
    probed[1]["verdict_probe_mismatch"] = 0.30
    flipped = rl_run_summary(rising, probed)
    assert len(flipped["warnings"]) == 1 and "uncertain 'mismatch' checklist verdicts lost probability (0.70 → 0.30 on 15 items)" in flipped["warnings"][0]
    assert "WARNING: the starting policy's uncertain 'mismatch'" in format_rl_summary(flipped)
    assert flipped["verdict"] == "improved"  # a warning, not a verdict: think mode is what was measured
    probed[1]["verdict_probe_mismatch"] = None  # no items: NaN, written as null
    assert set(rl_run_summary(rising, probed)["eval"]["verdict_probe"]) == {"match"}


# -- the plot -----------------------------------------------------------------------------------------
def _png(path):
    pytest.importorskip("matplotlib")
    from matplotlib import image

    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 800
    assert float(np.std(pixels[..., :3])) > 0.05  # something is drawn, not a blank canvas
    return pixels


@pytest.fixture(scope="module")
def real_rl_run(tmp_path_factory):
    """A real 4-step RL run of a tiny random model, with evaluations before, at step 2 and after."""
    torch = pytest.importorskip("torch")
    from descore_sdk.training.rl import RLConfig, run_rl
    from descore_sdk.training.synth import generate_benchmark
    from descore_sdk.training.tiny import build_tiny_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("plot")
    data = generate_benchmark(root / "data", n_train=6, n_test=3, n_heldout=0, seed=2, size=(32, 32), num_frames=5)
    model = build_tiny_model("qwen2_vl", seed=0, dimension_names=("VQ", "MQ", "TA"))
    config = RLConfig(num_samples=3, max_new_tokens=6, steps=4, pairs_per_step=2, micro_batch=3, lr=1e-3,
                      length_min_tokens=4, length_max_tokens=64, eval_every=2, seed=0)
    result = run_rl(model, data["train"], root / "rl", config, eval_data=data["test_id"])
    return root / "rl", result


def test_real_run_log_summary_and_plot(real_rl_run, tmp_path):
    from descore_sdk.training.cli import main as training_cli
    from descore_sdk.training.plot import plot_run

    run_dir, result = real_rl_run
    log = [json.loads(line) for line in (run_dir / "rl_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval" in r] == [0, 2, 4]
    steps = [r for r in log if "eval" not in r]
    for record in steps:
        for key in ("reward_std", "accuracy_std", "zero_variance_groups", "parsed", "entropy", "kl", "clip_fraction", "bt_loss"):
            assert math.isfinite(record[key]), key
        assert 0.0 <= record["zero_variance_groups"] <= 1.0 and record["entropy"] > 0
    saved = json.loads((run_dir / "rl_summary.json").read_text())
    from descore_sdk.training.evaluation import without_nan

    assert saved == without_nan(result.summary) and saved["steps"] == 4  # strict JSON: NaN is null
    assert saved["verdict"] in ("improved", "reward up, think accuracy not", "worse", "no measurable change")
    assert set(saved["eval"]) >= {"think_accuracy", "fast_accuracy", "cot_accuracy"}

    png = plot_run(run_dir)
    assert png == run_dir / "curves.png"
    _png(png)
    # The CLI, with --out.
    out = tmp_path / "figs" / "rl.png"
    assert training_cli(["train", "plot", str(run_dir), "--out", str(out)]) == 0
    _png(out)


def test_plot_of_a_supervised_log(tmp_path):
    from descore_sdk.training.plot import plot_run

    run = tmp_path / "cold" / "run"
    run.mkdir(parents=True)
    lines = [{"step": s, "loss": 1.0 / s, "pref_loss": 0.5 / s, "train_pair_accuracy": 0.5 + s / 100, "lr": 1e-3, "cot_fraction": 0.5}
             for s in range(1, 21)]
    lines.insert(10, {"step": 10, "eval": {"mean": {"accuracy_without_ties": 0.7}, "dims": {}}})
    lines.append({"step": 20, "eval": {"mean": {"accuracy_without_ties": 0.8}, "dims": {}}})
    lines.append({"step": 20, "event": "end"})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    _png(plot_run(tmp_path / "cold"))  # an OUT folder of the cold start: its run/metrics.jsonl
    assert (tmp_path / "cold" / "curves.png").is_file()


def test_plot_errors(tmp_path):
    from descore_sdk.training.cli import main as training_cli
    from descore_sdk.training.plot import plot_run

    with pytest.raises(InvalidInputError, match="does not exist"):
        plot_run(tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="holds no training log"):
        plot_run(tmp_path)
    (tmp_path / "rl_log.jsonl").write_text('{"step": 1, "rule_reward": 0.5}\n{"step": 2, "rule_rew\n')
    with pytest.raises(DataError, match=r"rl_log.jsonl:2 is not a JSON line"):
        plot_run(tmp_path)
    (tmp_path / "rl_log.jsonl").write_text('{"step": 1, "rule_reward": 0.5}\n')
    with pytest.raises(InvalidInputError, match="PNG"):
        plot_run(tmp_path, tmp_path / "curves.pdf")
    assert training_cli(["train", "plot", str(tmp_path / "missing")]) == 1  # one typed line, no traceback
