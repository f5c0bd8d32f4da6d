"""Pairwise preference accuracy, with and without ties (numpy only).

A pair has model rewards r_A, r_B and a human label: "A" (A preferred), "B" or "same" (tie). We write
Δ = r_A − r_B and encode labels as +1 (A), −1 (B), 0 (same); numeric labels are read by their sign.

* `pairwise_accuracy` — the usual "accuracy without ties": human ties are left out, and an exact
  model tie (Δ == 0) counts as wrong (the model failed to pick the preferred video). NaN when every
  label is a tie (nothing to score).

* `accuracy_with_ties` — every pair counts. With a tie threshold ε ≥ 0 the model predicts "tie" when
  |Δ| ≤ ε, else the sign of Δ; a pair is correct when the prediction equals the human label. This is
  the pairwise accuracy with ties of Deutsch, Foster & Freitag, "Ties Matter" (EMNLP 2023):
  (concordant + ties in both) / all pairs.

* `calibrate_tie_threshold` — their tie calibration: the ε that maximises `accuracy_with_ties`. Only
  the values 0 and the |Δ_i| can change the accuracy (it is a step function of ε that jumps right at
  each |Δ_i|, the threshold being inclusive), so those are the candidates. Tie-break: among equally
  accurate candidates we pick the SMALLEST ε, i.e. the model predicts as few ties as the data justify.

* `evaluate` — per dimension: accuracy without ties, with-ties accuracy with ε fitted on the same
  pairs (in-sample: optimistic, since ε is chosen with the answers in view), and, when a separate
  calibration split is given, with ε fitted there and applied here (the honest number). Each dimension
  gets its own ε, because the reward head's outputs have their own scales. The summary under "mean"
  is the unweighted mean over dimensions (macro average), not a pooled count: pooling would weight a
  dimension by how many pairs it has and mix reward scales. A dimension called "overall" (a human
  overall judgement) is reported like any other but left out of the mean unless it is the only one or
  `mean_over` names it; NaN entries (e.g. accuracy without ties on an all-tie dimension) are skipped.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from descore_sdk.errors import InvalidInputError

_LABEL_CODES = {"a": 1, "b": -1, "same": 0, "tie": 0}


def encode_labels(labels: Sequence) -> np.ndarray:
    """"A"/"B"/"same" (any case; "tie" = "same") or numbers (by sign) → int array of +1 / −1 / 0."""
    values = list(labels.tolist() if isinstance(labels, np.ndarray) else labels)
    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        if isinstance(value, str):
            code = _LABEL_CODES.get(value.strip().lower())
            if code is None:
                raise InvalidInputError(f"Label {value!r} at index {i} is not A, B or same.")
            out[i] = code
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and np.isfinite(value):
            out[i] = int(np.sign(value))
        else:
            raise InvalidInputError(f"Label {value!r} at index {i} is neither A/B/same nor a finite number.")
    return out


def _deltas_and_labels(pred_a, pred_b, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validated (Δ = r_A − r_B as float64 (N,), labels as +1/−1/0 (N,))."""
    a = np.asarray(pred_a, dtype=np.float64).reshape(-1)
    b = np.asarray(pred_b, dtype=np.float64).reshape(-1)
    codes = encode_labels(labels)
    if not (len(a) == len(b) == len(codes)):
        raise InvalidInputError(f"pred_a, pred_b and labels must have the same length; got {len(a)}, {len(b)}, {len(codes)}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InvalidInputError("Rewards contain NaN or infinity; check the model outputs.")
    return a - b, codes


def pairwise_accuracy(pred_a, pred_b, labels) -> float:
    """Accuracy on the pairs whose label is not a tie; Δ == 0 counts as wrong. NaN if all are ties."""
    delta, codes = _deltas_and_labels(pred_a, pred_b, labels)
    decided = codes != 0
    if not decided.any():
        return float("nan")
    return float(np.mean(np.sign(delta[decided]) == codes[decided]))


def accuracy_with_ties(pred_a, pred_b, labels, epsilon: float = 0.0) -> float:
    """Accuracy over all pairs when |Δ| ≤ epsilon predicts a tie. NaN for zero pairs."""
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise InvalidInputError(f"epsilon must be a finite number ≥ 0, got {epsilon}.")
    delta, codes = _deltas_and_labels(pred_a, pred_b, labels)
    if len(codes) == 0:
        return float("nan")
    predicted = np.where(np.abs(delta) <= epsilon, 0, np.sign(delta).astype(np.int64))
    return float(np.mean(predicted == codes))


def calibrate_tie_threshold(pred_a, pred_b, labels) -> tuple[float, float]:
    """(ε, accuracy_with_ties at ε): the smallest ε among {0} ∪ {|Δ_i|} that maximises accuracy."""
    delta, codes = _deltas_and_labels(pred_a, pred_b, labels)
    if len(codes) == 0:
        raise InvalidInputError("Cannot calibrate a tie threshold on zero pairs.")
    gaps = np.abs(delta)
    order = np.argsort(gaps, kind="stable")
    gaps_sorted = gaps[order]
    # At ε = gaps_sorted[k] the first k+1 sorted pairs (and any equal gaps after them) are predicted
    # ties: correct when the human said "same". The rest keep their sign prediction.
    tie_right = np.cumsum(codes[order] == 0)
    sign_right = np.sign(delta[order]).astype(np.int64) == codes[order]
    sign_right_after = sign_right.sum() - np.cumsum(sign_right)
    last_of_value = np.r_[gaps_sorted[1:] != gaps_sorted[:-1], True]  # ε includes all equal gaps
    candidates = np.r_[0.0, gaps_sorted[last_of_value]]
    correct = np.r_[
        # ε = 0: exact model ties (Δ == 0) are tie predictions, everything else keeps its sign.
        np.sum((gaps == 0) & (codes == 0)) + np.sum((gaps > 0) & (np.sign(delta) == codes)),
        (tie_right + sign_right_after)[last_of_value],
    ]
    best = int(np.argmax(correct))  # argmax returns the first maximum = the smallest ε
    return float(candidates[best]), float(correct[best] / len(codes))


def _dimension_report(pred_a, pred_b, labels, calib) -> dict:
    delta, codes = _deltas_and_labels(pred_a, pred_b, labels)
    report = {
        "n_pairs": int(len(codes)),
        "n_human_ties": int(np.sum(codes == 0)),
        "n_model_exact_ties": int(np.sum(delta == 0)),
        "accuracy_without_ties": pairwise_accuracy(pred_a, pred_b, labels),
        "accuracy_with_ties_at_zero": accuracy_with_ties(pred_a, pred_b, labels, 0.0),
    }
    if len(codes):
        eps, acc = calibrate_tie_threshold(pred_a, pred_b, labels)
    else:
        eps, acc = float("nan"), float("nan")
    report["epsilon_in_sample"] = eps
    report["accuracy_with_ties_in_sample"] = acc
    if calib is not None:
        calib_eps, _ = calibrate_tie_threshold(*calib)
        report["epsilon_calibrated"] = calib_eps
        report["accuracy_with_ties_calibrated"] = accuracy_with_ties(pred_a, pred_b, labels, calib_eps)
    return report


def evaluate(
    pred_a: Mapping[str, Sequence[float]],
    pred_b: Mapping[str, Sequence[float]],
    labels: Mapping[str, Sequence],
    calib: tuple[Mapping, Mapping, Mapping] | None = None,
    *,
    mean_over: Sequence[str] | None = None,
) -> dict:
    """Accuracy report per dimension plus the macro mean.

    pred_a / pred_b / labels: {dimension: (N_dim,) array}; labels are A/B/same or signed numbers.
    calib: optional (pred_a, pred_b, labels) of a separate calibration split, same dimensions, used to
    fit ε for the honest with-ties accuracy. mean_over: dimensions to average (default: all except
    "overall", or just "overall" when it is the only one).

    Returns {"dims": {dim: {n_pairs, n_human_ties, n_model_exact_ties, accuracy_without_ties,
    accuracy_with_ties_at_zero, epsilon_in_sample, accuracy_with_ties_in_sample[, epsilon_calibrated,
    accuracy_with_ties_calibrated]}}, "mean": {metric: macro mean over `mean_over`}, "mean_over": [...]}.
    """
    dims = list(labels)
    if not dims:
        raise InvalidInputError("labels is empty: give at least one dimension.")
    for name, preds in (("pred_a", pred_a), ("pred_b", pred_b)):
        absent = [d for d in dims if d not in preds]
        if absent:
            raise InvalidInputError(f"{name} has no rewards for dimension(s) {absent}; it has {list(preds)}.")
    if calib is not None:
        if len(calib) != 3:
            raise InvalidInputError("calib must be a (pred_a, pred_b, labels) triple of dicts.")
        for part in calib:
            absent = [d for d in dims if d not in part]
            if absent:
                raise InvalidInputError(f"The calibration split lacks dimension(s) {absent}.")

    reports = {
        dim: _dimension_report(
            pred_a[dim], pred_b[dim], labels[dim],
            None if calib is None else (calib[0][dim], calib[1][dim], calib[2][dim]),
        )
        for dim in dims
    }

    if mean_over is None:
        mean_over = [d for d in dims if d != "overall"] or dims
    unknown = [d for d in mean_over if d not in reports]
    if unknown:
        raise InvalidInputError(f"mean_over names dimension(s) {unknown} that are not in labels ({dims}).")
    metrics = [k for k in reports[dims[0]] if k.startswith("accuracy")]
    mean = {}
    for metric in metrics:
        values = [reports[d][metric] for d in mean_over if not np.isnan(reports[d][metric])]
        mean[metric] = float(np.mean(values)) if values else float("nan")
    return {"dims": reports, "mean": mean, "mean_over": list(mean_over)}


# -- is a training curve going anywhere? ------------------------------------------------------------
def block_trend(values: Sequence[float], blocks: int = 5) -> dict:
    """Split a per-step series into `blocks` consecutive blocks of (nearly) equal size and compare
    the first block's mean with the last's.

    Each block's standard error is its sample standard deviation (ddof 1) over √(its size): the steps
    of a block are taken as independent draws (each step sees different pairs). The change
    last − first has the standard error √(SE_first² + SE_last²); `trend` is "up" when the change
    exceeds two of those, "down" when it is below minus two, else "none". Fewer than 2 values per
    block lowers the number of blocks; a series too short for 2 blocks of 2 gives trend "too short".
    NaN entries are dropped first.

    Returns {"trend", "blocks": [{"start", "end", "mean", "se"}] (start/end: 0-based indices into
    the series, end exclusive), "change", "change_se"}.
    """
    x = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=np.float64)
    blocks = min(int(blocks), len(x) // 2)
    if blocks < 2:
        return {"trend": "too short", "blocks": [], "change": float("nan"), "change_se": float("nan")}
    edges = np.linspace(0, len(x), blocks + 1).round().astype(int)
    rows = []
    for start, end in zip(edges[:-1], edges[1:]):
        part = x[start:end]
        rows.append({"start": int(start), "end": int(end), "mean": float(part.mean()), "se": float(part.std(ddof=1) / np.sqrt(len(part)))})
    change = rows[-1]["mean"] - rows[0]["mean"]
    change_se = float(np.hypot(rows[0]["se"], rows[-1]["se"]))
    trend = "up" if change > 2 * change_se else "down" if change < -2 * change_se else "none"
    return {"trend": trend, "blocks": rows, "change": float(change), "change_se": change_se}


def accuracy_change(before: float, after: float, n: int) -> dict:
    """after − before of two accuracies measured on the same n decided items, with the standard error
    √(p₁(1−p₁)/n + p₂(1−p₂)/n) (two binomial errors, ignoring that the items are shared: an
    overestimate when both models get the same items right). `change`: "up" / "down" beyond 2 SE,
    else "none"."""
    if not n or np.isnan(before) or np.isnan(after):
        return {"before": before, "after": after, "delta": float("nan"), "se": float("nan"), "change": "unknown"}
    se = float(np.sqrt((before * (1 - before) + after * (1 - after)) / n))
    delta = after - before
    change = "up" if delta > 2 * se else "down" if delta < -2 * se else "none"
    return {"before": float(before), "after": float(after), "delta": float(delta), "se": se, "change": change}


def decided_correct(pred_a, pred_b, labels) -> list[int]:
    """Per pair whose label is not a tie, in order: 1 if the model orders it as the label does, else 0
    (Δ == 0 counts as wrong) — the items `pairwise_accuracy` averages."""
    delta, codes = _deltas_and_labels(pred_a, pred_b, labels)
    decided = codes != 0
    return [int(v) for v in (np.sign(delta[decided]) == codes[decided])]


def paired_accuracy_change(before: Mapping[str, Sequence[int]], after: Mapping[str, Sequence[int]]) -> dict:
    """after − before of the macro-mean accuracy over dimensions, from per-item correctness of two models
    on the SAME items ({dimension: `decided_correct` list}). The standard error is the paired one: per
    dimension the variance of the item differences (−1 / 0 / +1) over n, combined over the macro mean —
    items both models get right or both get wrong add no noise, as they should. `change`: "up" / "down"
    beyond 2 SE, else "none"."""
    dims = [d for d in before if d in after and len(before[d])]
    if not dims:
        return {"before": float("nan"), "after": float("nan"), "delta": float("nan"), "se": float("nan"), "change": "unknown"}
    for d in dims:
        if len(before[d]) != len(after[d]):
            raise InvalidInputError(f"Dimension {d}: {len(before[d])} items before, {len(after[d])} after; compare the same pairs.")
    b = [np.asarray(before[d], dtype=np.float64) for d in dims]
    a = [np.asarray(after[d], dtype=np.float64) for d in dims]
    diffs = [x - y for x, y in zip(a, b)]
    variance = sum(float(np.var(d, ddof=1)) / len(d) if len(d) > 1 else 0.0 for d in diffs) / len(dims) ** 2
    se = float(np.sqrt(variance))
    before_mean, after_mean = float(np.mean([x.mean() for x in b])), float(np.mean([x.mean() for x in a]))
    delta = after_mean - before_mean
    change = "up" if delta > 2 * se else "down" if delta < -2 * se else "none"
    return {"before": before_mean, "after": after_mean, "delta": delta, "se": se, "change": change, "paired": True}


# A fall of a word's `rl.VerdictProbe` mean beyond this is reported as a warning. On the synthetic
# benchmark (training/BENCHMARK.md, session 19; 300 eval pairs, 15 "mismatch" items) the "mismatch"
# mean went from 0.835 at the cold start to 0.30–0.57 in the 10 runs that lost 0.03–0.075 TA accuracy
# in think mode, and to 0.59–0.97 in the 9 that lost none (2 of those 9 fell by more than 0.1); a
# threshold read off one benchmark, not a law.
VERDICT_PROBE_DROP = 0.1


def rl_run_summary(history: Sequence[Mapping], evals: Sequence[Mapping] = (), blocks: int = 5) -> dict:
    """Did an RL run improve on its starting checkpoint?

    history: the per-step records (`rule_reward`, `rule_accuracy`, ...); evals: the evaluation records
    in step order (`rl.evaluate_policy`: think_accuracy, fast_accuracy, cot_accuracy, n_decided,
    n_cot_items), the
    first taken before any update. The verdict:
      "improved"  the rule reward's block trend is up, think-mode accuracy rose beyond 2 SE and fast
                  mode did not go down beyond 2 SE (what the RL stage is for);
      "reward up, think accuracy within noise"  the trend is up, think mode changed by less than 2 SE
                  and did not end lower;
      "reward up, think accuracy not"  the trend is up but think mode ended lower (within 2 SE);
      "reward up, not evaluated"  the trend is up and the run had no evaluations to tell more;
      "worse"     the rule reward's trend is down, or think or fast accuracy went down beyond 2 SE;
      "no measurable change" otherwise (including a run too short to tell).
    With `verdict_probe_<word>` means in both evaluations, eval.verdict_probe[word] holds before /
    after / items, and a fall beyond `VERDICT_PROBE_DROP` adds a line to "warnings".
    """
    reward = block_trend([h.get("rule_reward", np.nan) for h in history], blocks)
    out = {"steps": len(history), "rule_reward": reward,
           "rule_accuracy": block_trend([h.get("rule_accuracy", np.nan) for h in history], blocks)}
    changes = {}
    if len(evals) >= 2:
        first, last = evals[0], evals[-1]
        for key in ("think_accuracy", "fast_accuracy", "cot_accuracy"):
            # think / fast: accuracy without ties over the decided entries; the CoT verdicts are judged
            # on every labelled sub-dimension, human ties included.
            n = int(first.get("n_cot_items" if key == "cot_accuracy" else "n_decided", 0))
            if key in first and key in last:
                changes[key] = accuracy_change(float(first[key]), float(last[key]), n)
        out["eval"] = {"before_step": first.get("step"), "after_step": last.get("step"), **changes}
        words = [k[len("verdict_probe_"):] for k in first if k.startswith("verdict_probe_") and not k.endswith("_items")]
        for word in words:
            probe = [e.get(f"verdict_probe_{word}") for e in (first, last)]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in probe):
                continue
            items = int(first.get(f"verdict_probe_{word}_items", 0))
            out["eval"].setdefault("verdict_probe", {})[word] = {"before": float(probe[0]), "after": float(probe[1]), "items": items}
            if probe[1] < probe[0] - VERDICT_PROBE_DROP:
                out.setdefault("warnings", []).append(
                    f"the starting policy's uncertain {word!r} checklist verdicts lost probability ({probe[0]:.2f} → {probe[1]:.2f} "
                    f"on {items} items): RL is flipping them, which cost TA accuracy in think mode on the synthetic "
                    "benchmark (training/BENCHMARK.md, sessions 18 and 19); see --verdict-consistency")
    down = any(changes.get(k, {}).get("change") == "down" for k in ("think_accuracy", "fast_accuracy"))
    think = changes.get("think_accuracy")
    if reward["trend"] == "down" or down:
        verdict = "worse"
    elif reward["trend"] == "up":
        if think is None or think["change"] == "unknown":
            verdict = "reward up, not evaluated"
        elif think["change"] == "up":
            verdict = "improved"
        else:
            verdict = "reward up, think accuracy not" if think["delta"] < 0 else "reward up, think accuracy within noise"
    else:
        verdict = "no measurable change"
    out["verdict"] = verdict
    return out


def format_rl_summary(summary: Mapping) -> str:
    """One line: the verdict, the rule reward's first and last block, and the evaluations' change."""
    reward = summary["rule_reward"]
    parts = [f"RL {summary['verdict']} over {summary['steps']} steps"]
    if reward["blocks"]:
        first, last = reward["blocks"][0], reward["blocks"][-1]
        parts.append(f"rule reward {first['mean']:.3f}±{2 * first['se']:.3f} (first block) → {last['mean']:.3f}±{2 * last['se']:.3f} "
                     f"(last), change {reward['change']:+.3f} (2 SE {2 * reward['change_se']:.3f})")
    for key, name in (("think_accuracy", "think"), ("fast_accuracy", "fast"), ("cot_accuracy", "CoT verdicts")):
        change = summary.get("eval", {}).get(key)
        if change:
            parts.append(f"{name} {change['before']:.3f} → {change['after']:.3f}")
    for word, probe in summary.get("eval", {}).get("verdict_probe", {}).items():
        parts.append(f"{word} verdict probe {probe['before']:.3f} → {probe['after']:.3f}")
    return "; ".join(parts + [f"WARNING: {w}" for w in summary.get("warnings", [])])
