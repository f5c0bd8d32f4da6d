"""The training command line: `descore data synth`, `descore train cold-start|jrm`, `descore eval`.

`descore_sdk/cli.py` mounts these with `add_subcommands(subparsers)`; each command's `func(args)`
returns an exit code and raises `DescoreError` for user errors (the main CLI prints those as one
line). The stage scripts (`python -m descore_sdk.training.cold_start|jrm`) use the same options.

This module imports no torch at import time, so building the `descore` parser stays cheap and works
on a runtime-only install; torch is imported when a training command runs. For the same reason the
settings shared by the CLI and the trainer — `TrainConfig` and the tie-model constants — live here
(`training.trainer` re-exports `TrainConfig`).

    descore data synth OUT_DIR [--n-train 160 --n-test 40 --n-heldout 40 --seed 0 --size 64x64]
    descore train cold-start --model CKPT --data train.jsonl --out runs/cold [--resume] [...]
    descore train jrm        --model CKPT --data train.jsonl --out runs/jrm  [--resume] [...]
    descore train pretrain   --model TINY --data train.jsonl --out runs/pre  (captioning, tiny models)
    descore train benchmark  OUT_DIR [--quick] [--json]                      (all recipes, measured)
    descore eval MODEL DATA [--json] [--calib CALIB_FILE] [--mode think|fast] [--backend auto]

`descore eval` scores every video of DATA with `descore_sdk.Scorer` (any backend; each distinct
(video, prompt) once) and reports `training.metrics.evaluate`: per dimension and as the macro mean,
accuracy without ties, accuracy with ties at the tie threshold ε fitted on DATA itself (in-sample,
optimistic) and — with `--calib` — at the ε fitted on the separate calibration split (the honest
number). Mode defaults to fast for JRM checkpoints (`descore_config.method == "jrm"`) and think
otherwise. A label dimension the model has no output for (e.g. VQ labels, a single-"overall" model)
is scored with the model's headline reward; the report says so under "scored_with".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass

from descore_sdk.errors import DescoreError, InvalidInputError

# Tie handling of the preference loss (see training/losses.py, which imports these).
TIE_MODES = ("drop", "rao_kupper")
DEFAULT_TIE_THETA = 5.0  # VideoAlign's "BTT" θ (their k = 5)
DEFAULT_JRM_LM_WEIGHT = 1.0

# LoRA goes on these projections of the LANGUAGE model's layers (the vision blocks use other names
# in Qwen2-VL/Qwen3-VL and the same names in Qwen2.5-VL, so targets are matched under
# `language_model` only).
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEDULES = ("constant", "linear", "cosine")
# Settings that only affect logging/saving; a resumed run may change them.
BOOKKEEPING_FIELDS = ("steps", "save_every", "eval_every", "log_every", "keep_checkpoints", "eval_batch_size", "progress",
                      "video_cache_mb")


@dataclass
class TrainConfig:
    """Optimisation and model-setup settings shared by all stages.

    batch_size: pairs per optimizer step over ALL processes; must divide by world_size × grad_accum.
    steps: optimizer steps in total (a resumed run continues up to this number).
    schedule: LR after `warmup_steps` of linear warmup: constant, linear decay to 0, or cosine to 0.
    lora: train LoRA adapters (r, alpha, dropout, targets) instead of all backbone weights.
    train_vision: train the vision tower (fully, also under LoRA) or keep it frozen.
    train_lm_head: full fine-tuning only: also train an untied LM head (output embeddings). Off by
        default — a pretrained head already knows the vocabulary; useful for random tiny models.
    save_every / eval_every: 0 = only at the end.
    video_cache_mb: decoded training clips kept in memory (`batching.FeatureCache`; 0 decodes every
        time). It changes speed, never the batches.
    """

    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    max_grad_norm: float | None = 1.0
    seed: int = 0
    lora: bool = False
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    train_vision: bool = True
    train_lm_head: bool = False
    gradient_checkpointing: bool = False
    device: str = "cpu"
    save_every: int = 0
    eval_every: int = 0
    log_every: int = 1
    keep_checkpoints: int = 2
    eval_batch_size: int = 16
    progress: bool = True
    video_cache_mb: int = 2048

    def __post_init__(self):
        self.lora_targets = tuple(self.lora_targets)
        for name in ("steps", "batch_size", "grad_accum", "lora_r", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be ≥ 1, got {getattr(self, name)}.")
        for name in ("warmup_steps", "save_every", "eval_every", "video_cache_mb"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be ≥ 0, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise InvalidInputError(f"lr must be > 0, got {self.lr}.")
        if self.schedule not in SCHEDULES:
            raise InvalidInputError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise InvalidInputError(f"max_grad_norm must be > 0 (or None for no clipping), got {self.max_grad_norm}.")

    def trajectory(self) -> dict:
        """The settings that determine the training trajectory (must match on resume)."""
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(d["lora_targets"])
        return {k: v for k, v in d.items() if k not in BOOKKEEPING_FIELDS}

    def video_cache(self, descore_config):
        """The decoded-clip cache (`batching.FeatureCache`) this run's collator reads videos through."""
        from .batching import FeatureCache  # torch: imported when a run starts, not with the CLI

        return FeatureCache(descore_config, max_bytes=self.video_cache_mb << 20)



# -- shared command-line options --------------------------------------------------------------------
def add_train_arguments(parser) -> None:
    """Options every stage takes (model, data, output, optimisation, LoRA, checkpoints)."""
    defaults = TrainConfig()
    io = parser.add_argument_group("input / output")
    io.add_argument("--model", required=True, help="starting checkpoint folder (DeScore or plain Hugging Face Qwen-VL)")
    io.add_argument("--data", required=True, help="training pairs (.jsonl, VideoAlign .csv or GenAI-Bench .json)")
    io.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, model/ (final)")
    io.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    io.add_argument("--eval-data", default=None, help="held-out pairs scored (fast mode) every --eval-every steps")
    io.add_argument("--dimensions", default=None, help="comma-separated reward dimensions (default: the model's); new names start a new head")
    io.add_argument("--on-missing", default="skip", choices=["skip", "error"], help="pairs whose videos are missing: skip (default) or error")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, default=defaults.steps)
    opt.add_argument("--batch-size", type=int, default=defaults.batch_size, help="pairs per step, all processes together")
    opt.add_argument("--grad-accum", type=int, default=defaults.grad_accum)
    opt.add_argument("--lr", type=float, default=defaults.lr)
    opt.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    opt.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    opt.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES)
    opt.add_argument("--max-grad-norm", type=float, default=defaults.max_grad_norm, help="0 disables clipping")
    opt.add_argument("--seed", type=int, default=defaults.seed)
    opt.add_argument("--device", default=defaults.device)
    opt.add_argument("--gradient-checkpointing", action="store_true")
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--lora", action="store_true", help="train LoRA adapters instead of all backbone weights")
    lora.add_argument("--lora-r", type=int, default=defaults.lora_r)
    lora.add_argument("--lora-alpha", type=int, default=defaults.lora_alpha)
    lora.add_argument("--lora-dropout", type=float, default=defaults.lora_dropout)
    lora.add_argument("--lora-targets", default=",".join(defaults.lora_targets), help="language-model module names to adapt")
    lora.add_argument("--freeze-vision", action="store_true", help="keep the vision tower frozen")
    lora.add_argument("--train-lm-head", action="store_true", help="full fine-tuning: also train an untied LM head")
    book = parser.add_argument_group("checkpoints and logging")
    book.add_argument("--save-every", type=int, default=defaults.save_every, help="0: only at the end")
    book.add_argument("--eval-every", type=int, default=defaults.eval_every, help="0: only at the end")
    book.add_argument("--log-every", type=int, default=defaults.log_every)
    book.add_argument("--keep-checkpoints", type=int, default=defaults.keep_checkpoints)
    book.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size)
    book.add_argument("--no-progress", action="store_true", help="no progress bar")
    book.add_argument("--video-cache-mb", type=int, default=defaults.video_cache_mb,
                      help="memory per process for decoded training clips, reused across epochs (0: decode every time)")


def train_config_from_args(args) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        schedule=args.schedule,
        max_grad_norm=args.max_grad_norm or None,
        seed=args.seed,
        lora=args.lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
        train_vision=not args.freeze_vision,
        train_lm_head=args.train_lm_head,
        gradient_checkpointing=args.gradient_checkpointing,
        device=args.device,
        save_every=args.save_every,
        eval_every=args.eval_every,
        log_every=args.log_every,
        keep_checkpoints=args.keep_checkpoints,
        eval_batch_size=args.eval_batch_size,
        progress=not args.no_progress,
        video_cache_mb=args.video_cache_mb,
    )



def add_cold_start_arguments(parser) -> None:
    add_train_arguments(parser)
    recipe = parser.add_argument_group("cold-start recipe")
    recipe.add_argument("--cot-drop", type=float, default=0.5, help="probability a pair is trained without rationales (shared by both videos)")
    recipe.add_argument("--lm-weight", type=float, default=0.0, help="weight of the LM loss on rationale tokens (0: off)")
    recipe.add_argument("--ties", default="drop", choices=TIE_MODES, help="drop human ties, or model them (Rao-Kupper)")
    recipe.add_argument("--tie-theta", type=float, default=DEFAULT_TIE_THETA, help="Rao-Kupper theta (> 1)")


def add_jrm_arguments(parser) -> None:
    add_train_arguments(parser)
    recipe = parser.add_argument_group("JRM recipe")
    recipe.add_argument("--lm-weight", type=float, default=DEFAULT_JRM_LM_WEIGHT, help="weight of the rationale LM loss")
    recipe.add_argument("--ties", default="drop", choices=TIE_MODES, help="drop human ties, or model them (Rao-Kupper)")
    recipe.add_argument("--tie-theta", type=float, default=DEFAULT_TIE_THETA, help="Rao-Kupper theta (> 1)")


# -- descore data synth -----------------------------------------------------------------------------
def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 64x64 (WIDTHxHEIGHT), got {text!r}") from None
    return width, height


def cmd_data_synth(args) -> int:
    from descore_sdk import progress

    from .synth import generate_benchmark

    if progress.wanted():
        total = 2 * (args.n_train + args.n_test + args.n_heldout)
        print(f"Writing the synthetic benchmark (up to {total} clips) to {args.out_dir} ...", file=sys.stderr, flush=True)
    paths = generate_benchmark(
        args.out_dir, n_train=args.n_train, n_test=args.n_test, n_heldout=args.n_heldout,
        seed=args.seed, size=args.size, num_frames=args.frames, fps=args.fps,
    )
    for name, path in paths.items():
        print(f"{name:<13} {path}")
    return 0


# -- descore train ----------------------------------------------------------------------------------
def cmd_train_cold_start(args) -> int:
    from .cold_start import run

    return run(args)


def cmd_train_rl(args) -> int:
    from .rl import main as rl_main

    return rl_main(list(args.extra_args), prog="descore train rl")


def cmd_train_pretrain(args) -> int:
    from .pretrain import run

    return run(args)


def cmd_train_benchmark(args) -> int:
    from .benchmark import main as benchmark_main

    return benchmark_main(list(args.extra_args), prog="descore train benchmark")


def cmd_train_jrm(args) -> int:
    from .jrm import run

    return run(args)


# -- descore eval -----------------------------------------------------------------------------------
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
    when given), plus "scored_with" (which reward each dimension was read from).

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
    report = evaluate(pred_a, pred_b, labels, calib)
    report["scored_with"] = scored_with
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


def cmd_eval(args) -> int:
    from descore_sdk import progress as progress_output
    from descore_sdk.scorer import Scorer

    progress_output.quiet_library_bars()

    from .data import read_pairs

    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    scorer = Scorer.from_pretrained(args.model, backend=args.backend, device=args.device, **options)
    mode = args.mode or ("fast" if getattr(scorer.config, "method", "descore") == "jrm" else "think")
    pairs = read_pairs(args.data, on_missing=args.on_missing)
    calib_pairs = read_pairs(args.calib, on_missing=args.on_missing) if args.calib else None
    show = progress_output.wanted(args.json)
    if show:
        budget = f", CoT budget {args.max_new_tokens or scorer.config.max_new_tokens} tokens" if mode == "think" else ""
        print(f"Scoring the videos of {len(pairs) + len(calib_pairs or [])} pairs ({mode} mode, "
              f"{scorer.backend.name} backend{budget}) ...", file=sys.stderr, flush=True)
    if not pairs:
        raise InvalidInputError("No pairs to evaluate: the data file is empty or all its pairs were skipped.")
    results = score_pairs(scorer, list(pairs) + list(calib_pairs or []), mode=mode, progress=show)
    report = evaluate_with_scorer(scorer, pairs, mode=mode, calib_pairs=calib_pairs, results=results)
    runaway = sum(r.cot_runaway for r in results.values())
    if args.json:
        meta = {"model": str(args.model), "data": str(args.data), "calib": args.calib, "mode": mode,
                "backend": scorer.backend.name, "n_pairs": len(pairs), "videos_scored": len(results), "cot_runaway": runaway}
        print(json.dumps(without_nan({**meta, **report})))
    else:
        header = f"{args.data}: {len(pairs)} pairs, model {args.model} ({mode} mode, {scorer.backend.name} backend)"
        print(format_report(report, header))
    return 0


# -- mounting ---------------------------------------------------------------------------------------
def add_subcommands(subparsers) -> None:
    """Add `data`, `train` and `eval` to the `descore` parser's subparsers."""
    data = subparsers.add_parser("data", help="make training / evaluation data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("synth", help="write the synthetic video-preference benchmark")
    p.add_argument("out_dir")
    p.add_argument("--n-train", type=int, default=160)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--n-heldout", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_size, default=(64, 64), help="WIDTHxHEIGHT (default 64x64)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--fps", type=float, default=2.0, help="frame rate (default 2: the models' sampling rate, so every frame is seen)")
    p.set_defaults(func=cmd_data_synth)

    train = subparsers.add_parser("train", help="train a DeScore model (cold start, RL or JRM)")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    p = train_sub.add_parser("cold-start", help="DeScore cold start: BT on rewards with random CoT drop")
    add_cold_start_arguments(p)
    p.set_defaults(func=cmd_train_cold_start)
    p = train_sub.add_parser("pretrain", help="captioning pre-training of a tiny random-weight backbone on synthetic clips")
    from .pretrain import add_pretrain_arguments

    add_pretrain_arguments(p)
    p.set_defaults(func=cmd_train_pretrain)
    p = train_sub.add_parser("benchmark", add_help=False,
                             help="every recipe end to end on the synthetic benchmark (descore train benchmark --help)")
    p.set_defaults(func=cmd_train_benchmark, passthrough=True)
    p = train_sub.add_parser("jrm", help="joint reward model: BT + rationale LM loss, scores in fast mode")
    add_jrm_arguments(p)
    p.set_defaults(func=cmd_train_jrm)
    # rl.py imports torch at module level, so its own parser is built only when `train rl` runs;
    # `descore train rl --help` prints that parser's help.
    # Its arguments reach it through `passthrough`: the `descore` parser hands over what it does not know.
    p = train_sub.add_parser("rl", add_help=False, help="dual-objective RL: GRPO on sampled CoTs + Bradley-Terry on the head")
    p.set_defaults(func=cmd_train_rl, passthrough=True)

    p = subparsers.add_parser("eval", help="pairwise accuracy of a model on a preference file")
    p.add_argument("model", help="checkpoint folder, exported bundle, or a training run folder (its model/ is used)")
    p.add_argument("data", help="pairs to evaluate (.jsonl, VideoAlign .csv, GenAI-Bench .json)")
    p.add_argument("--calib", default=None, help="separate pairs to calibrate the tie threshold on (honest with-ties accuracy)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--mode", default=None, choices=["think", "fast"], help="default: fast for JRM checkpoints, else think")
    p.add_argument("--backend", default="auto", help="auto (onnxruntime for a bundle, torch for a checkpoint), torch, onnxruntime")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--max-new-tokens", type=int, default=None, help="CoT length cap in think mode (default: the model's own)")
    p.add_argument("--temperature", type=float, default=0.0, help="CoT sampling temperature (default 0: greedy)")
    p.add_argument("--seed", type=int, default=None, help="random seed of CoT sampling (temperature > 0)")
    p.add_argument("--on-missing", default="skip", choices=["skip", "error"],
                   help="pairs whose videos are missing: skip them with a warning (default) or stop with an error")
    p.set_defaults(func=cmd_eval)


def report_trained(final) -> int:
    """Print where the trained model is, once per job (not once per torchrun process)."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(f"Trained model: {final}")
    return 0


def stage_main(argv, *, prog: str, description: str, add_arguments, run) -> int:
    """`python -m descore_sdk.training.<stage>`: parse the stage's options, run it, print
    DescoreErrors as one line (the same contract as the `descore` CLI)."""
    import logging

    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except DescoreError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def main(argv=None) -> int:
    """`python -m descore_sdk.training.cli ...`: the same commands without the rest of `descore`."""
    parser = argparse.ArgumentParser(prog="descore", description="DeScore training commands")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_args = extra
    try:
        return args.func(args)
    except DescoreError as exc:
        print(f"descore: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
