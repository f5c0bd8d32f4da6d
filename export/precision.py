"""Reduced-precision bundles: fp16 / bf16 graphs, int8 / int4 weight-only quantization, and the fidelity
report that says what the reduction cost against fp32.

    descore export CHECKPOINT OUT_DIR --precision int4      # or fp16, bf16, int8 (default fp32)

Every graph keeps float32 inputs and outputs, so the host side (embedding table, KV cache, decode loop)
is the same at every precision. The decisions (which parts stay fp32, why accuracy_level 4) are in
export/DESIGN.md, "Precision".
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
HALF_TYPES = ("fp16", "bf16")
QUANTIZED_BITS = {"int8": 8, "int4": 4}
# MatMulNBits' accuracy_level 4 = the activation is quantized to int8 per block and the product runs on
# int8 dot-product kernels; the default (0 = unset) computes in fp32 from the dequantized weights,
# which on this 2-core CPU made int8 6-10x slower than the fp32 graph (DESIGN.md, measured).
DEFAULT_ACCURACY_LEVEL = 4
DEFAULT_BLOCK_SIZE = 32


def _torch_dtype(float_type: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}[float_type]


def half_precision_copy(module, float_type: str):
    """A copy of an export wrapper (`DecoderWithCache` / `VisionEncoderForExport`) with its weights in
    fp16 / bf16, except the fp32 islands, which share the source's fp32 tensors:

    - buffers (the rotary `inv_freq`: angles and cos/sin are formed in fp32, then cast to q's type);
    - the decoder's final norm and reward head (`norm`, `reward_head`), so `hidden` and `reward` are
      computed in fp32 from the last layer's output;
    - the vision patch embedding (one Conv over the pixels): ONNX Conv accepts bfloat16 only from
      opset 22, and its cost is small next to the blocks.

    RMSNorm inside the layers upcasts to fp32 by itself (transformers' Qwen RMSNorm), the wrappers cast
    attention scores to fp32 before the softmax, and the vision LayerNorm becomes an ONNX
    LayerNormalization, which accumulates in fp32 (`stash_type=1`). The copy is built tensor by tensor,
    so exporting an fp16 graph of a model never holds a second fp32 copy of it. A source whose weights are
    already in the target type (`export_bundle(..., fp32_reference=False)`) is shared, islands aside.
    """
    import torch

    dtype = _torch_dtype(float_type)
    islands = [getattr(module, name) for name in ("norm", "reward_head", "patch_embed") if hasattr(module, name)]
    keep_fp32 = {id(p) for island in islands for p in island.parameters()}
    memo = {}
    for param in module.parameters():
        target = torch.float32 if id(param) in keep_fp32 else dtype
        # a source already in the target type (a half checkpoint exported without the fp32 reference) is
        # shared, not copied; only the islands of such a source are upcast (small tensors)
        memo[id(param)] = param if param.dtype == target else type(param)(param.detach().to(target), requires_grad=False)
    for buffer in module.buffers():
        memo[id(buffer)] = buffer if not buffer.is_floating_point() or buffer.dtype == torch.float32 else buffer.float()
    return copy.deepcopy(module, memo).eval()


# -- int8 / int4: weight-only MatMulNBits ---------------------------------------------------------------
def quantize_graph(
    source,
    target,
    bits: int,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    keep_fp32: tuple[str, ...] = ("reward_head.weight",),
    external_data: bool | None = None,
) -> dict:
    """Write `target`: the fp32 graph `source` with every constant-weight MatMul (and bias-free Gemm, e.g.
    the LM head) replaced by onnxruntime's MatMulNBits with `bits`-bit block-quantized weights
    (onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer, asymmetric, `block_size`
    weights per scale). Products that read an initializer named in `keep_fp32` stay fp32 (the reward
    head: K×H weights, nothing to gain, and the reward is what the bundle is for).
    Returns what was done: {"bits", "block_size", "accuracy_level", "quantized", "kept_fp32"}."""
    import onnx

    from descore_sdk.errors import InvalidInputError

    MatMulNBitsQuantizer = _quantizer_class()

    if bits not in (4, 8):
        raise InvalidInputError(f"Weight-only quantization takes 4 or 8 bits, not {bits}.")
    if block_size < 16 or block_size & (block_size - 1):
        raise InvalidInputError(f"block_size must be a power of two ≥ 16 (MatMulNBits), got {block_size}.")
    model = onnx.load(str(source))
    _gemms_to_matmuls(model.graph, keep_fp32)
    kept = [node.name for node in model.graph.node if node.op_type in ("MatMul", "Gemm") and set(node.input) & set(keep_fp32)]
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=False,
                                     accuracy_level=accuracy_level, nodes_to_exclude=kept)
    quantizer.process()
    quantized = quantizer.model.model
    if external_data is None:  # the quantized graph is smaller: if the fp32 one fitted in one file, so does it
        external_data = Path(str(source) + ".data").is_file()
    target = Path(target)
    for stale in (target, target.with_name(target.name + ".data")):
        stale.unlink(missing_ok=True)
    onnx.save_model(quantized, str(target), save_as_external_data=external_data, all_tensors_to_one_file=True,
                    location=target.name + ".data")
    count = sum(1 for node in quantized.graph.node if node.op_type == "MatMulNBits")
    return {"bits": bits, "block_size": block_size, "accuracy_level": accuracy_level, "symmetric": False,
            "quantized": count, "kept_fp32": kept}


def _quantizer_class():
    """MatMulNBitsQuantizer, imported without its side effects: the module calls
    `logging.basicConfig(level=INFO)` at import (a root handler that would print every later log line of
    the user's program) and logs each node it visits at INFO."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    return MatMulNBitsQuantizer


def _gemms_to_matmuls(graph, keep: tuple[str, ...]) -> int:
    """Rewrite `Gemm(A, W, transB=1)` with a constant 2-D W and no bias (the exporter's form of a bias-free
    nn.Linear on a 2-D input, e.g. the LM head) as `MatMul(A, Wᵀ)`, which MatMulNBitsQuantizer handles
    (it quantizes MatMul only). Gemms with a bias, alpha/beta ≠ 1 or transA stay as they are. Returns the
    number of weights laid out anew."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    replaced = set()
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "Gemm" or len(node.input) != 2 or node.input[1] in keep:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or len(weight.dims) != 2:
            continue
        name = f"{node.input[1]}_matmul{'_t' if attrs.get('transB', 0) else ''}"
        if name not in initializers:  # a weight shared by several Gemms is laid out once
            array = numpy_helper.to_array(weight)
            array = array.T if attrs.get("transB", 0) else array
            initializers[name] = numpy_helper.from_array(array.copy(), name=name)
            graph.initializer.append(initializers[name])
        graph.node[index].CopyFrom(helper.make_node("MatMul", [node.input[0], name], list(node.output),
                                                    name=node.name or f"gemm_as_matmul_{index}"))
        replaced.add(node.input[1])
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    for init in list(graph.initializer):
        if init.name in replaced and init.name not in used:  # the untransposed copy, now unread
            graph.initializer.remove(init)
    return len(replaced)


# -- fidelity: the reduced bundle against fp32 -------------------------------------------------------------
DEFAULT_FIDELITY_VIDEOS = 200
SYNTHETIC_SIZE = 64  # px; a few merged tokens per frame: the whole model runs, at little cost per video
SYNTHETIC_FRAMES = 4
TEACHER_FORCED_VIDEOS = ("example_1_A.mp4", "example_2_A.mp4")


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (ties get their average rank)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def _average_ranks(values):
    import numpy as np

    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):  # ties share the mean of the ranks they span
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def pair_agreement(reference_a, reference_b, test_a, test_b) -> float:
    """Fraction of pairs (a_i, b_i) that the test rewards order as the reference rewards do:
    sign(test_a − test_b) == sign(reference_a − reference_b) (an exact tie agrees only with a tie)."""
    import numpy as np

    reference = np.sign(np.asarray(reference_a, np.float64) - np.asarray(reference_b, np.float64))
    test = np.sign(np.asarray(test_a, np.float64) - np.asarray(test_b, np.float64))
    return float(np.mean(reference == test))


def synthetic_pairs(num_pairs: int, *, seed: int = 0, size: int = SYNTHETIC_SIZE, num_frames: int = SYNTHETIC_FRAMES):
    """`num_pairs` (frames_a, frames_b, prompt) of procedurally rendered clips (`training/synth.py`): a
    scene as the prompt describes it, and its twin (same random geometry) with one quality or alignment
    factor worsened — the kind of pair a reward model is asked to order. Frames are (T, H, W, 3) uint8."""
    import numpy as np

    from descore_sdk.training.synth import BACKGROUNDS, COLORS, MAX_SEVERITY, MOTIONS, SHAPES, Scene, realise_spec, render_frames

    rng = np.random.default_rng(seed)
    factors = sorted(MAX_SEVERITY)
    pairs = []
    for index in range(num_pairs):
        scene = Scene(shape=str(rng.choice(SHAPES)), color=str(rng.choice(sorted(COLORS))),
                      motion=str(rng.choice(sorted(MOTIONS))), background=str(rng.choice(sorted(BACKGROUNDS))))
        factor = str(rng.choice(factors))
        severity = int(rng.integers(1, MAX_SEVERITY[factor] + 1))
        clip_seed = seed * 1_000_003 + index
        clean = realise_spec(scene, {}, clip_seed, num_frames)
        worse = realise_spec(scene, {factor: severity}, clip_seed, num_frames)
        render = dict(width=size, height=size, num_frames=num_frames)
        pairs.append((render_frames(clean, **render), render_frames(worse, **render), scene.prompt))
    return pairs


def packaged_samples() -> list[tuple]:
    """(video path, prompt) of the sample videos shipped in the package (VideoAlign examples, MIT)."""
    import json
    from importlib import resources

    root = Path(str(resources.files("descore_sdk.assets")))
    samples = json.loads((root / "samples.json").read_text())
    return [(root / pair[key], pair["prompt"]) for pair in samples["pairs"] for key in ("video_a", "video_b")]


def fidelity_report(
    model,
    bundle_dir,
    reference_dir,
    *,
    num_videos: int = DEFAULT_FIDELITY_VIDEOS,
    sample_videos: list[tuple] | None = None,
    threads: int | None = None,
    batch_size: int = 8,
    print_table: bool = True,
) -> dict:
    """How far the reduced-precision bundle in `bundle_dir` is from fp32.

    - generated: `num_videos` synthetic clips (`synthetic_pairs`, num_videos/2 pairs), fast mode, scored
      by this bundle and by `reference_dir` (the same export's fp32 graphs, which parity.json holds to
      ≤ 1e-4 of torch): Spearman of the headline rewards, pair-order agreement, max/mean |Δreward|.
    - samples: the real sample videos (`sample_videos` [(path, prompt)], default the packaged ones), fast
      mode: |Δreward| per video and the max.
    - teacher_forced: the parity check against the fp32 torch `model` (the fixed CoT fed token by token) on
      two sample videos: max/mean |Δ| of the CoT-step logits, the final hidden state and the rewards.
    A bundle onnxruntime cannot run on this machine (bf16 on CPU) gets `measurable: false` and the
    reason, never made-up numbers.
    """
    import numpy as np
    import onnxruntime

    from descore_sdk.errors import DescoreError
    from descore_sdk.scorer import Scorer

    from .parity import DEFAULT_MAX_FRAMES, default_video, parity_report

    num_videos = max(2, int(num_videos) // 2 * 2)
    options = dict(backend="onnxruntime", backend_options={"threads": threads}, mode="fast", max_frames=DEFAULT_MAX_FRAMES)
    report: dict = {"reference": "the fp32 graphs of this export (parity.json: ≤ 1e-4 from torch)",
                    "versions": {"onnxruntime": onnxruntime.__version__}}
    try:
        scorer = Scorer.from_pretrained(bundle_dir, **options)
    except DescoreError as exc:
        return {**report, "measurable": False, "reason": f"onnxruntime cannot run this bundle here: {exc}"}
    # Our own temporary copy: no need to hash its (possibly tens of GB of) fp32 weights again.
    reference = Scorer.from_pretrained(reference_dir, **{**options, "backend_options": {"threads": threads, "verify": False}})

    def headline_and_all(results) -> tuple:
        return (np.array([r.reward for r in results]), np.array([list(r.rewards.values()) for r in results]))

    pairs = synthetic_pairs(num_videos // 2)
    videos = [frames for a, b, _ in pairs for frames in (a, b)]
    prompts = [prompt for _, _, prompt in pairs for _ in range(2)]
    test_head, test_all = headline_and_all(scorer.score_batch(videos, prompts, batch_size=batch_size))
    ref_head, ref_all = headline_and_all(reference.score_batch(videos, prompts, batch_size=batch_size))
    delta = np.abs(test_all - ref_all)
    report["generated"] = {
        "num_videos": len(videos),
        "num_pairs": len(pairs),
        "clip": {"frames": SYNTHETIC_FRAMES, "size": [SYNTHETIC_SIZE, SYNTHETIC_SIZE], "mode": "fast"},
        "spearman": spearman(ref_head, test_head),
        "pair_agreement": pair_agreement(ref_head[0::2], ref_head[1::2], test_head[0::2], test_head[1::2]),
        "max_abs_diff": float(delta.max()),
        "mean_abs_diff": float(delta.mean()),
        "reference_reward_std": float(ref_head.std()),  # a Δ means something only next to the spread
        "finite": bool(np.isfinite(test_all).all()),
        # Headline rewards in pair order (a0, b0, a1, b1, ...), so the figures above can be re-derived.
        "rewards": {"reference": [float(v) for v in ref_head], "test": [float(v) for v in test_head]},
    }

    samples = sample_videos if sample_videos is not None else packaged_samples()
    sample_test = scorer.score_batch([v for v, _ in samples], [p for _, p in samples], batch_size=batch_size)
    sample_ref = reference.score_batch([v for v, _ in samples], [p for _, p in samples], batch_size=batch_size)
    names = [Path(str(v)).name for v, _ in samples]
    names = names if len(set(names)) == len(names) else [str(v) for v, _ in samples]  # two folders, same names
    per_video = {name: float(np.abs(np.array(list(t.rewards.values())) - np.array(list(r.rewards.values()))).max())
                 for name, t, r in zip(names, sample_test, sample_ref)}
    report["samples"] = {"mode": "fast", "max_frames": DEFAULT_MAX_FRAMES, "abs_diff": per_video,
                         "max_abs_diff": max(per_video.values()) if per_video else float("nan")}

    teacher = {}
    for name in TEACHER_FORCED_VIDEOS:
        video = default_video().with_name(name)
        checked = parity_report(model, bundle_dir, video, threads=threads, print_table=False)
        teacher[name] = {"think": checked["think"], "fast": checked["fast"], "reference_scale": checked["reference_scale"],
                         "num_cot_tokens": checked["num_cot_tokens"]}
    report["teacher_forced"] = teacher
    worst = {key: max(v["think"].get(key, {}).get("max_abs", 0.0) for v in teacher.values()) for key in ("logits", "hidden", "reward")}
    report["teacher_forced_max_abs"] = worst
    report["measurable"] = True
    report["finite"] = report["generated"]["finite"] and all(np.isfinite(list(per_video.values())))
    if print_table:
        print(format_fidelity(report), flush=True)
    return report


def fidelity_summary(report: dict) -> dict:
    """The manifest's short form of a fidelity report."""
    if not report.get("measurable"):
        return {"measurable": False, "reason": report.get("reason")}
    generated = report["generated"]
    return {
        "measurable": True,
        "finite": report["finite"],
        "num_videos": generated["num_videos"],
        "reward_spearman": generated["spearman"],
        "pair_agreement": generated["pair_agreement"],
        "max_abs_reward_diff_generated": generated["max_abs_diff"],
        "max_abs_reward_diff_samples": report["samples"]["max_abs_diff"],
        "teacher_forced_max_abs": report["teacher_forced_max_abs"],
    }


def format_fidelity(report: dict) -> str:
    """The fidelity report as a few lines of text."""
    precision = (report.get("graphs") or {}).get("decoder") or report.get("precision", "?")
    if not report.get("measurable"):
        return f"Fidelity of the {precision} graphs: not measurable on this machine ({report.get('reason')})."
    g, s, t = report["generated"], report["samples"], report["teacher_forced_max_abs"]
    lines = [
        f"Fidelity of the {precision} graphs against fp32 (fast-mode rewards; teacher-forced vs torch):",
        f"  {g['num_videos']} generated videos: reward Spearman {g['spearman']:.4f}, pair-order agreement "
        f"{g['pair_agreement']:.3f} over {g['num_pairs']} pairs, max |Δreward| {g['max_abs_diff']:.2e} "
        f"(mean {g['mean_abs_diff']:.2e}; reward std {g['reference_reward_std']:.2e})",
        f"  {len(s['abs_diff'])} sample videos: max |Δreward| {s['max_abs_diff']:.2e}",
        f"  teacher-forced on {', '.join(report['teacher_forced'])}: max |Δ| logits {t['logits']:.2e}, "
        f"hidden {t['hidden']:.2e}, reward {t['reward']:.2e}",
    ]
    if not report["finite"]:
        lines.append("  NON-FINITE rewards: this precision overflows for this model; do not deploy it.")
    return "\n".join(lines)


# -- int8 Q/DQ graphs for TensorRT (`descore export --format tensorrt --precision int8`) ---------------------------
# TensorRT builds int8 engines from explicitly quantized graphs: QuantizeLinear/DequantizeLinear pairs with
# symmetric scales (zero point 0) in front of the layers that should run in int8 (TensorRT Developer Guide,
# "Explicit Quantization", 8.x – 11.x). onnxruntime's static quantizer writes exactly that with the options
# below (onnxruntime.quantization.quantize_static, QuantFormat.QDQ, ORT 1.17 – 1.32 docs; the same options
# as Hugging Face Optimum's TensorRT preset): int8 activations and weights, both symmetric, weights per output
# channel, and the fp32 weights kept behind their own Q/DQ pair (TensorRT quantizes them when it builds).
QDQ_PRECISION = "int8-qdq"  # manifest["graphs"]["decoder"]["precision"] of such a graph
QDQ_EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "AddQDQPairToWeight": True,
                     "DedicatedQDQPair": True}
DEFAULT_CALIBRATION_TOKENS = 8  # CoT steps per calibration video after its prefill


# FP8 (E4M3) Q/DQ for TensorRT's FP8 engines (compute capability ≥ 8.9). onnxruntime's quantizer has a float8
# path, but it sets scales from the std of a Distribution calibration (a Gaussian fit that clips outliers) and
# that calibrator fails on decoder feeds of varying sequence length (ORT 1.32: "inhomogeneous shape"). NVIDIA's
# recipe (TensorRT Model Optimizer's FP8 default) is max calibration, per tensor: scale = amax / 448, the E4M3
# maximum. `qdq_to_fp8` turns the int8 graph above into exactly that: the same nodes and min/max calibration
# (int8 scale = amax / 127, symmetric), scales re-expressed for E4M3 and taken per tensor (the largest
# channel's amax for weights), zero points float8 0, opset ≥ 19 (QuantizeLinear's float8 types).
FP8_QDQ_PRECISION = "fp8-qdq"
E4M3_MAX = 448.0


def qdq_to_fp8(model) -> int:
    """Rewrite the int8 Q/DQ ModelProto `model` (from `quantize_decoder_qdq`) into FP8 E4M3 Q/DQ in place;
    returns the number of scales converted."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    converted = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale_name, zero_name = node.input[1], node.input[2]
        if scale_name not in converted:
            zero = numpy_helper.to_array(initializers[zero_name])
            if zero.dtype != np.int8 or zero.any():
                raise ValueError(f"{node.name}: not a symmetric int8 Q/DQ pair (zero point {zero.dtype})")
            amax = numpy_helper.to_array(initializers[scale_name]).astype(np.float64) * 127.0
            initializers[scale_name].CopyFrom(numpy_helper.from_array(np.asarray(amax.max() / E4M3_MAX, np.float32), scale_name))
            initializers[zero_name].CopyFrom(helper.make_tensor(zero_name, TensorProto.FLOAT8E4M3FN, [], [0.0]))
            converted.add(scale_name)
        for attribute in [a for a in node.attribute if a.name == "axis"]:  # per tensor now
            node.attribute.remove(attribute)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 19:
            opset.version = 19
    return len(converted)


def qdq_linear_nodes(model) -> list[str]:
    """The decoder's linear layers: MatMul nodes whose second input is a weight (an initializer). The
    attention products (activation × activation) and the two heads (Gemm: LM head and reward head, fp32
    islands as at every precision) stay in floating point."""
    weights = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights]


def calibration_feeds(bundle_dir, samples: list[tuple] | None = None, *, cot_tokens: int = DEFAULT_CALIBRATION_TOKENS,
                      threads: int | None = None) -> list[dict]:
    """Real decoder inputs for calibration: every decoder call the onnxruntime backend makes while scoring
    `samples` ((video, prompt) pairs; default the packaged sample videos) in think mode with `cot_tokens`
    teacher-forced CoT steps — the prompt prefill (video tokens included) and decode steps, so both shapes
    of activation are measured. The bundle must have the concatenating cache (TensorRT's graphs)."""
    import numpy as np

    from descore_sdk.runtime.onnx_backend import OnnxBackend
    from descore_sdk.scorer import Scorer

    backend = OnnxBackend(bundle_dir, threads=threads, device_cache=False)
    if backend.model.shared_cache:
        raise ValueError("calibration_feeds needs a --kv-cache concat bundle")  # build_engines guarantees it
    scorer = Scorer.from_pretrained(bundle_dir, device="cpu", backend_options={"threads": threads})
    feeds = []
    real_infer = backend.model.decoder.infer

    def recording_infer(feed):
        feeds.append({name: np.array(value) for name, value in feed.items()})
        return real_infer(feed)

    backend.model.decoder.infer = recording_infer
    options = scorer.options.replace(mode="think")
    forced = np.asarray(scorer.prompts.encode("The video is smooth and the colors are natural; it follows the prompt."),
                        dtype=np.int64)[:cot_tokens]
    for video, prompt in samples if samples is not None else packaged_samples():
        inputs = scorer.prepare(video, prompt, mode="think")
        backend.score_batch([inputs], options, scorer.stop_ids, [len(forced)], forced_cots=[forced])
    return feeds


def quantize_decoder_qdq(source, target, feeds: list[dict], *, fp8: bool = False) -> dict:
    """Write `target`: the fp32 decoder graph `source` with int8 (or, with `fp8`, FP8 E4M3: `qdq_to_fp8`)
    Q/DQ pairs before its linear layers, scales calibrated (min/max) on `feeds`. Returns what was done."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Feeds(CalibrationDataReader):
        def __init__(self, items):
            self.items = iter(items)

        def get_next(self):
            return next(self.items, None)

    source, target = Path(source), Path(target)
    model = onnx.load(str(source))  # into memory, external weights included, so `target` may be `source`
    nodes = qdq_linear_nodes(model)
    external = Path(str(source) + ".data").is_file()
    for stale in (target, Path(str(target) + ".data")):
        stale.unlink(missing_ok=True)  # a new file, not a write through a hard link into another bundle
    # No quant_pre_process: its onnxruntime graph optimisation would fuse nodes into onnxruntime contrib ops,
    # which TensorRT's parser does not read. Its "consider pre-processing" advice is therefore silenced.
    quiet = _DropMessages("pre-processing")
    logging.getLogger().addFilter(quiet)
    try:
        quantize_static(model, str(target), Feeds(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                        op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax,
                        use_external_data_format=external, extra_options=dict(QDQ_EXTRA_OPTIONS))
    finally:
        logging.getLogger().removeFilter(quiet)
    details = {"format": "QDQ", "activations": "int8 symmetric per tensor", "weights": "int8 symmetric per output channel",
               "calibration": "min/max", "calibration_calls": len(feeds), "quantized_nodes": len(nodes),
               "kept_float": "attention products, final norm, LM head, reward head, everything that is not a linear layer"}
    if fp8:
        model = onnx.load(str(target))
        qdq_to_fp8(model)
        for stale in (target, Path(str(target) + ".data")):
            stale.unlink(missing_ok=True)
        onnx.save(model, str(target), save_as_external_data=external, location=target.name + ".data" if external else None)
        details.update(activations="fp8 e4m3 per tensor (amax / 448)", weights="fp8 e4m3 per tensor (amax / 448)")
    return details


class _DropMessages(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record) -> bool:
        return self.text not in record.getMessage()
