"""export/graph_rewrite.py: the RMSNorm chain torch exports becomes one SimplifiedLayerNormalization.

Reference: the RMSNorm formula in numpy (x / sqrt(mean(x²) + eps) · w) and the unfused graph itself,
both run by onnxruntime; a chain with a Cast in the middle (half-precision graphs) is left as it is."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from descore_sdk.export.graph_rewrite import fuse_rms_norms  # noqa: E402

EPS = 1e-6


def _rms_graph(with_cast: bool = False, residual_user: bool = False):
    """y = RMSNorm(x) · w written the way torch's exporter writes it (Pow … Reciprocal, Mul, Mul)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(8).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"), numpy_helper.from_array(np.array(EPS, np.float32), "eps")]
    source = "x"
    nodes = []
    if with_cast:
        nodes.append(helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.FLOAT))
        source = "xc"
    nodes += [
        helper.make_node("Pow", [source, "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["mean"], keepdims=1),
        helper.make_node("Add", ["mean", "eps"], ["var"]),
        helper.make_node("Sqrt", ["var"], ["std"]),
        helper.make_node("Reciprocal", ["std"], ["inv"]),
        helper.make_node("Mul", [source, "inv"], ["normed"]),
    ]
    if with_cast:
        nodes.append(helper.make_node("Cast", ["normed"], ["normed_c"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", ["w", "normed_c"], ["y"]))
    else:
        nodes.append(helper.make_node("Mul", ["w", "normed"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 8])]
    if residual_user:  # something else reads the un-weighted norm: the chain must stay
        nodes.append(helper.make_node("Identity", ["normed"], ["side"]))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, [2, 3, 8]))
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), weight


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def test_chain_becomes_one_node_with_the_same_values():
    model, weight = _rms_graph()
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32) * 3
    before = _run(model, x)
    assert fuse_rms_norms(model) == 1
    assert [n.op_type for n in model.graph.node] == ["SimplifiedLayerNormalization"]
    assert {t.name for t in model.graph.initializer} == {"w"}  # exponent, axes and eps are gone
    after = _run(model, x)
    reference = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + EPS) * weight
    np.testing.assert_allclose(after, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", [{"with_cast": True}, {"residual_user": True}])
def test_other_chains_are_left_alone(variant):
    model, _ = _rms_graph(**variant)
    count = len(model.graph.node)
    assert fuse_rms_norms(model) == 0 and len(model.graph.node) == count


def test_projections_sharing_an_input_are_packed_into_one_matmul():
    from descore_sdk.export.graph_rewrite import pack_matmuls

    rng = np.random.default_rng(2)
    weights = {n: rng.standard_normal((8, w)).astype(np.float32) for n, w in (("wq", 8), ("wk", 4), ("wv", 4), ("wo", 6))}
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("Relu", ["q"], ["q2"]), helper.make_node("MatMul", ["x", "wv"], ["v"]),
             helper.make_node("MatMul", ["q2", "wo"], ["o"])]  # another input: not part of the group
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("k", "v", "o")]
    graph = helper.make_graph(nodes, "qkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8])], outputs,
                              [numpy_helper.from_array(w, n) for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(["k", "v", "o"], {"x": x})

    before = run(model)
    assert pack_matmuls(model) == 1
    assert [n.op_type for n in model.graph.node].count("MatMul") == 2 and "Split" in [n.op_type for n in model.graph.node]
    assert {"wq", "wk", "wv"}.isdisjoint(t.name for t in model.graph.initializer)  # the packed weight replaces them
    for got, want in zip(run(model), before):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(before[0], x @ weights["wk"], rtol=1e-5, atol=1e-5)  # and the reference is the formula


def _attention_graph(heads=4, kv_heads=2, dim=16):
    """RotaryEmbedding(q), RotaryEmbedding(k) → GroupQueryAttention over a shared buffer: the shape of the
    shared-cache decoder's attention (export/gqa.py), with the cos/sin tables as graph inputs."""
    msft = "com.microsoft"
    nodes = [
        helper.make_node("RotaryEmbedding", ["q", "pos", "cos", "sin"], ["q_rot"], domain=msft, num_heads=heads, interleaved=0),
        helper.make_node("RotaryEmbedding", ["k", "pos", "cos", "sin"], ["k_rot"], domain=msft, num_heads=kv_heads, interleaved=0),
        helper.make_node("GroupQueryAttention", ["q_rot", "k_rot", "v", "past_key", "past_value", "seqlens_k", "total"],
                         ["out", "present_key", "present_value"], domain=msft, num_heads=heads, kv_num_heads=kv_heads, scale=0.25),
    ]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("q", f, ["B", "S", heads * dim]),
              helper.make_tensor_value_info("k", f, ["B", "S", kv_heads * dim]),
              helper.make_tensor_value_info("v", f, ["B", "S", kv_heads * dim]),
              helper.make_tensor_value_info("past_key", f, ["B", kv_heads, "C", dim]),
              helper.make_tensor_value_info("past_value", f, ["B", kv_heads, "C", dim]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["B"]),
              helper.make_tensor_value_info("total", TensorProto.INT32, []),
              helper.make_tensor_value_info("cos", f, ["N", dim // 2]),
              helper.make_tensor_value_info("sin", f, ["N", dim // 2]),
              helper.make_tensor_value_info("pos", TensorProto.INT64, ["B", "S"])]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("out", "present_key", "present_value")]
    graph = helper.make_graph(nodes, "attn", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(msft, 1)])


def test_rotary_moves_into_attention_with_the_same_values():
    from descore_sdk.export.graph_rewrite import fuse_rotary_into_attention

    heads, kv_heads, dim, capacity = 4, 2, 16, 24
    model = _attention_graph(heads, kv_heads, dim)
    before = model.SerializeToString()
    assert fuse_rotary_into_attention(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "RotaryEmbedding" not in ops and ops.count("GroupQueryAttention") == 1
    attention = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    assert {a.name: helper.get_attribute_value(a) for a in attention.attribute}["do_rotary"] == 1

    rng = np.random.default_rng(3)

    def rotate(x, c, s):  # x (..., dim), non-interleaved halves
        a, b = x[..., : dim // 2], x[..., dim // 2 :]
        return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)

    sessions = [ort.InferenceSession(m, providers=["CPUExecutionProvider"]) for m in (before, model.SerializeToString())]
    buffers = [{n: np.zeros((2, kv_heads, capacity, dim), np.float32) for n in ("past_key", "past_value")} for _ in sessions]
    keys = np.zeros((2, kv_heads, capacity, dim), np.float32)
    values = np.zeros_like(keys)
    lengths = np.zeros(2, np.int64)
    # Row 0 prefills 5 tokens, row 1 3 (alone: the CPU kernel takes S > 1 only with B = 1), then two
    # decode steps of both rows at their different lengths.
    for calls in ((([0], 5), ([1], 3)), (([0, 1], 1),), (([0, 1], 1),)):
        for batch_rows, s in calls:
            b = len(batch_rows)
            q = rng.standard_normal((b, s, heads * dim)).astype(np.float32)
            k = rng.standard_normal((b, s, kv_heads * dim)).astype(np.float32)
            v = rng.standard_normal((b, s, kv_heads * dim)).astype(np.float32)
            angles = rng.uniform(0, 6, (b * s, dim // 2)).astype(np.float32)  # each token its own (M-RoPE) angles
            cos, sin = np.cos(angles), np.sin(angles)
            pos = np.arange(b * s, dtype=np.int64).reshape(b, s)
            seqlens = (lengths[batch_rows] + s - 1).astype(np.int32)
            feed = {"q": q, "k": k, "v": v, "seqlens_k": seqlens, "total": np.asarray(seqlens.max() + 1, np.int32),
                    "cos": cos, "sin": sin, "pos": pos}
            # the formula: rotate, append to the cache, causal softmax attention per query head
            qr = rotate(q.reshape(b, s, heads, dim), cos[pos][:, :, None], sin[pos][:, :, None])
            kr = rotate(k.reshape(b, s, kv_heads, dim), cos[pos][:, :, None], sin[pos][:, :, None])
            want = np.zeros((b, s, heads * dim), np.float32)
            for i, row in enumerate(batch_rows):
                first = lengths[row]
                keys[row, :, first : first + s] = kr[i].transpose(1, 0, 2)
                values[row, :, first : first + s] = v[i].reshape(s, kv_heads, dim).transpose(1, 0, 2)
                for t in range(s):
                    for h in range(heads):
                        g = h // (heads // kv_heads)
                        scores = keys[row, g, : first + t + 1] @ qr[i, t, h] * 0.25
                        p = np.exp(scores - scores.max())
                        want[i, t, h * dim : (h + 1) * dim] = (p / p.sum()) @ values[row, g, : first + t + 1]
            got = []
            for session, buffer in zip(sessions, buffers):
                binding = session.io_binding()
                for name, value in feed.items():
                    binding.bind_cpu_input(name, value)
                binding.bind_output("out", "cpu")
                for name in ("past_key", "past_value"):
                    view = buffer[name][batch_rows[0] : batch_rows[-1] + 1]
                    wrapped = ort.OrtValue.ortvalue_from_numpy(view)
                    binding.bind_ortvalue_input(name, wrapped)
                    binding.bind_ortvalue_output(name.replace("past", "present"), wrapped)
                session.run_with_iobinding(binding)
                got.append(binding.get_outputs()[0].numpy())
            np.testing.assert_array_equal(got[1], got[0])  # the same kernel arithmetic, rotation moved
            np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)
            lengths[batch_rows] += s
    for buffer in buffers:
        np.testing.assert_allclose(buffer["past_key"], keys, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(buffer["past_value"], values)
