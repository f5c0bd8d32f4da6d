"""The `descore` command line: score, compare, export, quickstart, bench, data, train, eval.

To add a subcommand, write an `_add_<name>(subparsers)` function that registers its parser (with
`set_defaults(func=...)`) and append it to `SUBCOMMANDS`.

Errors the SDK raises on purpose (DescoreError) are printed as one line, without a traceback, and the
command exits non-zero; when several videos are scored, the others still get their results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from ._version import __version__
from .errors import DescoreError, InvalidInputError

EXIT_ERROR = 1


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (a thread or batch count of 0 would otherwise pass silently)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {value}")
    return value


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder, exported bundle, or a training run folder (its model/ is used)")
    p.add_argument("--backend", default="auto",
                   help="auto (default: a checkpoint → torch; a bundle → its TensorRT engines where they run, else "
                        "onnxruntime on CUDA, else on the CPU; the choice and why is printed), torch, onnxruntime, tensorrt")
    p.add_argument("--device", default="auto",
                   help="auto (default), cpu, cuda[:N], tensorrt[:N] (onnxruntime's TensorRT provider); GPUs need "
                        "descore-sdk[gpu] or descore-sdk[tensorrt]")
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime intra-op threads, ≥ 1 (default: one per core)")
    p.add_argument("--mode", default=None, choices=["think", "fast", "adaptive"],
                   help="default: think (fast for JRM models, which score without a CoT)")
    p.add_argument("--adaptive-threshold", type=float, default=0.5,
                   help="adaptive compare: write CoTs only when |r_A - r_B| is below this")
    p.add_argument("--adaptive-band", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="adaptive score: write a CoT only when the fast reward lies in [LOW, HIGH]")
    p.add_argument("--max-new-tokens", type=nonnegative_int, default=None,
                   help="CoT length cap in think mode (default: the model's own, from its descore_config.json)")
    p.add_argument("--temperature", type=float, default=0.0, help="CoT sampling temperature (default 0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)")
    p.add_argument("--top-k", type=nonnegative_int, default=0, help="sample among the k most likely tokens only (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="divide the logits of tokens already in the CoT by this (> 1 discourages loops; 1 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed of CoT sampling (temperature > 0)")
    p.add_argument("--resize", default="pillow", choices=["pillow", "swscale"],
                   help="frame resizing: pillow (default, the Qwen-VL processor's exact pixels) or swscale (FFmpeg "
                        "converts and scales in one pass: several times cheaper per HD frame, pixels within ~1 of 255)")
    p.add_argument("--json", action="store_true", help="print one JSON object per video (no progress output)")


def _scorer_from_args(args):
    from .scorer import Scorer

    backend_options = {"threads": args.threads} if args.threads is not None else None
    scorer = Scorer.from_pretrained(
        args.model,
        backend=args.backend,
        device=args.device,
        backend_options=backend_options,
        mode=args.mode,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        adaptive_threshold=args.adaptive_threshold,
        adaptive_band=tuple(args.adaptive_band) if args.adaptive_band else None,
        resize=args.resize,
    )
    if scorer.backend_choice is not None and not args.json:
        print(f"descore: backend {scorer.backend_choice}", file=sys.stderr, flush=True)
    return scorer


RESULT_JSON_KEYS = ("video", "reward", "rewards", "rationale", "mode", "backend", "timings_ms", "num_frames",
                    "num_cot_tokens", "cot_stop", "cot_repeating", "sampling")


def _result_json(result) -> dict:
    return {k: getattr(result, k) for k in RESULT_JSON_KEYS}


def _format_result(result, as_json: bool) -> list[str]:
    """The lines printed for one result: one JSON object, or a line of rewards and indented details."""
    from .cot import describe_runaway

    if as_json:
        return [json.dumps(_result_json(result))]
    dims = ", ".join(f"{k}={v:+.4f}" for k, v in result.rewards.items())
    lines = [f"{result.video}: reward {result.reward:+.4f} ({dims}) [{result.mode}, {result.backend}, {result.timings_ms['total']:.0f} ms]"]
    if result.sampling and result.sampling.get("fitted"):
        s = result.sampling
        lines.append(f"  video: {s['frames']} frames of {s['width']}x{s['height']} ({s['fps']:.3g} per second of video), "
                     "fewer and smaller than asked so that the video fits the model's context")
    if result.rationale:
        lines.append(f"  rationale: {result.rationale.strip()[:300]}")
    warning = describe_runaway(result.cot_stop, result.cot_repeating, result.num_cot_tokens)
    if warning:
        lines.append(f"  warning: {warning}")
    return lines


def _print_result(result, as_json: bool, write=None) -> None:
    """Print one result; `write` replaces print (a progress bar's write, which keeps the bar below)."""
    for line in _format_result(result, as_json):
        if write is None:
            print(line, flush=True)
        else:
            write(line)


def cmd_score(args) -> int:
    from . import progress

    progress.quiet_library_bars()
    scorer = _scorer_from_args(args)
    failed = 0
    # One video at a time, each printed as soon as it is scored; the bar (terminal only) counts them.
    bar = progress.bar(len(args.videos), "scoring", "video", progress.wanted(args.json) and len(args.videos) > 1)
    for video in args.videos:
        try:
            result = scorer.score(video, args.prompt)
        except DescoreError as exc:
            failed += 1
            bar.write(f"descore: error: {video}: {exc}", file=sys.stderr)
        else:
            _print_result(result, args.json, write=bar.write)
        bar.update(1)
    bar.close()
    return EXIT_ERROR if failed else 0


def cmd_compare(args) -> int:
    from . import progress

    progress.quiet_library_bars()
    scorer = _scorer_from_args(args)
    if progress.wanted(args.json):
        print(f"scoring 2 videos ({scorer.options.mode} mode, {scorer.backend.name}) ...", file=sys.stderr, flush=True)
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


def cmd_export(args) -> int:
    from .errors import require

    if args.format == "tensorrt":
        return _export_tensorrt(args)
    if args.precision == "fp8":
        raise InvalidInputError("--precision fp8 is for --format tensorrt; ONNX bundles are fp32, fp16, bf16, int8 or int4.")
    if args.max_batch is not None or args.max_seq is not None:
        raise InvalidInputError("--max-batch / --max-seq size TensorRT engines; use them with --format tensorrt.")
    require("torch", "export", "descore export")
    require("onnx", "export", "descore export")
    from .export.bundle import export_bundle

    _clear_out_dir(args)
    from .paths import resolve_model_dir

    export_bundle(
        resolve_model_dir(args.checkpoint),  # a training run folder means its model/
        args.out_dir,
        opset=args.opset,
        max_frames=args.max_frames,
        max_pixels=args.max_pixels,
        parity=not args.no_parity,
        parity_video=args.parity_video,
        precision=args.precision or "fp32",
        fidelity_videos=args.fidelity_videos,
        kv_cache=args.kv_cache,
        fp32_reference=not args.no_fp32_reference,
    )
    return 0


def _export_tensorrt(args) -> int:
    """`--format tensorrt`: TensorRT and a GPU are probed before anything is read or deleted."""
    from .export.tensorrt import DEFAULT_TRT_PRECISION, build_engines
    from .paths import resolve_model_dir
    from .runtime.tensorrt_runner import tensorrt_environment

    tensorrt_environment()  # MissingDependencyError / DeviceUnavailableError naming what is missing
    _clear_out_dir(args)
    build_engines(resolve_model_dir(args.checkpoint), args.out_dir, precision=args.precision or DEFAULT_TRT_PRECISION,
                  max_batch=args.max_batch, max_frames=args.max_frames, max_pixels=args.max_pixels, max_seq=args.max_seq,
                  timing_cache=args.timing_cache,
                  export_options={"opset": args.opset, "parity": not args.no_parity, "parity_video": args.parity_video,
                                  "fidelity_videos": args.fidelity_videos,
                                  "fp32_reference": not args.no_fp32_reference})
    return 0


def _clear_out_dir(args) -> None:
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"{out_dir} is a file; pass a folder to write the bundle into.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not args.overwrite:
            raise InvalidInputError(f"{out_dir} already exists and is not empty; pass --overwrite to replace the bundle in it, or choose another folder.")
        from .bundle import MANIFEST_NAME

        # Replace only what an export wrote: a folder of other files is never deleted on a flag.
        if not (out_dir / MANIFEST_NAME).is_file():
            raise InvalidInputError(f"{out_dir} holds files but no DeScore bundle ({MANIFEST_NAME}); --overwrite only replaces a bundle. Choose an empty or new folder.")
        import shutil

        shutil.rmtree(out_dir)


QUICKSTART_TRAINING = "training"  # quick_train's data, base model and run, inside the quickstart folder


def _quickstart_model(args, out: Path) -> Path:
    """The folder to score: the tiny checkpoint (torch), or its exported bundle in out/onnx (default)."""
    from .bundle import MANIFEST_NAME
    from .config import CONFIG_NAME
    from .errors import require

    bundle = out / "onnx"
    if args.backend != "torch" and (bundle / MANIFEST_NAME).is_file():
        print(f"Using the tiny model already in {out} (bundle {bundle})")
        return bundle
    if (out / CONFIG_NAME).is_file():
        print(f"Using the tiny model already in {out}")
    elif args.untrained:
        require("torch", "train", "quickstart (it builds a tiny model)")
        from .training.tiny import build_tiny_model

        print(f"Building a tiny random-weight {args.family} DeScore model in {out} ...")
        out.mkdir(parents=True, exist_ok=True)
        build_tiny_model(args.family, seed=0, out_dir=out)
    else:
        require("torch", "train", "quickstart (it trains a tiny model)")
        import shutil

        from .training.cold_start import quick_train

        print(f"Training a tiny {args.family} DeScore model on the synthetic benchmark in {out} "
              "(once; later runs reuse it): the training clips are decoded first, then 300 steps;\n"
              "1-2 minutes on 2 idle CPU cores, several times that when other work shares the cores ...")
        trained = quick_train(out / QUICKSTART_TRAINING, family=args.family, progress=True)
        shutil.copytree(trained, out, dirs_exist_ok=True)
    if args.backend == "torch":
        return out
    require("onnx", "export", "quickstart (it exports the tiny model to ONNX)")
    from .export.bundle import export_bundle

    print(f"Exporting it to ONNX in {bundle} ...")
    export_bundle(out, bundle)
    return bundle


def cmd_quickstart(args) -> int:
    from .scorer import Scorer

    out = Path(args.out) if args.out else default_cache_dir()
    model_dir = _quickstart_model(args, out)
    backend = "torch" if args.backend == "torch" else "onnxruntime"
    scorer = Scorer.from_pretrained(model_dir, backend=backend, mode=args.mode, max_new_tokens=args.max_new_tokens)
    _quickstart_samples(scorer, args.mode)
    _quickstart_synthetic_demo(scorer, out / QUICKSTART_TRAINING / "data" / "test_id.jsonl")
    kind = "a checkpoint (torch)" if backend == "torch" else "an ONNX bundle (onnxruntime, no torch needed)"
    print(f"\nThe model in {model_dir} is {kind}. Score your own videos with it:\n"
          f"  descore score VIDEO --prompt TEXT --model {model_dir} --mode fast\n"
          "(fast mode: this tiny model's CoT is a template learned from synthetic clips, see above.)")
    return 0


def _verdict(margin: float) -> str:
    return "A" if margin > 0 else "B" if margin < 0 else "same"


def _quickstart_samples(scorer, mode: str) -> None:
    """Score the shipped sample pairs and set each dimension's verdict beside the human label."""
    from importlib import resources

    from .cot import describe_runaway

    assets = resources.files("descore_sdk.assets")
    samples = json.loads(assets.joinpath("samples.json").read_text())
    dims = scorer.config.dimension_names
    print(f"\nScoring the sample videos shipped with the package ({mode} mode, backend {scorer.backend.name}).\n"
          "They are real generated videos with human labels (VideoAlign). The quickstart model is a 2-layer toy\n"
          "trained for a minute on synthetic coloured shapes: it judges sharpness, noise and motion of such\n"
          "clips (see the synthetic pairs below), not real footage. Its rewards here only show that the pipeline\n"
          "runs; expect agreement with the humans near chance. A real DeScore checkpoint is what judges these.\n")
    agree = total = 0
    for i, pair in enumerate(samples["pairs"], 1):
        with resources.as_file(assets.joinpath(pair["video_a"])) as a, resources.as_file(assets.joinpath(pair["video_b"])) as b:
            result = scorer.compare(a, b, pair["prompt"])
        print(f"Pair {i}: {pair['prompt']}")
        columns = [d for d in dims]
        print(f"  {'':<22}" + "".join(f"{d:>9}" for d in columns))
        for tag, r in (("A", result.a), ("B", result.b)):
            name = Path(pair[f"video_{tag.lower()}"]).name
            print(f"  {tag + ' ' + name:<22}" + "".join(f"{r.rewards[d]:>+9.3f}" for d in columns))
        model_row = {d: _verdict(result.a.rewards[d] - result.b.rewards[d]) for d in columns}
        print(f"  {'model prefers':<22}" + "".join(f"{model_row[d]:>9}" for d in columns))
        print(f"  {'humans prefer':<22}" + "".join(f"{pair['labels'].get(d, '-'):>9}" for d in columns))
        scored = [d for d in columns if pair["labels"].get(d) in ("A", "B")]
        hits = sum(model_row[d] == pair["labels"][d] for d in scored)
        agree, total = agree + hits, total + len(scored)
        ms = max(result.a.timings_ms["total"], result.b.timings_ms["total"])
        print(f"  P(A better) = {result.prob_a_better:.3f} (headline reward); agrees with the humans on {hits} of "
              f"{len(scored)} labelled dimension{'s' if len(scored) != 1 else ''} (ties not counted); "
              f"path {result.a.mode}/{result.b.mode}, {ms:.0f} ms")
        for tag, r in (("A", result.a), ("B", result.b)):
            warning = describe_runaway(r.cot_stop, r.cot_repeating, r.num_cot_tokens)
            if warning:
                print(f"  {tag}: warning: {warning}")
        print()
    print(f"Agreement with the human labels on the samples: {agree} of {total} (chance: half).")


def _quickstart_synthetic_demo(scorer, test_file: Path, max_pairs: int = 4) -> None:
    """Test pairs the quickstart model never trained on: a clean clip against its blurred or noisy twin
    (the quality factors a briefly trained tiny model learns best)."""
    if not test_file.is_file():
        return
    rows = [json.loads(line) for line in test_file.read_text().splitlines() if line.strip()]
    demo, clean_clips = [], set()
    for row in rows:
        factors_a, factors_b = row["meta_a"]["factors"], row["meta_b"]["factors"]
        # One pair per clean clip: the same clip against a second twin would read as a duplicated row.
        if (not factors_a and set(factors_b) & {"blur", "noise"} and row["labels"].get("TA") == "same"
                and row["video_a"] not in clean_clips):
            demo.append((row, next(iter(factors_b))))
            clean_clips.add(row["video_a"])
        if len(demo) == max_pairs:
            break
    if not demo:
        return
    # Fast mode: a 2-layer model's own CoTs are often wrong about the video, and a think-mode reward
    # follows its CoT, so the head reading prompt + video directly is the honest demo here.
    print("\nSynthetic test pairs (new scenes, not seen in training): a clean clip against its blurred or noisy twin,\n"
          "fast mode, visual-quality reward (VQ) — what this tiny model did learn:\n")
    dim = "VQ" if "VQ" in scorer.config.dimension_names else scorer.config.dimension_names[0]
    prompt_width = max(len(row["prompt"]) for row, _ in demo)
    header = f"{'prompt':<{prompt_width}}  {'twin':<6} {'clean ' + dim:>9} {'twin ' + dim:>9} {'P(clean better)':>16}"
    print(header)
    print("-" * len(header))
    wins = 0
    for row, factor in demo:
        root = test_file.parent
        pair = scorer.compare(root / row["video_a"], root / row["video_b"], row["prompt"], mode="fast")
        margin = pair.a.rewards[dim] - pair.b.rewards[dim]
        p_clean = 1.0 / (1.0 + math.exp(-margin)) if margin >= 0 else math.exp(margin) / (1.0 + math.exp(margin))
        wins += margin > 0
        print(f"{row['prompt']:<{prompt_width}}  {factor:<6} {pair.a.rewards[dim]:>+9.3f} {pair.b.rewards[dim]:>+9.3f} {p_clean:>16.3f}")
    print(f"\nThe clean clip wins {wins} of {len(demo)} on {dim}.")


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score one or more videos against a prompt")
    p.add_argument("videos", nargs="+", help="video files (any format FFmpeg reads)")
    p.add_argument("--prompt", required=True, help="the text prompt the videos were generated from")
    _add_model_options(p)
    p.set_defaults(func=cmd_score)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare two videos for one prompt")
    p.add_argument("video_a", help="first video file")
    p.add_argument("video_b", help="second video file")
    p.add_argument("--prompt", required=True, help="the text prompt both videos were generated from")
    _add_model_options(p)
    p.set_defaults(func=cmd_compare)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint as a bundle (ONNX graphs, tokenizer, manifest, parity report)")
    p.add_argument("checkpoint", help="DeScore checkpoint folder (or a training run folder: its model/); with "
                                      "--format tensorrt also an exported bundle")
    p.add_argument("out_dir", help="bundle folder to write")
    p.add_argument("--format", default="onnx", choices=["onnx", "tensorrt"],
                   help="onnx (default) or tensorrt: the ONNX bundle plus TensorRT engines built on this GPU (needs "
                        "descore-sdk[tensorrt] and an NVIDIA GPU)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--max-frames", type=int, default=None, help="most frames per video the bundle is for (default: the checkpoint's)")
    p.add_argument("--max-pixels", type=int, default=None, help="most pixels per frame (default: the checkpoint's, 448*448)")
    p.add_argument("--parity-video", default=None, help="real video for the parity check (default: the packaged sample)")
    p.add_argument("--no-parity", action="store_true", help="skip the ONNX-vs-torch parity check")
    p.add_argument("--no-fp32-reference", action="store_true",
                   help="fp16/bf16: export the half graphs straight from the checkpoint's weights, never holding an fp32 "
                        "copy of the model (half the memory; no parity check, no fidelity report)")
    p.add_argument("--overwrite", action="store_true", help="replace the bundle already in OUT_DIR (a folder of other files is refused)")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16", "fp8", "int8", "int4"],
                   help="graph precision: fp32 (default for onnx); fp16/bf16 weights and activations (fp32 norms, softmax, "
                        "rotary, reward head); int8/int4 weight-only decoder (MatMulNBits). A reduced bundle gets a "
                        "fidelity report against fp32 (fidelity.json). tensorrt: fp16 (default), bf16, fp32, int8 "
                        "(Q/DQ), fp8 (E4M3 Q/DQ; compute capability >= 8.9)")
    p.add_argument("--max-batch", type=int, default=None, help="tensorrt: most videos per decoder call (default 2)")
    p.add_argument("--max-seq", type=int, default=None,
                   help="tensorrt: most tokens per video (prompt + video + CoT; default from the frame limits and CoT budget)")
    p.add_argument("--timing-cache", default=None,
                   help="tensorrt: timing cache file to reuse and update (default: one per TensorRT version and GPU "
                        "under ~/.cache/descore/tensorrt)")
    p.add_argument("--fidelity-videos", type=int, default=None,
                   help="generated videos in the fidelity report of a reduced-precision export (default 200)")
    p.add_argument("--kv-cache", default="shared", choices=["shared", "shared-fp16", "shared-standard", "concat"],
                   help="decoder KV cache: shared (default: one buffer per layer updated in place, onnxruntime's "
                        "GroupQueryAttention), shared-fp16 (the same with an fp16 cache and attention core: the form "
                        "onnxruntime CUDA keeps on the GPU; gets a fidelity report), shared-standard (the in-place "
                        "contract in standard ONNX opset-24 ops, TensorScatter + Attention: what TensorRT >= 10.15 maps "
                        "onto its KV-cache layers) or concat (past in, grown copy out: portable to any ONNX runtime; "
                        "fp16/bf16 graphs use it unless shared-standard is asked)")
    p.set_defaults(func=cmd_export)


def _add_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="train a tiny model (no downloads), export it, and score the shipped sample videos")
    p.add_argument("--out", default=None, help=f"model folder (default: {default_cache_dir()})")
    p.add_argument("--family", default="qwen3_vl", choices=["qwen3_vl", "qwen2_5_vl", "qwen2_vl"])
    p.add_argument("--mode", default="think", choices=["think", "fast", "adaptive"])
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"],
                   help="onnxruntime (default: exports the tiny model to OUT/onnx) or torch (scores the checkpoint)")
    p.add_argument("--max-new-tokens", type=nonnegative_int, default=None,
                   help="CoT length cap (default: the model's own; the quickstart model carries what it was trained to write)")
    p.add_argument("--untrained", action="store_true", help="skip the training (1-2 min): random weights (for smoke tests)")
    p.set_defaults(func=cmd_quickstart)


def cmd_bench(args) -> int:
    from .bench import parse_batch_sizes
    from .bench_suite import format_suite, run_suite, write_plot

    from . import progress as progress_output

    show = progress_output.wanted(args.json)

    def progress(message: str) -> None:
        if show:  # terminal only, and never with --json
            print(message, file=sys.stderr, flush=True)

    if args.plot is not None and not str(args.plot).lower().endswith(".png"):
        raise InvalidInputError(f"--plot writes a PNG; give a file name ending in .png, not {args.plot!r}.")
    sizes = parse_batch_sizes(args.batch) if args.batch is not None else None
    report = run_suite(preset=args.preset, model=args.model, bundle=args.bundle, videos=args.videos, prompt=args.prompt,
                       cot_tokens=args.cot_tokens, repeats=args.repeats if args.repeats is not None else (2 if args.preset == "small" else 3),
                       batch_sizes=sizes or ((1, 8) if args.preset == "small" else (1, 2)), threads=args.threads,
                       baselines=args.baseline or (), precisions=args.precision, work_dir=args.work_dir, progress=progress)
    if args.plot is not None:
        write_plot(report, args.plot)
        progress(f"Wrote {args.plot}")
    print(json.dumps(report, indent=2) if args.json else format_suite(report))
    return 0


def _add_bench(sub) -> None:
    from .bench import DEFAULT_COT_TOKENS
    from .bench_baselines import BASELINES
    from .bench_presets import PRESETS

    p = sub.add_parser("bench", help="measure speed and memory against HF / onnxruntime-genai baselines, with the roofline")
    p.add_argument("--preset", choices=PRESETS, default="tiny",
                   help="random-weight models built once and cached: tiny (CI smoke) or small (~55 M parameters, "
                        "Qwen3-VL and Qwen2.5-VL shaped, fp32/int8/int4 bundles); ignored with --model/--bundle")
    p.add_argument("--model", default=None, help="torch checkpoint folder (the HF baseline and the ort-genai decoder are built from it)")
    p.add_argument("--bundle", default=None, help="exported bundle folder (our path)")
    p.add_argument("--baseline", action="append", choices=BASELINES, default=None,
                   help="also run this baseline, alternating with ours (repeatable): hf (transformers eager generate + "
                        "scoring forward), ort-genai (onnxruntime-genai's builder + generator, decode step)")
    p.add_argument("--precision", action="append", choices=("fp32", "int8", "int4"), default=None,
                   help="preset bundles to measure (repeatable; default all the preset has; the first one is the headline)")
    p.add_argument("--videos", nargs="+", default=None, help="videos to score (default: the packaged samples; small: + VideoAlign examples)")
    p.add_argument("--prompt", default=None, help="one prompt for all videos (default: the samples' own prompts)")
    p.add_argument("--cot-tokens", type=int, default=DEFAULT_COT_TOKENS, help="CoT tokens every think run writes (stop tokens off)")
    p.add_argument("--repeats", type=int, default=None, help="measured rounds over the videos after one warm-up (default 3; small: 2)")
    p.add_argument("--batch", "--batch-sizes", dest="batch", default=None, help="score_batch sizes, e.g. 1,8 (default 1,2; small: 1,8)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads for every engine, ≥ 1 (default: usable CPUs)")
    p.add_argument("--work-dir", default=None, help="where the preset's models are built and reused (default: $DESCORE_CACHE/bench)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also write the stage breakdown and baselines as a PNG (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys: descore_sdk/bench_suite.py)")
    p.set_defaults(func=cmd_bench)


def cmd_convert(args) -> int:
    from .errors import require

    require("torch", "train", "descore convert")
    from .training.convert import convert

    kwargs = dict(prompt_template_file=args.prompt_template_file, overwrite=args.overwrite)
    if args.source == "descore":
        kwargs.update(head_file=args.head, thinking=args.thinking, two_resolutions=args.two_resolutions)
    else:
        kwargs.update(base=args.base, step=args.step)
    out = convert(args.source, args.src, args.out, **kwargs)
    print(f"wrote {out}; export it with: descore export {out} BUNDLE_DIR")
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert the authors' DeScore or VideoAlign (VideoReward) checkpoint into an SDK checkpoint")
    p.add_argument("--from", dest="source", required=True, choices=["descore", "videoalign"],
                   help="descore: HF Qwen-VL folder with <Reward> + rm_head.pth; videoalign: model_config.json + checkpoint-N/")
    p.add_argument("src", help="the authors' checkpoint folder")
    p.add_argument("out", help="SDK checkpoint folder to write")
    p.add_argument("--prompt-template-file", default=None,
                   help="the authors' prompt template text (DeScore: inference.py's TEMP with [insert prompt here] and "
                        "<video>; VideoAlign: prompt_template.py's DETAILED_PROMPT_WITH_SPECIAL_TOKEN with {text_prompt})")
    p.add_argument("--head", default=None, help="descore: the head file (default SRC/rm_head.pth)")
    p.add_argument("--thinking", action="store_true", help="descore: a Thinking backbone (score only the text after </think>)")
    p.add_argument("--two-resolutions", action="store_true",
                   help="descore: write the CoT at qwen-vl-utils' default resolution and score at <= 200,704 pixels, as the "
                        "authors' inference.py (two vision encodes); default: one set of frames for both passes")
    p.add_argument("--base", default=None, help="videoalign: the local Qwen2-VL base folder the checkpoint was trained from")
    p.add_argument("--step", type=int, default=None, help="videoalign: which checkpoint-N (default: the latest)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_convert)


def _add_training(sub) -> None:
    """`data synth`, `train cold-start|jrm|rl` and `eval` (their module imports torch only when run)."""
    from .training.cli import add_subcommands

    add_subcommands(sub)


def _add_scale(sub) -> None:
    """`serve` and `score-dataset` (descore_sdk.serve_cli; Ray is imported only when they run)."""
    from .serve_cli import add_subcommands

    add_subcommands(sub)


SUBCOMMANDS = [_add_score, _add_compare, _add_export, _add_convert, _add_quickstart, _add_bench, _add_training, _add_scale]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="descore",
        description="DeScore video reward models: score, compare, export, convert, serve, score-dataset, quickstart, "
                    "bench, data synth, train pretrain|cold-start|rl|jrm|benchmark, eval.")
    parser.add_argument("--version", action="version", version=f"descore-sdk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


# Arguments that name files or folders. A quoted "~/..." reaches us unexpanded (the shell only
# expands a bare ~), so it is expanded here for every command.
PATH_ARGUMENTS = ("model", "bundle", "checkpoint", "out_dir", "out", "data", "calib", "parity_video", "work_dir",
                  "videos", "video_a", "video_b")


def expand_user_paths(args: argparse.Namespace) -> None:
    for name in PATH_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    expand_user_paths(args)
    args.extra_args = extra  # for subcommands that parse their own options (train rl)
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
