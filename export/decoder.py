"""Traceable Qwen-VL text decoder with an explicit KV cache, the LM head and the reward head.

One graph serves prefill (past length P = 0, S = prompt length) and decoding (S = 1, P > 0):

    inputs_embeds (B, S, H) f32      attention_mask (B, P+S) i64 (1 = real token, 0 = padding)
    position_ids (3|4, B, S) i64     past_key_values.{i}.key / .value (B, kv_heads, P, head_dim) f32
    [qwen3_vl] deepstack_embeds (num_deepstack, B, S, H) f32, zero away from visual tokens
 →  logits (B, V), hidden (B, H), reward (B, K) of the last position; present.{i}.key / .value (B, kv_heads, P+S, head_dim)

Masking follows transformers' `create_causal_mask` given a 2-D mask and a cache: query `s` (absolute
index P+s) sees key `j` iff `j <= P+s` and `attention_mask[b, j] == 1`. With a 4-row `position_ids` the
first (text) row only feeds packed-sequence detection, which transformers skips whenever an attention
mask is given, so the graph drops it and uses the last three (T, H, W) rows either way.

`kv_cache="shared"` builds the in-place variant instead (attention through onnxruntime's
GroupQueryAttention, `export/gqa.py`): no `attention_mask`; `seqlens_k` (B,) i32 = the row's token count
after this call − 1 and `total_sequence_length` () i32 = max of seqlens_k + 1; the past and present of a
layer are one buffer (B, kv_heads, capacity, head_dim) that the runtime binds to both, so a step writes
S new columns and copies nothing. Rows are packed from column 0 (no padding); a call feeds either one
row (any S) or several rows one token each (onnxruntime's kernel allows nothing else).
"""

from __future__ import annotations

import torch
from torch import nn

from .families import BackboneParts, mrope_frequency_rows, text_mrope_section
from .vision import rotate_half

KV_CACHES = ("concat", "shared")


class DecoderWithCache(nn.Module):
    """The text half of a Qwen-VL backbone as one KV-cached step (see module docstring for the I/O)."""

    def __init__(self, parts: BackboneParts, reward_head: nn.Linear, kv_cache: str = "concat"):
        super().__init__()
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache must be one of {KV_CACHES}, got {kv_cache!r}")
        self.kv_cache = kv_cache
        text = parts.text_model
        cfg = text.config
        self.layers = text.layers
        self.norm = text.norm
        self.lm_head = parts.lm_head
        self.reward_head = reward_head
        self.num_layers = len(self.layers)
        self.num_heads = int(cfg.num_attention_heads)
        self.num_kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(self.layers[0].self_attn.head_dim)
        self.scaling = float(self.layers[0].self_attn.scaling)
        self.has_qk_norm = hasattr(self.layers[0].self_attn, "q_norm")  # Qwen3 normalises q and k per head
        self.num_deepstack = parts.num_deepstack

        rotary = text.rotary_emb
        inv_freq = rotary.inv_freq.detach().float().clone()
        rows = mrope_frequency_rows(parts.family, text_mrope_section(parts), inv_freq.numel())
        self.register_buffer("rotary_inv_freq", inv_freq, persistent=False)
        self.register_buffer("rotary_rows", torch.tensor(rows, dtype=torch.long), persistent=False)
        self.rotary_scaling = float(getattr(rotary, "attention_scaling", 1.0))

    # -- pieces ---------------------------------------------------------------------------------------
    def _rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M-RoPE cos/sin `(B, 1, S, head_dim)`: frequency f turns with position row `rotary_rows[f]`."""
        thw = position_ids[-3:]  # (3, B, S); a leading text row (4-row ids) does not rotate anything
        per_frequency = thw.index_select(0, self.rotary_rows)  # (F, B, S)
        angles = per_frequency.permute(1, 2, 0).float() * self.rotary_inv_freq  # (B, S, F)
        angles = torch.cat((angles, angles), dim=-1)
        return (angles.cos() * self.rotary_scaling)[:, None], (angles.sin() * self.rotary_scaling)[:, None]

    @staticmethod
    def _allowed(attention_mask: torch.Tensor, query_length: int) -> torch.Tensor:
        """`(B, 1, 1, S, P+S)` bool: causal (with the query block at the end) and not padding."""
        total = attention_mask.shape[1]
        key_index = torch.arange(total, device=attention_mask.device)
        query_index = key_index[total - query_length :]
        causal = key_index[None, :] <= query_index[:, None]  # (S, P+S)
        return causal[None, None, None] & attention_mask.bool()[:, None, None, None, :]

    def _attention(self, layer, x, cos, sin, allowed, past_key, past_value):
        attn = layer.self_attn
        batch, length, _ = x.shape
        q = attn.q_proj(x).view(batch, length, self.num_heads, self.head_dim)
        k = attn.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim)
        v = attn.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim)
        if self.has_qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        if self.kv_cache == "shared":
            from .gqa import gqa, rotary  # noqa: F401  (registers torch.ops.descore.*)

            # onnxruntime's RotaryEmbedding with each token's own M-RoPE cos/sin as its table (gqa.rotary)
            seqlens_k, total = allowed
            half = self.head_dim // 2
            table_cos = cos[:, 0, :, :half].reshape(batch * length, half).to(q.dtype)
            table_sin = sin[:, 0, :, :half].reshape(batch * length, half).to(q.dtype)
            index = torch.arange(batch * length, device=x.device).view(batch, length)
            q = torch.ops.descore.rotary(q.reshape(batch, length, -1), index, table_cos, table_sin, self.num_heads)
            k = torch.ops.descore.rotary(k.reshape(batch, length, -1), index, table_cos, table_sin, self.num_kv_heads)
            out, key, value = torch.ops.descore.gqa(q, k, v.reshape(batch, length, -1), past_key.to(k.dtype),
                                                    past_value.to(v.dtype), seqlens_k, total,
                                                    self.num_heads, self.num_kv_heads, self.scaling)
            return attn.o_proj(out), key, value
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, S, hd)
        # Angles and cos/sin are fp32; in a half-precision graph they meet q/k in q's type, as in
        # transformers (`cos.to(x.dtype)`). A no-op, hence no node, in the fp32 graph.
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        key = torch.cat((past_key.to(k.dtype), k), dim=2)  # (B, kv_heads, P+S, hd)
        value = torch.cat((past_value.to(v.dtype), v), dim=2)

        # Grouped-query attention without repeating K/V: split the query heads into (kv_heads, group)
        # and let matmul broadcast each K/V head over its group.
        group = self.num_heads // self.num_kv_heads
        q = q.reshape(batch, self.num_kv_heads, group, length, self.head_dim)
        scores = torch.matmul(q, key[:, :, None].transpose(-1, -2)) * self.scaling  # (B, kvh, g, S, P+S)
        # A finite fill keeps fully padded query rows finite (uniform) instead of NaN, so padding never
        # poisons the cache; real rows always see at least themselves.
        # Softmax in fp32. The cast is explicit: `softmax(x, dtype=float32)` on a half tensor exports as
        # Softmax → Cast(fp32) → Cast(fp16), which the ONNX optimiser folds into an fp16 Softmax.
        scores = scores.float().masked_fill(~allowed, torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1).to(value.dtype)
        out = torch.matmul(probs, value[:, :, None])  # (B, kvh, g, S, hd)
        out = out.reshape(batch, self.num_heads, length, self.head_dim).transpose(1, 2)
        return attn.o_proj(out.reshape(batch, length, self.num_heads * self.head_dim)), key, value

    def _run(self, inputs_embeds, attention_mask, position_ids, past_key_values, deepstack_embeds):
        """attention_mask: the 2-D mask, or (seqlens_k, total_sequence_length) for the shared cache."""
        cos, sin = self._rotary(position_ids)
        allowed = attention_mask if self.kv_cache == "shared" else self._allowed(attention_mask, inputs_embeds.shape[1])
        # Graph I/O is float32 at every precision (the host's embedding table, KV cache and decode loop
        # stay as they are); a half-precision graph casts on the way in and out. No-ops at fp32.
        compute = self.layers[0].input_layernorm.weight.dtype
        hidden = inputs_embeds.to(compute)
        presents = []
        for index, layer in enumerate(self.layers):
            past_key, past_value = past_key_values[index]
            attended, key, value = self._attention(
                layer, layer.input_layernorm(hidden), cos, sin, allowed, past_key, past_value
            )
            hidden = hidden + attended
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            if index < self.num_deepstack:
                hidden = hidden + deepstack_embeds[index].to(compute)  # zeros away from visual tokens: exact no-op there
            # the concatenating cache's I/O is float32 at every precision; an in-place cache keeps the type
            # it came in (past and present are one buffer: an fp16 cache for a `shared-standard` half graph)
            presents += [key.to(past_key.dtype), value.to(past_value.dtype)] if self.kv_cache == "shared" else [key.float(), value.float()]
        # The norm is per position, so normalising only the last one equals slicing the full output.
        # Each of norm / LM head / reward head runs in its own weights' type: export/precision.py keeps
        # the final norm and the reward head in fp32 in a half-precision graph (DESIGN.md).
        last = self.norm(hidden[:, -1, :].to(self.norm.weight.dtype))
        logits = self.lm_head(last.to(self.lm_head.weight.dtype))
        reward = self.reward_head(last.to(self.reward_head.weight.dtype))
        return (logits.float(), last.float(), reward.float(), *presents)

    # -- names ----------------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        names = ["inputs_embeds"] + ([] if self.kv_cache == "shared" else ["attention_mask"]) + ["position_ids"]
        if self.num_deepstack:
            names.append("deepstack_embeds")
        if self.kv_cache == "shared":
            names += ["seqlens_k", "total_sequence_length"]
        for i in range(self.num_layers):
            names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        return names

    @property
    def output_names(self) -> list[str]:
        names = ["logits", "hidden", "reward"]
        for i in range(self.num_layers):
            names += [f"present.{i}.key", f"present.{i}.value"]
        return names


class TextDecoderForExport(DecoderWithCache):
    """Qwen2-VL / Qwen2.5-VL decoder graph."""

    def forward(self, inputs_embeds, attention_mask, position_ids, past_key_values):
        """past_key_values: one `(key, value)` pair per layer, each `(B, kv_heads, P, head_dim)`."""
        return self._run(inputs_embeds, attention_mask, position_ids, past_key_values, None)


class SharedCacheTextDecoder(DecoderWithCache):
    """Qwen2-VL / Qwen2.5-VL decoder graph with the in-place (GroupQueryAttention) KV cache."""

    def forward(self, inputs_embeds, position_ids, seqlens_k, total_sequence_length, past_key_values):
        return self._run(inputs_embeds, (seqlens_k, total_sequence_length), position_ids, past_key_values, None)


class SharedCacheDeepstackDecoder(DecoderWithCache):
    """Qwen3-VL decoder graph with the in-place (GroupQueryAttention) KV cache."""

    def forward(self, inputs_embeds, position_ids, deepstack_embeds, seqlens_k, total_sequence_length, past_key_values):
        return self._run(inputs_embeds, (seqlens_k, total_sequence_length), position_ids, past_key_values, deepstack_embeds)


class DeepstackDecoderForExport(DecoderWithCache):
    """Qwen3-VL decoder graph: DeepStack features are added after each of the first layers."""

    def forward(self, inputs_embeds, attention_mask, position_ids, deepstack_embeds, past_key_values):
        """deepstack_embeds `(num_deepstack, B, S, H)`: the vision tower's DeepStack features scattered to
        the video-token positions, zeros elsewhere (all zeros when decoding text)."""
        return self._run(inputs_embeds, attention_mask, position_ids, past_key_values, deepstack_embeds)


def decoder_for_export(parts: BackboneParts, reward_head: nn.Linear, kv_cache: str = "concat") -> DecoderWithCache:
    if kv_cache == "shared":
        cls = SharedCacheDeepstackDecoder if parts.num_deepstack else SharedCacheTextDecoder
    else:
        cls = DeepstackDecoderForExport if parts.num_deepstack else TextDecoderForExport
    return cls(parts, reward_head, kv_cache).eval()
