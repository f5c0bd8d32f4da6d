"""An in-place-cache bundle whose KV cache is fp16: the form onnxruntime CUDA can update on the GPU.

    descore export CHECKPOINT OUT --kv-cache shared-fp16       # at export, with a fidelity report against fp32
    python -m descore_sdk.export.half_cache BUNDLE OUT        # an existing --kv-cache shared bundle (the default)

The default export (`--kv-cache shared`) attends through onnxruntime's GroupQueryAttention with an fp32
cache. That op's CUDA kernel is registered for fp16 / bf16 caches only (onnxruntime contrib_ops/cuda/bert/
group_query_attention.cc), so on a GPU such a bundle cannot keep its cache on the device
(runtime/ort_device_cache.py refuses it). This rewrite makes the attention core fp16: each GroupQueryAttention
node gets its query/key/value cast to fp16, the `past_key_values.*` inputs and `present.*` outputs become
fp16 (half the cache memory), and the attention output is cast back to fp32. Weights, norms, rotary, MLPs and
heads stay as exported, and the cache stays shared (past and present are the same buffer; no Cast sits between
them and the op). The rest of OUT is BUNDLE's files (hard links) and a manifest with the new decoder I/O.

Fidelity against the fp32 graph is measured in tests/test_ort_device_cache.py (teacher-forced logits).
Only the CPU kernel's fp16 path has run; the CUDA kernel is the target.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from descore_sdk.bundle import MANIFEST_NAME, file_record, load_bundle, write_manifest
from descore_sdk.errors import InvalidInputError

GQA = "GroupQueryAttention"
CACHE_RECORD = {"form": "shared", "cache_type": "float16", "attention": "GroupQueryAttention in fp16"}  # manifest["kv_cache"]


def half_cache_graph(model):
    """The decoder ModelProto `model` (in-place cache) with an fp16 attention core and cache I/O, in place."""
    from onnx import TensorProto, helper

    graph = model.graph
    gqa = [node for node in graph.node if node.op_type == GQA]
    if not gqa:
        raise InvalidInputError("The decoder has no GroupQueryAttention node: export the bundle with --kv-cache shared.")
    caches = {io.name for io in graph.input if io.name.startswith("past_key_values.")}
    caches |= {io.name for io in graph.output if io.name.startswith("present.")}
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.name in caches:
            if info.type.tensor_type.elem_type != TensorProto.FLOAT:
                raise InvalidInputError(f"The decoder's cache {info.name!r} is not float32; it is already converted.")
            info.type.tensor_type.elem_type = TensorProto.FLOAT16
    nodes = []
    for node in graph.node:
        if node.op_type != GQA:
            nodes.append(node)
            continue
        # query, key, value (inputs 3/4 are the cache, 5/6 the lengths) and, when the rotation runs inside
        # the attention (export/graph_rewrite.fuse_rotary_into_attention), the cos/sin tables 7/8: the
        # kernel takes them in q's type
        for index in [i for i in (0, 1, 2, 7, 8) if i < len(node.input) and node.input[i]]:
            half = f"{node.input[index]}_fp16_{node.name}"
            nodes.append(helper.make_node("Cast", [node.input[index]], [half], to=TensorProto.FLOAT16,
                                          name=f"{node.name}_cast_input{index}"))
            node.input[index] = half
        output = node.output[0]
        node.output[0] = f"{output}_fp16"
        nodes += [node, helper.make_node("Cast", [node.output[0]], [output], to=TensorProto.FLOAT,
                                         name=f"{node.name}_cast_output")]
    stale = {node.output[0][: -len("_fp16")] for node in gqa}
    kept_info = [info for info in graph.value_info if info.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def half_cache_bundle(source: str | Path, out: str | Path) -> Path:
    """Write OUT: the bundle SOURCE (in-place cache) with its decoder rewritten by `half_cache_graph`."""
    import onnx

    from .bundle import graph_io

    bundle = load_bundle(source)
    source, out = Path(bundle.path), Path(out)
    if out.resolve() == source.resolve():
        raise InvalidInputError("Write the fp16-cache bundle into a new folder, not into its source.")
    decoder_file = bundle.manifest["graphs"]["decoder"]["file"]
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for name in bundle.manifest["files"]:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        if name == decoder_file:
            continue
        try:
            os.link(source / name, target)
        except OSError:
            shutil.copyfile(source / name, target)
    # The weights (decoder.onnx.data, when the graph has external data) are unchanged and stay where the graph
    # points; only the graph file is rewritten.
    model = onnx.load(str(source / decoder_file), load_external_data=False)
    onnx.save(half_cache_graph(model), str(out / decoder_file))
    manifest = dict(bundle.manifest)
    manifest["files"] = dict(manifest["files"])
    manifest["files"][decoder_file] = file_record(out, decoder_file)
    manifest["graphs"] = dict(manifest["graphs"])
    manifest["graphs"]["decoder"] = {**manifest["graphs"]["decoder"], **graph_io(out / decoder_file)}
    manifest["kv_cache"] = dict(CACHE_RECORD)
    write_manifest(out, manifest)
    load_bundle(out, verify=True)
    return out


if __name__ == "__main__":  # python -m descore_sdk.export.half_cache BUNDLE OUT
    if len(sys.argv) != 3:
        sys.exit("usage: python -m descore_sdk.export.half_cache BUNDLE OUT")
    print(half_cache_bundle(sys.argv[1], sys.argv[2]))
