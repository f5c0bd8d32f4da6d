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
