"""Learning curves of a training run as one PNG: `descore train plot RUN_DIR [--out FILE.png]`.

RUN_DIR is an RL output folder (its `rl_log.jsonl`) or a cold-start / JRM / pretrain run folder (its
`metrics.jsonl`; an OUT folder of `train_cold_start` holds it under `run/`). A log file can also be
given directly. Logs written before a metric existed are drawn with what they have.

RL run (`training/rl.py`), one panel each:
  1. rule reward of the sampled CoTs per step and its parts (accuracy, format, length), with the
     block means ± 2 SE of `metrics.block_trend` and the trend it reads;
  2. learning signal: within-group reward std, fraction of zero-variance groups (no advantage),
     fraction of CoTs the verdict parser reads, of CoTs and of checklist verdicts that contradict themselves;
  3. KL to the reference policy per token (log scale), the verdict anchor's KL, and the clip fraction;
  4. policy entropy per CoT token;
  5. BT loss of the head;
  6. the evaluations (think-mode, fast-mode and CoT-verdict accuracy, `rl.VerdictProbe`) against the step.
Supervised run (`training/trainer.py`): the loss and its parts, the training pair accuracy, the
learning rate and the evaluations' mean accuracy without ties.

matplotlib (the `train` extra) draws off-screen (`matplotlib.figure.Figure`, no pyplot, no display);
written against the matplotlib 3.11 API documentation.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from descore_sdk.errors import DataError, InvalidInputError, require

from .metrics import block_trend

LOG_NAMES = ("rl_log.jsonl", "metrics.jsonl", "run/metrics.jsonl")
DEFAULT_PNG = "curves.png"


def find_log(run: str | os.PathLike) -> Path:
    """The log file of a run folder (see the module docstring), or `run` itself when it is a file."""
    path = Path(run)
    if path.is_file():
        return path
    if not path.is_dir():
        raise InvalidInputError(f"{path} does not exist; give a training run folder (with rl_log.jsonl or metrics.jsonl).")
    for name in LOG_NAMES:
        if (path / name).is_file():
            return path / name
    raise InvalidInputError(f"{path} holds no training log ({', '.join(LOG_NAMES)}); is it a run folder?")


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    """(per-step records, evaluation records) of a JSON-lines log. An evaluation record is the
    `{"step": s, "eval": {...}}` line of either stage, returned as {"step": s, **eval}."""
    steps, evals = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number} is not a JSON line ({exc.msg}); the log is damaged.") from None
        if not isinstance(record, dict) or "step" not in record:
            raise DataError(f"{path}:{number} is not a training log record (no 'step').")
        if "eval" in record:
            evals.append({"step": record["step"], **_eval_values(record["eval"])})
        elif "event" not in record:
            steps.append(record)
    if not steps and not evals:
        raise DataError(f"{path} has no step records to plot.")
    return steps, evals


def _eval_values(report: dict) -> dict:
    """The plotted numbers of an evaluation record: RL's flat dict, or the trainer's
    `metrics.evaluate` report (its mean accuracy without ties)."""
    if "mean" in report and isinstance(report["mean"], dict):
        return {"accuracy": report["mean"].get("accuracy_without_ties")}
    return {k: v for k, v in report.items() if isinstance(v, (int, float))}


def _series(records: list[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            xs.append(r["step"])
            ys.append(value)
    return xs, ys


def _lines(ax, records, keys, *, labels=None, log=False, **style) -> bool:
    drawn = False
    for key in keys:
        xs, ys = _series(records, key)
        if log:
            xs, ys = [x for x, y in zip(xs, ys) if y > 0], [y for y in ys if y > 0]
        if xs:
            ax.plot(xs, ys, label=(labels or {}).get(key, key), **style)
            drawn = True
    if log and drawn:
        ax.set_yscale("log")
    return drawn


def _block_means(ax, records, key: str) -> str:
    """Block means ± 2 SE of `key` over the run; returns the trend's one-line description."""
    xs, ys = _series(records, key)
    trend = block_trend(ys)
    if trend["blocks"]:
        mids = [(xs[b["start"]] + xs[b["end"] - 1]) / 2 for b in trend["blocks"]]
        ax.errorbar(mids, [b["mean"] for b in trend["blocks"]], yerr=[2 * b["se"] for b in trend["blocks"]],
                    fmt="o-", color="black", capsize=3, label=f"{key}: block mean ± 2 SE")
        return f"trend {trend['trend']}: {trend['change']:+.3f} (2 SE {2 * trend['change_se']:.3f})"
    return f"trend {trend['trend']}"


def plot_run(run: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw the run's curves into a PNG (default: RUN_DIR/curves.png, or next to a log file given
    directly) and return its path."""
    require("matplotlib", "train", "descore train plot")
    from matplotlib.figure import Figure

    log = find_log(run)
    steps, evals = read_log(log)
    target = Path(out) if out is not None else (Path(run) if Path(run).is_dir() else log.parent) / DEFAULT_PNG
    if target.suffix.lower() != ".png":
        raise InvalidInputError(f"The plot is written as PNG; give an --out file ending in .png, not {target.name!r}.")
    is_rl = any("rule_reward" in r for r in steps)

    fig = Figure(figsize=(13, 10), layout="constrained")
    axes = fig.subplots(3, 2).flatten()
    title = f"{log.parent.name}/{log.name}: {len(steps)} steps"
    if is_rl:
        ax = axes[0]
        _lines(ax, steps, ["rule_reward", "rule_accuracy", "rule_format", "rule_length"], alpha=0.45, lw=1)
        ax.set_title("rule reward of sampled CoTs — " + _block_means(ax, steps, "rule_reward"), fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        if not _lines(axes[1], steps, ["reward_std", "accuracy_std", "zero_variance_groups", "parsed", "contradicted", "verdicts_contradicted"]):
            axes[1].text(0.5, 0.5, "not logged by this run", ha="center", transform=axes[1].transAxes)
        axes[1].set_title("learning signal: group std, flat groups, parsed / self-contradicting CoTs", fontsize=9)
        if not _lines(axes[2], steps, ["kl", "anchor_kl"], log=True):  # anchor_kl: 0 (not drawn) unless --verdict-anchor
            axes[2].text(0.5, 0.5, "KL 0 throughout (the policy did not move)", ha="center", transform=axes[2].transAxes)
        twin = axes[2].twinx()
        _lines(twin, steps, ["clip_fraction"], color="tab:red", alpha=0.6)
        twin.set_ylabel("clip fraction", color="tab:red")
        axes[2].set_title("KL to the reference (per token, log) and clip fraction", fontsize=9)
        if not _lines(axes[3], steps, ["entropy"]):
            axes[3].text(0.5, 0.5, "not logged by this run", ha="center", transform=axes[3].transAxes)
        axes[3].set_title("policy entropy per CoT token (nats)", fontsize=9)
        _lines(axes[4], steps, ["bt_loss"])
        axes[4].set_title("BT loss of the head", fontsize=9)
        eval_keys = ["think_accuracy", "fast_accuracy", "cot_accuracy", "verdict_probe_mismatch", "verdict_probe_match"]
    else:
        _lines(axes[0], steps, ["loss", "pref_loss", "lm_loss"])
        axes[0].set_title("loss", fontsize=9)
        _lines(axes[1], steps, ["train_pair_accuracy"], alpha=0.5)
        _block_means(axes[1], steps, "train_pair_accuracy")
        axes[1].set_title("training pair accuracy", fontsize=9)
        _lines(axes[2], steps, ["lr"])
        axes[2].set_title("learning rate", fontsize=9)
        _lines(axes[3], steps, ["grad_norm"])
        axes[3].set_title("gradient norm", fontsize=9)
        _lines(axes[4], steps, ["cot_fraction"])
        axes[4].set_title("fraction of pairs with a CoT", fontsize=9)
        eval_keys = ["accuracy"]
    if not _lines(axes[5], evals, eval_keys, marker="o"):
        axes[5].text(0.5, 0.5, "no evaluations in this run", ha="center", transform=axes[5].transAxes)
    axes[5].set_title("evaluations: accuracy without ties" + (", verdict probe (P of uncertain verdicts)" if is_rl else ""), fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=90)
    return target


def cmd_plot(args) -> int:
    print(f"Wrote {plot_run(args.run_dir, args.out)}")
    return 0
