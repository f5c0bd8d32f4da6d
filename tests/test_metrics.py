"""Pairwise accuracy with and without ties, against answers worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from descore_sdk.errors import InvalidInputError
from descore_sdk.training.metrics import (
    accuracy_with_ties,
    calibrate_tie_threshold,
    encode_labels,
    evaluate,
    pairwise_accuracy,
)

# Case 1. Δ = r_A − r_B = [2, −1, 0, 0.5, −0.2], labels [A, A, same, A, B].
CASE1 = dict(pred_a=[3.0, 1.0, 2.0, 5.0, 0.0], pred_b=[1.0, 2.0, 2.0, 4.5, 0.2], labels=["A", "A", "same", "A", "B"])
# Case 2 (all Δ exact in binary). Δ = [0.25, −0.5, 0.5, 1, −2], labels [same, same, A, A, B].
CASE2 = dict(pred_a=[1.25, 0.0, 3.5, 2.0, 1.0], pred_b=[1.0, 0.5, 3.0, 1.0, 3.0], labels=["same", "same", "A", "A", "B"])


def test_accuracy_without_ties_drops_human_ties_and_counts_model_ties_wrong():
    # Case 1 without pair 3 (human tie): +2 vs A ok, −1 vs A wrong, +0.5 vs A ok, −0.2 vs B ok → 3/4.
    assert pairwise_accuracy(**CASE1) == pytest.approx(0.75)
    # Exact model tie on an A-labelled pair is wrong: Δ = [0, 1] vs [A, A] → 1/2.
    assert pairwise_accuracy([1.0, 2.0], [1.0, 1.0], ["A", "A"]) == pytest.approx(0.5)
    # Only the B pair is right: Δ = [−1, +1] vs [A, B] → 0.
    assert pairwise_accuracy([0.0, 1.0], [1.0, 0.0], ["A", "B"]) == 0.0
    # Nothing to score when every label is a tie.
    assert math.isnan(pairwise_accuracy([1.0, 2.0], [0.0, 0.0], ["same", "same"]))


def test_accuracy_with_ties_at_given_thresholds():
    # Case 1, ε = 0: pair 3 (Δ = 0) is predicted tie and is a human tie → ok; pair 2 wrong → 4/5.
    assert accuracy_with_ties(**CASE1, epsilon=0.0) == pytest.approx(0.8)
    # ε = 0.2 is inclusive: pair 5 (|Δ| = 0.2, label B) becomes a tie → wrong → 3/5.
    assert accuracy_with_ties(**CASE1, epsilon=0.2) == pytest.approx(0.6)
    # Just below the boundary pair 5 keeps its sign → still 4/5.
    assert accuracy_with_ties(**CASE1, epsilon=0.19999) == pytest.approx(0.8)
    # Case 2: ε = 0 → pairs 1, 2 (human ties) predicted A / B → wrong → 3/5.
    assert accuracy_with_ties(**CASE2, epsilon=0.0) == pytest.approx(0.6)
    # ε = 0.25 (boundary, inclusive) → pair 1 tie ok → 4/5; ε just below → 3/5.
    assert accuracy_with_ties(**CASE2, epsilon=0.25) == pytest.approx(0.8)
    assert accuracy_with_ties(**CASE2, epsilon=0.2499) == pytest.approx(0.6)
    # ε = 2 predicts ties everywhere → only the 2 human ties are right → 2/5.
    assert accuracy_with_ties(**CASE2, epsilon=2.0) == pytest.approx(0.4)
    with pytest.raises(InvalidInputError):
        accuracy_with_ties(**CASE2, epsilon=-0.1)


def test_tie_calibration_picks_the_smallest_best_threshold():
    # Case 2, candidates and accuracies: 0 → 3/5, 0.25 → 4/5, 0.5 → 4/5 (pair 2 tie ok, pair 3 tie
    # wrong), 1 → 3/5, 2 → 2/5. Best 4/5 at 0.25 and 0.5: the tie-break takes the smaller, 0.25.
    eps, acc = calibrate_tie_threshold(**CASE2)
    assert eps == 0.25 and acc == pytest.approx(0.8)
    # Case 1: 0 → 4/5, 0.2 → 3/5, 0.5 → 2/5, 1 → 2/5, 2 → 1/5 → ε = 0.
    eps, acc = calibrate_tie_threshold(**CASE1)
    assert eps == 0.0 and acc == pytest.approx(0.8)
    # All-tie labels: Δ = [0.5, −1, 0]; ε = 0 → 1/3, 0.5 → 2/3, 1 → 3/3 → ε = 1, accuracy 1.
    eps, acc = calibrate_tie_threshold([0.5, 0.0, 2.0], [0.0, 1.0, 2.0], ["same"] * 3)
    assert eps == 1.0 and acc == 1.0
    # No human ties and a perfect ordering: no tie helps → ε = 0, accuracy 1.
    eps, acc = calibrate_tie_threshold([2.0, 0.0, 5.0], [1.0, 3.0, 4.0], ["A", "B", "A"])
    assert eps == 0.0 and acc == 1.0
    # Repeated gaps: Δ = [0.5, 0.5, −0.5], labels [same, same, B]. ε = 0 → 1/3 (only pair 3);
    # ε = 0.5 takes all three equal gaps at once → 2/3. Best ε = 0.5.
    eps, acc = calibrate_tie_threshold([1.0, 1.0, 0.0], [0.5, 0.5, 0.5], ["same", "same", "B"])
    assert eps == 0.5 and acc == pytest.approx(2 / 3)


def test_calibration_matches_brute_force_on_random_data():
    # Independent check: evaluate every candidate with accuracy_with_ties and take the first maximum.
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        a = np.round(rng.normal(size=n), 1)  # rounding makes equal gaps and exact ties common
        b = np.round(rng.normal(size=n), 1)
        labels = rng.choice(["A", "B", "same"], size=n)
        candidates = sorted({0.0, *np.abs(a - b).tolist()})
        accs = [accuracy_with_ties(a, b, labels, eps) for eps in candidates]
        best = int(np.argmax(accs))
        eps, acc = calibrate_tie_threshold(a, b, labels)
        assert eps == candidates[best] and acc == pytest.approx(accs[best])


def test_label_encoding():
    assert encode_labels(["A", "b", "Same", "tie", 3, -0.5, 0]).tolist() == [1, -1, 0, 0, 1, -1, 0]
    with pytest.raises(InvalidInputError):
        encode_labels(["C"])
    with pytest.raises(InvalidInputError):
        pairwise_accuracy([1.0, 2.0], [0.0], ["A", "A"])
    with pytest.raises(InvalidInputError):
        pairwise_accuracy([float("nan")], [0.0], ["A"])


def test_evaluate_per_dimension_in_sample_and_calibrated():
    pred_a = {"VQ": CASE2["pred_a"], "MQ": CASE1["pred_a"], "overall": [1.0, 0.0]}
    pred_b = {"VQ": CASE2["pred_b"], "MQ": CASE1["pred_b"], "overall": [0.0, 1.0]}
    labels = {"VQ": CASE2["labels"], "MQ": CASE1["labels"], "overall": ["B", "B"]}
    # Calibration split. VQ: Δ = [1, −0.5, 3], labels [same, same, A]: ε = 0 → 1/3, 0.5 → 2/3,
    # 1 → 3/3, 3 → 2/3 → ε = 1. MQ: Δ = [0.2, 1], labels [same, A]: ε = 0 → 1/2, 0.2 → 1 → ε = 0.2.
    # overall: Δ = [1] labelled A → ε = 0.
    calib = (
        {"VQ": [1.0, 0.0, 3.0], "MQ": [0.2, 1.0], "overall": [1.0]},
        {"VQ": [0.0, 0.5, 0.0], "MQ": [0.0, 0.0], "overall": [0.0]},
        {"VQ": ["same", "same", "A"], "MQ": ["same", "A"], "overall": ["A"]},
    )
    report = evaluate(pred_a, pred_b, labels, calib)
    vq, mq, overall = (report["dims"][d] for d in ("VQ", "MQ", "overall"))

    # VQ on case 2: without ties only pairs 3-5 count, all right → 1. In-sample ε = 0.25 → 4/5.
    # Calibrated ε = 1 → pairs 1, 2 tie ok, 3, 4 tie wrong, 5 sign ok → 3/5.
    assert vq["n_pairs"] == 5 and vq["n_human_ties"] == 2 and vq["n_model_exact_ties"] == 0
    assert vq["accuracy_without_ties"] == pytest.approx(1.0)
    assert vq["accuracy_with_ties_at_zero"] == pytest.approx(0.6)
    assert vq["epsilon_in_sample"] == 0.25 and vq["accuracy_with_ties_in_sample"] == pytest.approx(0.8)
    assert vq["epsilon_calibrated"] == 1.0 and vq["accuracy_with_ties_calibrated"] == pytest.approx(0.6)
    # MQ on case 1: 3/4 without ties; in-sample ε = 0 → 4/5; calibrated ε = 0.2 → 3/5.
    assert mq["n_model_exact_ties"] == 1
    assert mq["accuracy_without_ties"] == pytest.approx(0.75)
    assert mq["epsilon_in_sample"] == 0.0 and mq["accuracy_with_ties_in_sample"] == pytest.approx(0.8)
    assert mq["epsilon_calibrated"] == pytest.approx(0.2) and mq["accuracy_with_ties_calibrated"] == pytest.approx(0.6)
    # overall: Δ = [1, −1] vs [B, B] → 1/2 everywhere (ε = 0 in-sample and calibrated).
    assert overall["accuracy_without_ties"] == pytest.approx(0.5)
    assert overall["accuracy_with_ties_calibrated"] == pytest.approx(0.5)

    # The mean leaves the human "overall" dimension out: (VQ + MQ) / 2.
    assert report["mean_over"] == ["VQ", "MQ"]
    assert report["mean"]["accuracy_without_ties"] == pytest.approx((1.0 + 0.75) / 2)
    assert report["mean"]["accuracy_with_ties_at_zero"] == pytest.approx((0.6 + 0.8) / 2)
    assert report["mean"]["accuracy_with_ties_in_sample"] == pytest.approx(0.8)
    assert report["mean"]["accuracy_with_ties_calibrated"] == pytest.approx(0.6)

    # Explicit mean_over; without calib there are no calibrated entries.
    plain = evaluate(pred_a, pred_b, labels, mean_over=["MQ", "overall"])
    assert "accuracy_with_ties_calibrated" not in plain["dims"]["VQ"]
    assert plain["mean"]["accuracy_without_ties"] == pytest.approx((0.75 + 0.5) / 2)


def test_evaluate_skips_nan_in_the_mean_and_checks_dimensions():
    # TA is all ties: its accuracy without ties is NaN and the mean is VQ's alone.
    report = evaluate(
        {"VQ": [1.0, 0.0], "TA": [0.3, 0.0]},
        {"VQ": [0.0, 1.0], "TA": [0.0, 0.0]},
        {"VQ": ["A", "A"], "TA": ["same", "same"]},
    )
    assert math.isnan(report["dims"]["TA"]["accuracy_without_ties"])
    assert report["mean"]["accuracy_without_ties"] == pytest.approx(0.5)
    # TA with ties: Δ = [0.3, 0] → ε = 0 gives 1/2, ε = 0.3 gives 1 → in-sample 1.
    assert report["dims"]["TA"]["epsilon_in_sample"] == pytest.approx(0.3)
    assert report["dims"]["TA"]["accuracy_with_ties_in_sample"] == 1.0
    with pytest.raises(InvalidInputError):
        evaluate({"VQ": [1.0]}, {"MQ": [0.0]}, {"VQ": ["A"]})
    with pytest.raises(InvalidInputError):
        evaluate({"VQ": [1.0]}, {"VQ": [0.0]}, {"VQ": ["A"]}, calib=({}, {}, {}))


def test_decided_correct_by_hand():
    from descore_sdk.training.metrics import decided_correct

    # Δ = [1, -1, 0, 2]; labels A, A, B, same: the tie is left out, Δ == 0 is wrong
    assert decided_correct([1, 0, 2, 5], [0, 1, 2, 3], ["A", "A", "B", "same"]) == [1, 0, 0]


def test_paired_accuracy_change_by_hand():
    from descore_sdk.training.metrics import accuracy_change, paired_accuracy_change

    before = {"VQ": [1, 0, 0, 1], "MQ": [1, 1]}
    after = {"VQ": [1, 1, 0, 1], "MQ": [0, 1]}
    out = paired_accuracy_change(before, after)
    # VQ differences [0, 1, 0, 0]: sample variance 0.25, / 4 items; MQ [-1, 0]: 0.5, / 2; macro mean of 2 dims
    assert out["se"] == pytest.approx(np.sqrt((0.25 / 4 + 0.5 / 2) / 4))
    assert (out["before"], out["after"]) == (pytest.approx(0.75), pytest.approx(0.625))
    assert out["delta"] == pytest.approx(-0.125) and out["change"] == "none" and out["paired"]
    # The same 80 items right before and after, 5 more right after: paired, a clear gain; the two-binomial
    # error of `accuracy_change` (which ignores that the items are shared) calls it noise.
    before = {"VQ": [1] * 80 + [0] * 20}
    after = {"VQ": [1] * 85 + [0] * 15}
    paired = paired_accuracy_change(before, after)
    assert paired["delta"] == pytest.approx(0.05) and paired["se"] == pytest.approx(np.sqrt(np.var([1] * 5 + [0] * 95, ddof=1) / 100))
    assert paired["change"] == "up" and accuracy_change(0.80, 0.85, 100)["change"] == "none"
    with pytest.raises(InvalidInputError, match="same pairs"):
        paired_accuracy_change({"VQ": [1, 0]}, {"VQ": [1]})
