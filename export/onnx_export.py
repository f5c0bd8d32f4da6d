"""torch → ONNX: `vision.onnx`, `decoder.onnx` and the token-embedding table of a DeScore model.

    from descore_sdk.export.onnx_export import export_onnx
    graphs = export_onnx(model, "out/")      # model: DeScoreModel, or a backbone plus reward_head=...
    graphs.to_dict()                          # everything a manifest needs: files, I/O names, sizes

The graphs and their I/O are described in export/DESIGN.md. We use the dynamo exporter
(`torch.onnx.export(..., dynamo=True)`, torch.export underneath): it is torch 2.13's maintained path,
captures the whole graph or fails loudly (TorchScript tracing silently freezes any Python int it
meets), and names dynamic axes from `torch.export.Dim`s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.export import Dim

from descore_sdk.config import SamplingConfig
from descore_sdk.errors import InvalidInputError
from descore_sdk.runtime.vision_inputs import VisionGraphSpec, vision_graph_inputs

from .decoder import DecoderWithCache, decoder_for_export
from .families import BackboneParts, backbone_parts, split_model, vision_graph_spec
from .vision import VisionEncoderForExport, vision_encoder_for_export

logger = logging.getLogger("descore_sdk.export")

VISION_FILE = "vision.onnx"
DECODER_FILE = "decoder.onnx"
EMBEDDING_FILE = "embed_tokens.npy"
DEFAULT_OPSET = 18  # LayerNormalization needs ≥ 17; 18 is what ORT ≥ 1.17 and TensorRT 10 both cover fully
ONNX_PROTOBUF_LIMIT = 2 * 1024**3


@dataclass
class ExportedGraphs:
    """What `export_onnx` wrote, and the facts a runtime needs to drive the graphs."""

    out_dir: str
    family: str
    vision_file: str
    decoder_file: str
    embedding_file: str
    vision: VisionGraphSpec
    vision_inputs: list[str]
    vision_outputs: list[str]
    decoder_inputs: list[str]
    decoder_outputs: list[str]
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    num_rewards: int
    num_deepstack: int
    opset: int
    max_frames: int
    max_pixels: int
    max_vision_patches: int  # per vision call, for the whole video at max_frames × max_pixels
    float_type: str = "fp32"  # weights/activations of both graphs (their I/O is float32 regardless)
    files: list[str] = field(default_factory=list)  # every file written, relative to out_dir
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["vision"] = self.vision.to_dict()
        return d


def export_onnx(
    model,
    out_dir: str | Path,
    *,
    reward_head: torch.nn.Linear | None = None,
    opset: int = DEFAULT_OPSET,
    max_frames: int | None = None,
    max_pixels: int | None = None,
    optimize: bool = True,
    external_data: bool | None = None,
    float_type: str = "fp32",
    kv_cache: str = "concat",
) -> ExportedGraphs:
    """Export `model` (a DeScoreModel, or a Qwen-VL backbone plus `reward_head`) to ONNX in `out_dir`.

    `max_frames` / `max_pixels` (per frame) bound the videos the bundle is meant for; they default to the
    model's DescoreConfig sampling (else the SDK defaults) and are recorded, not baked into the graphs
    (all sequence axes are dynamic). The model must be float32: the graphs are the fp32 reference that
    any lower-precision build is later checked against. `external_data`: store weights next to each graph
    (`<graph>.onnx.data`); None does so only for a graph over the 2 GB protobuf limit (any real backbone's
    decoder). `optimize` runs the ONNX optimiser (constant folding, dead-node removal) after export.
    `float_type`: "fp32" (default), or "fp16" / "bf16" for graphs whose weights and activations are in
    that type, with the fp32 islands of `export/precision.py` (I/O stays float32); the source model is
    still float32 and is not modified. `kv_cache`: "concat" (past in, past + new out), "shared" (one
    buffer per layer updated in place through onnxruntime's GroupQueryAttention; export/decoder.py) or
    "shared-standard" (the same contract in standard ONNX opset-24 ops, TensorScatter + Attention, which
    TensorRT ≥ 10.15 maps onto its in-place KV-cache layers; export/standard_attention.py). A
    "shared-standard" graph in fp16 / bf16 has its cache I/O in that type (the cache is updated in place,
    so past and present must share one type).
    """
    from .precision import HALF_TYPES, half_precision_copy

    if float_type != "fp32" and float_type not in HALF_TYPES:
        raise InvalidInputError(f"float_type must be fp32, {' or '.join(HALF_TYPES)}; got {float_type!r}.")
    if kv_cache not in ("concat", "shared", "shared-standard"):
        raise InvalidInputError(f"kv_cache must be concat, shared or shared-standard; got {kv_cache!r}.")
    backbone, head = split_model(model, reward_head)
    parts = backbone_parts(backbone)
    _check_float32(backbone, head, None if float_type == "fp32" else float_type)
    sampling = getattr(getattr(model, "descore_config", None), "sampling", None) or SamplingConfig()
    max_frames = int(max_frames or sampling.max_frames)
    max_pixels = int(max_pixels or sampling.max_pixels)
    if opset < 17:
        raise InvalidInputError(f"opset {opset} is too old: the vision LayerNorm needs opset 17 or newer.")
    spec = vision_graph_spec(parts)
    if max_pixels < (spec.patch_size * spec.merge_size) ** 2 or max_frames < 1:
        raise InvalidInputError(f"max_pixels={max_pixels} / max_frames={max_frames} leave no room for a single merged patch.")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            start = time.perf_counter()
            logger.info("[1/3] exporting the %s vision encoder → %s", parts.family, out / VISION_FILE)
            vision = vision_encoder_for_export(parts)
            if float_type != "fp32":
                vision = half_precision_copy(vision, float_type)
            _export(vision, _vision_example(vision, spec), _vision_dynamic_shapes(vision), out / VISION_FILE,
                    list(vision.input_names), list(vision.output_names), opset, optimize, external_data, _VISION_AXES)
            timings["vision"] = time.perf_counter() - start

            start = time.perf_counter()
            logger.info("[2/3] exporting the decoder (%d layers, KV cache, reward head) → %s",
                        len(parts.text_model.layers), out / DECODER_FILE)
            standard = kv_cache == "shared-standard"
            decoder = decoder_for_export(parts, head, "shared" if standard else kv_cache)
            if float_type != "fp32":
                decoder = half_precision_copy(decoder, float_type)
            cache_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[float_type] if standard else torch.float32
            _export(decoder, _decoder_example(decoder, parts, cache_dtype), _decoder_dynamic_shapes(decoder),
                    out / DECODER_FILE, decoder.input_names, decoder.output_names, opset, optimize, external_data,
                    _SHARED_DECODER_AXES if decoder.kv_cache == "shared" else _DECODER_AXES)
            if kv_cache == "shared":  # the onnxruntime-specific flavour: also fuse for onnxruntime (graph_rewrite.py)
                from .graph_rewrite import rewrite_shared_decoder

                counts = rewrite_shared_decoder(out / DECODER_FILE)
                logger.info("decoder rewrites for onnxruntime: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
            elif standard:
                from .standard_attention import standard_attention_in_file

                counts = standard_attention_in_file(out / DECODER_FILE)
                logger.info("decoder in standard ONNX ops: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
            timings["decoder"] = time.perf_counter() - start

            start = time.perf_counter()
            logger.info("[3/3] writing the token-embedding table → %s", out / EMBEDDING_FILE)
            table = parts.text_model.embed_tokens.weight.detach().to(torch.float32).cpu().numpy()
            np.save(out / EMBEDDING_FILE, table)
            timings["embedding"] = time.perf_counter() - start
    finally:
        backbone.train(was_training)

    text_cfg = parts.text_config
    patches_per_frame = max_pixels // spec.patch_size**2
    result = ExportedGraphs(
        out_dir=str(out),
        family=parts.family,
        vision_file=VISION_FILE,
        decoder_file=DECODER_FILE,
        embedding_file=EMBEDDING_FILE,
        vision=spec,
        vision_inputs=list(vision.input_names),
        vision_outputs=list(vision.output_names),
        decoder_inputs=decoder.input_names,
        decoder_outputs=decoder.output_names,
        num_layers=decoder.num_layers,
        num_attention_heads=decoder.num_heads,
        num_key_value_heads=decoder.num_kv_heads,
        head_dim=decoder.head_dim,
        hidden_size=int(text_cfg.hidden_size),
        vocab_size=int(parts.lm_head.out_features),
        num_rewards=int(head.out_features),
        num_deepstack=decoder.num_deepstack,
        opset=opset,
        max_frames=max_frames,
        max_pixels=max_pixels,
        max_vision_patches=-(-max_frames // spec.temporal_patch_size) * patches_per_frame,
        float_type=float_type,
        files=[name for graph in (VISION_FILE, DECODER_FILE) for name in (graph, graph + ".data") if (out / name).is_file()]
        + [EMBEDDING_FILE],
        timings_s={k: round(v, 2) for k, v in timings.items()},
    )
    logger.info("ONNX export done in %.1f s: %s", sum(timings.values()), ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return result


# -- example inputs and dynamic axes ----------------------------------------------------------------
# Example sizes are ≥ 2 and pairwise different: torch.export specialises axes of size 0/1 to constants.
_EXAMPLE_T, _EXAMPLE_H, _EXAMPLE_W = 2, 6, 4
_EXAMPLE_BATCH, _EXAMPLE_SEQ, _EXAMPLE_PAST = 2, 3, 5

# Final names of the dynamic axes: {graph input or output: {axis: name}}. Other outputs inherit them.
_VISION_AXES = {
    "pixel_values": {0: "num_patches"},
    "patch_position_ids": {0: "frame_patches"},
    "window_ids": {0: "frame_patches"},
    "pos_interp_indices": {0: "frame_patches"},
    "pos_interp_weights": {0: "frame_patches"},
    "visual_embeds": {0: "num_visual_tokens"},
    "deepstack_embeds": {1: "num_visual_tokens"},
}
_DECODER_AXES = {
    "inputs_embeds": {0: "batch_size", 1: "sequence_length"},
    "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
    "position_ids": {0: "position_rows", 1: "batch_size", 2: "sequence_length"},
    "deepstack_embeds": {1: "batch_size", 2: "sequence_length"},
    "past_key_values.0.key": {0: "batch_size", 2: "past_sequence_length"},
}
_SHARED_DECODER_AXES = {
    "inputs_embeds": {0: "batch_size", 1: "sequence_length"},
    "position_ids": {0: "position_rows", 1: "batch_size", 2: "sequence_length"},
    "deepstack_embeds": {1: "batch_size", 2: "sequence_length"},
    "seqlens_k": {0: "batch_size"},
    "past_key_values.0.key": {0: "batch_size", 2: "cache_capacity"},
}


def _vision_example(vision: VisionEncoderForExport, spec: VisionGraphSpec) -> tuple:
    t, h, w = _EXAMPLE_T, _EXAMPLE_H * spec.merge_size // 2, _EXAMPLE_W * spec.merge_size // 2
    width = vision.patch_embed.in_channels * spec.temporal_patch_size * spec.patch_size**2
    pixels = np.random.default_rng(0).standard_normal((t * h * w, width)).astype(np.float32)
    inputs = vision_graph_inputs(spec, pixels, (t, h, w))
    return tuple(torch.from_numpy(inputs[name]) for name in vision.input_names)


def _vision_dynamic_shapes(vision: VisionEncoderForExport) -> tuple:
    # The patch count is t·(h·w): a multiple of the frame size, which torch.export infers (AUTO) rather
    # than being told two independent axes.
    frame = Dim("frame_patches", min=4)
    shapes = {"pixel_values": {0: Dim.AUTO}, "patch_position_ids": {0: frame}, "window_ids": {0: frame},
              "pos_interp_indices": {0: frame}, "pos_interp_weights": {0: frame}}
    return tuple(shapes[name] for name in vision.input_names)


def _decoder_example(decoder: DecoderWithCache, parts: BackboneParts, cache_dtype=torch.float32) -> tuple:
    b, s, p = _EXAMPLE_BATCH, _EXAMPLE_SEQ, _EXAMPLE_PAST
    hidden = int(parts.text_config.hidden_size)
    gen = torch.Generator().manual_seed(0)
    shared = decoder.kv_cache == "shared"
    example = [torch.randn(b, s, hidden, generator=gen)]
    if not shared:
        example.append(torch.ones(b, p + s, dtype=torch.long))
    example.append((torch.arange(s) + p).expand(3, b, s).contiguous())
    if decoder.num_deepstack:
        example.append(torch.zeros(decoder.num_deepstack, b, s, hidden))
    if shared:  # p cached tokens + s new ones in a buffer with room to spare
        example += [torch.full((b,), p + s - 1, dtype=torch.int32), torch.tensor(p + s, dtype=torch.int32)]
    width = p + s + 1 if shared else p
    cache = [
        tuple(torch.randn(b, decoder.num_kv_heads, width, decoder.head_dim, generator=gen).to(cache_dtype) for _ in range(2))
        for _ in range(decoder.num_layers)
    ]
    return (*example, cache)


def _decoder_dynamic_shapes(decoder: DecoderWithCache) -> tuple:
    batch, seq = Dim("batch_size"), Dim("sequence_length")
    shared = decoder.kv_cache == "shared"
    past = Dim("cache_capacity", min=1) if shared else Dim("past_sequence_length", min=0)
    shapes = [{0: batch, 1: seq}] + ([] if shared else [{0: batch, 1: Dim.AUTO}]) + [{0: Dim.AUTO, 1: batch, 2: seq}]
    if decoder.num_deepstack:
        shapes.append({1: batch, 2: seq})
    if shared:
        shapes += [{0: batch}, None]
    shapes.append([({0: batch, 2: past}, {0: batch, 2: past}) for _ in range(decoder.num_layers)])
    return tuple(shapes)


# -- export and post-processing ---------------------------------------------------------------------
def _export(module, args, dynamic_shapes, path: Path, input_names, output_names, opset, optimize, external_data, axes) -> None:
    with _quiet_exporter_logs(), warnings.catch_warnings():
        # Naming one Dim on several inputs is the intended use; the exporter still warns about it.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        table = None
        if getattr(module, "kv_cache", None) == "shared":
            from .gqa import custom_translation_table

            table = custom_translation_table()
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            custom_translation_table=table,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            optimize=optimize,
            verbose=False,
        )
    _rename_dynamic_axes(program.model, axes)
    if external_data is None:  # only when one protobuf cannot hold the weights (with some room for the graph)
        weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
        external_data = weight_bytes > ONNX_PROTOBUF_LIMIT * 0.95
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    program.save(path, external_data=external_data)


@contextlib.contextmanager
def _quiet_exporter_logs():
    """The ONNX optimiser logs every rewrite at INFO; keep our own progress lines readable."""
    quiet = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING, "torch.onnx": logging.WARNING,
             "torch.export": logging.WARNING,
             # "torchvision is not installed. Skipping torchvision::nms" — we export no torchvision ops.
             "torch.onnx._internal.exporter._registration": logging.ERROR}
    loggers = [logging.getLogger(name) for name in quiet]
    levels = [lg.level for lg in loggers]
    for lg, level in zip(loggers, quiet.values()):
        lg.setLevel(max(lg.level, level))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _rename_dynamic_axes(model, axes: dict[str, dict[int, str]]) -> None:
    """Give the exporter's internal symbols (`s53`) our axis names on every value of the graph, and name
    derived output axes outright, so the files read as DESIGN.md does
    (`attention_mask: [batch_size, total_sequence_length]`, `visual_embeds: [num_visual_tokens, H]`)."""
    import onnx_ir as ir

    graph = model.graph
    renames: dict[str, str] = {}
    for value in graph.inputs:
        for axis, new_name in axes.get(value.name, {}).items():
            old = value.shape[axis] if value.shape is not None else None
            if isinstance(old, ir.SymbolicDim) and old.value and old.value != new_name:
                renames[old.value] = new_name
    if renames:
        pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(renames, key=len, reverse=True)) + r")\b")

        def rename(dim):
            if isinstance(dim, ir.SymbolicDim) and dim.value and pattern.search(dim.value):
                return ir.SymbolicDim(pattern.sub(lambda m: renames[m.group(1)], dim.value))
            return dim

        values = list(graph.inputs) + [out for node in ir.traversal.RecursiveGraphIterator(graph) for out in node.outputs]
        for value in values:
            if value.shape is not None:
                value.shape = ir.Shape([rename(d) for d in value.shape.dims])
    for value in graph.outputs:
        by_axis = axes.get(value.name)
        if by_axis and value.shape is not None:
            dims = list(value.shape.dims)
            for axis, new_name in by_axis.items():
                dims[axis] = ir.SymbolicDim(new_name)
            value.shape = ir.Shape(dims)


def _check_float32(backbone, head, float_type: str | None = None) -> None:
    """The model must be float32 — or, for half graphs (`float_type`), may be in a half type already (the
    export without an fp32 reference, which never holds an fp32 copy of a half checkpoint)."""
    dtypes = {p.dtype for p in backbone.parameters()} | {p.dtype for p in head.parameters()}
    allowed = {torch.float32} | ({torch.float16, torch.bfloat16} if float_type in ("fp16", "bf16") else set())
    if not dtypes <= allowed:
        raise InvalidInputError(
            f"The model has {sorted(str(d) for d in dtypes)} weights; export from float32 (model.float()) so the "
            "graphs are the fp32 reference. Lower precision is a separate, checked optimisation step."
        )
