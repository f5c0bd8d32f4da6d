"""The in-place KV cache (`--kv-cache shared`): onnxruntime's GroupQueryAttention kernel, the torch op the
export traces, the runtime's SharedKVCache bookkeeping, and a shared bundle against a concat one.

References: attention written out in numpy from its definition (softmax(q·kᵀ·scale) over each row's
keys so far, a key/value head per group of query heads); the concatenating decoder graph (masked
attention exported from torch), whose parity with transformers test_onnx_scorer checks.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from descore_sdk import Scorer  # noqa: E402
from descore_sdk.export.graph_rewrite import attention_takes_position_ids  # noqa: E402
from descore_sdk.runtime.kv_cache import SharedKVCache  # noqa: E402
from bundles import DIMENSIONS, MAX_FRAMES, MAX_PIXELS, tiny_bundle  # noqa: E402
from graphs import gqa_model  # noqa: E402

torch.set_num_threads(1)
HEADS, KV_HEADS, HEAD_DIM, SCALE = 4, 2, 8, 0.3


def _attention_reference(q, keys, values, before):
    """numpy, from the definition: row b's S queries follow its `before[b]` cached tokens; query s sees
    keys [0, before[b] + s]. q (B, S, heads·hd); keys/values (B, kv_heads, T, hd) with the new ones in."""
    batch, length, _ = q.shape
    out = np.zeros_like(q)
    for b in range(batch):
        for s in range(length):
            seen = before[b] + s + 1
            for h in range(HEADS):
                kv = h // (HEADS // KV_HEADS)
                scores = keys[b, kv, :seen] @ q[b, s, h * HEAD_DIM : (h + 1) * HEAD_DIM] * SCALE
                p = np.exp(scores - scores.max())
                out[b, s, h * HEAD_DIM : (h + 1) * HEAD_DIM] = (p / p.sum()) @ values[b, kv, :seen]
    return out


def _gqa_session():
    model = gqa_model(HEADS, KV_HEADS, HEAD_DIM, SCALE)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("steps", [
    [(1, [0], 5), (1, [5], 3), (1, [8], 1)],            # one row: a prompt, a chunk, a decode step
    [(3, [7, 2, 4], 1), (3, [8, 3, 5], 1)],            # three rows of different lengths, one token each
])
def test_gqa_kernel_and_torch_op_write_in_place_and_attend_as_defined(steps):
    from descore_sdk.export.gqa import gqa

    rng = np.random.default_rng(0)
    session = _gqa_session()
    batch = steps[0][0]
    capacity = 16
    keys = rng.standard_normal((batch, KV_HEADS, capacity, HEAD_DIM)).astype(np.float32)
    values = rng.standard_normal((batch, KV_HEADS, capacity, HEAD_DIM)).astype(np.float32)
    buffer_k, buffer_v = keys.copy(), values.copy()  # what the kernel reads as past and writes into
    for _, before, length in steps:
        before = np.asarray(before)
        q = rng.standard_normal((batch, length, HEADS * HEAD_DIM)).astype(np.float32)
        k = rng.standard_normal((batch, length, KV_HEADS * HEAD_DIM)).astype(np.float32)
        v = rng.standard_normal((batch, length, KV_HEADS * HEAD_DIM)).astype(np.float32)
        for b in range(batch):
            keys[b, :, before[b] : before[b] + length] = k[b].reshape(length, KV_HEADS, HEAD_DIM).transpose(1, 0, 2)
            values[b, :, before[b] : before[b] + length] = v[b].reshape(length, KV_HEADS, HEAD_DIM).transpose(1, 0, 2)
        expected = _attention_reference(q, keys, values, before)
        seqlens = (before + length - 1).astype(np.int32)
        total = np.asarray(seqlens.max() + 1, np.int32)

        # torch op (what the export traces; functional) before the kernel mutates the buffers
        out_t, key_t, value_t = gqa(*(torch.from_numpy(a) for a in (q, k, v, buffer_k, buffer_v, seqlens, total)),
                                    HEADS, KV_HEADS, SCALE)
        binding = session.io_binding()
        for name, array in (("query", q), ("key", k), ("value", v), ("seqlens_k", seqlens), ("total_sequence_length", total)):
            binding.bind_cpu_input(name, array)
        shared_k, shared_v = ort.OrtValue.ortvalue_from_numpy(buffer_k), ort.OrtValue.ortvalue_from_numpy(buffer_v)
        binding.bind_ortvalue_input("past_key", shared_k)
        binding.bind_ortvalue_input("past_value", shared_v)
        binding.bind_output("output", "cpu")
        binding.bind_ortvalue_output("present_key", shared_k)
        binding.bind_ortvalue_output("present_value", shared_v)
        session.run_with_iobinding(binding)
        out = binding.get_outputs()[0].numpy()

        np.testing.assert_allclose(out, expected, atol=1e-5)
        np.testing.assert_allclose(out_t.numpy(), expected, atol=1e-5)
        for b in range(batch):  # the new keys are in the caller's buffer, nothing else moved
            filled = before[b] + length
            np.testing.assert_array_equal(buffer_k[b, :, :filled], keys[b, :, :filled])
            np.testing.assert_array_equal(key_t.numpy()[b, :, :filled], keys[b, :, :filled])
            np.testing.assert_array_equal(buffer_v[b, :, filled:], values[b, :, filled:])


def test_shared_cache_bookkeeping():
    names = {"past_key_values.0.key": (2, 4), "past_key_values.0.value": (2, 4)}
    cache = SharedKVCache.empty(names, batch=3)
    assert cache.capacity == 0
    cache.reserve(10)
    assert cache.capacity == 64  # rounded up to the growth granule
    cache.lengths = np.array([5, 2, 4])
    cache.width = 7  # the loop's mask: row 0 pads 2 columns, row 1 pads 5, row 2 pads 3
    for b, length in enumerate(cache.lengths):
        cache.buffers["past_key_values.0.key"][b, :, :length] = np.arange(1, length + 1)[None, :, None] + 10 * b
    before = cache.buffers["past_key_values.0.key"].copy()
    cache.reserve(100)  # grows, keeps what is filled
    assert cache.capacity == 128
    np.testing.assert_array_equal(cache.buffers["past_key_values.0.key"][:, :, :64], before)

    # adaptive: drop the probe column (the last) of rows 0 and 2
    cut = cache.select(np.array([0, 2]), 0, 6)
    assert cut.lengths.tolist() == [4, 3] and cut.width == 6
    np.testing.assert_array_equal(cut.buffers["past_key_values.0.key"][1, 0, :3, 0], [21, 22, 23])
    # compaction: rows 1 and 2 only, dropping the two columns of padding they share
    compact = cache.select(np.array([1, 2]), 2)
    assert compact.lengths.tolist() == [2, 4] and compact.width == 5
    # the user layout's scoring pass: row 0's first 3 tokens (its real tokens start at column 2)
    prefix = cache.select(np.array([0]), 2, 5)
    assert prefix.lengths.tolist() == [3] and prefix.width == 3
    prefix.buffers["past_key_values.0.key"][0, :, 3] = -1  # a copy: the source is not written through
    assert cache.buffers["past_key_values.0.key"][0, 0, 3, 0] == 4
    with pytest.raises(ValueError):  # real tokens at a row's start cannot be dropped from a packed row
        cache.select(np.array([0]), 3)


@pytest.fixture(scope="module")
def concat_and_shared(tmp_path_factory):
    """The same tiny qwen2_5_vl model as a shared-cache bundle (the default export) and a concat one."""
    from descore_sdk.cli import main

    checkpoint, shared = tiny_bundle(tmp_path_factory, "qwen2_5_vl")
    concat = tmp_path_factory.mktemp("concat") / "bundle"
    assert main(["export", str(checkpoint), str(concat), "--kv-cache", "concat", "--max-frames", str(MAX_FRAMES),
                 "--max-pixels", str(MAX_PIXELS)]) == 0
    return concat, shared


def test_shared_bundle_equals_the_concatenating_one(concat_and_shared, sample_videos):
    """Three rows of different prompt lengths, teacher-forced CoTs of different lengths (rows finish at
    different steps: compaction), in think mode; then adaptive with every row thinking. Both bundles'
    step logits and rewards agree; the shared one holds no concatenated cache."""
    concat, shared = concat_and_shared
    scorers = [Scorer.from_pretrained(b, backend_options={"threads": 1}) for b in (concat, shared)]
    assert not scorers[0].backend.model.shared_cache and scorers[1].backend.model.shared_cache
    ops = [n.op_type for n in onnx.load(str(shared / "decoder.onnx"), load_external_data=False).graph.node]
    if attention_takes_position_ids():  # the rotations run inside the attention kernel (graph_rewrite.py)
        assert "RotaryEmbedding" not in ops and ops.count("GroupQueryAttention") == 2
    videos = [sample_videos[0], sample_videos[3], sample_videos[4]]
    prompts = ["A cat.", "A girl in a pink dress walks to a chair and sits on it.", "Waves at dusk, slow pan."]
    cots = [scorers[0].prompts.encode(t) for t in ("Smooth motion, sharp frames.", "Blurry.", "The colours are warm and the pan is slow and even.")]
    results = []
    for scorer in scorers:
        inputs = [scorer.prepare(v, p, mode="think") for v, p in zip(videos, prompts)]
        results.append(scorer.backend.score_batch(inputs, scorer.options, scorer.stop_ids, [len(c) for c in cots],
                                                  forced_cots=cots, record_logits=True))
    assert len({len(i.input_ids) for i in inputs}) == 3
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.cot_ids, b.cot_ids)
        np.testing.assert_allclose(b.step_logits, a.step_logits, atol=2e-5)
        np.testing.assert_allclose(b.rewards, a.rewards, atol=2e-5)
    assert len(DIMENSIONS["qwen2_5_vl"]) == len(results[0][0].rewards)
    # rows 2 and 3 copied the system turn's columns from row 1 (runtime/kv_cache.PrefixStore)
    assert scorers[1].backend.model.counters["prefix_positions_reused"] > 0

    adaptive = [s.score_batch(videos, prompts, batch_size=3, mode="adaptive", adaptive_band=(-1e9, 1e9), max_new_tokens=5)
                for s in scorers]
    for a, b in zip(*adaptive):
        assert a.mode == b.mode == "think" and a.rationale == b.rationale
        assert abs(a.reward - b.reward) <= 2e-5 and a.num_cot_tokens == b.num_cot_tokens > 0


def test_rotary_op_and_kernel_rotate_each_token_by_its_own_angles():
    """The shared-cache graph's rotation: onnxruntime's RotaryEmbedding fed each token's own cos/sin as
    its table (position_ids = arange(B·S)) equals transformers' `x·cos + rotate_half(x)·sin` with
    cos = cat(a, a), sin = cat(b, b); so does the torch op the export traces."""
    import onnx
    from onnx import TensorProto, helper

    from descore_sdk.export.gqa import rotary

    rng = np.random.default_rng(0)
    batch, length, heads, dim = 2, 3, 4, 8
    x = rng.standard_normal((batch, length, heads * dim)).astype(np.float32)
    angles = rng.uniform(-3, 3, (batch, length, dim // 2)).astype(np.float32)  # M-RoPE: any angle per token
    cos, sin = np.cos(angles), np.sin(angles)
    full_cos, full_sin = np.concatenate([cos, cos], -1)[:, :, None], np.concatenate([sin, sin], -1)[:, :, None]
    heads_x = x.reshape(batch, length, heads, dim)
    rotate_half = np.concatenate([-heads_x[..., dim // 2 :], heads_x[..., : dim // 2]], -1)
    expected = (heads_x * full_cos + rotate_half * full_sin).reshape(batch, length, heads * dim)

    index = np.arange(batch * length, dtype=np.int64).reshape(batch, length)
    table_cos, table_sin = cos.reshape(-1, dim // 2), sin.reshape(-1, dim // 2)
    node = helper.make_node("RotaryEmbedding", ["x", "pos", "cos", "sin"], ["y"], domain="com.microsoft",
                            num_heads=heads, interleaved=0)
    f = TensorProto.FLOAT
    graph = helper.make_graph([node], "rotary", [
        helper.make_tensor_value_info("x", f, [batch, length, heads * dim]),
        helper.make_tensor_value_info("pos", TensorProto.INT64, [batch, length]),
        helper.make_tensor_value_info("cos", f, [batch * length, dim // 2]),
        helper.make_tensor_value_info("sin", f, [batch * length, dim // 2]),
    ], [helper.make_tensor_value_info("y", f, [batch, length, heads * dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    kernel = session.run(["y"], {"x": x, "pos": index, "cos": table_cos, "sin": table_sin})[0]
    traced = rotary(*(torch.from_numpy(a) for a in (x, index, table_cos, table_sin)), heads).numpy()
    np.testing.assert_allclose(kernel, expected, atol=1e-5)
    np.testing.assert_allclose(traced, expected, atol=1e-5)


def test_prefix_store_matches_exact_inputs_only():
    from descore_sdk.runtime.kv_cache import PrefixStore

    rng = np.random.default_rng(0)
    store = PrefixStore(entries=2, block=4)
    # 10 text tokens, then a video whose first token also sits at 10 on every row and whose second does not
    text = np.arange(11)
    positions = np.stack([np.r_[text, 10], np.r_[text, 10], np.r_[text, 11]])
    assert store.head_length(positions) == 10
    assert store.head_length(positions[:, :9]) == 0  # text only: no head
    assert store.head_length(np.array([[0, 1, 1], [0, 1, 2], [0, 1, 2]])) == 0  # 1 token of text: too short
    assert PrefixStore(max_tokens=8).head_length(positions) == 0
    assert store.blocks(0, 10) == [(0, 4), (4, 8), (8, 10)] and store.blocks(8, 10) == [(8, 10)]

    P = 10
    embeds = rng.standard_normal((P, 4)).astype(np.float32)
    deepstack = np.zeros((2, P, 4), np.float32)
    pos = positions[:, :P]
    row = {"k": rng.standard_normal((1, 2, 16, 3)).astype(np.float32)}
    store.remember(embeds, pos, deepstack, row)
    k, head = store.match(embeds, pos, deepstack)
    assert k == P and np.array_equal(head["kv"]["k"], row["k"][0, :, :P])  # the whole head, a copy
    row["k"][:] = 0
    assert head["kv"]["k"].any()  # not a view of the row

    other = embeds.copy()
    other[6, 2] += 1e-6  # one element of token 6 differs: tokens 0..5 match, whole blocks: 4
    assert store.match(other, pos, deepstack)[0] == 4
    moved = pos.copy()
    moved[1, 9] = 20
    assert store.match(embeds, moved, deepstack)[0] == 8  # tokens 0..8 match: blocks up to 8
    features = deepstack.copy()
    features[1, 2, 0] = 1.0
    assert store.match(embeds, pos, features)[0] == 0  # token 2 differs: no whole block
    assert store.match(embeds[:9], pos[:, :9], deepstack[:, :9])[0] == 8  # a shorter head: its whole blocks only

    for seed in (1, 2):  # two new heads evict the least recently used (entries=2)
        store.remember(np.random.default_rng(seed).standard_normal((P, 4)).astype(np.float32), pos, deepstack, row)
    assert store.match(embeds, pos, deepstack)[0] == 0
