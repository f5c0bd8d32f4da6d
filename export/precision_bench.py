"""Decode speed and fidelity of each export precision, on a random model bigger than the test models.

    python -m descore_sdk.export.precision_bench --out /tmp/precision-bench --hidden 512 --layers 8

Builds a random-weight qwen3_vl DeScore model (the tiny test architecture widened: `--hidden`, `--layers`,
`--vocab`; weights at O(1) activation scale so rewards spread), exports it at fp32, int8, int4 and fp16
(each with its fidelity report), adds int8 / int4 decoders quantized with MatMulNBits' default
accuracy level (unset = 0) for comparison (with their own fidelity reports), then times the SDK's own Scorer in think mode: the same
`--cot-tokens` greedy CoT tokens per run (stop tokens off), decode ms/token = the decode loop's
"generate" time / (CoT tokens + `<Reward>`). Variants run alternately (one call each per round, order
rotated every round) so a load change on a shared machine hits all of them alike. Prints a table and
writes `<out>/precision_bench.json`. `--vision`: only `bench_vision` (weight-only quantization of the
vision encoder). A benchmark, not a test: numbers depend on the CPU and its load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

PRECISIONS = ("fp32", "int8", "int4", "fp16")
PROMPT = "a red circle moving left to right on a gray background"


def build_model(hidden: int, layers: int, vocab: int, seed: int = 0):
    """A random qwen3_vl DeScoreModel: the tiny config with a wider, deeper text model (head_dim 64)."""
    import torch
    import transformers

    from descore_sdk.training.model import BACKBONE_CLASSES, DeScoreModel, descore_config_for
    from descore_sdk.training.tiny import tiny_backbone_config
    from descore_sdk.training.tokenizer import build_tokenizer

    config = tiny_backbone_config("qwen3_vl", vocab_size=vocab)
    text = config.text_config
    heads = max(1, hidden // 64)
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = hidden, int(hidden * 2.75), layers
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = heads, max(1, heads // 2), 64
    text.rope_parameters = {**text.rope_parameters, "mrope_section": [12, 10, 10]}  # sums to head_dim / 2
    text.layer_types = ["full_attention"] * layers
    config.vision_config.out_hidden_size = hidden
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = getattr(transformers, BACKBONE_CLASSES["qwen3_vl"])(config).eval()
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():  # O(1) activations (default init makes every output ~0.02)
            for name, param in backbone.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(1.0 + 0.1 * noise if param.ndim == 1 and name.endswith("weight")
                            else 0.1 * noise if param.ndim == 1 else noise / param[0].numel() ** 0.5)
    model = DeScoreModel(backbone, build_tokenizer(family="qwen3_vl"), descore_config_for(backbone.config), head_seed=seed)
    return model.eval()


def export_all(model, out: Path, precisions, fidelity_videos: int) -> dict[str, Path]:
    from descore_sdk.bundle import file_record, read_manifest, write_manifest
    from descore_sdk.export.bundle import export_bundle
    from descore_sdk.export.precision import fidelity_report, fidelity_summary, format_fidelity, quantize_graph

    bundles = {}
    for precision in precisions:
        folder = out / precision
        if not (folder / "manifest.json").is_file():
            export_bundle(model, folder, max_frames=4, max_pixels=128 * 128, precision=precision,
                          fidelity_videos=fidelity_videos)
        bundles[precision] = folder
    # The same int8 / int4 decoders at MatMulNBits' default accuracy level, for the speed comparison.
    for precision in [p for p in ("int8", "int4") if p in bundles]:
        folder = out / f"{precision}-acc0"
        if not (folder / "manifest.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(bundles[precision], folder)
            quantize_graph(bundles["fp32"] / "decoder.onnx", folder / "decoder.onnx", int(precision[3:]), accuracy_level=0)
            manifest = read_manifest(folder)
            manifest["files"]["decoder.onnx"] = file_record(folder, "decoder.onnx")
            manifest["precision"]["accuracy_level"] = 0
            write_manifest(folder, manifest)
            # Its own fidelity (the copied report was the accuracy_level-4 graph's): weight error alone.
            report = {"precision": f"{precision} (accuracy_level 0)",
                      **fidelity_report(model, folder, bundles["fp32"], num_videos=fidelity_videos, print_table=False)}
            print(format_fidelity(report), flush=True)
            (folder / "fidelity.json").write_text(json.dumps(report, indent=2) + "\n")
            manifest["files"]["fidelity.json"] = file_record(folder, "fidelity.json")
            manifest["fidelity"] = fidelity_summary(report)
            write_manifest(folder, manifest)
        bundles[f"{precision}-acc0"] = folder
    return bundles


def time_decode(bundles: dict[str, Path], video, cot_tokens: int, rounds: int, threads: int) -> dict:
    from descore_sdk import Scorer

    scorers = {name: Scorer.from_pretrained(path, backend_options={"threads": threads}, max_frames=4,
                                            stop_tokens=(), max_new_tokens=cot_tokens)
               for name, path in bundles.items()}
    for scorer in scorers.values():  # warm-up
        scorer.score(video, PROMPT)
    samples = {name: [] for name in scorers}
    names = list(scorers)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            result = scorers[name].score(video, PROMPT)
            samples[name].append(result.timings_ms["generate"] / (result.num_cot_tokens + 1))
    return {name: {"median_ms_per_token": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v)}
            for name, v in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--fidelity-videos", type=int, default=200)
    parser.add_argument("--cot-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vision", action="store_true", help="only the vision-encoder comparison (bench_vision)")
    args = parser.parse_args(argv)
    if args.vision:
        args.out.mkdir(parents=True, exist_ok=True)
        report = bench_vision(args.out, args.rounds, args.threads)
        (args.out / "vision_bench.json").write_text(json.dumps(report, indent=2) + "\n")
        scale = report.pop("reference_mean_abs")
        print(f"vision encoder (width 512, 4 blocks, 1,568 patches; {args.threads} threads); mean |embedding| {scale:.3f}")
        for name, r in report.items():
            print(f"  {name:<5} {r['median_ms']:>8.1f} ms  {report['fp32']['median_ms'] / r['median_ms']:.2f}x  "
                  f"max |Δ| {r['max_abs_diff']:.3f}")
        return 0
    if "fp32" not in args.precisions:
        parser.error("--precisions must include fp32 (the reference)")

    import onnxruntime

    from descore_sdk.export.precision import synthetic_pairs

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = build_model(args.hidden, args.layers, args.vocab)
    params = sum(p.numel() for p in model.backbone.model.language_model.parameters())
    bundles = export_all(model, args.out, args.precisions, args.fidelity_videos)
    video = synthetic_pairs(1, size=128, num_frames=4)[0][0]
    speed = time_decode(bundles, video, args.cot_tokens, args.rounds, args.threads)
    fidelity = {name: read_fidelity(path) for name, path in bundles.items()}
    report = {"model": {"family": "qwen3_vl", "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
                        "text_params": params},
              "settings": {"cot_tokens": args.cot_tokens, "rounds": args.rounds, "threads": args.threads,
                           "onnxruntime": onnxruntime.__version__},
              "decode": speed, "fidelity": fidelity, "seconds": round(time.perf_counter() - start, 1)}
    (args.out / "precision_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    base = speed["fp32"]["median_ms_per_token"]
    print(f"qwen3_vl random model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab} "
          f"({params / 1e6:.1f} M text parameters); {args.threads} threads, onnxruntime {onnxruntime.__version__}")
    print(f"  {'graphs':<10} {'ms/token':>9} {'vs fp32':>8} {'size MB':>8}  fidelity (Spearman / pair agreement / max |Δr| samples)")
    for name, s in speed.items():
        size = (bundles[name] / "decoder.onnx").stat().st_size / 1e6
        f = fidelity[name]
        text = "reference" if name == "fp32" else (
            f"{f['reward_spearman']:.4f} / {f['pair_agreement']:.3f} / {f['max_abs_reward_diff_samples']:.2e}" if f else "-")
        print(f"  {name:<10} {s['median_ms_per_token']:>9.2f} {base / s['median_ms_per_token']:>7.2f}x {size:>8.1f}  {text}")
    return 0


def bench_vision(out: Path, rounds: int, threads: int) -> dict:
    """Does weight-only quantization pay in the vision encoder? A random qwen3_vl tower widened to 512
    (4 blocks, MLP 2048), one 2-step 448×448 video (1,568 patches): vision.onnx at fp32 and with its
    MatMuls as MatMulNBits int8 / int4 (accuracy_level 4), timed alternately, and max |Δ| of the visual
    embeddings against fp32."""
    import numpy as np
    import torch
    import transformers

    from descore_sdk.export.onnx_export import export_onnx
    from descore_sdk.export.onnx_runner import cpu_session, run_vision
    from descore_sdk.export.precision import quantize_graph
    from descore_sdk.training.model import BACKBONE_CLASSES, DeScoreModel, descore_config_for
    from descore_sdk.training.tiny import tiny_backbone_config
    from descore_sdk.training.tokenizer import build_tokenizer

    config = tiny_backbone_config("qwen3_vl")
    vision = config.vision_config
    vision.hidden_size, vision.intermediate_size, vision.num_heads, vision.depth = 512, 2048, 8, 4
    vision.deepstack_visual_indexes = [1, 2]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = getattr(transformers, BACKBONE_CLASSES["qwen3_vl"])(config).eval()
        with torch.no_grad():
            for param in backbone.parameters():
                if param.ndim > 1:
                    param.copy_(torch.randn(param.shape) / param[0].numel() ** 0.5)
    model = DeScoreModel(backbone, build_tokenizer(family="qwen3_vl"), descore_config_for(backbone.config), head_seed=0)
    folder = out / "vision"
    graphs = export_onnx(model.eval(), folder, max_frames=4, max_pixels=448 * 448)
    files = {"fp32": folder / "vision.onnx"}
    for bits in (8, 4):
        files[f"int{bits}"] = folder / f"vision_int{bits}.onnx"
        quantize_graph(files["fp32"], files[f"int{bits}"], bits)
    grid = (2, 28, 28)
    patches = np.random.default_rng(0).standard_normal((int(np.prod(grid)), 3 * 2 * 16 * 16)).astype(np.float32)
    sessions = {name: cpu_session(path, threads=threads) for name, path in files.items()}
    reference = run_vision(sessions["fp32"], graphs.vision, patches, grid)["visual_embeds"]
    result = {name: {"max_abs_diff": float(np.abs(run_vision(s, graphs.vision, patches, grid)["visual_embeds"] - reference).max()),
                     "ms": []} for name, s in sessions.items()}
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            run_vision(session, graphs.vision, patches, grid)
            result[name]["ms"].append((time.perf_counter() - start) * 1e3)
    for name in result:
        result[name]["median_ms"] = statistics.median(result[name].pop("ms"))
    result["reference_mean_abs"] = float(np.abs(reference).mean())
    return result


def read_fidelity(folder: Path) -> dict | None:
    manifest = json.loads((folder / "manifest.json").read_text())
    return manifest.get("fidelity")


if __name__ == "__main__":
    raise SystemExit(main())
