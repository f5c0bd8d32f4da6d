"""The `descore` command line: score, compare, quickstart.

Errors the SDK raises on purpose (DescoreError) are printed as one line, without a traceback, and the
command exits non-zero; when several videos are scored, the others still get their results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import DescoreError

EXIT_ERROR = 1


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder or exported bundle")
    p.add_argument("--backend", default="auto", help="auto (default), torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", default="think", choices=["think", "fast"])
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object per video")


def _scorer_from_args(args):
    from .scorer import Scorer

    return Scorer.from_pretrained(
        args.model,
        backend=args.backend,
        device=args.device,
        mode=args.mode,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )


def _result_json(result) -> dict:
    keys = ("video", "reward", "rewards", "rationale", "mode", "backend", "timings_ms")
    return {k: getattr(result, k) for k in keys}


def _print_result(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_result_json(result)), flush=True)
        return
    dims = ", ".join(f"{k}={v:+.4f}" for k, v in result.rewards.items())
    print(f"{result.video}: reward {result.reward:+.4f} ({dims}) [{result.mode}, {result.backend}, {result.timings_ms['total']:.0f} ms]")
    if result.rationale:
        print(f"  rationale: {result.rationale.strip()[:300]}")


def cmd_score(args) -> int:
    scorer = _scorer_from_args(args)
    failed = 0
    for video in args.videos:
        try:
            _print_result(scorer.score(video, args.prompt), args.json)
        except DescoreError as exc:
            failed += 1
            print(f"descore: {video}: {exc}", file=sys.stderr)
    return EXIT_ERROR if failed else 0


def cmd_compare(args) -> int:
    scorer = _scorer_from_args(args)
    pair = scorer.compare(args.video_a, args.video_b, args.prompt)
    if args.json:
        print(json.dumps({"a": _result_json(pair.a), "b": _result_json(pair.b), "prob_a_better": pair.prob_a_better, "preferred": pair.preferred}))
    else:
        _print_result(pair.a, False)
        _print_result(pair.b, False)
        print(f"P(A better) = {pair.prob_a_better:.3f} → preferred: {pair.preferred}")
    return 0


def default_cache_dir() -> Path:
    root = os.environ.get("DESCORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "descore")
    return Path(root) / "quickstart"


def cmd_quickstart(args) -> int:
    from importlib import resources

    from .config import CONFIG_NAME
    from .scorer import Scorer

    out = Path(args.out) if args.out else default_cache_dir()
    if (out / CONFIG_NAME).is_file():
        print(f"Using the tiny model already in {out}")
    else:
        from .errors import require

        require("torch", "train", "quickstart (it builds a tiny model)")
        from .training.tiny import build_tiny_model

        print(f"Building a tiny random-weight {args.family} DeScore model in {out} ...")
        out.mkdir(parents=True, exist_ok=True)
        build_tiny_model(args.family, seed=0, out_dir=out)
    scorer = Scorer.from_pretrained(out, backend="auto", mode=args.mode, max_new_tokens=args.max_new_tokens)
    assets = resources.files("descore_sdk.assets")
    samples = json.loads(assets.joinpath("samples.json").read_text())
    print(f"\nScoring the shipped sample videos ({args.mode} mode, backend {scorer.backend.name}):\n")
    header = f"{'pair':<5} {'video':<18} {'reward':>9} {'P(A better)':>12} {'human (VQ/MQ/TA)':>17} {'ms':>7}"
    print(header)
    print("-" * len(header))
    for i, pair in enumerate(samples["pairs"], 1):
        with resources.as_file(assets.joinpath(pair["video_a"])) as a, resources.as_file(assets.joinpath(pair["video_b"])) as b:
            result = scorer.compare(a, b, pair["prompt"])
        human = "/".join(pair["labels"].values())
        for tag, r in (("A", result.a), ("B", result.b)):
            name = Path(pair[f"video_{tag.lower()}"]).name
            p = f"{result.prob_a_better:.3f}" if tag == "A" else ""
            print(f"{i:<5} {name:<18} {r.reward:>+9.4f} {p:>12} {human if tag == 'A' else '':>17} {r.timings_ms['total']:>7.0f}")
    print(f"\nThe model in {out} is a checkpoint: descore score VIDEO --prompt TEXT --model {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="descore", description="DeScore video reward models: score, compare, quickstart.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score one or more videos against a prompt")
    p.add_argument("videos", nargs="+")
    p.add_argument("--prompt", required=True)
    _add_model_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("compare", help="compare two videos for one prompt")
    p.add_argument("video_a")
    p.add_argument("video_b")
    p.add_argument("--prompt", required=True)
    _add_model_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("quickstart", help="build a tiny model (no downloads) and score the shipped sample videos")
    p.add_argument("--out", default=None, help=f"model folder (default: {default_cache_dir()})")
    p.add_argument("--family", default="qwen3_vl", choices=["qwen3_vl", "qwen2_5_vl", "qwen2_vl"])
    p.add_argument("--mode", default="think", choices=["think", "fast"])
    p.add_argument("--max-new-tokens", type=int, default=32, help="CoT length cap (a random tiny model rarely stops by itself)")
    p.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DescoreError as exc:
        print(f"descore: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("descore: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
