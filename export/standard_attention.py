"""The in-place decoder in standard ONNX ops: what TensorRT ≥ 10.15 turns into its KV-cache layers.

    descore export CHECKPOINT OUT --kv-cache shared-standard      # or chosen by --format tensorrt (10.15+)

The `--kv-cache shared` decoder updates one preallocated buffer per layer through onnxruntime's
GroupQueryAttention and rotates q/k with onnxruntime's RotaryEmbedding (export/gqa.py): contrib ops that
TensorRT's ONNX parser does not read. `standard_attention` rewrites that graph into ONNX opset 24 with
the same inputs, outputs and arithmetic, so the runtime drives it exactly like the onnxruntime flavour
(`seqlens_k`, `total_sequence_length`, one buffer bound as past and present):

- com.microsoft RotaryEmbedding(x, position_ids, cos, sin) → ONNX RotaryEmbedding-23(x, cos, sin,
  position_ids), the same non-interleaved rotation (TensorRT's parser reads it since 10.15);
- GroupQueryAttention(q, k, v, past_key, past_value, seqlens_k, total) → per layer
  TensorScatter-24(past, new keys/values, write index, axis −2) — TensorRT's parser maps it onto
  IKVCacheUpdateLayer, whose output shares the cache input's memory — then Attention-23(q, keys, values,
  mask) over the whole buffer — mapped onto IAttention — with a boolean mask that lets row b's query s
  see columns 0 … write[b] + s, where write[b] = seqlens_k[b] + 1 − S (GroupQueryAttention's semantics,
  export/gqa.py). The mask is built once per graph; IAttention has no length input before TensorRT 11.

Facts from onnx-tensorrt's importers (onnxOpImporters.cpp, the TensorRT 10.15 parser) and NVIDIA's
TensorRT 10.15 API docs: TensorScatter needs a 4-D cache, axis −2 and mode "linear"; the cache must be a
network input with a static capacity (export/tensorrt.py fixes it to --max-seq) and the scattered cache a
network output; Attention must have no past_key/past_value inputs and one output (scale is applied by the
parser as √scale on q and k). onnxruntime (1.23+) runs all three ops on the CPU, which is how this graph
is checked here against the onnxruntime flavour and transformers (tests/test_standard_attention.py).
TensorRT itself has not run it in this repository.
"""

from __future__ import annotations

import numpy as np

MSFT = "com.microsoft"
OPSET = 24  # TensorScatter


def standard_attention(model) -> dict[str, int]:
    """Rewrite the shared-cache decoder ModelProto `model` in place (see the module docstring); returns
    how many rotations and attention nodes were replaced."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    counts = {"rotary": 0, "attention": 0}
    constants = {
        "std_attn.one": np.asarray([1], np.int64),
        "std_attn.zero_scalar": np.asarray(0, np.int64),
        "std_attn.one_scalar": np.asarray(1, np.int64),
        "std_attn.axis0": np.asarray([0], np.int64),
        "std_attn.axis1": np.asarray([1], np.int64),
        "std_attn.axis2": np.asarray([2], np.int64),
        "std_attn.axes01": np.asarray([0, 1], np.int64),
        "std_attn.flat_heads": np.asarray([0, 0, -1], np.int64),
    }
    mask_nodes: list = []
    mask_name = None

    def mask_for(query: str, past_key: str, seqlens_k: str) -> tuple[str, str]:
        """(the (B, 1, S, capacity) boolean mask, the (B,) write index); built for the first layer, shared."""
        nonlocal mask_name
        if mask_name is None:
            p = "std_attn.mask"
            mask_nodes.extend([
                helper.make_node("Shape", [query], [f"{p}.S"], start=1, end=2),
                helper.make_node("Cast", [seqlens_k], [f"{p}.seqlens64"], to=TensorProto.INT64),
                helper.make_node("Add", [f"{p}.seqlens64", "std_attn.one"], [f"{p}.total"]),
                helper.make_node("Sub", [f"{p}.total", f"{p}.S"], ["std_attn.write"]),  # (B,)
                helper.make_node("Shape", [past_key], [f"{p}.C"], start=2, end=3),
                helper.make_node("Squeeze", [f"{p}.C", "std_attn.axis0"], [f"{p}.C_scalar"]),
                helper.make_node("Squeeze", [f"{p}.S", "std_attn.axis0"], [f"{p}.S_scalar"]),
                helper.make_node("Range", ["std_attn.zero_scalar", f"{p}.C_scalar", "std_attn.one_scalar"], [f"{p}.cols"]),
                helper.make_node("Range", ["std_attn.zero_scalar", f"{p}.S_scalar", "std_attn.one_scalar"], [f"{p}.rows"]),
                helper.make_node("Unsqueeze", ["std_attn.write", "std_attn.axis1"], [f"{p}.write_col"]),  # (B, 1)
                helper.make_node("Unsqueeze", [f"{p}.rows", "std_attn.axis0"], [f"{p}.rows_row"]),  # (1, S)
                helper.make_node("Add", [f"{p}.write_col", f"{p}.rows_row"], [f"{p}.last"]),  # (B, S): last visible column
                helper.make_node("Unsqueeze", [f"{p}.last", "std_attn.axis2"], [f"{p}.last3"]),  # (B, S, 1)
                helper.make_node("Unsqueeze", [f"{p}.cols", "std_attn.axes01"], [f"{p}.cols3"]),  # (1, 1, C)
                helper.make_node("LessOrEqual", [f"{p}.cols3", f"{p}.last3"], [f"{p}.allowed"]),  # (B, S, C)
                helper.make_node("Unsqueeze", [f"{p}.allowed", "std_attn.axis1"], [p]),  # (B, 1, S, C)
            ])
            mask_name = p
        return mask_name, "std_attn.write"

    replaced: dict[int, list] = {}  # node index → its replacement (indices: protobuf wrappers' ids are not stable)
    for index, node in enumerate(graph.node):
        if node.domain != MSFT:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "RotaryEmbedding":
            if attrs.get("interleaved", 0) or attrs.get("rotary_embedding_dim", 0) or attrs.get("is_packed_batching", 0) \
                    or attrs.get("scale", 1.0) != 1.0:
                raise ValueError(f"{node.name}: a RotaryEmbedding form this rewrite does not handle ({attrs})")
            x, position_ids, cos, sin = node.input
            replaced[index] = [helper.make_node("RotaryEmbedding", [x, cos, sin, position_ids], list(node.output),
                                                   name=node.name, num_heads=int(attrs["num_heads"]), interleaved=0)]
            counts["rotary"] += 1
        elif node.op_type == "GroupQueryAttention":
            if len(node.input) != 7 or attrs.get("do_rotary", 0) or attrs.get("softcap", 0.0) or attrs.get("local_window_size", -1) != -1:
                raise ValueError(f"{node.name}: a GroupQueryAttention form this rewrite does not handle ({attrs})")
            q, k, v, past_key, past_value, seqlens_k, _total = node.input
            heads, kv_heads = int(attrs["num_heads"]), int(attrs["kv_num_heads"])
            p = f"std_attn.{node.name or counts['attention']}"
            for name, value in ((f"{p}.q_shape", [0, 0, heads, -1]), (f"{p}.kv_shape", [0, 0, kv_heads, -1])):
                constants[name] = np.asarray(value, np.int64)
            mask, write = mask_for(q, past_key, seqlens_k)
            nodes = []
            for source, shape, target in ((q, f"{p}.q_shape", f"{p}.q4"), (k, f"{p}.kv_shape", f"{p}.k4"), (v, f"{p}.kv_shape", f"{p}.v4")):
                nodes += [helper.make_node("Reshape", [source, shape], [f"{target}.bshd"]),
                          helper.make_node("Transpose", [f"{target}.bshd"], [target], perm=[0, 2, 1, 3])]  # (B, heads, S, hd)
            out, present_key, present_value = node.output
            nodes += [
                helper.make_node("TensorScatter", [past_key, f"{p}.k4", write], [present_key], axis=-2, mode="linear"),
                helper.make_node("TensorScatter", [past_value, f"{p}.v4", write], [present_value], axis=-2, mode="linear"),
                helper.make_node("Attention", [f"{p}.q4", present_key, present_value, mask], [f"{p}.y"],
                                 scale=float(attrs.get("scale", 0.0)) or float(1.0), is_causal=0),
                helper.make_node("Transpose", [f"{p}.y"], [f"{p}.y_bshd"], perm=[0, 2, 1, 3]),
                helper.make_node("Reshape", [f"{p}.y_bshd", "std_attn.flat_heads"], [out]),
            ]
            if not attrs.get("scale"):
                raise ValueError(f"{node.name}: GroupQueryAttention without an explicit scale")
            replaced[index] = nodes
            counts["attention"] += 1
        else:
            raise ValueError(f"{node.op_type} ({MSFT}) has no standard-ONNX form here; export with --kv-cache shared-standard "
                             "from the checkpoint (no onnxruntime-only rewrites)")
    if counts["attention"]:
        first = min(i for i, n in enumerate(graph.node) if n.op_type == "GroupQueryAttention" and n.domain == MSFT)
        replaced[first] = mask_nodes + replaced[first]
    kept = []
    for index, node in enumerate(graph.node):
        kept.extend(replaced.get(index, [node]))
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    # value_info recorded for the replaced nodes' outputs stays valid (same names, same shapes and types)
    imports = [o for o in model.opset_import if o.domain not in ("", "ai.onnx", MSFT)]
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", OPSET), *imports])
    return counts


def standard_attention_in_file(path) -> dict[str, int]:
    """`standard_attention` on the decoder graph at `path` (its weights stay where they are)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = standard_attention(model)
    onnx.save(model, str(path))
    return counts
