"""Rewrites of exported graphs for onnxruntime (used on the `--kv-cache shared` decoder, the graph flavour
that already relies on onnxruntime's own ops; the portable `concat` graphs stay standard ONNX).

RMSNorm. transformers' Qwen RMSNorm (`x · rsqrt(mean(x²) + eps) · weight`) exports as seven nodes:

    Pow(x, 2) → ReduceMean(axes=[-1], keepdims) → Add(eps) → Sqrt → Reciprocal → Mul(x, ·) → Mul(weight, ·)

onnxruntime's graph optimiser fuses the Div form of this chain, not the Reciprocal form torch's exporter
writes, so a decode step of a Qwen3-VL decoder ran 33 unfused norms (231 small kernels, each with its
thread-pool round trip). `fuse_rms_norms` replaces every exact chain by onnxruntime's
SimplifiedLayerNormalization (ONNX domain, since onnxruntime 1.x; what onnxruntime-genai's model
builder emits), which computes the same expression in fp32 in one kernel. Chains with casts between the
nodes (fp16/bf16 graphs) are not touched.

Packed projections. q/k/v (and the MLP's gate/up) are separate MatMuls over the same input; `pack_matmuls`
makes each group one MatMul over the concatenated weights followed by a Split (what onnxruntime-genai's
builder writes): fewer, larger products, one read of the input.

Rotary inside attention. The shared-cache decoder rotates q and k with one RotaryEmbedding each, fed each
token's own M-RoPE cos/sin as its table (export/gqa.py). GroupQueryAttention can rotate q and k itself
(`do_rotary`, with `cos_cache`/`sin_cache` and `position_ids` inputs; onnxruntime 1.32's CPU kernel
checks that the table has at least `total_sequence_length` rows), so `fuse_rotary_into_attention`
passes the same table — zero rows appended to reach that length, built once per graph — and drops the
two RotaryEmbedding nodes of every layer.

Each rewrite leaves the values as they were (tests/test_graph_rewrite.py checks each against the
formula and the unrewritten graph, and every bundle test checks the rewritten decoder against
transformers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _constant_value(name: str, initializers: dict, constants: dict):
    if name in initializers:
        from onnx import numpy_helper

        return numpy_helper.to_array(initializers[name])
    return constants.get(name)


def fuse_rms_norms(model) -> int:
    """Rewrite `model` (an onnx ModelProto) in place; returns how many norms were fused."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def only_consumer(name, op_type):
        users = consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type or name in outputs:
            return None
        return users[0]

    remove, insert = set(), []
    for pow_node in graph.node:
        if pow_node.op_type != "Pow":
            continue
        exponent = _constant_value(pow_node.input[1], initializers, constants)
        if exponent is None or np.asarray(exponent).size != 1 or float(np.asarray(exponent)) != 2.0:
            continue
        x = pow_node.input[0]
        mean = only_consumer(pow_node.output[0], "ReduceMean")
        add = mean and only_consumer(mean.output[0], "Add")
        sqrt = add and only_consumer(add.output[0], "Sqrt")
        recip = sqrt and only_consumer(sqrt.output[0], "Reciprocal")
        scale = recip and only_consumer(recip.output[0], "Mul")
        if scale is None or x not in scale.input:
            continue
        weight_mul = only_consumer(scale.output[0], "Mul")
        if weight_mul is None:
            continue
        weight = next((i for i in weight_mul.input if i != scale.output[0]), None)
        if weight not in initializers or len(numpy_helper.to_array(initializers[weight]).shape) != 1:
            continue
        axes = _constant_value(mean.input[1], initializers, constants) if len(mean.input) > 1 else None
        attrs = {a.name: helper.get_attribute_value(a) for a in mean.attribute}
        if axes is None:
            axes = attrs.get("axes")
        if axes is None or list(np.asarray(axes).reshape(-1)) != [-1] or attrs.get("keepdims", 1) != 1:
            continue
        eps_name = next(i for i in add.input if i != mean.output[0])
        eps = _constant_value(eps_name, initializers, constants)
        if eps is None or np.asarray(eps).size != 1:
            continue
        fused = helper.make_node("SimplifiedLayerNormalization", [x, weight], [weight_mul.output[0]],
                                 name=f"{weight_mul.name or weight}_rmsnorm", axis=-1, epsilon=float(np.asarray(eps)),
                                 stash_type=1)
        chain = (pow_node, mean, add, sqrt, recip, scale, weight_mul)
        remove.update(id(n) for n in chain)
        insert.append((weight_mul, fused))

    if insert:  # the exponents and epsilons the chains read become unused
        _replace_nodes(graph, {id(old): [new] for old, new in insert}, remove)
    return len(insert)


def pack_matmuls(model) -> int:
    """Rewrite `model` in place: MatMuls that share their input and read 2-D float32 initializers become
    one MatMul + Split. Returns how many groups were packed."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    groups: dict[str, list] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers:
            weight = initializers[node.input[1]]
            if weight.data_type == TensorProto.FLOAT and len(weight.dims) == 2:
                groups.setdefault(node.input[0], []).append(node)
    packed = 0
    replaced: dict[int, list] = {}
    removed = set()
    for source, nodes in groups.items():
        if len(nodes) < 2 or len({tuple(initializers[n.input[1]].dims[:1]) for n in nodes}) != 1:
            continue
        weights = [numpy_helper.to_array(initializers[n.input[1]]) for n in nodes]
        name = f"{nodes[0].name or nodes[0].output[0]}_packed"
        graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), f"{name}.weight"))
        sizes = numpy_helper.from_array(np.asarray([w.shape[1] for w in weights], dtype=np.int64), f"{name}.sizes")
        graph.initializer.append(sizes)
        matmul = helper.make_node("MatMul", [source, f"{name}.weight"], [f"{name}.out"], name=name)
        split = helper.make_node("Split", [f"{name}.out", f"{name}.sizes"], [n.output[0] for n in nodes], name=f"{name}_split", axis=-1)
        replaced[id(nodes[0])] = [matmul, split]
        removed.update(id(n) for n in nodes[1:])
        packed += 1
    if packed:  # the group's product goes where its first member was: every member reads the same input
        _replace_nodes(graph, replaced, removed)
    return packed


def _consumers(graph) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def fuse_rotary_into_attention(model) -> int:
    """Rewrite `model` in place: GroupQueryAttention(RotaryEmbedding(q), RotaryEmbedding(k), v, …) whose
    two rotations share position ids and cos/sin tables becomes GroupQueryAttention(q, k, v, …, cos, sin,
    position_ids) with do_rotary = 1. Returns how many attention nodes were rewritten."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    padded: dict[tuple[str, str], str] = {}  # (table, total_sequence_length) → the padded table
    pad_nodes, replaced, removed, count = [], {}, set(), 0

    def rotation(name):
        node = producers.get(name)
        if node is None or node.op_type != "RotaryEmbedding" or node.domain != "com.microsoft":
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("interleaved", 0) or attrs.get("is_packed_batching", 0) or attrs.get("rotary_embedding_dim", 0):
            return None
        if attrs.get("scale", 1.0) != 1.0 or name in outputs or len(users.get(name, [])) != 1:
            return None
        return node

    def pad(table: str, total: str) -> str:
        """table (N, half) followed by total_sequence_length zero rows: never shorter than the kernel asks."""
        if (table, total) not in padded:
            tag = f"{table}_padded"
            pad_nodes.extend([
                helper.make_node("Shape", [table], [f"{tag}.shape"], start=1, end=2),
                helper.make_node("Cast", [total], [f"{tag}.total64"], to=TensorProto.INT64),
                # a (1,) tensor whether total_sequence_length comes as a scalar (declared) or as (1,)
                helper.make_node("Reshape", [f"{tag}.total64", "rotary_pad.one"], [f"{tag}.rows"]),
                helper.make_node("Concat", [f"{tag}.rows", f"{tag}.shape"], [f"{tag}.pad_shape"], axis=0),
                helper.make_node("ConstantOfShape", [f"{tag}.pad_shape"], [f"{tag}.zeros"],
                                 value=numpy_helper.from_array(np.zeros(1, np.float32))),
                helper.make_node("Concat", [table, f"{tag}.zeros"], [tag], axis=0),
            ])
            padded[(table, total)] = tag
        return padded[(table, total)]

    for attn in graph.node:
        if attn.op_type != "GroupQueryAttention" or attn.domain != "com.microsoft" or len(attn.input) != 7:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in attn.attribute}
        if attrs.get("do_rotary", 0):
            continue
        q_rot, k_rot = rotation(attn.input[0]), rotation(attn.input[1])
        if q_rot is None or k_rot is None or list(q_rot.input[1:]) != list(k_rot.input[1:]):
            continue
        position_ids, cos, sin = q_rot.input[1:]
        total = attn.input[6]
        inputs = [q_rot.input[0], k_rot.input[0], *attn.input[2:7], pad(cos, total), pad(sin, total), position_ids]
        fused = helper.make_node("GroupQueryAttention", inputs, list(attn.output), name=attn.name, domain="com.microsoft",
                                 **{**attrs, "do_rotary": 1, "rotary_interleaved": 0})
        replaced[id(attn)] = [fused]
        removed.update((id(q_rot), id(k_rot)))
        count += 1
    if count:
        first = min(i for i, n in enumerate(graph.node) if id(n) in replaced)
        # The padded tables are computed before the first attention that reads them (their inputs, the
        # tables and total_sequence_length, come earlier: the tables fed the rotations).
        anchor = graph.node[first]
        replaced[id(anchor)] = pad_nodes + replaced[id(anchor)]
        graph.initializer.append(numpy_helper.from_array(np.asarray([1], np.int64), "rotary_pad.one"))
        _replace_nodes(graph, replaced, removed)
    return count


def _replace_nodes(graph, replaced: dict[int, list], removed: set[int]) -> None:
    """Put `replaced[id(node)]` in place of each such node, drop the `removed` ones, then the
    initializers and Constant nodes nothing reads any more."""
    kept = []
    for node in graph.node:
        if id(node) in replaced:
            kept.extend(replaced[id(node)])
        elif id(node) not in removed:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(node)


def attention_takes_position_ids() -> bool:
    """Whether the installed onnxruntime's GroupQueryAttention has the `position_ids` input (its CPU
    kernel since onnxruntime 1.22, microsoft/onnxruntime#23944). Without it (or without onnxruntime
    here) the rotations stay separate RotaryEmbedding nodes, which older releases run."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as capi
    except ImportError:
        return False
    for schema in capi.get_all_operator_schema():
        if schema.name == "GroupQueryAttention" and schema.domain == "com.microsoft":
            return any(i.name == "position_ids" for i in schema.inputs)
    return False


def rewrite_shared_decoder(path: str | Path) -> dict[str, int]:
    """Load the shared-cache decoder at `path` (weights left where they are) and apply every rewrite
    above: RMSNorm chains, rotary into attention and, when its weights are stored
    inside the file (under protobuf's 2 GB), packed shared-input projections; save it back. Returns how
    many of each were rewritten."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    counts = {"rms_norms": fuse_rms_norms(model)}
    counts["rotary_in_attention"] = fuse_rotary_into_attention(model) if attention_takes_position_ids() else 0
    counts["packed_matmuls"] = 0 if path.with_name(path.name + ".data").exists() else pack_matmuls(model)
    if any(counts.values()):
        onnx.save(model, str(path))
    return counts
