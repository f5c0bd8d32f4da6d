"""The training command line: `descore data synth`, `descore train cold-start|jrm`, `descore eval`.

`descore_sdk/cli.py` mounts these with `add_subcommands(subparsers)`; each command's `func(args)`
returns an exit code and raises `DescoreError` for user errors (the main CLI prints those as one
line). The stage scripts (`python -m descore_sdk.training.cold_start|jrm`) use the same options.

This module imports no torch at import time, so building the `descore` parser stays cheap and works
on a runtime-only install; torch is imported when a training command runs. The settings shared by the
CLI, the stage scripts and the trainer (`TrainConfig`, the tie-model constants, the option builders)
live in training/arguments.py, and the evaluation in training/evaluation.py, so no stage imports
this module back.

    descore data synth OUT_DIR [--n-train 160 --n-test 40 --n-heldout 40 --seed 0 --size 64x64]
    descore train cold-start --model CKPT --data train.jsonl --out runs/cold [--resume] [...]
    descore train jrm        --model CKPT --data train.jsonl --out runs/jrm  [--resume] [...]
    descore train pretrain   --model TINY --data train.jsonl --out runs/pre  (captioning, tiny models)
    descore train benchmark  OUT_DIR [--quick] [--json]                      (all recipes, measured)
    descore train plot       RUN_DIR [--out curves.png]                      (learning curves as a PNG)
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
import json
import sys

from descore_sdk.errors import DescoreError, InvalidInputError

from .arguments import add_cold_start_arguments, add_jrm_arguments
from .evaluation import evaluate_with_scorer, format_report, score_pairs, without_nan

def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 64x64 (WIDTHxHEIGHT), got {text!r}") from None
    return width, height


def cmd_data_synth(args) -> int:
    from descore_sdk import progress

    from .synth import generate_benchmark, generate_pretrain_clips

    if args.pretrain_clips < 0:  # before anything is written
        raise InvalidInputError(f"--pretrain-clips must be 0 or more, got {args.pretrain_clips}.")
    if progress.wanted():
        total = 2 * (args.n_train + args.n_test + args.n_heldout) + args.pretrain_clips
        print(f"Writing the synthetic benchmark (up to {total} clips) to {args.out_dir} ...", file=sys.stderr, flush=True)
    paths = generate_benchmark(
        args.out_dir, n_train=args.n_train, n_test=args.n_test, n_heldout=args.n_heldout,
        seed=args.seed, size=args.size, num_frames=args.frames, fps=args.fps,
    )
    if args.pretrain_clips:
        paths["pretrain_clips"] = generate_pretrain_clips(args.out_dir, n_clips=args.pretrain_clips, seed=args.seed, size=args.size,
                                                          num_frames=args.frames, fps=args.fps)
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


def cmd_train_plot(args) -> int:
    from .plot import cmd_plot

    return cmd_plot(args)


def cmd_train_jrm(args) -> int:
    from .jrm import run

    return run(args)


# -- descore eval (the evaluation itself: training/evaluation.py) ----------------------------------
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
    p.add_argument("--pretrain-clips", type=int, default=0, metavar="N",
                   help="also write N caption-only clips (half with a colour cast, no pairs, no labels) to "
                        "pretrain_clips.jsonl, for `descore train pretrain --extra-clips` (default 0)")
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
    p = train_sub.add_parser("plot", help="learning curves of a run folder as a PNG (rule reward, KL, BT loss, evaluations)")
    p.add_argument("run_dir", help="training run folder (rl_log.jsonl or metrics.jsonl) or the log file itself")
    p.add_argument("--out", default=None, help="PNG to write (default: RUN_DIR/curves.png)")
    p.set_defaults(func=cmd_train_plot)

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
