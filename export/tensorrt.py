"""Bundle → TensorRT engines: `descore export CHECKPOINT_OR_BUNDLE OUT --format tensorrt`.

    descore export bundles/descore-8b-fp16 bundles/descore-8b-trt --format tensorrt --precision fp16 \\
        --max-batch 2 --max-frames 64 --max-pixels 200704 --max-seq 16384

OUT is a complete bundle (the ONNX graphs, hard-linked where possible, so `backend="onnxruntime"` still
works) plus `vision.plan` and `decoder.plan`, built with NVIDIA's ONNX parser from the same graphs and
listed in `manifest["engines"]` with the TensorRT version, GPU and compute capability they were built on,
the precision path, the shape limits and each engine's optimization profiles. A CHECKPOINT is exported as
an ONNX bundle first (at the requested float type where the strongly typed path needs it in the graph).

What happens where (export/DESIGN.md, "TensorRT"):
- pure, tested on the CPU: `engine_limits` (the limits from the manifest and the flags), `decoder_profiles`
  / `vision_profiles` (every input's min/opt/max), `build_strategy` (strongly typed vs builder flags by the
  TensorRT version; which precisions each path can build), `memory_plan` (will it fit the GPU);
- needs TensorRT and a GPU: `_build_engine` (parser, profiles, timing cache, serialize). Without them
  `build_engines` fails at once — before exporting or copying anything — with MissingDependencyError
  (package) or DeviceUnavailableError (GPU), naming what is missing.

Written against the TensorRT 10.x Python API docs (10.3 for JetPack 6.1/6.2 – 10.16) and 8.6's for the
builder-flags path; no machine in this project had TensorRT, so `_build_engine` has NOT run.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from descore_sdk.bundle import MANIFEST_NAME, file_record, load_bundle, read_manifest, write_manifest
from descore_sdk.errors import DeviceUnavailableError, InvalidInputError, ModelLoadError
from descore_sdk.runtime.decode import DEFAULT_PREFILL_CHUNK
from descore_sdk.runtime.tensorrt_runner import ProfileShapes, TrtEnvironment, tensorrt_environment

TRT_PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8")
DEFAULT_TRT_PRECISION = "fp16"
ENGINE_FORMAT_VERSION = 1
DEFAULT_MAX_BATCH = 2  # `compare` scores A and B in one batch
TEXT_TOKENS = 512  # system prompt + template + a user prompt, next to the video tokens and the CoT budget
MAX_VISION_PATCHES_PER_CALL = 16384  # as the onnxruntime backend's vision chunk (runtime/onnx_backend.py)
# NetworkDefinitionCreationFlag.STRONGLY_TYPED exists from TensorRT 9 (onnxruntime's TensorRT EP sets it
# under `NV_TENSORRT_MAJOR > 8`); weak typing is deprecated from 10.12 and gone in 11 (flag ignored, always on).
STRONGLY_TYPED_SINCE = (9, 0)
BF16_SINCE = (9, 0)  # BuilderFlag.BF16 / DataType.BF16 are not in TensorRT 8.6's API
# Explicit quantization (QuantizeLinear/DequantizeLinear parsed into IQuantizeLayer/IDequantizeLayer) arrived in
# TensorRT 8.0; before it int8 meant implicit calibration (IInt8Calibrator, deprecated in 10.1, gone in 11).
QDQ_INT8_SINCE = (8, 0)
# FP8 (E4M3) explicit quantization: Q/DQ with float8 types in a strongly typed network (TensorRT 10 docs, "Working
# with Quantized Types"); FP8 tensor cores need compute capability 8.9 (Ada) or 9.0+ (Hopper, Blackwell).
FP8_SINCE = (10, 0)
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)
# In-place KV-cache / fused attention layers (TensorRT release notes: IAttention 10.14, IKVCacheUpdateLayer 10.15;
# onnx-tensorrt's importers map ONNX Attention-23/24 onto IAttention and TensorScatter-24 onto IKVCacheUpdateLayer
# from the 10.15 parser, which also reads RotaryEmbedding-23: the `--kv-cache shared-standard` decoder).
IN_PLACE_LAYERS = (("IAttention", (10, 14)), ("IKVCacheUpdateLayer", (10, 15)))
IN_PLACE_SINCE = (10, 15)
# onnx-tensorrt's operator support list: TensorRT 8.6 parses ONNX opsets 9-17, 9.x/10.x up to 20+; the bundles
# are opset 18, so engines for TensorRT 8.x (JetPack 5.1 / 6.0) are parsed from opset-17 copies of the graphs.
OPSET_18_SINCE = (9, 0)
STATIC_CAPACITY_DIM = "cache_capacity"  # the in-place decoder's cache axis; fixed to --max-seq for the engines


# -- limits and profiles (pure) ------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineLimits:
    """The largest shapes the engines accept. Beyond them the runtime refuses the input (typed error)."""

    max_batch: int
    max_frames: int
    max_pixels: int
    max_seq: int  # prompt (with video tokens) + CoT + <Reward>, per row
    prefill_chunk: int  # most prompt columns per decoder call (the prefill profile's sequence range)
    max_vision_patches: int  # most patches per vision call (whole temporal steps)
    frame_patches: int  # most patches of one frame

    def to_dict(self) -> dict:
        return asdict(self)


def _positive(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"--{name.replace('_', '-')} must be a whole number ≥ 1, got {value!r}.")
    return value


def engine_limits(manifest: dict, *, max_batch: int | None = None, max_frames: int | None = None,
                  max_pixels: int | None = None, max_seq: int | None = None, prefill_chunk: int | None = None,
                  max_new_tokens: int | None = None) -> EngineLimits:
    """Limits from the flags, defaulting to the bundle's: its frame sampling (max_frames, max_pixels), its
    generation budget (max_new_tokens) and context (max_context).

    Worked example (qwen2.5-VL tower, patch 14, temporal patch 2, merge 2; 4 frames of ≤ 25,600 px):
    one frame ≤ 25600 // 14² = 130 patches, 2 temporal steps → 260 patches → 260 / 2² = 65 video
    tokens; max_seq = min(max_context, 65 + 512 text + 4096 CoT + 1, rounded up to 64)."""
    for name, value in (("max_batch", max_batch), ("max_frames", max_frames), ("max_pixels", max_pixels),
                        ("max_seq", max_seq), ("prefill_chunk", prefill_chunk)):
        _positive(name, value)
    if max_batch is not None and max_batch < 2:
        raise InvalidInputError("--max-batch must be ≥ 2: `compare` (and adaptive compare's decision) scores A and B "
                                "in one batch.")
    vision = manifest["model"]["vision"]
    patch, temporal, merge = int(vision["patch_size"]), int(vision["temporal_patch_size"]), int(vision["merge_size"])
    frames = max_frames or int(manifest["sampling"]["max_frames"])
    pixels = max_pixels or int(manifest["sampling"]["max_pixels"])
    frame_patches = pixels // (patch * patch)
    if frame_patches < merge * merge:
        raise InvalidInputError(f"--max-pixels {pixels} is below one merge unit ({merge * patch}×{merge * patch} pixels).")
    total_patches = math.ceil(frames / temporal) * frame_patches
    video_tokens = total_patches // (merge * merge)
    context = int(manifest["generation"]["max_context"])
    budget = int(manifest["generation"]["max_new_tokens"] if max_new_tokens is None else max_new_tokens)
    if max_seq is None:
        max_seq = min(context, -(-(video_tokens + TEXT_TOKENS + budget + 1) // 64) * 64)
    if max_seq > context:
        raise InvalidInputError(f"--max-seq {max_seq} exceeds the model's context of {context} tokens.")
    if max_seq <= video_tokens:
        raise InvalidInputError(
            f"--max-seq {max_seq} leaves no room for text: {frames} frames of ≤ {pixels} pixels are already "
            f"{video_tokens} video tokens. Raise --max-seq or lower --max-frames / --max-pixels."
        )
    per_call = max(frame_patches, min(total_patches, MAX_VISION_PATCHES_PER_CALL))
    return EngineLimits(
        max_batch=max_batch or DEFAULT_MAX_BATCH,
        max_frames=frames,
        max_pixels=pixels,
        max_seq=int(max_seq),
        prefill_chunk=min(prefill_chunk or DEFAULT_PREFILL_CHUNK, int(max_seq)),
        max_vision_patches=per_call,
        frame_patches=frame_patches,
    )


def _dim_ranges(kind: str, limits: EngineLimits, manifest: dict) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of each symbolic dimension name of the bundle's graphs, per profile kind."""
    batch = (1, min(2, limits.max_batch), limits.max_batch)
    half = max(1, limits.max_seq // 2)
    merge_unit = int(manifest["model"]["vision"]["merge_size"]) ** 2
    common = {"batch_size": batch, "position_rows": (3, 3, 4)}
    if kind == "decode":
        return {**common, "sequence_length": (1, 1, 1), "past_sequence_length": (1, half, limits.max_seq - 1),
                "total_sequence_length": (2, half + 1, limits.max_seq)}
    if kind == "prefill":
        chunk = limits.prefill_chunk
        return {**common, "sequence_length": (1, chunk, chunk), "past_sequence_length": (0, 0, limits.max_seq - 1),
                "total_sequence_length": (1, chunk, limits.max_seq)}
    if kind == "vision":
        return {"num_patches": (merge_unit, limits.max_vision_patches, limits.max_vision_patches),
                "frame_patches": (merge_unit, limits.frame_patches, limits.frame_patches)}
    raise ValueError(kind)


def _profile(kind: str, inputs: list[dict], limits: EngineLimits, manifest: dict) -> ProfileShapes:
    ranges = _dim_ranges(kind, limits, manifest)
    shapes = {}
    for io in inputs:
        lo, opt, hi = [], [], []
        for dim in io["shape"]:
            if isinstance(dim, int):
                triple = (dim, dim, dim)
            elif dim in ranges:
                triple = ranges[dim]
            else:
                raise ModelLoadError(f"Graph input {io['name']!r} has dimension {dim!r}, which the TensorRT profile "
                                     "builder does not know; re-export the bundle with this SDK.")
            lo.append(triple[0]), opt.append(triple[1]), hi.append(triple[2])
        shapes[io["name"]] = (tuple(lo), tuple(opt), tuple(hi))
    return ProfileShapes(kind, shapes)


def decoder_profiles(manifest: dict, limits: EngineLimits) -> list[ProfileShapes]:
    """Two optimization profiles of the ONE decoder engine, decode first (the runtime picks the first
    profile that holds a step's shapes): "decode" — one new token (S = 1) over a past of 1..max_seq-1;
    "prefill" — up to `prefill_chunk` columns over a past of 0..max_seq-1 (chunked prefill, rescoring).
    Why one engine with two profiles, not two engines: export/DESIGN.md, "TensorRT"."""
    inputs = manifest["graphs"]["decoder"]["inputs"]
    return [_profile("decode", inputs, limits, manifest), _profile("prefill", inputs, limits, manifest)]


def vision_profiles(manifest: dict, limits: EngineLimits) -> list[ProfileShapes]:
    """One profile: 1 merge unit .. `max_vision_patches` patches per call, frames up to `frame_patches`."""
    return [_profile("vision", manifest["graphs"]["vision"]["inputs"], limits, manifest)]


def profiles_to_json(profiles: list[ProfileShapes]) -> list[dict]:
    return [{"name": p.name, "shapes": {k: [list(s) for s in v] for k, v in p.shapes.items()}} for p in profiles]


# -- precision path (pure) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildStrategy:
    """How an engine of `precision` is built with TensorRT `tensorrt_version` from graphs of `graph_precision`.

    strongly_typed: NetworkDefinitionCreationFlag.STRONGLY_TYPED, the types are the graph's (TensorRT ≥ 9;
    the only mode in 11). Otherwise builder flags (`flags`, BuilderFlag names) let TensorRT pick kernels of
    those types in an fp32 graph (TensorRT 8.x, e.g. JetPack 5 / 6.0)."""

    tensorrt_version: str
    precision: str
    graph_precision: str  # the ONNX graphs the engines are parsed from
    strongly_typed: bool
    flags: tuple[str, ...]
    quantize: bool = False  # insert int8 Q/DQ into the fp32 decoder before building (export/precision.py)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in str(text).split(".")[:3])


def build_strategy(tensorrt_version: str, precision: str, bundle_precision: str | None = None) -> BuildStrategy:
    """The path for `precision` on this TensorRT, or InvalidInputError saying why it cannot be built.

    bundle_precision: the precision of an existing bundle's decoder graph (None: a checkpoint, exported at
    the graph precision this returns). int8: the fp32 decoder gets int8 Q/DQ pairs before its linear layers
    (`quantize`; calibrated on real prefill inputs, export/precision.py), the rest stays fp32; strongly typed
    from TensorRT 9 (explicit quantization needs no precision flag there, and 11 has none), the INT8 builder
    flag on 8.x, refused before 8.0. fp8: the same Q/DQ graph with FP8 E4M3 scales (`precision.qdq_to_fp8`),
    strongly typed, TensorRT ≥ 10 (the GPU's compute capability ≥ 8.9 is checked by `build_engines`)."""
    if precision not in TRT_PRECISIONS:
        raise InvalidInputError(f"Unknown TensorRT precision {precision!r}; use one of {', '.join(TRT_PRECISIONS)}.")
    version = _version(tensorrt_version)
    if precision == "fp8":
        from .precision import FP8_QDQ_PRECISION

        if version < FP8_SINCE:
            raise InvalidInputError(
                f"fp8 engines are built from FP8 (E4M3) Q/DQ graphs in a strongly typed network, written here for "
                f"TensorRT ≥ 10; this is TensorRT {tensorrt_version}. Build --precision int8 or fp16."
            )
        if bundle_precision not in (None, "fp32", FP8_QDQ_PRECISION):
            raise InvalidInputError(
                f"fp8 engines are built from fp32 graphs with FP8 Q/DQ pairs inserted; this bundle's decoder is "
                f"{bundle_precision}. Build from an fp32 --kv-cache concat bundle or from the checkpoint."
            )
        return BuildStrategy(tensorrt_version, "fp8", bundle_precision or "fp32", True, (),
                             quantize=bundle_precision != FP8_QDQ_PRECISION)
    if precision == "int8":
        from .precision import QDQ_PRECISION

        if version < QDQ_INT8_SINCE:
            raise InvalidInputError(
                f"int8 engines are built from explicitly quantized (Q/DQ) graphs, which TensorRT reads from 8.0 on; "
                f"this is TensorRT {tensorrt_version}. Build --precision fp16, or upgrade TensorRT (JetPack ≥ 5)."
            )
        if bundle_precision not in (None, "fp32", QDQ_PRECISION):
            raise InvalidInputError(
                f"int8 engines are built from fp32 graphs with Q/DQ pairs inserted; this bundle's decoder is "
                f"{bundle_precision}. Build from an fp32 --kv-cache concat bundle or from the checkpoint."
            )
        strongly_typed = version >= STRONGLY_TYPED_SINCE
        return BuildStrategy(tensorrt_version, "int8", bundle_precision or "fp32", strongly_typed,
                             () if strongly_typed else ("INT8",), quantize=bundle_precision != QDQ_PRECISION)
    if precision == "bf16" and version < BF16_SINCE:
        raise InvalidInputError(f"bf16 engines need TensorRT ≥ 9 (this is {tensorrt_version}); build --precision fp16.")
    if bundle_precision not in (None, "fp32", "fp16", "bf16"):
        raise InvalidInputError(
            f"The bundle's graphs are {bundle_precision}, which TensorRT cannot parse (MatMulNBits) or which only "
            "--precision int8 builds (int8-qdq). Build the engines from an fp32/fp16/bf16 bundle or from the checkpoint."
        )
    if version >= STRONGLY_TYPED_SINCE:
        if bundle_precision is not None and bundle_precision != precision:
            raise InvalidInputError(
                f"TensorRT {tensorrt_version} builds strongly typed networks: the engine's types are the graph's, and "
                f"this bundle's graphs are {bundle_precision}, not {precision}. Export a bundle with "
                f"`descore export CHECKPOINT DIR --precision {precision}` first, or pass the checkpoint itself."
            )
        return BuildStrategy(tensorrt_version, precision, precision, True, ())
    # TensorRT 8.x: weakly typed, precision by builder flags over an fp32 graph.
    if bundle_precision not in (None, "fp32"):
        raise InvalidInputError(
            f"TensorRT {tensorrt_version} (before strong typing) builds reduced precision from fp32 graphs with "
            f"builder flags; this bundle's graphs are {bundle_precision}. Build from an fp32 bundle or the checkpoint."
        )
    flags = {"fp32": (), "fp16": ("FP16",)}[precision]
    return BuildStrategy(tensorrt_version, precision, "fp32", False, flags)


def decoder_form(tensorrt_version: str, quantize: bool = False) -> str:
    """The decoder graph the engines are built from: "shared-standard" (the cache updated in place by
    IKVCacheUpdateLayer, attention by IAttention) where this TensorRT has both layers (10.15+), else "concat"
    (past + new concatenated into a grown copy, the graph's own ops). int8 stays "concat": its Q/DQ scales are
    calibrated through the concatenating decoder (export/precision.calibration_feeds)."""
    return "shared-standard" if _version(tensorrt_version) >= IN_PLACE_SINCE and not quantize else "concat"


def kv_cache_strategy(tensorrt_version: str, form: str = "concat") -> dict:
    """What the engines do with the KV cache, for the manifest: the form used, which in-place layers this
    TensorRT has, and why they are not used when they are not."""
    available = [name for name, since in IN_PLACE_LAYERS if _version(tensorrt_version) >= since]
    if form == "shared-standard":
        return {"used": "in place: one device buffer per layer and key/value of static capacity max_seq, bound as past "
                        "and present; TensorScatter → IKVCacheUpdateLayer, Attention → IAttention",
                "in_place_layers_available": available}
    if available == [name for name, _ in IN_PLACE_LAYERS]:
        why = ("the decoder graph concatenates the cache (a --kv-cache concat bundle, or int8 engines, whose Q/DQ "
               "calibration runs the concatenating graph); build from the checkpoint or a --kv-cache shared-standard bundle")
    elif available:
        why = "this TensorRT has IAttention but not IKVCacheUpdateLayer (10.15+), which the in-place decoder needs"
    else:
        why = "this TensorRT has neither IAttention (10.14+) nor IKVCacheUpdateLayer (10.15+)"
    return {"used": "device-resident slabs, concat in the graph", "in_place_layers_available": available,
            "in_place_not_used_because": why}


def opset17_graph(path: str | Path) -> int:
    """Rewrite the graph at `path` to ONNX opset 17 for TensorRT 8.x's parser (onnx's version converter: ReduceMean
    and the other opset-18 reductions take `axes` as an attribute again; the converter leaves their opset-18-only
    `noop_with_empty_axes` = 0 behind, which opset 17 does not know and which is its default anyway). A new file
    replaces the directory entry; weights stay where they are. Returns the opset the graph had."""
    import onnx
    from onnx import version_converter

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    before = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if before <= 17:
        return before
    converted = version_converter.convert_version(model, 17)
    for node in converted.graph.node:
        if node.op_type.startswith("Reduce"):
            for attribute in [a for a in node.attribute if a.name == "noop_with_empty_axes" and a.i == 0]:
                node.attribute.remove(attribute)
    path.unlink()
    onnx.save(converted, str(path))
    return before


def static_cache_graph(path: str | Path, capacity: int) -> dict[str, list[str]]:
    """Rewrite the in-place decoder at `path` for TensorRT (IKVCacheUpdateLayer wants the cache a network input
    of static capacity): its `cache_capacity` axis becomes `capacity` on every past/present tensor, and inputs
    no node reads (`total_sequence_length`, which the standard graph does not use) are dropped. A new file
    replaces the directory entry (never a write through a hard link); the weights file is not touched.
    Returns {"fixed": names given the static axis, "dropped": inputs removed}."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    fixed = []
    for info in list(graph.input) + list(graph.output):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param == STATIC_CAPACITY_DIM:
                dim.dim_value = int(capacity)  # clears dim_param (a oneof)
                fixed.append(info.name)
    if not fixed:
        raise InvalidInputError(f"{path.name} has no {STATIC_CAPACITY_DIM!r} axis: not an in-place decoder of this SDK.")
    read = {name for node in graph.node for name in node.input}
    dropped = [info.name for info in graph.input if info.name not in read]
    for name in dropped:
        graph.input.remove(next(info for info in graph.input if info.name == name))
    path.unlink()
    onnx.save(model, str(path))
    return {"fixed": fixed, "dropped": dropped}


# -- memory (pure) -------------------------------------------------------------------------------------------
def memory_plan(manifest: dict, limits: EngineLimits, precision: str, cache_slabs: int = 3) -> dict:
    """Rough device memory of the deployed engines, in bytes: weights (the ONNX graphs' weights at the engine
    precision), the KV cache slabs the runtime keeps (the cache's element type; concat: usually 3 alive, a
    step's past and present and a rescore's copy; in place: 2, the live cache and a row-drop copy), and
    their sum. Activations/workspace come on top."""
    model = manifest["model"]
    files = manifest["files"]
    onnx_bytes = sum(rec["bytes"] for name, rec in files.items() if name.endswith((".onnx", ".onnx.data")))
    graph_precision = manifest["graphs"]["decoder"].get("precision", "fp32")
    # int8: the linear layers' weights (nearly all of them) in one byte; an int8-qdq graph stores them in fp32
    scale = ({"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "fp8": 1}.get(precision, 4)
             / {"fp32": 4, "fp16": 2, "bf16": 2, "int8-qdq": 4, "fp8-qdq": 4}.get(graph_precision, 4))
    inputs = manifest["graphs"]["decoder"]["inputs"]
    if any(io["name"] == "seqlens_k" for io in inputs):  # in place: the live cache and a row-drop copy
        cache_slabs = min(cache_slabs, 2)
    itemsize = {"float16": 2, "bfloat16": 2}.get(next((io["dtype"] for io in inputs if io["name"].startswith("past_key_values.")), ""), 4)
    slab = (2 * int(model["num_layers"]) * limits.max_batch * int(model["num_key_value_heads"]) * limits.max_seq
            * int(model["head_dim"]) * itemsize)
    weights = int(onnx_bytes * scale)
    return {"weights": weights, "kv_slab": slab, "kv_slabs": cache_slabs, "total": weights + cache_slabs * slab}


def check_fits(plan: dict, total_memory: int, gpu_name: str) -> None:
    """InvalidInputError when the plan exceeds 90% of the GPU's memory (on a Jetson: of the RAM it shares)."""
    if plan["total"] > 0.9 * total_memory:
        gib = 1 << 30
        raise InvalidInputError(
            f"The engines would need about {plan['total'] / gib:.1f} GiB on {gpu_name} ({total_memory / gib:.1f} GiB): "
            f"weights {plan['weights'] / gib:.1f} GiB + {plan['kv_slabs']} KV-cache buffers of "
            f"{plan['kv_slab'] / gib:.2f} GiB. Lower --max-seq or --max-batch (the cache grows with both), or use a "
            "smaller precision."
        )


# -- the build (TensorRT + GPU) -------------------------------------------------------------------------------
def default_timing_cache(env: TrtEnvironment) -> Path:
    """$DESCORE_CACHE/tensorrt/timing-<version>-sm<cc>.cache: one per TensorRT version and GPU (a timing cache
    holds kernel timings of that GPU; TensorRT rejects or mistimes a foreign one)."""
    root = os.environ.get("DESCORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "descore")
    cc = env.compute_capability.replace(".", "")
    return Path(root) / "tensorrt" / f"timing-{env.tensorrt_version}-sm{cc}.cache"


def build_engines(source: str | Path, out_dir: str | Path, *, precision: str = DEFAULT_TRT_PRECISION,
                  max_batch: int | None = None, max_frames: int | None = None, max_pixels: int | None = None,
                  max_seq: int | None = None, timing_cache: str | Path | None = None, device_index: int = 0,
                  workspace_gib: float | None = None, progress: bool = True, export_options: dict | None = None) -> Path:
    """Build `vision.plan` + `decoder.plan` for the bundle (or checkpoint) `source` into the new bundle `out_dir`.

    Order: arguments checked; TensorRT and the GPU probed (fail fast, nothing written); the precision path
    chosen by the TensorRT version; the bundle copied (or the checkpoint exported); limits and memory
    checked; engines built with a persisted timing cache; the manifest rewritten last (an interrupted
    build never leaves a folder whose manifest lists missing engines)."""
    say = (lambda message: print(message, flush=True)) if progress else (lambda message: None)
    if precision not in TRT_PRECISIONS:
        raise InvalidInputError(f"Unknown TensorRT precision {precision!r}; use one of {', '.join(TRT_PRECISIONS)}.")
    for name, value in (("max_batch", max_batch), ("max_frames", max_frames), ("max_pixels", max_pixels), ("max_seq", max_seq)):
        _positive(name, value)
    source, out = Path(source), Path(out_dir)
    is_bundle = (source / MANIFEST_NAME).is_file()
    if not is_bundle and not (source / "config.json").is_file():
        raise ModelLoadError(f"{source} holds neither a bundle (manifest.json) nor a checkpoint (config.json).")
    if source.resolve() == out.resolve():
        raise InvalidInputError("Write the TensorRT bundle into a new folder, not into its source.")

    env = tensorrt_environment(device_index)  # MissingDependencyError / DeviceUnavailableError, before any work
    if precision == "fp8" and _version(env.compute_capability) < FP8_MIN_COMPUTE_CAPABILITY:
        raise InvalidInputError(
            f"fp8 engines need FP8 tensor cores (compute capability ≥ 8.9: Ada, Hopper, Blackwell); {env.gpu.name} is "
            f"{env.compute_capability}. Build --precision int8 or fp16."
        )
    strategy = build_strategy(env.tensorrt_version, precision, read_manifest(source)["graphs"]["decoder"].get(
        "precision", "fp32") if is_bundle else None)
    if strategy.quantize:  # the Q/DQ export reads and writes the graph with the onnx package (export extra)
        from descore_sdk.errors import require

        require("onnx", "export", "--precision int8 (Q/DQ graphs)")
    say(f"TensorRT {env.tensorrt_version} on {env.gpu.name} (compute capability {env.compute_capability}); "
        f"{'strongly typed' if strategy.strongly_typed else 'builder flags ' + ','.join(strategy.flags)} {precision} engines")

    limit_flags = dict(max_batch=max_batch, max_frames=max_frames, max_pixels=max_pixels, max_seq=max_seq)
    form = decoder_form(env.tensorrt_version, strategy.quantize)
    if is_bundle:
        bundle = load_bundle(source)
        decoder = bundle.manifest["graphs"]["decoder"]
        if any(io["name"] == "seqlens_k" for io in decoder["inputs"]):
            if "com.microsoft" in (decoder.get("opsets") or {}):
                raise InvalidInputError(
                    f"The decoder of {source} updates its KV cache in place through onnxruntime's GroupQueryAttention "
                    "(exported with --kv-cache shared, the default), an onnxruntime contrib op TensorRT's ONNX parser "
                    "does not read. Build the engines from the checkpoint, or from a bundle exported with --kv-cache "
                    "shared-standard (TensorRT ≥ 10.15) or concat."
                )
            if form != "shared-standard":
                raise InvalidInputError(
                    f"The decoder of {source} updates its KV cache in place in standard ONNX ops (TensorScatter + "
                    f"Attention), which TensorRT's parser maps onto IKVCacheUpdateLayer/IAttention from 10.15 on; this is "
                    f"TensorRT {env.tensorrt_version}{' and int8 engines calibrate through the concatenating graph' if strategy.quantize else ''}. "
                    "Build from the checkpoint, or from a bundle exported with --kv-cache concat."
                )
        else:
            form = "concat"  # the bundle's own form: TensorRT parses the concatenating graph at any version
        limits = engine_limits(bundle.manifest, **limit_flags)  # refused here, before anything is written
        check_fits(memory_plan(bundle.manifest, limits, precision), env.gpu.total_memory, env.gpu.name)
        _copy_bundle(bundle.path, bundle.manifest, out)
    else:
        from .bundle import export_bundle

        options = dict(export_options or {})
        options.setdefault("progress", progress)
        options["kv_cache"] = form  # standard ONNX ops only (TensorRT's parser does not read onnxruntime's contrib ops)
        export_bundle(source, out, precision=strategy.graph_precision, max_frames=max_frames, max_pixels=max_pixels, **options)
    if strategy.quantize:
        _quantize_decoder(out, say, fp8=precision == "fp8")
    manifest = read_manifest(out)
    (out / MANIFEST_NAME).unlink()  # rewritten once the engines are complete

    limits = engine_limits(manifest, **limit_flags)
    if form == "shared-standard":
        from .bundle import graph_io

        decoder_file = manifest["graphs"]["decoder"]["file"]
        changed = static_cache_graph(out / decoder_file, limits.max_seq)
        say(f"  {decoder_file}: KV cache capacity fixed to {limits.max_seq} (in place); "
            f"unused inputs dropped: {', '.join(changed['dropped']) or 'none'}")
        manifest["files"][decoder_file] = file_record(out, decoder_file)
        manifest["graphs"]["decoder"] = {**manifest["graphs"]["decoder"], **graph_io(out / decoder_file)}
    if _version(env.tensorrt_version) < OPSET_18_SINCE:
        from .bundle import graph_io

        for kind in ("vision", "decoder"):
            file = manifest["graphs"][kind]["file"]
            if opset17_graph(out / file) > 17:
                manifest["files"][file] = file_record(out, file)
                manifest["graphs"][kind] = {**manifest["graphs"][kind], **graph_io(out / file)}
        say("  graphs converted to ONNX opset 17 (TensorRT 8.x's parser reads opsets 9-17)")
    plan = memory_plan(manifest, limits, precision)
    check_fits(plan, env.gpu.total_memory, env.gpu.name)
    cache_path = Path(timing_cache) if timing_cache is not None else default_timing_cache(env)
    engines = {"format_version": ENGINE_FORMAT_VERSION, "tensorrt_version": env.tensorrt_version,
               "compute_capability": env.compute_capability, "gpu_name": env.gpu.name, "precision": precision,
               "strongly_typed": strategy.strongly_typed, "builder_flags": list(strategy.flags),
               "version_compatible": False, "hardware_compatibility": "none", "limits": limits.to_dict(),
               "memory_bytes": plan, "kv_cache": kv_cache_strategy(env.tensorrt_version, form)}
    start = time.perf_counter()
    for kind, profiles in (("vision", vision_profiles(manifest, limits)), ("decoder", decoder_profiles(manifest, limits))):
        onnx_path = out / manifest["graphs"][kind]["file"]
        plan_name = f"{kind}.plan"
        say(f"  building {plan_name} from {onnx_path.name} ({len(profiles)} profile(s)) ...")
        t0 = time.perf_counter()
        _build_engine(onnx_path, out / plan_name, profiles, strategy, cache_path, workspace_gib)
        engines[kind] = {"file": plan_name, "profiles": profiles_to_json(profiles),
                         "build_seconds": round(time.perf_counter() - t0, 1)}
        manifest["files"][plan_name] = file_record(out, plan_name)
    engines["timing_cache"] = str(cache_path)
    manifest["engines"] = engines
    write_manifest(out, manifest)
    say(f"TensorRT bundle ready in {out} ({time.perf_counter() - start:.0f} s). Score with: "
        f"descore score VIDEO --prompt TEXT --model {out}")
    return out


def _quantize_decoder(out: Path, say, fp8: bool = False) -> None:
    """int8: replace the fp32 decoder of the bundle `out` by its Q/DQ form, calibrated on the decoder inputs of
    real prefills (the packaged sample videos) through the bundle itself; the manifest follows. The new file
    replaces the directory entry, never writing through a hard link into the source bundle."""
    from .precision import FP8_QDQ_PRECISION, QDQ_PRECISION, calibration_feeds, quantize_decoder_qdq

    manifest = read_manifest(out)
    decoder_file = manifest["graphs"]["decoder"]["file"]
    say(f"  calibrating int8 Q/DQ scales of {decoder_file} on real prefills (the packaged sample videos) ...")
    feeds = calibration_feeds(out)
    details = quantize_decoder_qdq(out / decoder_file, out / decoder_file, feeds, fp8=fp8)
    say(f"  {details['quantized_nodes']} linear layers get {'fp8' if fp8 else 'int8'} Q/DQ "
        f"({details['calibration_calls']} calibration calls)")
    for name in list(manifest["files"]):
        if name == decoder_file or name == decoder_file + ".data":
            del manifest["files"][name]
    for name in (decoder_file, decoder_file + ".data"):
        if (out / name).is_file():
            manifest["files"][name] = file_record(out, name)
    manifest["files"] = dict(sorted(manifest["files"].items()))
    manifest["graphs"]["decoder"]["precision"] = FP8_QDQ_PRECISION if fp8 else QDQ_PRECISION
    manifest["quantization"] = details
    write_manifest(out, manifest)


def _copy_bundle(source: Path, manifest: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for name in manifest["files"]:
        if name.endswith(".plan"):
            continue  # engines of an earlier build are rebuilt, never carried over
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(source / name, target)
        except OSError:
            shutil.copyfile(source / name, target)
    clean = {k: v for k, v in manifest.items() if k != "engines"}
    clean["files"] = {k: v for k, v in manifest["files"].items() if not k.endswith(".plan")}
    write_manifest(out, clean)


def _build_engine(onnx_path: Path, plan_path: Path, profiles: list[ProfileShapes], strategy: BuildStrategy,
                  cache_path: Path, workspace_gib: float | None) -> None:
    """Parse `onnx_path` with NVIDIA's ONNX parser and serialize an engine with `profiles` to `plan_path`.
    (TensorRT 10.x Python API: Builder.create_network / OnnxParser.parse_from_file / IBuilderConfig.
    add_optimization_profile, create_timing_cache, set_timing_cache / build_serialized_network.)"""
    from descore_sdk.runtime.tensorrt_runner import import_tensorrt

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strategy.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # required before TensorRT 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads <graph>.onnx.data next to it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for name in strategy.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.shapes.items():
            trt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(trt_profile)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeviceUnavailableError(f"TensorRT could not build an engine from {onnx_path.name}; see its log above "
                                     "(out of GPU memory? lower --max-seq / --max-batch).")
    plan_path.write_bytes(bytes(serialized))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache_path.with_suffix(".tmp")
    temporary.write_bytes(bytes(config.get_timing_cache().serialize()))
    temporary.replace(cache_path)


__all__ = ["EngineLimits", "BuildStrategy", "kv_cache_strategy", "decoder_form", "static_cache_graph", "opset17_graph", "engine_limits", "decoder_profiles", "vision_profiles", "build_strategy",
           "memory_plan", "check_fits", "build_engines", "TRT_PRECISIONS", "DEFAULT_TRT_PRECISION"]
