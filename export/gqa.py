"""onnxruntime's GroupQueryAttention (and RotaryEmbedding) as torch custom ops, for decoder graphs whose
KV cache is updated in place ("shared buffer": the past and present of each layer are ONE preallocated
buffer). `rotary` (below) replaces the 7 elementwise nodes of each q/k rotation by one kernel.

    out, present_key, present_value = torch.ops.descore.gqa(q, k, v, past_key, past_value, seqlens_k,
                                                            total_sequence_length, num_heads, kv_num_heads, scale)

Semantics (onnxruntime's com.microsoft.GroupQueryAttention, contrib-op docs of ORT 1.2x, checked against
ORT 1.32's CPU kernel in tests/test_kv_cache.py):
- q (B, S, heads·hd), k / v (B, S, kv_heads·hd), already rotated (do_rotary = 0: M-RoPE is applied by
  the graph before the op); past_key / past_value (B, kv_heads, capacity, hd);
- row b holds `seqlens_k[b] + 1` tokens after the call: its S new keys/values are written at
  [seqlens_k[b] + 1 − S, seqlens_k[b]] and query s attends causally to keys [0, seqlens_k[b] + 1 − S + s];
- total_sequence_length: max over rows of seqlens_k + 1 (a scalar).
When the runtime binds the same buffer to past_key and present_key (IOBinding), onnxruntime writes the
new keys into it and copies nothing else. Its CPU kernel takes S > 1 with a non-empty past only for
B = 1, which the runtime respects (prefill row by row, decode steps batched).

The eager implementation below is the same arithmetic in torch (functional: it returns new buffers),
used when the wrapper runs in torch; export traces the fake implementation and
`custom_translation_table()` emits the ONNX node.
"""

from __future__ import annotations

import torch

DOMAIN = "com.microsoft"
OP_NAME = "GroupQueryAttention"


@torch.library.custom_op("descore::gqa", mutates_args=())
def gqa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    seqlens_k: torch.Tensor,
    total_sequence_length: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, length, _ = query.shape
    head_dim = past_key.shape[-1]
    group = num_heads // kv_num_heads
    present_key, present_value = past_key.clone(), past_value.clone()
    out = torch.zeros_like(query)
    for b in range(batch):
        total = int(seqlens_k[b]) + 1
        first = total - length
        present_key[b, :, first:total] = key[b].view(length, kv_num_heads, head_dim).transpose(0, 1)
        present_value[b, :, first:total] = value[b].view(length, kv_num_heads, head_dim).transpose(0, 1)
        q = query[b].view(length, kv_num_heads, group, head_dim).permute(1, 2, 0, 3)  # (kvh, g, S, hd)
        keys, values = present_key[b, :, :total], present_value[b, :, :total]  # (kvh, T, hd)
        scores = torch.matmul(q.float(), keys[:, None].transpose(-1, -2).float()) * scale  # (kvh, g, S, T)
        allowed = torch.arange(total)[None, :] <= (first + torch.arange(length))[:, None]
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        o = torch.matmul(probs, values[:, None].float()).to(query.dtype)  # (kvh, g, S, hd)
        out[b] = o.permute(2, 0, 1, 3).reshape(length, num_heads * head_dim)
    return out, present_key, present_value


@gqa.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, num_heads, kv_num_heads, scale):
    return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)


@torch.library.custom_op("descore::rotary", mutates_args=())
def rotary(x: torch.Tensor, position_ids: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor,
           num_heads: int) -> torch.Tensor:
    """onnxruntime's com.microsoft.RotaryEmbedding, non-interleaved: x (B, S, heads·hd); row b, column s
    rotates with cos_cache[position_ids[b, s]] / sin_cache[…] (each (·, hd/2)). The graphs pass each
    token's own M-RoPE cos/sin as the "cache" and position_ids = arange(B·S), which turns the op's
    1-D position lookup into a per-token one (M-RoPE positions are 3-D, so its own table cannot serve)."""
    batch, length, width = x.shape
    half = width // num_heads // 2
    heads = x.view(batch, length, num_heads, 2 * half)
    cos = cos_cache[position_ids][:, :, None, :].to(x.dtype)  # (B, S, 1, hd/2)
    sin = sin_cache[position_ids][:, :, None, :].to(x.dtype)
    first, second = heads[..., :half], heads[..., half:]
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1).reshape(batch, length, width)


@rotary.register_fake
def _(x, position_ids, cos_cache, sin_cache, num_heads):
    return torch.empty_like(x)


def _register_schema() -> None:
    """onnxscript builds a node only for ops whose schema onnx knows; the onnx package does not ship
    onnxruntime's contrib schemas, so declare the part of this one the graphs use (once per process)."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has(OP_NAME, DOMAIN):
        return
    param = OpSchema.FormalParameter
    names = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length")
    schema = OpSchema(
        OP_NAME,
        DOMAIN,
        1,
        inputs=[param(n, "M" if n in ("seqlens_k", "total_sequence_length") else "T") for n in names],
        outputs=[param(n, "T") for n in ("output", "present_key", "present_value")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[
            OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, ""),
            OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT, ""),
            OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, ""),
        ],
    )
    onnx.defs.register_schema(schema)
    if not onnx.defs.has("RotaryEmbedding", DOMAIN):
        onnx.defs.register_schema(OpSchema(
            "RotaryEmbedding",
            DOMAIN,
            1,
            inputs=[param("input", "T"), param("position_ids", "M"), param("cos_cache", "T"), param("sin_cache", "T")],
            outputs=[param("output", "T")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""), ("M", ["tensor(int64)"], "")],
            attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, ""),
                        OpSchema.Attribute("interleaved", OpSchema.AttrType.INT, "")],
        ))


def custom_translation_table() -> dict:
    """`torch.onnx.export(custom_translation_table=…)` entry that turns descore::gqa into the ORT node."""
    import onnxscript

    _register_schema()
    msft = onnxscript.values.Opset(DOMAIN, 1)

    def gqa_onnx(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, num_heads: int,
                 kv_num_heads: int, scale: float):
        return msft.GroupQueryAttention(query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
                                        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, _outputs=3)

    def rotary_onnx(x, position_ids, cos_cache, sin_cache, num_heads: int):
        return msft.RotaryEmbedding(x, position_ids, cos_cache, sin_cache, num_heads=num_heads, interleaved=0)

    return {torch.ops.descore.gqa.default: gqa_onnx, torch.ops.descore.rotary.default: rotary_onnx}
