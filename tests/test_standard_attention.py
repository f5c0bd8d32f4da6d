"""The in-place decoder in standard ONNX ops (`--kv-cache shared-standard`, export/standard_attention.py):
the form TensorRT ≥ 10.15 maps onto IKVCacheUpdateLayer + IAttention, run here by onnxruntime's CPU kernels.

References: attention written out in numpy from its definition (row b's S new tokens follow its cached
ones; query s sees keys 0 … cached + s; a key/value head per group of query heads); onnxruntime's own
GroupQueryAttention (the graph the rewrite replaces); transformers through the export's strict parity
check (teacher-forced, 1e-4). TensorRT itself is not installed here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from descore_sdk.export.standard_attention import standard_attention  # noqa: E402
from bundles import MAX_FRAMES, MAX_PIXELS, tiny_bundle, torch_model  # noqa: E402
from graphs import gqa_model  # noqa: E402

torch.set_num_threads(1)
HEADS, KV_HEADS, HEAD_DIM, SCALE = 4, 2, 8, 0.3


def _reference(q, k, v, past_k, past_v, cached):
    """numpy: the cache with the new keys/values written after each row's `cached[b]` tokens, and the
    attention output (B, S, heads·hd)."""
    batch, length, _ = q.shape
    keys, values = past_k.copy(), past_v.copy()
    out = np.zeros_like(q)
    for b in range(batch):
        c = cached[b]
        keys[b, :, c : c + length] = k[b].reshape(length, KV_HEADS, HEAD_DIM).transpose(1, 0, 2)
        values[b, :, c : c + length] = v[b].reshape(length, KV_HEADS, HEAD_DIM).transpose(1, 0, 2)
        for s in range(length):
            for h in range(HEADS):
                kv = h // (HEADS // KV_HEADS)
                scores = keys[b, kv, : c + s + 1] @ q[b, s, h * HEAD_DIM : (h + 1) * HEAD_DIM] * SCALE
                p = np.exp(scores - scores.max())
                out[b, s, h * HEAD_DIM : (h + 1) * HEAD_DIM] = (p / p.sum()) @ values[b, kv, : c + s + 1]
    return out, keys, values


def _attention_graph():
    return gqa_model(HEADS, KV_HEADS, HEAD_DIM, SCALE)


@pytest.mark.parametrize("cached,length,capacity", [([3], 5, 12), ([4, 1, 6], 1, 8), ([0, 0], 3, 3), ([5], 1, 6)])
def test_the_rewritten_attention_is_the_definition(cached, length, capacity):
    """Prefill chunks on a cache (one row, as the runtime sends them), batched decode steps with rows of
    different lengths, an empty cache filled to capacity: output and the written columns as the numpy
    definition; columns past each row's length are the input's (the in-place buffer is left alone there).
    The original GroupQueryAttention node gives the same output."""
    model = _attention_graph()
    gqa = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    counts = standard_attention(model)
    onnx.checker.check_model(model, full_check=True)
    assert counts == {"rotary": 0, "attention": 1}
    assert sorted(n.op_type for n in model.graph.node if n.op_type in ("TensorScatter", "Attention")) == \
        ["Attention", "TensorScatter", "TensorScatter"]
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 24)}
    standard = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(len(cached) * 10 + length)
    batch = len(cached)
    feed = {
        "query": rng.standard_normal((batch, length, HEADS * HEAD_DIM)).astype(np.float32),
        "key": rng.standard_normal((batch, length, KV_HEADS * HEAD_DIM)).astype(np.float32),
        "value": rng.standard_normal((batch, length, KV_HEADS * HEAD_DIM)).astype(np.float32),
        "past_key": rng.standard_normal((batch, KV_HEADS, capacity, HEAD_DIM)).astype(np.float32),
        "past_value": rng.standard_normal((batch, KV_HEADS, capacity, HEAD_DIM)).astype(np.float32),
        "seqlens_k": (np.asarray(cached) + length - 1).astype(np.int32),
        "total_sequence_length": np.asarray(max(cached) + length, np.int32),
    }
    out, keys, values = standard.run(None, feed)
    ref_out, ref_keys, ref_values = _reference(feed["query"], feed["key"], feed["value"], feed["past_key"], feed["past_value"], cached)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(keys, ref_keys)  # written columns and untouched ones alike
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_allclose(out, gqa.run(None, feed)[0], rtol=0, atol=1e-5)


def test_unknown_contrib_ops_are_refused():
    from onnx import helper

    model = _attention_graph()
    model.graph.node.append(helper.make_node("SkipSimplifiedLayerNormalization", ["output", "output"], ["x"], domain="com.microsoft"))
    with pytest.raises(ValueError, match="no standard-ONNX form"):
        standard_attention(model)


# -- whole bundles ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def standard_bundle(tmp_path_factory):
    """(checkpoint, the default onnxruntime-flavour bundle, the shared-standard bundle) of one tiny qwen3_vl
    model; export_bundle's strict parity check against transformers (1e-4) runs on the new one."""
    from descore_sdk.export.bundle import export_bundle

    checkpoint, shared = tiny_bundle(tmp_path_factory, "qwen3_vl")
    out = tmp_path_factory.mktemp("standard") / "bundle"
    export_bundle(torch_model(checkpoint), out, max_frames=MAX_FRAMES, max_pixels=MAX_PIXELS, progress=False,
                  parity_threads=1, kv_cache="shared-standard")
    return checkpoint, shared, out


def test_standard_bundle_has_no_onnxruntime_ops_and_passed_parity(standard_bundle):
    _, _, bundle = standard_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_diff"] < 1e-4
    decoder = onnx.load(str(bundle / "decoder.onnx"))
    assert {n.domain for n in decoder.graph.node} == {""}
    ops = [n.op_type for n in decoder.graph.node]
    layers = sum(1 for io in manifest["graphs"]["decoder"]["inputs"] if io["name"].endswith(".key"))
    assert ops.count("TensorScatter") == 2 * layers and ops.count("Attention") == layers
    assert ops.count("RotaryEmbedding") == 2 * layers
    assert manifest["graphs"]["decoder"]["opsets"] == {"ai.onnx": 24}
    names = [io["name"] for io in manifest["graphs"]["decoder"]["inputs"]]
    assert "seqlens_k" in names and "attention_mask" not in names  # the in-place contract the runtime drives


def test_standard_bundle_scores_as_the_onnxruntime_flavour(standard_bundle, sample_videos):
    """A left-padded batch of 3 with teacher-forced CoTs (5, 1, 3 tokens) and free greedy CoTs of different
    lengths: the same step logits, rewards and CoTs as the GroupQueryAttention bundle of the same weights."""
    from descore_sdk.runtime.onnx_backend import OnnxBackend
    from descore_sdk.scorer import Scorer

    _, shared, bundle = standard_bundle
    a_backend, b_backend = OnnxBackend(bundle, threads=1), OnnxBackend(shared, threads=1)
    assert a_backend.model.shared_cache
    scorer = Scorer.from_pretrained(shared, backend_options={"threads": 1})
    videos = [sample_videos[0], sample_videos[1], sample_videos[0]]
    think = [scorer.prepare(v, p, mode="think") for v, p in zip(videos, ["a red car", "a cat", "something else"])]
    options = scorer.options.replace(mode="think")
    forced = [np.arange(11, 16), np.asarray([21]), np.asarray([31, 32, 33])]
    a = a_backend.score_batch(think, options, scorer.stop_ids, [5, 5, 5], forced_cots=forced, record_logits=True)
    b = b_backend.score_batch(think, options, scorer.stop_ids, [5, 5, 5], forced_cots=forced, record_logits=True)
    for x, y in zip(a, b):
        assert np.abs(y.step_logits).mean() > 0.1
        np.testing.assert_allclose(x.step_logits, y.step_logits, rtol=0, atol=1e-4)
        np.testing.assert_allclose(x.rewards, y.rewards, rtol=0, atol=1e-4)
    a = a_backend.score_batch(think, options, scorer.stop_ids, [1, 7, 4])
    b = b_backend.score_batch(think, options, scorer.stop_ids, [1, 7, 4])
    assert [x.cot_ids.tolist() for x in a] == [y.cot_ids.tolist() for y in b]


@pytest.mark.slow
def test_fp16_standard_bundle_keeps_an_fp16_cache(tmp_path_factory):
    """--precision fp16 --kv-cache shared-standard: the in-place cache I/O is fp16 (past and present are one
    buffer, so one type), every other I/O float32; the fidelity report against fp32 is finite and close."""
    from descore_sdk.export.bundle import export_bundle

    checkpoint, _ = tiny_bundle(tmp_path_factory, "qwen2_5_vl")
    out = tmp_path_factory.mktemp("standard_fp16") / "bundle"
    export_bundle(torch_model(checkpoint), out, max_frames=MAX_FRAMES, max_pixels=MAX_PIXELS, progress=False,
                  parity_threads=1, kv_cache="shared-standard", precision="fp16", fidelity_videos=20)
    manifest = json.loads((out / "manifest.json").read_text())
    for io in manifest["graphs"]["decoder"]["inputs"] + manifest["graphs"]["decoder"]["outputs"]:
        cache = io["name"].startswith(("past_key_values.", "present."))
        assert io["dtype"] == ("float16" if cache else io["dtype"] if io["dtype"] in ("int64", "int32") else "float32")
    fidelity = json.loads((out / "fidelity.json").read_text())
    assert fidelity["finite"] and fidelity["teacher_forced_max_abs"]["logits"] < 3e-2  # measured 9.5e-3
    assert fidelity["generated"]["pair_agreement"] == 1.0
