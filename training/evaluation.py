"""Evaluating a Scorer on preference pairs: what `descore eval`, `descore train benchmark` and
`descore score-dataset` report. torch-free (it only drives a `Scorer` and `training.metrics`).

    results = score_pairs(scorer, pairs, mode="think")          # each distinct video scored once
    report = evaluate_with_scorer(scorer, pairs, mode="think", results=results)
    print(format_report(report, "header"))

It used to live in training/cli.py, which training/benchmark.py then imported back.
"""

from __future__ import annotations

import math
import sys

from descore_sdk.errors import DescoreError, InvalidInputError


def score_pairs(scorer, pairs, *, mode: str, progress: bool = False) -> dict:
    """{(video path, prompt): ScoreResult} for every distinct video/prompt of `pairs`.

    progress: a bar on stderr (descore_sdk.progress), counting videos and runaway CoTs. Runaway CoTs
    (budget hit or a repetition loop) are also reported in one warning line at the end."""
    from descore_sdk import progress as progress_output

    items = sorted({(str(p.video_a), p.prompt) for p in pairs} | {(str(p.video_b), p.prompt) for p in pairs})
    bar = progress_output.bar(len(items), f"scoring ({mode})", "video", progress)
    results, runaway = {}, 0
    try:
        for video, prompt in items:
            try:
                result = scorer.score(video, prompt, mode=mode)
            except DescoreError as exc:
                raise type(exc)(f"{video}: {exc}") from exc
            results[(video, prompt)] = result
            runaway += result.cot_runaway
            bar.update(1)
            if runaway:
                bar.set_postfix_str(f"runaway CoTs: {runaway}")
    finally:
        bar.close()
    if runaway:
        print(f"descore: warning: {runaway} of {len(items)} CoTs hit the token budget or ended in a repetition loop; "
              "their rewards are unreliable (see cot_stop / cot_repeating of each result).", file=sys.stderr)
    return results


def pair_rewards(pairs, results, dimension_names) -> tuple[dict, dict, dict, dict]:
    """(pred_a, pred_b, labels, scored_with) per label dimension. A dimension the model outputs is
    read from its own reward; any other from the headline reward."""
    labelled = {d for p in pairs for d in p.labels}
    # The model's own dimensions in its order, then the others alphabetically.
    dims = [d for d in dimension_names if d in labelled] + sorted(labelled - set(dimension_names))
    pred_a, pred_b, labels, scored_with = {}, {}, {}, {}
    for dim in dims:
        own = dim in dimension_names
        scored_with[dim] = dim if own else "reward (headline)"

        def value(video, prompt):
            result = results[(str(video), prompt)]
            return result.rewards[dim] if own else result.reward

        chosen = [p for p in pairs if dim in p.labels]
        pred_a[dim] = [value(p.video_a, p.prompt) for p in chosen]
        pred_b[dim] = [value(p.video_b, p.prompt) for p in chosen]
        labels[dim] = [p.labels[dim] for p in chosen]
    return pred_a, pred_b, labels, scored_with


def evaluate_with_scorer(scorer, pairs, *, mode: str, calib_pairs=None, progress: bool = False, results=None) -> dict:
    """`training.metrics.evaluate` of `scorer`'s rewards on `pairs` (ε calibrated on `calib_pairs`
    when given), plus "scored_with" (which reward each dimension was read from) and "correct" (per
    dimension, 1/0 for each pair without a human tie, in order: `metrics.decided_correct`).

    results: `score_pairs` output already computed (in `mode`) for every video of `pairs` and
    `calib_pairs`, so that several reports over shared videos score each video once.
    """
    from .metrics import evaluate

    if not pairs:
        raise InvalidInputError("No pairs to evaluate: the data file is empty or all its pairs were skipped.")
    dims = scorer.config.dimension_names
    if results is None:
        results = score_pairs(scorer, list(pairs) + list(calib_pairs or []), mode=mode, progress=progress)
    pred_a, pred_b, labels, scored_with = pair_rewards(pairs, results, dims)
    calib = None
    if calib_pairs:
        ca, cb, cl, _ = pair_rewards(calib_pairs, results, dims)
        missing = [d for d in labels if d not in cl]
        if missing:
            raise InvalidInputError(f"The calibration file labels no pair for dimension(s) {missing}; it must label the same dimensions as DATA.")
        calib = ({d: ca[d] for d in labels}, {d: cb[d] for d in labels}, {d: cl[d] for d in labels})
    from .metrics import decided_correct

    report = evaluate(pred_a, pred_b, labels, calib)
    report["scored_with"] = scored_with
    # per non-tied pair, 1/0: what a paired before/after comparison on the same pairs needs
    report["correct"] = {dim: decided_correct(pred_a[dim], pred_b[dim], labels[dim]) for dim in labels}
    return report


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def format_report(report: dict, header: str) -> str:
    calibrated = any("accuracy_with_ties_calibrated" in r for r in report["dims"].values())
    columns = ["dimension", "pairs", "ties", "acc w/o ties", "acc ties (in-sample eps)"] + (["acc ties (calib eps)"] if calibrated else [])
    lines = [header, "  ".join(f"{c:>24}" if i else f"{c:<18}" for i, c in enumerate(columns))]
    for dim, r in report["dims"].items():
        cells = [f"{dim:<18}", f"{r['n_pairs']:>24}", f"{r['n_human_ties']:>24}", f"{_fmt(r['accuracy_without_ties']):>24}",
                 f"{_fmt(r['accuracy_with_ties_in_sample']) + ' (eps=' + _fmt(r['epsilon_in_sample']) + ')':>24}"]
        if calibrated:
            cells.append(f"{_fmt(r['accuracy_with_ties_calibrated']) + ' (eps=' + _fmt(r['epsilon_calibrated']) + ')':>24}")
        lines.append("  ".join(cells))
    mean = report["mean"]
    label = "mean(" + ",".join(report["mean_over"]) + ")"
    cells = [f"{label:<18}", f"{'':>24}", f"{'':>24}", f"{_fmt(mean['accuracy_without_ties']):>24}", f"{_fmt(mean['accuracy_with_ties_in_sample']):>24}"]
    if calibrated:
        cells.append(f"{_fmt(mean.get('accuracy_with_ties_calibrated')):>24}")
    lines.append("  ".join(cells))
    headline = [d for d, how in report.get("scored_with", {}).items() if how != d]
    if headline:
        lines.append(f"({', '.join(headline)}: the model has no such output; scored with its headline reward)")
    return "\n".join(lines)


def without_nan(value):
    """NaN (e.g. accuracy without ties when every label is a tie) → null, so the output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(v) for v in value]
    return value
