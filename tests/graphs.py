"""Test helper: one-node ONNX graphs of the attention ops the decoders use (no torch)."""

from __future__ import annotations


def gqa_model(heads: int, kv_heads: int, head_dim: int, scale: float):
    """A ModelProto of one onnxruntime GroupQueryAttention node (com.microsoft; rotation outside it) with the
    decoder graphs' I/O: query (B, S, heads·hd), key/value (B, S, kv_heads·hd), past_key/past_value (B, kv_heads,
    C, hd), seqlens_k (B,) int32, total_sequence_length () int32 → output, present_key, present_value."""
    import onnx
    from onnx import TensorProto, helper

    names = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"]
    node = helper.make_node("GroupQueryAttention", names, ["output", "present_key", "present_value"], name="attn",
                            domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, scale=scale)
    f, i32 = TensorProto.FLOAT, TensorProto.INT32
    inputs = [helper.make_tensor_value_info("query", f, ["B", "S", heads * head_dim])]
    inputs += [helper.make_tensor_value_info(n, f, ["B", "S", kv_heads * head_dim]) for n in ("key", "value")]
    inputs += [helper.make_tensor_value_info(n, f, ["B", kv_heads, "C", head_dim]) for n in ("past_key", "past_value")]
    inputs += [helper.make_tensor_value_info("seqlens_k", i32, ["B"]), helper.make_tensor_value_info("total_sequence_length", i32, [])]
    outputs = [helper.make_tensor_value_info("output", f, ["B", "S", heads * head_dim])]
    outputs += [helper.make_tensor_value_info(n, f, ["B", kv_heads, "C", head_dim]) for n in ("present_key", "present_value")]
    model = helper.make_model(helper.make_graph([node], "gqa", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    onnx.checker.check_model(model)
    return model
