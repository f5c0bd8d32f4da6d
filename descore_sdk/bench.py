"""`run_bench`: torch backend vs onnxruntime backend on one checkpoint + bundle, every number measured
in ONE run (schema "descore-bench/1", the Python API; also the helpers the suite reuses).

The `descore bench` command runs the newer suite instead (descore_sdk/bench_suite.py, schema
"descore-bench/2": presets, HF / onnxruntime-genai baselines, per-stage timings, roofline, plot).

    report = run_bench(model="ckpt", bundle="bundle", cot_tokens=64, repeats=5)

What one run measures, on the same videos and prompts:
- the backend-independent stages: video decode + frame sampling, preprocessing (resize + patches) and
  prompt build, per video;
- per backend (onnxruntime on the bundle, torch on the checkpoint; whichever are given): `Scorer.score`
  latency per video in fast mode and in think mode. Think mode writes the SAME number of CoT tokens on
  both backends: `max_new_tokens=cot_tokens` with the stop tokens disabled (`stop_tokens=()`, greedy),
  so neither can stop early (the token counts actually written are reported and checked). torch runs
  DeScore's two-pass inference (HF `generate`, then a second full forward over prompt + CoT +
  `<Reward>`); onnxruntime runs the one-pass KV-cached loop (prefill once, `<Reward>` through the cache);
- `score_batch` throughput (videos/s) on the onnxruntime backend, think mode, at each batch size, and
  its speedup over batch size 1 (batch size 1 is always measured: it is the baseline);
- peak RSS of this process after each phase and the model/bundle size on disk; the environment.

Every configuration gets one warm-up call first (excluded). Timings are wall-clock (`time.perf_counter`);
each `stats` object summarizes the measured samples: per-video numbers have repeats × videos samples,
batch throughputs have `repeats` samples. The onnxruntime phase runs before torch is imported, so its
peak RSS excludes torch. The tiny default model is built in a child process for the same reason.

JSON keys (`--json` prints one object; these keys are stable, new keys may be added):
    schema                  "descore-bench/1"
    settings                model, bundle (paths or null), tiny_model (bool), videos [paths],
                            prompts [one per video], cot_tokens, repeats, warmup (1), batch_sizes [ints],
                            threads, think_equal_work (how both backends do the same CoT work)
    environment             cpu_count, usable_cpus, threads, omp_num_threads, python, platform,
                            versions {descore_sdk, numpy, onnxruntime, torch, transformers, av}
                            (null when not installed)
    inputs                  [{video, frames, grid_thw, prompt_tokens_fast, prompt_tokens_think}]
    stages                  decode_ms, preprocess_ms, prompt_ms: stats per video; frames: stats per video
    backends                {"onnxruntime": B, "torch": B}; B is {"available": false, "reason": str} or
        available           true
        path, load_ms       model folder, time to load the Scorer
        threads             intra-op threads the backend ran with
        fast, think         latency_ms (stats of Scorer.score per video, end to end), model_ms (stats of
                            the backend part: latency minus the Scorer's decode + preprocess timings),
                            timings_ms {stage: stats} (the backend's own stage timings)
        think also          cot_tokens_written [distinct counts seen], cot_tokens_per_s (CoT tokens ÷
                            (think − fast) median model time: what writing the CoT costs, same
                            definition on both backends), generate_tokens_per_s (CoT tokens ÷ median
                            "generate" stage; onnxruntime: CoT steps + the <Reward> step, prefill
                            excluded; torch: HF generate, which includes vision + prefill)
        peak_rss_mb_after   the process's peak RSS after this backend's phase
    ratios                  torch ÷ onnxruntime of the reported medians: fast_latency, think_latency,
                            fast_model, think_model (each key suffixed _torch_over_onnxruntime);
                            null unless both backends ran
    agreement               think-mode cross-check when both ran: same_cot (fraction of videos whose
                            rationales are identical), max_abs_reward_diff; null otherwise
    batch                   null, or {backend, mode, cot_tokens, videos (items per run), results: [
                            {batch_size, videos_per_s: stats, results_returned, speedup_vs_batch_1}]}
                            (speedup = median videos/s at this size ÷ median at batch size 1)
    layouts                 null, or think latency_ms stats of the onnxruntime bundle in the assistant-turn
                            layout and in the user-turn layout (the authors' DeScore: a short second
                            prefill of CoT + <Reward> from the cached prefix): {assistant: {think_latency_ms},
                            user: {think_latency_ms, cot_tokens_written}, user_over_assistant_think}
    memory                  peak_rss_mb, peak_rss_source, current_rss_mb, current_rss_source,
                            model_size_mb, bundle_size_mb (null when not given)
    notes                   [str]: anything that limits how to read the numbers
    stats objects           {median, p90, min, max, n} (p90: linear interpolation, numpy's default)
"""

from __future__ import annotations

import copy

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ._version import __version__
from .errors import DescoreError, InvalidInputError, ModelLoadError, MissingDependencyError

SCHEMA = "descore-bench/1"
DEFAULT_COT_TOKENS = 64
DEFAULT_REPEATS = 5
DEFAULT_BATCH_SIZES = (1, 4)
DEFAULT_PROMPT = "A person walks through a park on a sunny day."
TINY_FAMILY = "qwen3_vl"
EQUAL_WORK = (
    "max_new_tokens=cot_tokens with stop tokens disabled (stop_tokens=()), greedy: both backends write exactly "
    "cot_tokens CoT tokens (see cot_tokens_written)"
)
BACKEND_ORDER = ("onnxruntime", "torch")  # onnxruntime first: its peak RSS is taken before torch is imported


# -- small helpers ------------------------------------------------------------------------------------
def stats(samples: Sequence[float]) -> dict:
    """{median, p90, min, max, n} of the samples (p90 by linear interpolation)."""
    values = np.asarray(list(samples), dtype=np.float64)
    if values.size == 0:
        raise ValueError("stats() needs at least one sample")  # a bench bug, not user input
    return {
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "min": float(values.min()),
        "max": float(values.max()),
        "n": int(values.size),
    }


def folder_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def peak_rss_mb() -> tuple[float | None, str]:
    """The process's peak resident set size so far, and where the number comes from."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil

            return psutil.Process().memory_info().peak_wset / 2**20, "psutil peak_wset"
        except (ImportError, AttributeError):
            return None, "unavailable"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return peak * scale / 2**20, "resource.getrusage(RUSAGE_SELF).ru_maxrss"


def current_rss_mb() -> tuple[float | None, str]:
    try:
        import psutil
    except ImportError:
        return None, "unavailable (psutil not installed)"
    return psutil.Process().memory_info().rss / 2**20, "psutil.Process().memory_info().rss"


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """"1,4,8" → (1, 4, 8); typed error for anything else."""
    try:
        sizes = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise InvalidInputError(f"--batch-sizes must be comma-separated integers like 1,4,8; got {text!r}.") from None
    if not sizes:
        raise InvalidInputError("--batch-sizes is empty; give at least one batch size, e.g. 1,4.")
    return sizes


# -- settings -----------------------------------------------------------------------------------------
@dataclass
class BenchSettings:
    model: Path | None
    bundle: Path | None
    videos: list[Path]
    prompts: list[str]
    cot_tokens: int
    repeats: int
    batch_sizes: tuple[int, ...]
    threads: int
    tiny_model: bool = False


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer ≥ {minimum}, got {value!r}.")
    return int(value)


def _check_model_folders(model, bundle) -> tuple[Path | None, Path | None]:
    from .bundle import MANIFEST_NAME
    from .config import CONFIG_NAME

    model = Path(model) if model is not None else None
    bundle = Path(bundle) if bundle is not None else None
    if model is not None:
        if not model.is_dir():
            raise ModelLoadError(f"--model {model} is not a folder; pass a DeScore checkpoint folder.")
        if (model / MANIFEST_NAME).is_file():
            raise InvalidInputError(f"{model} is an exported bundle; pass it as --bundle (--model is for torch checkpoints).")
        if not (model / "config.json").is_file() or not (model / CONFIG_NAME).is_file():
            raise ModelLoadError(f"{model} is not a DeScore checkpoint (config.json and {CONFIG_NAME} expected).")
    if bundle is not None:
        if not bundle.is_dir() or not (bundle / MANIFEST_NAME).is_file():
            raise ModelLoadError(f"--bundle {bundle} is not an exported bundle (no {MANIFEST_NAME}); create one with `descore export`.")
    return model, bundle


def _packaged_videos(stack: ExitStack) -> tuple[list[Path], dict[str, str]]:
    """The sample videos shipped in descore_sdk/assets, and their prompts by file name."""
    from importlib import resources

    assets = resources.files("descore_sdk.assets")
    samples = json.loads(assets.joinpath("samples.json").read_text())
    videos, prompts = [], {}
    for pair in samples["pairs"]:
        for key in ("video_a", "video_b"):
            path = stack.enter_context(resources.as_file(assets.joinpath(pair[key])))
            videos.append(Path(path))
            prompts[Path(path).name] = pair["prompt"]
    return videos, prompts


def _resolve_videos(videos, prompt: str | None, stack: ExitStack) -> tuple[list[Path], list[str]]:
    if videos:
        paths = [Path(v) for v in videos]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise InvalidInputError(f"Video file(s) not found: {', '.join(missing)}.")
        sample_prompts = {}
    else:
        paths, sample_prompts = _packaged_videos(stack)
    if prompt is not None:
        if not str(prompt).strip():
            raise InvalidInputError("--prompt is empty; give the text the videos were generated from.")
        return paths, [prompt] * len(paths)
    return paths, [sample_prompts.get(p.name, DEFAULT_PROMPT) for p in paths]


_BUILD_TINY = """
import sys
from descore_sdk.training.tiny import build_tiny_model
from descore_sdk.export.bundle import export_bundle
build_tiny_model(sys.argv[1], seed=0, out_dir=sys.argv[2])
export_bundle(sys.argv[2], sys.argv[3], progress=False, parity=False)
"""


def build_tiny(work_dir: Path, say: Callable[[str], None]) -> tuple[Path, Path]:
    """A tiny random-weight model + its bundle in work_dir, built in a child process (so this process's
    peak RSS is not the build's). Reuses what an earlier run left there."""
    from .bundle import MANIFEST_NAME

    model, bundle = work_dir / "checkpoint", work_dir / "bundle"
    if (model / "config.json").is_file() and (bundle / MANIFEST_NAME).is_file():
        say(f"Using the tiny model already in {work_dir}")
        return model, bundle
    for module, extra in (("torch", "train"), ("transformers", "train"), ("onnx", "export")):
        if _version(module) is None:
            raise MissingDependencyError(
                f"descore bench without --model/--bundle builds a tiny model, which needs '{module}'. "
                f"Install it with: pip install 'descore-sdk[{extra}]', or pass --bundle."
            )
    say(f"Building a tiny random-weight {TINY_FAMILY} model and its bundle in {work_dir} ...")
    work_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", _BUILD_TINY, TINY_FAMILY, str(model), str(bundle)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ModelLoadError(f"Building the tiny benchmark model failed: {' | '.join(tail)}")
    return model, bundle


# -- measuring ----------------------------------------------------------------------------------------
def _measure_stages(scorer, settings: BenchSettings) -> tuple[dict, list[dict]]:
    """Decode + sampling, preprocessing and prompt build per video, as the Scorer does them."""
    from .preprocess import preprocess_frames

    cfg = scorer.config

    def one(video: Path, prompt: str) -> tuple[float, float, float, object, object]:
        t0 = time.perf_counter()
        clip = scorer._load(video, scorer.options)  # the Scorer's own sampling settings
        t1 = time.perf_counter()
        patches, grid = preprocess_frames(clip.frames, cfg.vision, cfg.sampling)
        t2 = time.perf_counter()
        ids = scorer.prompts.build(prompt, grid, timestamps=clip.timestamps, mode="think")
        t3 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, clip, (grid, ids)

    one(settings.videos[0], settings.prompts[0])  # warm-up
    decode, prep, prompt_ms, frames = [], [], [], []
    inputs = []
    for r in range(settings.repeats):
        for video, prompt in zip(settings.videos, settings.prompts):
            d, p, b, clip, (grid, ids) = one(video, prompt)
            decode.append(d), prep.append(p), prompt_ms.append(b), frames.append(len(clip.frames))
            if r == 0:
                fast_ids = scorer.prompts.build(prompt, grid, timestamps=clip.timestamps, mode="fast")
                inputs.append({
                    "video": str(video),
                    "frames": int(len(clip.frames)),
                    "grid_thw": [int(v) for v in np.asarray(grid).reshape(-1)],
                    "prompt_tokens_fast": int(len(fast_ids.input_ids)),
                    "prompt_tokens_think": int(len(ids.input_ids)),
                })
    return {"decode_ms": stats(decode), "preprocess_ms": stats(prep), "prompt_ms": stats(prompt_ms), "frames": stats(frames)}, inputs


def _score_all(scorer, settings: BenchSettings, mode: str) -> tuple[dict, list]:
    """Warm-up on the first video, then repeats × every video through `Scorer.score`."""
    scorer.score(settings.videos[0], settings.prompts[0], mode=mode)
    latency, model, stage_samples, results = [], [], {}, []
    for r in range(settings.repeats):
        for video, prompt in zip(settings.videos, settings.prompts):
            t0 = time.perf_counter()
            result = scorer.score(video, prompt, mode=mode)
            wall = (time.perf_counter() - t0) * 1e3
            t = result.timings_ms
            latency.append(wall)
            model.append(t["total"] - t.get("decode", 0.0) - t.get("preprocess", 0.0))
            for key, value in t.items():
                if key not in ("decode", "preprocess", "total"):
                    stage_samples.setdefault(key, []).append(value)
            if r == 0:
                results.append(result)
    section = {
        "latency_ms": stats(latency),
        "model_ms": stats(model),
        "timings_ms": {key: stats(values) for key, values in stage_samples.items()},
    }
    if mode == "think":
        section["cot_tokens_written"] = sorted({res.num_cot_tokens for res in results})
    return section, results


def _load_scorer(name: str, path: Path, settings: BenchSettings):
    from .scorer import Scorer

    backend_options = {"threads": settings.threads} if name == "onnxruntime" else None
    return Scorer.from_pretrained(path, backend=name, backend_options=backend_options, mode="think",
                                  max_new_tokens=settings.cot_tokens, stop_tokens=(), temperature=0.0)


def _bench_backend(name: str, path: Path, settings: BenchSettings, say) -> tuple[dict, list, object]:
    say(f"Benchmarking {name} on {path} ...")
    t0 = time.perf_counter()
    scorer = _load_scorer(name, path, settings)
    load_ms = (time.perf_counter() - t0) * 1e3
    fast, _ = _score_all(scorer, settings, "fast")
    think, think_results = _score_all(scorer, settings, "think")
    gen = think["timings_ms"].get("generate")
    think["generate_tokens_per_s"] = _ratio(settings.cot_tokens * 1e3, gen["median"] if gen else None)
    think["cot_tokens_per_s"] = _ratio(settings.cot_tokens * 1e3, think["model_ms"]["median"] - fast["model_ms"]["median"])
    section = {
        "available": True,
        "path": str(path),
        "load_ms": load_ms,
        "threads": settings.threads,
        "fast": fast,
        "think": think,
        "peak_rss_mb_after": peak_rss_mb()[0],
    }
    return section, think_results, scorer


def _bench_batches(scorer, settings: BenchSettings, say) -> dict:
    """score_batch throughput (think mode) at each batch size on the same list of videos."""
    count = max(len(settings.videos), max(settings.batch_sizes))
    items = [settings.videos[i % len(settings.videos)] for i in range(count)]
    prompts = [settings.prompts[i % len(settings.prompts)] for i in range(count)]
    sizes = sorted(set(settings.batch_sizes) | {1})
    rows = []
    for size in sizes:
        say(f"  score_batch, batch size {size} ({count} videos per run) ...")
        scorer.score_batch(items[:size], prompts[:size], batch_size=size)  # warm-up
        rates, returned = [], set()
        for _ in range(settings.repeats):
            t0 = time.perf_counter()
            results = scorer.score_batch(items, prompts, batch_size=size)
            rates.append(count / (time.perf_counter() - t0))
            returned.add(len(results))
        rows.append({"batch_size": size, "videos_per_s": stats(rates), "results_returned": min(returned)})
    base = rows[0]["videos_per_s"]["median"]
    for row in rows:
        row["speedup_vs_batch_1"] = _ratio(row["videos_per_s"]["median"], base)
    return {"backend": scorer.backend.name, "mode": "think", "cot_tokens": settings.cot_tokens, "videos": count, "results": rows}


def _bench_layouts(scorer, measured: dict, settings: BenchSettings) -> dict:
    """Think latency of the same bundle in the assistant-turn layout (measured above) and in the
    user-turn layout (the authors' DeScore): same videos, same CoT length. The user layout pays a short
    second prefill of the CoT text and `<Reward>` from the cached prefix, never a second video prefill."""
    import dataclasses

    from .config import PromptLayout
    from .prompt import PromptBuilder

    config = dataclasses.replace(
        scorer.config,
        prompt_template="Judge the video.\nPrompt: [insert prompt here]\nVideo: <video>\nThink, then rate it.",
        layout=PromptLayout(cot_position="user", video_marker="<video>", prompt_marker="[insert prompt here]"),
    )
    user = copy.copy(scorer)
    user.config, user.prompts = config, PromptBuilder(scorer.prompts.tokenizer, config)
    section, results = _score_all(user, settings, "think")
    assistant = measured["think"]["latency_ms"]["median"]
    return {
        "assistant": {"think_latency_ms": measured["think"]["latency_ms"]},
        "user": {"think_latency_ms": section["latency_ms"], "cot_tokens_written": sorted({r.num_cot_tokens for r in results})},
        "user_over_assistant_think": _ratio(section["latency_ms"]["median"], assistant),
    }


def _environment(threads: int) -> dict:
    import onnxruntime

    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": _usable_cpus(),
        "threads": threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "descore_sdk": __version__,
            "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torch": _version("torch"),
            "transformers": _version("transformers"),
            "av": _version("av"),
        },
    }


# -- the run ------------------------------------------------------------------------------------------
def run_bench(
    *,
    model: str | os.PathLike | None = None,
    bundle: str | os.PathLike | None = None,
    videos: Sequence[str | os.PathLike] | None = None,
    prompt: str | None = None,
    cot_tokens: int = DEFAULT_COT_TOKENS,
    repeats: int = DEFAULT_REPEATS,
    batch_sizes: Sequence[int] | str = DEFAULT_BATCH_SIZES,
    threads: int | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the benchmark and return the report (keys: module docstring).

    model: torch checkpoint folder; bundle: exported bundle folder. With neither, a tiny random-weight
    qwen3_vl model and its bundle are built in `work_dir` (kept; default: a temporary folder, removed)
    and the packaged sample videos are used unless `videos` is given. prompt: one prompt for all videos
    (default: each packaged sample's own prompt, else a generic one). threads: intra-op threads for both
    backends (default: the CPUs this process may use). progress: called with one line per phase.
    """
    say = progress or (lambda message: None)
    cot_tokens = _check_count("cot_tokens", cot_tokens, 1)
    repeats = _check_count("repeats", repeats, 1)
    if isinstance(batch_sizes, str):
        batch_sizes = parse_batch_sizes(batch_sizes)
    batch_sizes = tuple(_check_count("batch size", b, 1) for b in batch_sizes)
    if not batch_sizes:
        raise InvalidInputError("batch_sizes is empty; give at least one batch size, e.g. (1, 4).")
    threads = _usable_cpus() if threads is None else _check_count("threads", threads, 1)
    model, bundle = _check_model_folders(model, bundle)

    with ExitStack() as stack:
        paths, prompts = _resolve_videos(videos, prompt, stack)
        tiny = model is None and bundle is None
        if tiny:
            folder = Path(work_dir) if work_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="descore-bench-")))
            model, bundle = build_tiny(folder, say)
        settings = BenchSettings(model, bundle, paths, prompts, cot_tokens, repeats, batch_sizes, threads, tiny)
        return _run(settings, say)


def _run(settings: BenchSettings, say) -> dict:
    notes = []
    folders = {"onnxruntime": settings.bundle, "torch": settings.model}
    backends: dict[str, dict] = {}
    think_results: dict[str, list] = {}
    stages = inputs = batch = layouts = None
    for name in BACKEND_ORDER:
        path = folders[name]
        if path is None:
            flag = "--bundle" if name == "onnxruntime" else "--model"
            backends[name] = {"available": False, "reason": f"no {flag} given"}
            continue
        if name == "torch" and _version("torch") is None:
            backends[name] = {"available": False, "reason": "torch is not installed (pip install 'descore-sdk[train]')"}
            continue
        restore = _set_torch_threads(settings.threads) if name == "torch" else None
        try:
            backends[name], think_results[name], scorer = _bench_backend(name, path, settings, say)
            if stages is None:
                say("  stages: decode, preprocess, prompt ...")
                stages, inputs = _measure_stages(scorer, settings)
            if name == "onnxruntime":
                batch = _bench_batches(scorer, settings, say)
                say("  think latency in the user-turn layout (the authors' DeScore) ...")
                layouts = _bench_layouts(scorer, backends[name], settings)
                backends[name]["peak_rss_mb_after"] = peak_rss_mb()[0]
        finally:
            if restore is not None:
                restore()
        del scorer  # free the model before the next backend loads

    both = all(backends[n]["available"] for n in BACKEND_ORDER)
    ratios = {}
    for mode in ("fast", "think"):
        for kind in ("latency", "model"):
            key = f"{mode}_{kind}_torch_over_onnxruntime"
            ratios[key] = (
                _ratio(backends["torch"][mode][f"{kind}_ms"]["median"], backends["onnxruntime"][mode][f"{kind}_ms"]["median"])
                if both else None
            )
    agreement = _agreement(think_results) if both else None
    if not both:
        notes.append("Only one backend ran, so there are no torch/onnxruntime ratios; give both --model and --bundle.")
    if batch is None:
        notes.append("score_batch throughput is measured on the onnxruntime backend (torch scores one video at a time); give --bundle.")
    written = {n: backends[n]["think"]["cot_tokens_written"] for n in BACKEND_ORDER if backends[n]["available"]}
    if any(counts != [settings.cot_tokens] for counts in written.values()):
        notes.append(f"Some think runs wrote fewer than {settings.cot_tokens} CoT tokens (context too short?): {written}.")
    if settings.threads < _usable_cpus():
        notes.append(f"Both backends ran with {settings.threads} threads, fewer than the {_usable_cpus()} usable CPUs.")
    if settings.tiny_model:
        notes.append("Tiny random-weight model: the numbers show pipeline overheads, not a real model's compute.")

    peak, peak_source = peak_rss_mb()
    rss, rss_source = current_rss_mb()
    return {
        "schema": SCHEMA,
        "settings": {
            "model": str(settings.model) if settings.model else None,
            "bundle": str(settings.bundle) if settings.bundle else None,
            "tiny_model": settings.tiny_model,
            "videos": [str(v) for v in settings.videos],
            "prompts": list(settings.prompts),
            "cot_tokens": settings.cot_tokens,
            "repeats": settings.repeats,
            "warmup": 1,
            "batch_sizes": list(settings.batch_sizes),
            "threads": settings.threads,
            "think_equal_work": EQUAL_WORK,
        },
        "environment": _environment(settings.threads),
        "inputs": inputs,
        "stages": stages,
        "backends": backends,
        "ratios": ratios,
        "agreement": agreement,
        "batch": batch,
        "layouts": layouts,
        "memory": {
            "peak_rss_mb": peak,
            "peak_rss_source": peak_source,
            "current_rss_mb": rss,
            "current_rss_source": rss_source,
            "model_size_mb": folder_size_mb(settings.model) if settings.model else None,
            "bundle_size_mb": folder_size_mb(settings.bundle) if settings.bundle else None,
        },
        "notes": notes,
    }


def _set_torch_threads(threads: int) -> Callable[[], None]:
    """Give torch the same intra-op thread count as onnxruntime; returns the undo."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return lambda: torch.set_num_threads(before)


def _agreement(think_results: dict[str, list]) -> dict:
    pairs = list(zip(think_results["torch"], think_results["onnxruntime"]))
    same = [a.rationale == b.rationale for a, b in pairs]
    diff = max(abs(a.reward - b.reward) for a, b in pairs)
    return {"same_cot": sum(same) / len(same), "max_abs_reward_diff": float(diff)}


# -- human table --------------------------------------------------------------------------------------
def _ms(s: dict | None) -> str:
    return f"{s['median']:9.1f} {s['p90']:9.1f}" if s else f"{'-':>9} {'-':>9}"


def _x(value: float | None) -> str:
    return f"{value:6.2f}x" if value is not None else "     -"


def format_report(report: dict) -> str:
    """The report as a plain-text table."""
    s, env, out = report["settings"], report["environment"], []
    model = f"tiny random-weight {TINY_FAMILY}" if s["tiny_model"] else " + ".join(p for p in (s["model"], s["bundle"]) if p)
    out.append(f"descore bench: {model} | {len(s['videos'])} videos | CoT {s['cot_tokens']} tokens | "
               f"{s['repeats']} repeats (+1 warm-up) | {s['threads']} threads")
    v = env["versions"]
    out.append(f"{env['usable_cpus']} usable CPUs of {env['cpu_count']} | onnxruntime {v['onnxruntime']} | torch {v['torch']} | "
               f"numpy {v['numpy']} | descore-sdk {v['descore_sdk']} | Python {env['python']}")
    st = report["stages"]
    out.append("")
    out.append(f"{'per video':<34} {'median ms':>9} {'p90 ms':>9}")
    out.append(f"{'video decode + sampling':<34} {_ms(st['decode_ms'])}   ({st['frames']['median']:.0f} frames)")
    out.append(f"{'preprocessing (resize, patches)':<34} {_ms(st['preprocess_ms'])}")
    out.append(f"{'prompt build':<34} {_ms(st['prompt_ms'])}")
    be = report["backends"]
    out.append("")
    out.append(f"{'scoring latency per video':<34} {'torch':>19} {'onnxruntime':>19} {'torch/ort':>9}")
    out.append(f"{'':<34} {'median':>9} {'p90':>9} {'median':>9} {'p90':>9}")
    label = {"fast": "fast", "think": f"think ({s['cot_tokens']} CoT tokens)"}
    for mode in ("fast", "think"):
        for kind, suffix in (("latency", "end to end"), ("model", "model only")):
            cells = [_ms(be[n][mode][f"{kind}_ms"]) if be[n]["available"] else _ms(None) for n in ("torch", "onnxruntime")]
            ratio = report["ratios"][f"{mode}_{kind}_torch_over_onnxruntime"]
            out.append(f"{label[mode] + ', ' + suffix:<34} {cells[0]} {cells[1]} {_x(ratio)}")
    for n in ("torch", "onnxruntime"):
        if be[n]["available"]:
            t = be[n]["think"]
            rate = lambda value: f"{value:.1f}" if value is not None else "-"  # noqa: E731
            out.append(f"CoT tokens/s {n:<12} {rate(t['cot_tokens_per_s']):>8} (think - fast model time), "
                       f"{rate(t['generate_tokens_per_s'])} (generate stage); wrote {t['cot_tokens_written']} tokens")
    if report["agreement"]:
        a = report["agreement"]
        out.append(f"torch vs onnxruntime think: same CoT for {a['same_cot']:.0%} of videos, max |reward diff| {a['max_abs_reward_diff']:.2e}")
    if report["batch"]:
        b = report["batch"]
        out.append("")
        out.append(f"score_batch throughput ({b['backend']}, {b['mode']}, {b['videos']} videos per run)")
        out.append(f"{'batch size':>10} {'videos/s':>9} {'p90':>9} {'vs batch 1':>11}")
        for row in b["results"]:
            vps = row["videos_per_s"]
            out.append(f"{row['batch_size']:>10} {vps['median']:9.2f} {vps['p90']:9.2f} {_x(row['speedup_vs_batch_1']):>11}")
    if report.get("layouts"):
        lay = report["layouts"]
        out.append(f"think latency by prompt layout (onnxruntime, median): assistant turn "
                   f"{lay['assistant']['think_latency_ms']['median']:.1f} ms, user turn (authors' DeScore) "
                   f"{lay['user']['think_latency_ms']['median']:.1f} ms ({_x(lay['user_over_assistant_think'])})")
    m = report["memory"]
    out.append("")
    sizes = ", ".join(f"{k} {m[k + '_size_mb']:.1f} MB" for k in ("model", "bundle") if m[k + "_size_mb"] is not None)
    after = ", ".join(f"after {n} {be[n]['peak_rss_mb_after']:.0f} MB" for n in BACKEND_ORDER
                      if be[n]["available"] and be[n]["peak_rss_mb_after"] is not None)
    peak = f"{m['peak_rss_mb']:.0f} MB" if m["peak_rss_mb"] is not None else "unknown"
    out.append(f"peak RSS {peak} ({after}; {m['peak_rss_source']}) | on disk: {sizes}")
    for note in report["notes"]:
        out.append(f"note: {note}")
    return "\n".join(out)


__all__ = ["run_bench", "format_report", "stats", "parse_batch_sizes", "SCHEMA", "DescoreError"]
