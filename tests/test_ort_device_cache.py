"""onnxruntime with the KV cache on a device (runtime/ort_device_cache.py), run here with device_type "cpu".

The device code is the same on "cpu" and "cuda" (only the OrtValues' device differs), so on this machine
it runs on the CPU provider and must give exactly what the host-cache backend gives — CoTs, rewards,
hidden states and every step's logits — on a left-padded batch whose rows finish at different steps,
with teacher-forced CoTs and an adaptive run, for both cache forms; and what transformers gives on a
teacher-forced CoT. The copy graph is checked against numpy indexing, the shared buffer's bookkeeping
against `kv_cache.SharedKVCache`. The GPU test at the end runs only where onnxruntime-gpu sees a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the bundles are exported from tiny torch models

from descore_sdk.errors import ModelLoadError  # noqa: E402
from descore_sdk.runtime import ort_device_cache  # noqa: E402
from descore_sdk.runtime.ort_device_cache import (  # noqa: E402
    DeviceCacheDecoderModel,
    DeviceSharedCache,
    KVOps,
    cache_device,
    cuda_cache_refusal,
)

torch.set_num_threads(1)
PROMPT = "a slow pan over a snowy forest at dawn, with a red fox running from left to right " * 3


@pytest.fixture(scope="module")
def concat_bundle(scale_bundle):
    """conftest's scale bundle (shared cache) re-exported with the concatenating cache."""
    from descore_sdk.export.bundle import export_bundle

    out = scale_bundle.parent / "bundle-concat"
    if not (out / "manifest.json").is_file():
        export_bundle(scale_bundle.parent / "checkpoint", out, max_frames=4, max_pixels=160 * 160, progress=False,
                      parity=False, kv_cache="concat")
    return out


@pytest.fixture(scope="module", params=["shared", "concat"])
def bundle(request, scale_bundle, concat_bundle):
    return {"shared": scale_bundle, "concat": concat_bundle}[request.param]


# -- the copy graph -------------------------------------------------------------------------------------------
def test_kv_ops_assets_are_what_the_generator_writes(tmp_path):
    pytest.importorskip("onnx")
    from descore_sdk.export.kv_ops import KV_OPS_TYPES, write_kv_ops

    for path in write_kv_ops(tmp_path):
        assert path.read_bytes() == (ort_device_cache.KV_OPS_DIR / path.name).read_bytes(), path.name
    assert len(KV_OPS_TYPES) == 3


@pytest.mark.parametrize("element_type", ["float32", "float16"])
def test_kv_ops_copy_is_numpy_indexing(element_type):
    ops = KVOps(element_type, "cpu", 0)
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 9, 3)).astype(element_type)
    value = ort.OrtValue.ortvalue_from_numpy(x)
    for rows, start, stop, extra in [([2, 0], 1, 7, 0), ([3], 0, None, 5), ([0, 1, 2, 3], 4, 4, 2), ([1, 1], 0, 9, 0)]:
        got = ops.copy(value, rows, start, stop, extra).numpy()
        want = x[rows][:, :, start:stop]
        want = np.concatenate([want, np.zeros(want.shape[:2] + (extra,) + want.shape[3:], x.dtype)], axis=2)
        assert got.dtype == x.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    empty = ops.copy(ops.empty((3, 2, 0, 3), element_type), [0, 1, 2], extra=64).numpy()
    assert empty.shape == (3, 2, 64, 3) and not empty.any()


def test_shared_buffer_bookkeeping_is_the_host_caches():
    """reserve / select on the device cache leave the same lengths, width and real columns as SharedKVCache."""
    ort = pytest.importorskip("onnxruntime")
    from descore_sdk.runtime.kv_cache import SharedKVCache

    rng = np.random.default_rng(1)
    lengths, width = np.array([5, 2, 7]), 9
    data = {n: rng.standard_normal((3, 2, 8, 4)).astype(np.float32) for n in ("past_key_values.0.key", "past_key_values.0.value")}
    host = SharedKVCache({n: v.copy() for n, v in data.items()}, lengths, width)
    ops = KVOps("float32", "cpu", 0)
    device = DeviceSharedCache(ops, {n: ort.OrtValue.ortvalue_from_numpy(v.copy()) for n, v in data.items()}, lengths, width, "float32")

    def same(h, d):
        assert d.lengths.tolist() == h.lengths.tolist() and d.width == h.width and d.batch == h.batch
        for name in data:
            got = d.buffers[name].numpy()
            for b, n in enumerate(h.lengths):
                np.testing.assert_array_equal(got[b, :, :n], h.buffers[name][b, :, :n])

    host.reserve(20), device.reserve(20)
    assert host.capacity == device.capacity == 64
    same(host, device)
    same(host.select([2, 0], 2), device.select([2, 0], 2))  # drop a row and leading padding
    same(host.select([1], 0, 8), device.select([1], 0, 8))  # cut the last column (the adaptive probe)
    same(host.select([0, 1], 2, 7), device.select([0, 1], 2, 7))  # keep a prefix: row 0 shorter, row 1 empty
    with pytest.raises(ValueError):
        device.select([2], 3)  # would drop row 2's first real token
    view = device.row(1)["past_key_values.0.key"]
    assert view.shape == (1, 2, 64, 4) and view.offset == 2 * 64 * 4 * 4


def test_cache_device_and_refusal():
    assert cache_device("cpu") == ("cpu", 0)
    assert cache_device("cuda:2") == ("cuda", 2) and cache_device("tensorrt") == ("cuda", 0)
    assert cache_device("cpu", [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]) == ("cuda", 1)
    assert cache_device("cuda", ["CPUExecutionProvider"]) == ("cpu", 0)
    concat = [{"name": "attention_mask"}, {"name": "past_key_values.0.key", "dtype": "float32"}]
    shared = [{"name": "seqlens_k"}, {"name": "past_key_values.0.key", "dtype": "float32"}]
    half = [{"name": "seqlens_k"}, {"name": "past_key_values.0.key", "dtype": "float16"}]
    assert cuda_cache_refusal(concat) is None and cuda_cache_refusal(half) is None
    reason = cuda_cache_refusal(shared)
    assert "float32" in reason and "float16/bfloat16" in reason and "--kv-cache concat" in reason
    assert cuda_cache_refusal(shared, {"ai.onnx": 18, "com.microsoft": 1}) == reason
    assert cuda_cache_refusal(shared, {"ai.onnx": 24}) is None  # shared-standard: TensorScatter + Attention


def test_an_fp32_shared_bundle_is_refused_on_cuda_before_loading(scale_bundle):
    from descore_sdk.runtime.onnx_backend import OnnxBackend

    with pytest.raises(ModelLoadError, match="float16/bfloat16"):
        OnnxBackend(scale_bundle, device="cuda")


# -- the decode loop over the device cache equals the host cache --------------------------------------------
def _backends(bundle):
    from descore_sdk.runtime.onnx_backend import OnnxBackend, OnnxDecoderModel
    from descore_sdk.scorer import Scorer

    host = OnnxBackend(bundle, threads=1)
    device = OnnxBackend(bundle, threads=1, device_cache=True)
    assert type(host.model) is OnnxDecoderModel and isinstance(device.model, DeviceCacheDecoderModel)
    scorer = Scorer.from_pretrained(bundle, device="cpu", backend_options={"threads": 1})
    return host, device, scorer


def _same(a_list, b_list, logits: bool = False):
    assert len(a_list) == len(b_list)
    for a, b in zip(a_list, b_list):
        np.testing.assert_array_equal(a.cot_ids, b.cot_ids)
        assert a.mode == b.mode
        np.testing.assert_allclose(a.rewards, b.rewards, rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.hidden, b.hidden, rtol=0, atol=1e-5)
        if logits:
            assert a.step_logits.shape == b.step_logits.shape
            np.testing.assert_allclose(a.step_logits, b.step_logits, rtol=0, atol=1e-5)


def test_device_cache_decodes_like_the_host_cache(bundle, sample_videos, monkeypatch):
    host, device, scorer = _backends(bundle)
    calls = []
    real = device.model.decoder.run_bound

    def spy(host_inputs, device_inputs, device_outputs, **kw):
        out, allocated = real(host_inputs, device_inputs, device_outputs, **kw)
        calls.append((sorted(out), {type(v).__name__ for v in allocated.values()}, kw["device_type"]))
        return out, allocated

    monkeypatch.setattr(device.model.decoder, "run_bound", spy)
    videos = [sample_videos[0], sample_videos[1], sample_videos[0]]
    think = [scorer.prepare(v, p, mode="think") for v, p in zip(videos, [PROMPT, "a cat", "something else"])]
    assert len(think[0].input_ids) > len(think[1].input_ids)  # rows 1 and 2 are left-padded
    options = scorer.options.replace(mode="think")
    # free-running CoTs of different budgets: rows leave at different steps (the cache loses rows and columns)
    _same(device.score_batch(think, options, scorer.stop_ids, [1, 7, 4], record_logits=True),
          host.score_batch(think, options, scorer.stop_ids, [1, 7, 4], record_logits=True), logits=True)
    # teacher-forced CoTs of different lengths
    forced = [np.asarray([11, 12, 13, 14, 15]), np.asarray([21])]
    _same(device.score_batch(think[:2], options, scorer.stop_ids, [5, 5], forced_cots=forced, record_logits=True),
          host.score_batch(think[:2], options, scorer.stop_ids, [5, 5], forced_cots=forced, record_logits=True), logits=True)
    # adaptive: only the second row thinks (the probe column is cut from the device cache)
    adaptive = [scorer.prepare(v, "a video", mode="adaptive") for v in videos[:2]]
    rule = lambda fast: np.array([False, True])  # noqa: E731
    a = device.score_batch(adaptive, options.replace(mode="adaptive"), scorer.stop_ids, [3, 3], think_if=rule)
    _same(a, host.score_batch(adaptive, options.replace(mode="adaptive"), scorer.stop_ids, [3, 3], think_if=rule))
    assert [r.mode for r in a] == ["fast", "think"]
    # fast mode
    fast = [scorer.prepare(v, "a video", mode="fast") for v in videos[:2]]
    _same(device.score_batch(fast, options.replace(mode="fast"), scorer.stop_ids, [0, 0]),
          host.score_batch(fast, options.replace(mode="fast"), scorer.stop_ids, [0, 0]))
    # only the last position's outputs ever came to the host; a concat cache's presents stayed OrtValues
    assert calls and all(out == ["hidden", "logits", "reward"] and kind == "cpu" for out, _, kind in calls)
    if not device.model.shared_cache:
        assert all(types == {"OrtValue"} for _, types, _ in calls)


def test_device_cache_matches_transformers(bundle, sample_videos):
    """Teacher-forced: every CoT step's logits, the hidden state and the reward against transformers' own
    uncached forward (1e-4, as the bundle's parity check)."""
    from bundles import hf_forward, torch_model

    _, device, scorer = _backends(bundle)
    think = scorer.prepare(sample_videos[0], "a girl walks to a chair and sits down", mode="think")
    cot = scorer.prompts.encode("The girl walks in smoothly and sits down. The colors are warm.")
    out = device.score_batch([think], scorer.options.replace(mode="think"), scorer.stop_ids, [len(cot)],
                             forced_cots=[cot], record_logits=True)[0]
    ref = hf_forward(torch_model(bundle.parent / "checkpoint"), think,
                     np.concatenate([think.input_ids, cot, [device.reward_token_id]]))
    start = len(think.input_ids) - 1
    ref_steps = ref["logits"][start : start + len(cot) + 1]
    assert out.step_logits.shape == ref_steps.shape and np.abs(ref_steps).mean() > 0.3
    np.testing.assert_allclose(out.step_logits, ref_steps, rtol=0, atol=1e-4)
    np.testing.assert_allclose(out.rewards, ref["reward"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out.hidden, ref["hidden"], rtol=0, atol=1e-4)


def test_a_wrong_row_address_is_caught(scale_bundle, sample_videos, monkeypatch):
    """The comparison can fail: prefilling every row into row 0's memory changes the results."""
    host, device, scorer = _backends(scale_bundle)
    real_row = DeviceSharedCache.row
    monkeypatch.setattr(DeviceSharedCache, "row", lambda self, b: real_row(self, 0))
    think = [scorer.prepare(v, p, mode="think") for v, p in zip(sample_videos[:2], [PROMPT, "a cat"])]
    options = scorer.options.replace(mode="think")
    forced = [np.asarray([11, 12]), np.asarray([21, 22])]
    a = device.score_batch(think, options, scorer.stop_ids, [2, 2], forced_cots=forced)
    b = host.score_batch(think, options, scorer.stop_ids, [2, 2], forced_cots=forced)
    assert max(float(np.abs(x.rewards - y.rewards).max()) for x, y in zip(a, b)) > 1e-3


# -- an in-place bundle with an fp16 cache (export/half_cache.py): the form GroupQueryAttention's CUDA kernel takes --
@pytest.fixture(scope="module")
def half_bundle(scale_bundle, tmp_path_factory):
    pytest.importorskip("onnx")
    from descore_sdk.export.half_cache import half_cache_bundle

    return half_cache_bundle(scale_bundle, tmp_path_factory.mktemp("half") / "bundle")


def test_half_cache_bundle_io(half_bundle, scale_bundle):
    """Only the cache I/O changes type (fp16); the rest of the I/O and every other file are the source's; the
    rewritten graph casts q/k/v to fp16 before each GroupQueryAttention and its output back; such a bundle may
    go to onnxruntime CUDA; converting twice, or a concat bundle, is refused."""
    onnx = pytest.importorskip("onnx")
    from descore_sdk.bundle import read_manifest
    from descore_sdk.errors import InvalidInputError
    from descore_sdk.export.half_cache import half_cache_bundle

    old, new = read_manifest(scale_bundle), read_manifest(half_bundle)
    for direction in ("inputs", "outputs"):
        for a, b in zip(old["graphs"]["decoder"][direction], new["graphs"]["decoder"][direction]):
            cache = a["name"].startswith(("past_key_values.", "present."))
            assert (a["name"], a["shape"]) == (b["name"], b["shape"])
            assert b["dtype"] == ("float16" if cache else a["dtype"])
    assert {k: v for k, v in old["files"].items() if k != "decoder.onnx"} == \
        {k: v for k, v in new["files"].items() if k != "decoder.onnx"}
    graph = onnx.load(str(half_bundle / "decoder.onnx"), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers = {i: node for node in graph.node for i in node.input}
    gqa = [node for node in graph.node if node.op_type == "GroupQueryAttention"]
    assert len(gqa) == 2
    for node in gqa:
        assert all(producer[node.input[i]].op_type == "Cast" for i in range(3))
        assert node.input[3].startswith("past_key_values.") and node.output[1].startswith("present.")
        assert consumers[node.output[0]].op_type == "Cast"
    assert cuda_cache_refusal(new["graphs"]["decoder"]["inputs"]) is None
    assert cuda_cache_refusal(old["graphs"]["decoder"]["inputs"]) is not None
    with pytest.raises(InvalidInputError, match="already converted"):
        half_cache_bundle(half_bundle, half_bundle.parent / "twice")


def test_half_cache_bundle_decodes_close_to_fp32(half_bundle, scale_bundle, sample_videos):
    """The fp16-cache bundle takes the device-cache path by itself (the host path keeps float32 caches) and, on
    a left-padded batch of 3 with teacher-forced CoTs of 5, 1 and 3 tokens, stays within 5e-3 of the fp32
    bundle's logits and 2e-3 of its rewards (measured: 1.6e-3 / 6e-4: attention in fp16); free-running greedy
    CoTs with rows leaving at different steps are the fp32 bundle's."""
    from descore_sdk.runtime.onnx_backend import OnnxBackend
    from descore_sdk.scorer import Scorer

    half, fp32 = OnnxBackend(half_bundle, threads=1), OnnxBackend(scale_bundle, threads=1)
    assert isinstance(half.model, DeviceCacheDecoderModel) and half.model.cache_type == "float16"
    scorer = Scorer.from_pretrained(scale_bundle, device="cpu", backend_options={"threads": 1})
    videos = [sample_videos[0], sample_videos[1], sample_videos[0]]
    think = [scorer.prepare(v, p, mode="think") for v, p in zip(videos, [PROMPT, "a cat", "something else"])]
    options = scorer.options.replace(mode="think")
    forced = [np.arange(11, 16), np.asarray([21]), np.asarray([31, 32, 33])]
    a = half.score_batch(think, options, scorer.stop_ids, [5, 5, 5], forced_cots=forced, record_logits=True)
    b = fp32.score_batch(think, options, scorer.stop_ids, [5, 5, 5], forced_cots=forced, record_logits=True)
    for x, y in zip(a, b):
        assert x.step_logits.shape == y.step_logits.shape
        np.testing.assert_allclose(x.step_logits, y.step_logits, rtol=0, atol=5e-3)
        np.testing.assert_allclose(x.rewards, y.rewards, rtol=0, atol=2e-3)
        assert np.abs(x.step_logits - y.step_logits).max() > 0  # really fp16
    a = half.score_batch(think, options, scorer.stop_ids, [1, 7, 4])
    b = fp32.score_batch(think, options, scorer.stop_ids, [1, 7, 4])
    assert [x.cot_ids.tolist() for x in a] == [y.cot_ids.tolist() for y in b]
    # and through the public API, backend "auto" on this CPU machine
    half_scorer = Scorer.from_pretrained(half_bundle, backend_options={"threads": 1})
    assert half_scorer.backend_choice.backend == "onnxruntime"
    x, y = half_scorer.score(sample_videos[1], "a cat", mode="fast"), scorer.score(sample_videos[1], "a cat", mode="fast")
    np.testing.assert_allclose(list(x.rewards.values()), list(y.rewards.values()), rtol=0, atol=2e-3)


# -- on a GPU ----------------------------------------------------------------------------------------------------
def _no_cuda() -> str | None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CUDA execution provider here (install onnxruntime-gpu on a machine with a GPU)"
    try:
        onnxruntime.OrtValue.ortvalue_from_shape_and_type([1], np.float32, "cuda", 0)
    except Exception as exc:  # no device behind the provider
        return f"onnxruntime-gpu cannot allocate on cuda:0 ({exc})"
    return None


NO_CUDA = _no_cuda()


def _gpu_against_cpu(bundle, sample_videos, tolerance: float):
    """The bundle on cuda:0 (cache on the device) and on the CPU: the same forced CoTs, step logits and
    rewards within `tolerance`. Returns the GPU backend."""
    from descore_sdk.runtime.onnx_backend import OnnxBackend
    from descore_sdk.scorer import Scorer

    gpu = OnnxBackend(bundle, device="cuda:0")
    assert isinstance(gpu.model, DeviceCacheDecoderModel) and gpu.model.device_type == "cuda"
    assert "CUDAExecutionProvider" in gpu.model.decoder.active_providers
    cpu = OnnxBackend(bundle, threads=1)
    scorer = Scorer.from_pretrained(bundle, device="cpu", backend_options={"threads": 1})
    think = [scorer.prepare(v, p, mode="think") for v, p in zip(sample_videos[:2], [PROMPT, "a cat"])]
    options = scorer.options.replace(mode="think")
    forced = [np.asarray([11, 12, 13, 14, 15]), np.asarray([21])]
    a = gpu.score_batch(think, options, scorer.stop_ids, [5, 5], forced_cots=forced, record_logits=True)
    b = cpu.score_batch(think, options, scorer.stop_ids, [5, 5], forced_cots=forced, record_logits=True)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.step_logits, y.step_logits, rtol=0, atol=tolerance)
        np.testing.assert_allclose(x.rewards, y.rewards, rtol=0, atol=tolerance)
    return gpu


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA is not None, reason=str(NO_CUDA))
def test_cuda_device_cache_decodes_like_the_cpu(concat_bundle, scale_bundle, sample_videos):
    """First test to run on a GPU machine: the concat bundle with its cache on cuda:0 against the CPU
    backend (fp32 graphs; 1e-3 allows cuDNN/cuBLAS reductions and TF32), and the fp32 shared bundle refused."""
    from descore_sdk.runtime.onnx_backend import OnnxBackend

    _gpu_against_cpu(concat_bundle, sample_videos, 1e-3)
    with pytest.raises(ModelLoadError, match="float16/bfloat16"):
        OnnxBackend(scale_bundle, device="cuda:0")


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA is not None, reason=str(NO_CUDA))
def test_cuda_in_place_fp16_cache_decodes_like_the_cpu(half_bundle, sample_videos):
    """The in-place path on the GPU: the fp16-cache bundle's GroupQueryAttention (CUDA kernel) updates the
    device buffers bound as past and present; against the same bundle on the CPU (1e-2: fp16 kernels)."""
    gpu = _gpu_against_cpu(half_bundle, sample_videos, 1e-2)
    assert gpu.model.shared_cache
