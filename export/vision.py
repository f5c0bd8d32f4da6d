"""Traceable Qwen-VL vision encoders: patches + host-computed indices → visual token embeddings.

The reference towers split attention by `cu_seqlens` (`tensor.tolist()` → a Python loop of chunks),
which no exporter can trace. Here the segments are exploited structurally instead: every segment is one
temporal step of `h·w` patches (the same for all steps of a video), so the patch sequence is reshaped
to `(t, h·w, hidden)` and attention runs batched over `t` with no mask at all. Qwen2.5-VL's windowed
layers add a `(h·w, h·w)` same-window mask inside each step (see `runtime/vision_inputs.window_ids`).

Linear layers, norms, MLPs, patch embedding and mergers are the Hugging Face modules themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from .families import BackboneParts


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) → (-x2, x1) over the last dimension's halves (the rotary pairing Qwen uses)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class VisionEncoderForExport(nn.Module):
    """Shared body of the three families' vision graphs. Subclasses fix the graph signature."""

    def __init__(self, parts: BackboneParts):
        super().__init__()
        visual = parts.visual
        self.patch_embed = visual.patch_embed
        self.blocks = visual.blocks
        self.merger = visual.merger
        self.register_buffer("rotary_inv_freq", visual.rotary_pos_emb.inv_freq.detach().float().clone(), persistent=False)
        self.rotary_scaling = float(getattr(visual.rotary_pos_emb, "attention_scaling", 1.0))

    def _rotary(self, patch_position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin `(h·w, head_dim)` from (row, col) ids: the first half of each head rotates with the
        row, the second with the column, both with the same frequencies."""
        angles = patch_position_ids[..., None].float() * self.rotary_inv_freq  # (hw, 2, F)
        angles = torch.cat((angles[:, 0], angles[:, 1]), dim=-1)  # (hw, 2F) = (hw, head_dim / 2)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos() * self.rotary_scaling, angles.sin() * self.rotary_scaling

    def _embed_patches(self, pixel_values: torch.Tensor, frame_patches: int) -> torch.Tensor:
        """`(t·h·w, C·tp·p²)` → `(t, h·w, hidden)`."""
        x = self.patch_embed(pixel_values)
        # A half-precision graph keeps the patch embedding (one Conv) in fp32: ONNX Conv takes bfloat16
        # only from opset 22. Its output joins the blocks in their type (a no-op at fp32).
        x = x.to(self.blocks[0].norm1.weight.dtype)
        return x.reshape(-1, frame_patches, x.shape[-1])

    def _block(self, block: nn.Module, x, cos, sin, allowed=None) -> torch.Tensor:
        x = x + self._attention(block.attn, block.norm1(x), cos, sin, allowed)
        return x + block.mlp(block.norm2(x))

    @staticmethod
    def _attention(attn: nn.Module, x, cos, sin, allowed) -> torch.Tensor:
        """Attention within each temporal step. x: `(t, hw, C)`; cos/sin: `(hw, head_dim)`;
        allowed: optional `(hw, hw)` bool (True = may attend)."""
        t, hw, width = x.shape
        q, k, v = attn.qkv(x).reshape(t, hw, 3, attn.num_heads, -1).unbind(2)  # each (t, hw, heads, hd)
        # fp32 angles meet q/k in q's type (a no-op in the fp32 graph), as in transformers.
        cos, sin = cos[:, None, :].to(q.dtype), sin[:, None, :].to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (t, heads, hw, hd)
        # fp32 softmax with an explicit cast (see decoder.py: the optimiser folds softmax's own dtype= away).
        scores = (torch.matmul(q, k.transpose(-1, -2)) * attn.scaling).float()
        if allowed is not None:
            scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(t, hw, width)
        return attn.proj(out)


class Qwen2VLVisionForExport(VisionEncoderForExport):
    """Qwen2-VL: every block attends within its temporal step."""

    input_names = ("pixel_values", "patch_position_ids")
    output_names = ("visual_embeds",)

    def forward(self, pixel_values: torch.Tensor, patch_position_ids: torch.Tensor) -> torch.Tensor:
        """pixel_values `(t·h·w, C·tp·p²)` f32, patch_position_ids `(h·w, 2)` i64 → `(t·h·w/m², out_hidden)`."""
        cos, sin = self._rotary(patch_position_ids)
        x = self._embed_patches(pixel_values, patch_position_ids.shape[0])
        for block in self.blocks:
            x = self._block(block, x, cos, sin)
        return self.merger(x).float()  # graph outputs are float32 at every precision


class Qwen2_5VLVisionForExport(VisionEncoderForExport):
    """Qwen2.5-VL: windowed blocks, except `fullatt_block_indexes`, which span the temporal step.

    The reference permutes tokens window by window and un-permutes after the merger; masking by window
    id in the original order is the same computation without the two gathers.
    """

    input_names = ("pixel_values", "patch_position_ids", "window_ids")
    output_names = ("visual_embeds",)

    def __init__(self, parts: BackboneParts):
        super().__init__(parts)
        self.full_attention_blocks = frozenset(int(i) for i in parts.vision_config.fullatt_block_indexes)

    def forward(self, pixel_values, patch_position_ids, window_ids) -> torch.Tensor:
        """As Qwen2-VL, plus window_ids `(h·w,)` i64 from `runtime.vision_inputs.window_ids`."""
        cos, sin = self._rotary(patch_position_ids)
        same_window = window_ids[:, None] == window_ids[None, :]
        x = self._embed_patches(pixel_values, patch_position_ids.shape[0])
        for index, block in enumerate(self.blocks):
            x = self._block(block, x, cos, sin, None if index in self.full_attention_blocks else same_window)
        return self.merger(x).float()


class Qwen3VLVisionForExport(VisionEncoderForExport):
    """Qwen3-VL: learned position grid (bilinearly resampled) + DeepStack features from middle blocks."""

    input_names = ("pixel_values", "patch_position_ids", "pos_interp_indices", "pos_interp_weights")
    output_names = ("visual_embeds", "deepstack_embeds")

    def __init__(self, parts: BackboneParts):
        super().__init__(parts)
        visual = parts.visual
        self.pos_embed = visual.pos_embed
        self.deepstack_mergers = visual.deepstack_merger_list
        self.deepstack_level = {int(block): level for level, block in enumerate(visual.deepstack_visual_indexes)}

    def forward(self, pixel_values, patch_position_ids, pos_interp_indices, pos_interp_weights):
        """As Qwen2-VL, plus pos_interp_indices `(h·w, 4)` i64 and pos_interp_weights `(h·w, 4)` f32
        (`runtime.vision_inputs.position_interpolation`). Returns visual_embeds `(t·h·w/m², out_hidden)`
        and deepstack_embeds `(num_deepstack, t·h·w/m², out_hidden)`."""
        cos, sin = self._rotary(patch_position_ids)
        x = self._embed_patches(pixel_values, patch_position_ids.shape[0])
        position = (self.pos_embed(pos_interp_indices) * pos_interp_weights[:, :, None]).sum(1)  # (hw, C)
        x = x + position.to(x.dtype)
        deepstack = [None] * len(self.deepstack_mergers)
        for index, block in enumerate(self.blocks):
            x = self._block(block, x, cos, sin)
            if index in self.deepstack_level:
                level = self.deepstack_level[index]
                deepstack[level] = self.deepstack_mergers[level](x)
        return self.merger(x).float(), torch.stack(deepstack, dim=0).float()


VISION_ENCODERS = {
    "qwen2_vl": Qwen2VLVisionForExport,
    "qwen2_5_vl": Qwen2_5VLVisionForExport,
    "qwen3_vl": Qwen3VLVisionForExport,
}


def vision_encoder_for_export(parts: BackboneParts) -> VisionEncoderForExport:
    return VISION_ENCODERS[parts.family](parts).eval()
