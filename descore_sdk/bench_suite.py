"""`descore bench` (schema "descore-bench/2"): this SDK's onnxruntime path against what a user would
otherwise run, per stage, per precision, with the memory-bandwidth roofline, all measured in ONE run.

    descore bench                                     # --preset tiny: the CI smoke
    descore bench --preset small --baseline hf --baseline ort-genai --json
    descore bench --model CKPT --bundle DIR --baseline hf --plot bench.png
    report = run_suite(preset="small", baselines=("hf", "ort-genai"))    # the same, as a dict

Order of one run (per model of the preset; `small` has a Qwen3-VL- and a Qwen2.5-VL-shaped one):
1. For each precision bundle (fp32 first; int8 / int4 when the preset has them): load our Scorer, one
   warm-up call per mode, then the measured loop, repeats × videos, alternating: our think call, the HF
   baseline's think call (fp32 only: it runs the fp32 checkpoint), one onnxruntime-genai generation at
   the same context length and the same number of decode steps. All think calls write exactly
   `cot_tokens` CoT tokens (greedy, stop tokens off). Fast mode and score_batch throughput run on
   fp32 before the HF baseline loads (so the peak RSS reported for our path excludes torch).
2. `import descore_sdk` time (fresh interpreters), the memory read bandwidth probe (bench_roofline)
   and the video-path probe (bench_video), after the models so their arrays are not in the models'
   peak RSS; then the roofline of each precision's decode step at the measured context.

JSON keys (stable; new keys may be added). A stats object is {median, p50, p90, p95, min, max, n}:
    schema, preset          "descore-bench/2"; "tiny" | "small" | null (--model/--bundle given)
    settings                videos, prompts, cot_tokens, repeats, warmup (1), batch_sizes, threads,
                            baselines, precisions, think_equal_work
    environment             cpu_count, usable_cpus, threads, omp_num_threads, python, platform, versions
    import_ms               stats of `python -c "import descore_sdk"` minus `python -c "pass"` (ms)
    import_scorer_ms        the same for SCORER_IMPORT (the Scorer + onnxruntime backend, what scoring
                            a bundle imports; `import descore_sdk` alone is lazy)
    bandwidth               gb_per_s (best), median_gb_per_s, threads, bytes, repeats, method
    video_path              null (video_probe=False) or bench_video.measure_video_path: ours_ms,
                            ours_swscale_ms, all_frames_rgb_ms, needed_packets_ms (stats), clip, frames_sampled,
                            frames_decoded_needed, all_frames_rgb_over_ours, ours_over_needed_packets,
                            all_frames_rgb_over_ours_swscale, ours_swscale_over_needed_packets
    primary                 the family whose numbers are repeated at the top level
    models                  {family: M}; the top level also holds M's keys for the primary family:
    M.parameters            {total, text, vision} of the checkpoint (null when only a bundle was given)
    M.e2e_ms                {think, fast}: stats of Scorer.score per video, fp32 (our path)
    M.stages_ms             {decode, preprocess, vision, prefill, generate, decode_per_token, head}:
                            stats per think call, fp32. decode = video decode + frame sampling;
                            preprocess = resize, patches, prompt; generate = CoT steps + <Reward> step;
                            decode_per_token = generate ÷ (cot_tokens + 1); head = the <Reward> step
                            (the reward head is inside the decoder graph: one decode step)
    M.precisions            {precision: {e2e_ms {think}, decode {ms_per_token (stats), context, roofline
                            {bytes_per_step, weight_bytes, kv_bytes, other_bytes, bandwidth_gb_per_s,
                            roofline_ms_per_token, achieved_gb_per_s, roofline_fraction}}, fidelity
                            (the bundle manifest's summary vs fp32, or null), bundle_size_mb}}
    M.decode                {ms_per_token, roofline_fraction, context} of fp32 (medians)
    M.baseline              {"hf": B, "ort-genai": B}; B is {"available": false, "reason"} or:
                            hf: available, e2e_ms {think: stats}, stages_ms {decode, preprocess,
                              generate (vision + prefill + CoT), score (the second full forward)}
                            ort-genai: available, e2e_ms (null: decode step only), decode {precision:
                              {ms_per_token (stats), prefill_ms (stats), context, steps, roofline}}
    M.speedup               think_e2e_vs_hf (HF median ÷ ours, per precision: {fp32, int8, int4}),
                            decode_vs_ort_genai (ours ms/token ÷ genai ms/token, per precision;
                            < 1 means we are faster), fast_over_think (ours, fp32)
    M.batch                 [{batch_size, videos_per_s (stats), decode_tokens_per_s, speedup_vs_batch_1,
                            decode_tokens_speedup_vs_batch_1, results_returned}] (fp32, think mode)
    M.memory                peak_rss_mb_ours (process peak after our fp32 phase, before torch; first
                            model only, later ones inherit the process peak), bundle_size_mb
    memory                  peak_rss_mb (the whole run), peak_rss_source
    notes                   [str]: what limits how to read the numbers
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .bench import EQUAL_WORK, _check_count, _environment, _ratio, _resolve_videos, _usable_cpus, folder_size_mb, peak_rss_mb
from .bench_baselines import GenaiDecoder, check_baselines, genai_weight_bytes, hf_unavailable, load_hf_scorer
from .bench_presets import (PRESET_PRECISIONS, check_preset, ensure_genai_model, ensure_models, genai_available,
                            preset_videos)
from .bench_roofline import decoder_kv_shape, graph_weight_bytes, kv_cache_bytes, measure_bandwidth, roofline
from .errors import InvalidInputError, MissingDependencyError, ModelLoadError

SCHEMA = "descore-bench/2"
# What scoring with a bundle imports (the package itself is lazy): the Scorer and the onnxruntime backend.
SCORER_IMPORT = "from descore_sdk import Scorer; import descore_sdk.runtime.onnx_backend"
SMALL_DEFAULT_VIDEOS = 4  # 2 packaged + 2 VideoAlign examples: keeps a small run in ~10 minutes on 2 cores


def stats(samples: Sequence[float]) -> dict:
    values = np.asarray(list(samples), dtype=np.float64)
    if values.size == 0:
        raise ValueError("stats() needs at least one sample")
    return {"median": float(np.median(values)), "p50": float(np.percentile(values, 50)),
            "p90": float(np.percentile(values, 90)), "p95": float(np.percentile(values, 95)),
            "min": float(values.min()), "max": float(values.max()), "n": int(values.size)}


def measure_import_ms(repeats: int = 3, code: str = "import descore_sdk") -> dict:
    """`code` (default `import descore_sdk`) in fresh interpreters, minus the interpreter's own start-up."""
    def timed(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        return (time.perf_counter() - t0) * 1e3

    base = [timed("pass") for _ in range(repeats)]
    full = [timed(code) for _ in range(repeats)]
    return stats([f - float(np.median(base)) for f in full])


# -- one model -------------------------------------------------------------------------------------------
def _load_ours(bundle: Path, cot_tokens: int, threads: int):
    from .scorer import Scorer

    return Scorer.from_pretrained(bundle, backend="onnxruntime", backend_options={"threads": threads}, mode="think",
                                  max_new_tokens=cot_tokens, stop_tokens=(), temperature=0.0)


def _manifest(bundle: Path) -> dict:
    return json.loads((Path(bundle) / "manifest.json").read_text())


def _batch(scorer, videos, prompts, sizes, repeats, cot_tokens, say) -> list[dict]:
    count = max(len(videos), max(sizes))
    items = [videos[i % len(videos)] for i in range(count)]
    texts = [prompts[i % len(prompts)] for i in range(count)]
    rows = []
    for size in sorted(set(sizes) | {1}):
        say(f"    score_batch, batch size {size} ({count} videos per run) ...")
        rates, token_rates, returned = [], [], set()
        for _ in range(repeats):
            t0 = time.perf_counter()
            results = scorer.score_batch(items, texts, batch_size=size)
            rates.append(count / (time.perf_counter() - t0))
            returned.add(len(results))
            # stage timings of a batched call are the group's: one per group of `size` videos
            generate_ms = sum(results[i].timings_ms.get("generate", 0.0) for i in range(0, count, size))
            tokens = sum(r.num_cot_tokens + 1 for r in results)
            token_rates.append(tokens / (generate_ms / 1e3) if generate_ms else float("nan"))
        rows.append({"batch_size": size, "videos_per_s": stats(rates), "decode_tokens_per_s": float(np.median(token_rates)),
                     "results_returned": min(returned)})
    for row in rows:
        row["speedup_vs_batch_1"] = _ratio(row["videos_per_s"]["median"], rows[0]["videos_per_s"]["median"])
        row["decode_tokens_speedup_vs_batch_1"] = _ratio(row["decode_tokens_per_s"], rows[0]["decode_tokens_per_s"])
    return rows


def _parameters(checkpoint: Path | None) -> dict | None:
    if checkpoint is None:
        return None
    from safetensors import safe_open

    total = vision = 0
    for file in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as handle:
            for key in handle.keys():
                n = int(np.prod(handle.get_slice(key).get_shape()))
                total += n
                vision += n if ".visual." in key else 0
    return {"total": total, "text": total - vision, "vision": vision}


def _measure_model(family: str, entry: dict, settings: dict, say, first: bool) -> dict:
    videos, prompts, cot, repeats, threads = (settings[k] for k in ("videos", "prompts", "cot_tokens", "repeats", "threads"))
    baselines = settings["baselines"]
    checkpoint, bundles = entry["checkpoint"], entry["bundles"]
    notes = []
    baseline = {}
    hf = None
    if "hf" in baselines:
        reason = hf_unavailable() or (None if checkpoint is not None else "no checkpoint (--model) to run it on")
        baseline["hf"] = {"available": False, "reason": reason} if reason else None
    if "ort-genai" in baselines:
        reason = genai_available() or (None if checkpoint is not None else "no checkpoint (--model) to build it from")
        baseline["ort-genai"] = {"available": False, "reason": reason} if reason else None
    genai_dirs, genai_results = {}, {}

    precisions = {}
    memory = {}
    hf_think, hf_stage_samples = [], {}
    e2e, stages_ms, batch = None, None, None
    for index, (precision, bundle) in enumerate(bundles.items()):
        say(f"  {family} {precision}: loading our bundle {bundle} ...")
        ours = _load_ours(bundle, cot, threads)
        primary = index == 0
        manifest = _manifest(bundle)
        ours.score(videos[0], prompts[0], mode="fast")
        ours.score(videos[0], prompts[0], mode="think")  # warm-up
        if primary:
            say(f"  {family} {precision}: fast mode ...")
            fast = [_timed(ours, v, p, "fast")[0] for _ in range(repeats) for v, p in zip(videos, prompts)]
            batch = _batch(ours, videos, prompts, settings["batch_sizes"], repeats, cot, say)
            memory = {"peak_rss_mb_ours": peak_rss_mb()[0] if first else None}
            if baseline.get("hf", 0) is None:
                say(f"  {family}: loading the HF eager baseline on {checkpoint} ...")
                hf = load_hf_scorer(checkpoint, cot, threads)
                hf.score(videos[0], prompts[0], mode="think")  # warm-up
        genai = None
        if baseline.get("ort-genai", 0) is None:
            try:
                genai_dirs[precision] = ensure_genai_model(checkpoint, precision, say)
                genai = GenaiDecoder(genai_dirs[precision], threads)
            except ModelLoadError as error:  # one precision failing to build must not end the run
                genai_results[precision] = {"available": False, "reason": str(error)}
        say(f"  {family} {precision}: think mode, {repeats} × {len(videos)} videos, alternating with the baselines ...")
        think, results, genai_runs = [], [], []
        stage_samples: dict[str, list] = {}
        for r in range(repeats):
            for video, prompt in zip(videos, prompts):
                wall, result = _timed(ours, video, prompt, "think")
                think.append(wall), results.append(result)
                for key, value in result.timings_ms.items():
                    stage_samples.setdefault(key, []).append(value)
                if hf is not None and primary:
                    wall_hf, result_hf = _timed(hf, video, prompt, "think")
                    hf_think.append(wall_hf)
                    for key, value in result_hf.timings_ms.items():
                        hf_stage_samples.setdefault(key, []).append(value)
                if genai is not None:
                    run = genai.run(context=result.num_prompt_tokens, tokens=cot + 1)
                    genai_runs.append(run)
        written = sorted({res.num_cot_tokens for res in results})
        if written != [cot]:
            notes.append(f"{precision}: think runs wrote {written} CoT tokens, not {cot} (context too short?).")
        per_token = [g / (cot + 1) for g in stage_samples.get("generate", [])]
        context = float(np.median([res.num_prompt_tokens for res in results])) + cot / 2
        shape = decoder_kv_shape(manifest)
        weights = graph_weight_bytes(Path(bundle) / manifest["graphs"]["decoder"]["file"])
        kv = kv_cache_bytes(layers=shape["layers"], kv_heads=shape["kv_heads"], head_dim=shape["head_dim"], context=int(context))
        ms_token = float(np.median(per_token)) if per_token else None
        roof = dict(weight_bytes=weights, kv_bytes=kv, other_bytes=shape["hidden"] * 4, ms_per_token=ms_token)
        if weights is None:
            notes.append("onnx is not installed: no bytes-per-step, so no roofline (pip install 'descore-sdk[export]').")
        precisions[precision] = {
            "e2e_ms": {"think": stats(think)},
            "decode": {"ms_per_token": stats(per_token) if per_token else None, "context": context, "roofline": roof},
            "cot_tokens_written": written,
            "fidelity": manifest.get("fidelity"),
            "bundle_size_mb": folder_size_mb(bundle),
            "bundle_path": str(bundle),
        }
        if genai_runs:
            g_tokens = [x for run in genai_runs for x in run["ms_per_token"]]
            g_prefill = [x for run in genai_runs for x in run["prefill_ms"]]
            g_weights = genai_weight_bytes(genai_dirs[precision])
            g_ms = float(np.median(g_tokens))
            genai_results[precision] = {
                "ms_per_token": stats(g_tokens), "prefill_ms": stats(g_prefill), "context": context,
                "steps": sorted({s for run in genai_runs for s in run["steps"]}),
                "roofline": dict(weight_bytes=g_weights, kv_bytes=kv, other_bytes=shape["hidden"] * 4, ms_per_token=g_ms),
            }
        if primary:
            e2e = {"think": stats(think), "fast": stats(fast)}
            stages_ms = {key: stats(stage_samples[key]) for key in ("decode", "preprocess", "vision", "prefill", "generate")
                         if key in stage_samples}
            if per_token:
                stages_ms["decode_per_token"] = stats(per_token)
                stages_ms["head"] = stats(per_token)
            memory["bundle_size_mb"] = folder_size_mb(bundle)
        del ours

    if baseline.get("hf", 0) is None:
        baseline["hf"] = {"available": True, "e2e_ms": {"think": stats(hf_think)},
                          "stages_ms": {k: stats(v) for k, v in hf_stage_samples.items() if k != "total"},
                          "attn_implementation": "eager", "precision": "fp32"}
        del hf
    if "ort-genai" in baselines and baseline["ort-genai"] is None:
        baseline["ort-genai"] = {"available": True, "e2e_ms": None, "decode": genai_results,
                                 "note": "decode step only (onnxruntime-genai has no video path)"}

    hf_median = baseline["hf"]["e2e_ms"]["think"]["median"] if baseline.get("hf", {}).get("available") else None
    genai_ok = baseline.get("ort-genai", {}).get("available")
    speedup = {
        "think_e2e_vs_hf": {p: _ratio(hf_median, v["e2e_ms"]["think"]["median"]) for p, v in precisions.items()},
        "decode_vs_ort_genai": {p: _ratio(v["decode"]["ms_per_token"]["median"] if v["decode"]["ms_per_token"] else None,
                                          genai_results[p]["ms_per_token"]["median"])
                                for p, v in precisions.items() if genai_ok and "ms_per_token" in genai_results.get(p, {})},
        "fast_over_think": _ratio(e2e["fast"]["median"], e2e["think"]["median"]),
    }
    first_precision = next(iter(precisions.values()))
    return {
        "parameters": _parameters(checkpoint),
        "e2e_ms": e2e,
        "stages_ms": stages_ms,
        "precisions": precisions,
        "decode": {"ms_per_token": first_precision["decode"]["ms_per_token"]["median"] if first_precision["decode"]["ms_per_token"] else None,
                   "roofline_fraction": None,  # filled by _fill_rooflines once the bandwidth is measured
                   "context": first_precision["decode"]["context"], "precision": next(iter(precisions))},
        "baseline": baseline,
        "speedup": speedup,
        "batch": batch,
        "memory": memory,
        "notes": notes,
    }


def _fill_rooflines(models: dict, bandwidth: float) -> None:
    """Turn the recorded bytes and ms/token into roofline entries at the measured bandwidth."""
    def fill(inputs):
        if not inputs or inputs.get("weight_bytes") is None:
            return None
        return roofline(weight_bytes=inputs["weight_bytes"], kv_bytes=inputs["kv_bytes"], other_bytes=inputs["other_bytes"],
                        ms_per_token=inputs["ms_per_token"], bandwidth_gb_per_s=bandwidth)

    for m in models.values():
        for precision in m["precisions"].values():
            precision["decode"]["roofline"] = fill(precision["decode"]["roofline"])
        genai = m["baseline"].get("ort-genai")
        if genai and genai.get("available"):
            for entry in genai["decode"].values():
                if "roofline" in entry:
                    entry["roofline"] = fill(entry["roofline"])
        first = next(iter(m["precisions"].values()))["decode"]["roofline"]
        m["decode"]["roofline_fraction"] = first["roofline_fraction"] if first else None


def _timed(scorer, video, prompt, mode):
    t0 = time.perf_counter()
    result = scorer.score(video, prompt, mode=mode)
    return (time.perf_counter() - t0) * 1e3, result


# -- the run ---------------------------------------------------------------------------------------------
def run_suite(
    *,
    preset: str | None = "tiny",
    model=None,
    bundle=None,
    videos=None,
    prompt: str | None = None,
    cot_tokens: int = 64,
    repeats: int = 2,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int | None = None,
    baselines: Sequence[str] = (),
    precisions: Sequence[str] | None = None,
    work_dir=None,
    bandwidth_bytes: int = 1 << 30,
    video_probe: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the benchmark (module docstring) and return the report. With model/bundle given, those are
    measured (preset ignored); else the preset's models are built once (cached) and measured.
    work_dir: where the preset's models live (default: the cache, see bench_presets)."""
    say = progress or (lambda message: None)
    cot_tokens = _check_count("cot_tokens", cot_tokens, 1)
    repeats = _check_count("repeats", repeats, 1)
    batch_sizes = tuple(_check_count("batch size", b, 1) for b in batch_sizes)
    if not batch_sizes:
        raise InvalidInputError("batch_sizes is empty; give at least one batch size, e.g. 1,8.")
    threads = _usable_cpus() if threads is None else _check_count("threads", threads, 1)
    baselines = check_baselines(baselines)
    from .bench import _check_model_folders

    model, bundle = _check_model_folders(model, bundle)
    if model is None and bundle is None:
        check_preset(preset or "tiny")
        preset = preset or "tiny"
    else:
        preset = None
        if bundle is None:
            raise InvalidInputError("--model without --bundle: our path runs the exported bundle; pass --bundle too "
                                    "(or --preset to build both).")
    notes = []
    with ExitStack() as stack:
        paths, texts = _resolve_videos(videos, prompt, stack)
        if preset == "small" and not videos:
            extra = preset_videos(preset) or []
            half = SMALL_DEFAULT_VIDEOS // 2
            paths, texts = paths[:half], texts[:half]
            for path, text in extra[:half]:
                paths.append(path), texts.append(prompt or text)
        if preset is not None:
            if precisions:
                for p in precisions:
                    if p not in PRESET_PRECISIONS[preset]:
                        raise InvalidInputError(f"--precision {p} is not built for --preset {preset}; use {', '.join(PRESET_PRECISIONS[preset])}.")
            folder = Path(work_dir) if work_dir is not None else None
            entries = ensure_models(preset, say, folder=folder, precisions=tuple(precisions) if precisions else None)
        else:
            family = _manifest(bundle)["family"]
            precision = (_manifest(bundle).get("precision") or {}).get("requested", "fp32")
            entries = {family: {"checkpoint": model, "bundles": {precision: bundle}}}
        settings = {"videos": paths, "prompts": texts, "cot_tokens": cot_tokens, "repeats": repeats,
                    "batch_sizes": batch_sizes, "threads": threads, "baselines": baselines}
        models = {}
        for i, (family, entry) in enumerate(entries.items()):
            say(f"Benchmarking {family} ...")
            models[family] = _measure_model(family, entry, settings, say, first=i == 0)
        # After the models (their peak RSS must not include the probe's array): import time, bandwidth, video path.
        say("Measuring `import descore_sdk` and the memory read bandwidth ...")
        import_ms = measure_import_ms()
        import_scorer_ms = measure_import_ms(code=SCORER_IMPORT)
        bandwidth = measure_bandwidth(threads, size_bytes=bandwidth_bytes)
        video_path = None
        if video_probe:
            from .bench_video import measure_video_path
            from .config import DescoreConfig

            say("Measuring the video path on a generated 5 s 720p h264 clip ...")
            first_bundle = next(iter(next(iter(entries.values()))["bundles"].values()))
            probe_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="descore-bench-video-")))
            video_path = measure_video_path(DescoreConfig.load(first_bundle), probe_dir, repeats=max(3, repeats))
        _fill_rooflines(models, bandwidth["gb_per_s"])
        primary = next(iter(models))
        if _usable_cpus() > 0 and threads < _usable_cpus():
            notes.append(f"Ran with {threads} threads, fewer than the {_usable_cpus()} usable CPUs.")
        notes.append("Random-weight models: the CoT is gibberish; speed, not quality, is measured.")
        notes.append("score_batch sizes get no separate warm-up (the sessions are warm from the latency runs).")
        peak, source = peak_rss_mb()
        report = {
            "schema": SCHEMA,
            "preset": preset,
            "settings": {"videos": [str(p) for p in paths], "prompts": list(texts), "cot_tokens": cot_tokens,
                         "repeats": repeats, "warmup": 1, "batch_sizes": list(batch_sizes), "threads": threads,
                         "baselines": list(baselines), "precisions": list(next(iter(entries.values()))["bundles"]),
                         "think_equal_work": EQUAL_WORK},
            "environment": _environment(threads),
            "import_ms": import_ms,
            "import_scorer_ms": import_scorer_ms,
            "bandwidth": bandwidth,
            "video_path": video_path,
            "primary": primary,
            "models": models,
            "memory": {"peak_rss_mb": peak, "peak_rss_source": source},
            "notes": notes,
        }
        for key in ("e2e_ms", "stages_ms", "baseline", "speedup", "decode", "batch"):
            report[key] = models[primary][key]
        return report


# -- human table and plot --------------------------------------------------------------------------------
def _f(value, fmt="{:.1f}") -> str:
    return fmt.format(value) if value is not None else "-"


def format_suite(report: dict) -> str:
    s, env = report["settings"], report["environment"]
    out = [f"descore bench ({report['preset'] or 'given model'}) | {len(s['videos'])} videos | CoT {s['cot_tokens']} tokens | "
           f"{s['repeats']} repeats (+1 warm-up) | {s['threads']} threads | baselines: {', '.join(s['baselines']) or 'none'}",
           f"{env['usable_cpus']} usable CPUs | onnxruntime {env['versions']['onnxruntime']} | torch {env['versions']['torch']} | "
           f"read bandwidth {report['bandwidth']['gb_per_s']:.1f} GB/s ({report['bandwidth']['threads']} threads) | "
           f"import descore_sdk {report['import_ms']['median']:.0f} ms "
           f"(+ Scorer and onnxruntime backend {report['import_scorer_ms']['median']:.0f} ms)"]
    for family, m in report["models"].items():
        params = m["parameters"]
        out.append("")
        out.append(f"== {family}" + (f" ({params['total'] / 1e6:.1f} M parameters)" if params else ""))
        out.append(f"{'stage (ours, fp32, per think call)':<40} {'p50 ms':>9} {'p95 ms':>9}")
        for key, st in (m["stages_ms"] or {}).items():
            out.append(f"{key:<40} {st['p50']:9.1f} {st['p95']:9.1f}")
        for mode in ("think", "fast"):
            st = m["e2e_ms"][mode]
            out.append(f"{'end to end, ' + mode:<40} {st['p50']:9.1f} {st['p95']:9.1f}")
        hf = m["baseline"].get("hf")
        if hf:
            if hf["available"]:
                st = hf["e2e_ms"]["think"]
                out.append(f"{'HF eager baseline, think':<40} {st['p50']:9.1f} {st['p95']:9.1f}")
            else:
                out.append(f"HF eager baseline: skipped ({hf['reason']})")
        genai = m["baseline"].get("ort-genai")
        out.append(f"{'precision':<10} {'think p50':>10} {'vs HF':>7} {'ms/token':>9} {'roofline':>9} {'genai ms/tok':>13} {'ours/genai':>11}")
        for p, v in m["precisions"].items():
            ms = v["decode"]["ms_per_token"]
            roof = v["decode"]["roofline"]
            g = (genai or {}).get("decode", {}).get(p, {}) if genai and genai.get("available") else {}
            out.append(f"{p:<10} {v['e2e_ms']['think']['p50']:10.1f} {_f(m['speedup']['think_e2e_vs_hf'].get(p), '{:.2f}x'):>7} "
                       f"{_f(ms['median'] if ms else None, '{:.2f}'):>9} {_f(roof['roofline_fraction'] * 100 if roof and roof['roofline_fraction'] else None, '{:.0f}%'):>9} "
                       f"{_f(g['ms_per_token']['median'] if 'ms_per_token' in g else None, '{:.2f}'):>13} "
                       f"{_f(m['speedup']['decode_vs_ort_genai'].get(p), '{:.2f}x'):>11}")
        if genai and not genai["available"]:
            out.append(f"onnxruntime-genai baseline: skipped ({genai['reason']})")
        if m["batch"]:
            out.append(f"{'batch':>6} {'videos/s':>9} {'decode tok/s':>13} {'vs batch 1':>11}")
            for row in m["batch"]:
                out.append(f"{row['batch_size']:>6} {row['videos_per_s']['median']:9.2f} {_f(row['decode_tokens_per_s']):>13} "
                           f"{_f(row['decode_tokens_speedup_vs_batch_1'], '{:.2f}x'):>11}")
        for note in m["notes"]:
            out.append(f"note: {note}")
    v = report.get("video_path")
    if v:
        out.append("")
        out.append(f"video path, {v['clip']['seconds']} s {v['clip']['height']}p h264 at 2 fps ({v['frames_sampled']} frames): ours "
                   f"{v['ours_ms']['median']:.0f} ms | decode all frames to RGB {v['all_frames_rgb_ms']['median']:.0f} ms "
                   f"({v['all_frames_rgb_over_ours']:.2f}x ours) | decode needed packets only {v['needed_packets_ms']['median']:.0f} ms "
                   f"(ours {v['ours_over_needed_packets']:.2f}x)")
        if "ours_swscale_ms" in v:
            out.append(f"  with resize=\"swscale\": {v['ours_swscale_ms']['median']:.0f} ms ({v['all_frames_rgb_over_ours_swscale']:.2f}x "
                       f"faster than all frames to RGB, {v['ours_swscale_over_needed_packets']:.2f}x the needed packets)")
    out.append("")
    out.append(f"peak RSS {_f(report['memory']['peak_rss_mb'], '{:.0f}')} MB")
    for note in report["notes"]:
        out.append(f"note: {note}")
    return "\n".join(out)


def write_plot(report: dict, path) -> Path:
    """A PNG: per model, our think call's stages stacked next to the HF baseline, and decode ms/token of
    ours vs onnxruntime-genai per precision. matplotlib is optional."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.6 * len(models)), squeeze=False)
    for row, (family, m) in enumerate(models.items()):
        ax = axes[row][0]
        bottom = 0.0
        for key in ("decode", "preprocess", "vision", "prefill", "generate"):
            if key in (m["stages_ms"] or {}):
                value = m["stages_ms"][key]["median"]
                ax.bar("ours (fp32)", value, bottom=bottom, label=key)
                bottom += value
        hf = m["baseline"].get("hf")
        if hf and hf["available"]:
            bottom = 0.0
            for key, color in (("decode", "C0"), ("preprocess", "C1"), ("generate", "C4"), ("score", "C5")):
                if key in hf["stages_ms"]:
                    value = hf["stages_ms"][key]["median"]
                    ax.bar("HF eager (fp32)", value, bottom=bottom, color=color, label="HF " + key if key in ("generate", "score") else None)
                    bottom += value
        for p, v in m["precisions"].items():
            if p != "fp32":
                ax.bar(f"ours ({p})", v["e2e_ms"]["think"]["median"], color="grey")
        ax.set_ylabel("think call, median ms")
        ax.set_title(f"{family}: stages per think call")
        ax.legend(fontsize=7)
        ax = axes[row][1]
        names = list(m["precisions"])
        x = np.arange(len(names))
        ours = [(m["precisions"][p]["decode"]["ms_per_token"] or {}).get("median", np.nan) for p in names]
        ax.bar(x - 0.2, ours, 0.4, label="ours")
        genai = m["baseline"].get("ort-genai")
        if genai and genai["available"]:
            theirs = [genai["decode"].get(p, {}).get("ms_per_token", {}).get("median", np.nan) for p in names]
            ax.bar(x + 0.2, theirs, 0.4, label="onnxruntime-genai")
        roof = [(m["precisions"][p]["decode"]["roofline"] or {}).get("roofline_ms_per_token", np.nan) for p in names]
        ax.scatter(x, roof, marker="_", s=400, color="black", label="bandwidth roofline", zorder=3)
        ax.set_xticks(x, names)
        ax.set_ylabel("decode ms/token (median)")
        ax.set_title(f"{family}: decode step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["run_suite", "format_suite", "write_plot", "SCHEMA", "stats", "measure_import_ms"]
