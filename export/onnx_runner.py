"""Drive exported graphs one call at a time: the small helpers the export graph tests use.

They run every graph through the runtime's own `OnnxRuntimeRunner` (runtime/onnxruntime_runner.py),
so the tests exercise the same session settings and feed checks users get. Torch-free. They follow
the graph contracts of DESIGN.md and nothing more: no tokenizer, no sampling, no stopping rules —
those belong to the runtime's decode loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from descore_sdk.errors import InvalidInputError
from descore_sdk.runtime.vision_inputs import VisionGraphSpec, vision_graph_inputs


def cpu_session(path: str | Path, *, threads: int = 1):
    """The runtime's active `OnnxRuntimeRunner` over `path` on the CPU with `threads` intra-op threads."""
    from descore_sdk.runtime.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, device="cpu", threads=threads).activate()


def run_vision(runner, spec: VisionGraphSpec, pixel_values: np.ndarray, grid_thw) -> dict[str, np.ndarray]:
    """`visual_embeds (N/m², H)` [+ `deepstack_embeds (levels, N/m², H)`] for one video's patches."""
    inputs = vision_graph_inputs(spec, pixel_values, grid_thw)
    return runner.infer({name: inputs[name] for name in runner.input_metadata()})


def empty_cache(runner, batch_size: int) -> dict[str, np.ndarray]:
    """Zero-length `past_key_values.{i}.key/value` (B, kv_heads, 0, head_dim) for a prefill."""
    cache = {}
    for name, meta in runner.input_metadata().items():
        if name.startswith("past_key_values."):
            _, kv_heads, _, head_dim = meta.shape
            cache[name] = np.zeros((batch_size, kv_heads, 0, head_dim), dtype=np.float32)
    return cache


def run_decoder(
    runner,
    inputs_embeds: np.ndarray,
    attention_mask: np.ndarray,
    position_ids: np.ndarray,
    cache: dict[str, np.ndarray],
    deepstack_embeds: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One decoder call. Returns (`{logits, hidden, reward}`, the new cache keyed as the next call's inputs).

    attention_mask covers the cached tokens and the new ones, `(B, P+S)`.
    """
    feeds = {
        "inputs_embeds": np.ascontiguousarray(inputs_embeds, dtype=np.float32),
        "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
        "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
        **cache,
    }
    wanted = runner.input_metadata()
    if "deepstack_embeds" in wanted:
        if deepstack_embeds is None:  # text-only step: DeepStack adds nothing
            levels = wanted["deepstack_embeds"].shape[0]
            deepstack_embeds = np.zeros((levels, *feeds["inputs_embeds"].shape), dtype=np.float32)
        feeds["deepstack_embeds"] = np.ascontiguousarray(deepstack_embeds, dtype=np.float32)
    elif deepstack_embeds is not None:
        raise InvalidInputError("This decoder graph has no deepstack_embeds input (only qwen3_vl has DeepStack).")
    values = runner.infer(feeds)
    new_cache = {n.replace("present.", "past_key_values."): v for n, v in values.items() if n.startswith("present.")}
    heads = {n: v for n, v in values.items() if not n.startswith("present.")}
    return heads, new_cache


def teacher_forced(
    runner,
    inputs_embeds: np.ndarray,
    attention_mask: np.ndarray,
    position_ids: np.ndarray,
    chunks: list[int],
    deepstack_embeds: np.ndarray | None = None,
) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Feed a known sequence `(B, L, H)` through the KV cache in consecutive chunks of the given
    lengths (e.g. `[prompt, 1, 1, 1]`). Returns, per chunk, (index of its last position, its outputs)."""
    if sum(chunks) != inputs_embeds.shape[1]:
        raise InvalidInputError(f"chunks {chunks} sum to {sum(chunks)}, not the sequence length {inputs_embeds.shape[1]}.")
    cache = empty_cache(runner, inputs_embeds.shape[0])
    results, start = [], 0
    for length in chunks:
        end = start + length
        deepstack = None if deepstack_embeds is None else deepstack_embeds[:, :, start:end]
        heads, cache = run_decoder(
            runner,
            inputs_embeds[:, start:end],
            attention_mask[:, :end],
            position_ids[:, :, start:end],
            cache,
            deepstack,
        )
        results.append((end - 1, heads))
        start = end
    return results
