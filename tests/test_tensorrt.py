"""TensorRT export and runtime: everything that does not need a GPU, against hand-computed values and the
shapes the real decode loop produces; the GPU build/run test skips with its reason on machines without
TensorRT or a GPU (every machine of this project so far).
"""

from __future__ import annotations

import enum
import json
import shutil
import types

import numpy as np
import pytest

from descore_sdk.bundle import load_bundle, read_manifest, write_manifest
from descore_sdk.errors import (
    DeviceUnavailableError,
    EngineCompatibilityError,
    InvalidInputError,
    MissingDependencyError,
    ModelLoadError,
)
from descore_sdk.export.tensorrt import (
    build_engines,
    build_strategy,
    check_fits,
    decoder_profiles,
    engine_limits,
    memory_plan,
    profiles_to_json,
    vision_profiles,
)
from descore_sdk.runtime import tensorrt_backend, tensorrt_runner
from descore_sdk.runtime.tensorrt_backend import batch_groups, check_engine_compat, engine_profiles
from descore_sdk.runtime.tensorrt_runner import (
    GpuInfo,
    KVSlabPool,
    ProfileShapes,
    TrtEnvironment,
    cache_plan,
    pick_profile,
    slice_copies,
)


def _tensorrt_missing() -> str | None:
    try:
        tensorrt_runner.tensorrt_environment()
    except (MissingDependencyError, DeviceUnavailableError) as exc:
        return str(exc)
    return None


NO_GPU = _tensorrt_missing()


@pytest.fixture(scope="module")
def scale_bundle(scale_bundle):
    """conftest's scale bundle re-exported with the concatenating KV cache: TensorRT engines are built
    from standard-ONNX graphs (the default shared-cache decoder uses an onnxruntime contrib op)."""
    from descore_sdk.export.bundle import export_bundle

    out = scale_bundle.parent / "bundle-concat"
    if not (out / "manifest.json").is_file():
        export_bundle(scale_bundle.parent / "checkpoint", out, max_frames=4, max_pixels=160 * 160, progress=False,
                      parity=False, kv_cache="concat")
    return out


@pytest.fixture(scope="module")
def manifest(scale_bundle):
    """The scale bundle's manifest: qwen2_5_vl tower (patch 14, temporal 2, merge 2), 4 frames of ≤ 160² px,
    2 layers, 2 KV heads of 16, hidden 64, max_context 4096, max_new_tokens 4096."""
    return read_manifest(scale_bundle)


# -- fail fast, name what is missing ------------------------------------------------------------------------
@pytest.mark.skipif(NO_GPU is None, reason="TensorRT and a GPU are present: the no-GPU errors cannot happen here")
def test_export_tensorrt_fails_at_once_naming_what_is_missing(tmp_path, capsys):
    from descore_sdk.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # an earlier bundle: --overwrite must not delete it before the probe
    (out / "decoder.onnx").write_bytes(b"x")
    code = main(["export", str(tmp_path / "anything"), str(out), "--format", "tensorrt", "--overwrite"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert ("TensorRT is not installed" in err and "descore-sdk[tensorrt]" in err) or "GPU" in err
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "manifest.json"]


def test_build_engines_names_the_missing_package(tmp_path, monkeypatch, scale_bundle):
    def no_tensorrt():
        raise MissingDependencyError("TensorRT is not installed (test)")

    monkeypatch.setattr(tensorrt_runner, "import_tensorrt", no_tensorrt)
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        build_engines(scale_bundle, tmp_path / "trt", progress=False)
    assert not (tmp_path / "trt").exists()


class _CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorNoDevice = 100


def _fake_cudart(count: int, err=_CudaError.cudaSuccess):
    props = types.SimpleNamespace(name=b"NVIDIA L4\x00\x00", major=8, minor=9, totalGlobalMem=24 << 30)
    return types.SimpleNamespace(cudaGetDeviceCount=lambda: (err, count),
                                 cudaGetDeviceProperties=lambda index: (_CudaError.cudaSuccess, props))


def test_tensorrt_environment_errors_name_the_gpu_or_package(monkeypatch):
    monkeypatch.setattr(tensorrt_runner, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.8.0.43"))
    monkeypatch.setattr(tensorrt_runner, "import_cudart", lambda: _fake_cudart(0, _CudaError.cudaErrorNoDevice))
    with pytest.raises(DeviceUnavailableError, match="cudaErrorNoDevice"):
        tensorrt_runner.tensorrt_environment()
    monkeypatch.setattr(tensorrt_runner, "import_cudart", lambda: _fake_cudart(0))
    with pytest.raises(DeviceUnavailableError, match="cudaGetDeviceCount = 0"):
        tensorrt_runner.tensorrt_environment()
    monkeypatch.setattr(tensorrt_runner, "import_cudart", lambda: _fake_cudart(1))
    with pytest.raises(DeviceUnavailableError, match="device 3 does not exist"):
        tensorrt_runner.tensorrt_environment(3)
    env = tensorrt_runner.tensorrt_environment()
    assert (env.tensorrt_version, env.gpu.name, env.compute_capability, env.gpu.total_memory) == (
        "10.8.0.43", "NVIDIA L4", "8.9", 24 << 30)


def test_without_cuda_python_the_error_names_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("cuda"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependencyError, match="cuda-python"):
        tensorrt_runner.import_cudart()


# -- limits and profiles --------------------------------------------------------------------------------------
def test_engine_limits_by_hand(manifest):
    limits = engine_limits(manifest)
    # 160² = 25,600 px per frame → 25600 // 14² = 130 patches; 4 frames / temporal 2 = 2 steps → 260 patches
    # (what export recorded as max_vision_patches); 65 video tokens; 65 + 512 + 4096 + 1 → 4736 > 4096 context.
    assert limits.frame_patches == 130 and limits.max_vision_patches == manifest["model"]["max_vision_patches"] == 260
    assert (limits.max_batch, limits.max_seq, limits.prefill_chunk) == (2, 4096, 2048)
    small = engine_limits(manifest, max_batch=4, max_frames=8, max_seq=1024, max_new_tokens=64)
    assert (small.max_batch, small.max_frames, small.max_vision_patches, small.max_seq, small.prefill_chunk) == (4, 8, 520, 1024, 1024)
    # 65 video tokens + 512 + 64 + 1 = 642 → rounded up to 704
    assert engine_limits(manifest, max_new_tokens=64).max_seq == 704


@pytest.mark.parametrize("kwargs, message", [
    ({"max_seq": 5000}, "exceeds the model's context"),
    ({"max_seq": 60}, "no room for text"),
    ({"max_batch": 1}, "≥ 2"),
    ({"max_pixels": 500}, "merge unit"),
    ({"max_frames": 0}, "≥ 1"),
    ({"max_seq": 2.5}, "whole number"),
])
def test_engine_limits_refuse_bad_flags(manifest, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        engine_limits(manifest, **kwargs)


def test_decoder_profiles_by_hand(manifest):
    decode, prefill = decoder_profiles(manifest, engine_limits(manifest))
    assert (decode.name, prefill.name) == ("decode", "prefill")
    assert decode.shapes["inputs_embeds"] == ((1, 1, 64), (2, 1, 64), (2, 1, 64))
    assert decode.shapes["attention_mask"] == ((1, 2), (2, 2049), (2, 4096))
    assert decode.shapes["position_ids"] == ((3, 1, 1), (3, 2, 1), (4, 2, 1))
    assert decode.shapes["past_key_values.1.value"] == ((1, 2, 1, 16), (2, 2, 2048, 16), (2, 2, 4095, 16))
    assert prefill.shapes["inputs_embeds"] == ((1, 1, 64), (2, 2048, 64), (2, 2048, 64))
    assert prefill.shapes["attention_mask"] == ((1, 1), (2, 2048), (2, 4096))
    assert prefill.shapes["past_key_values.0.key"] == ((1, 2, 0, 16), (2, 2, 0, 16), (2, 2, 4095, 16))
    assert set(decode.shapes) == set(prefill.shapes) == {io["name"] for io in manifest["graphs"]["decoder"]["inputs"]}
    # the JSON form in the manifest reads back to the same profiles
    assert engine_profiles({"profiles": json.loads(json.dumps(profiles_to_json([decode, prefill])))}) == [decode, prefill]


def test_unknown_graph_dimension_is_refused(manifest):
    broken = json.loads(json.dumps(manifest))
    broken["graphs"]["decoder"]["inputs"][0]["shape"][1] = "mystery_length"
    with pytest.raises(ModelLoadError, match="mystery_length"):
        decoder_profiles(broken, engine_limits(manifest))


def test_profiles_cover_every_step_of_the_real_decode_loop(scale_bundle, sample_videos, manifest):
    """Score real videos (think, batch of two, a chunked prefill) on onnxruntime, record the decoder feed
    of every step, and check each fits a profile — single-token steps with a cache the decode profile."""
    from descore_sdk.scorer import Scorer

    scorer = Scorer.from_pretrained(scale_bundle, device="cpu", backend_options={"threads": 1, "prefill_chunk": 48},
                                    mode="think", max_new_tokens=3)
    model = scorer.backend.model
    seen = []
    step = model.step

    def recording_step(embeds, mask, positions, deepstack, cache):
        past = next(iter(cache.values())).shape
        seen.append({"inputs_embeds": embeds.shape, "attention_mask": mask.shape, "position_ids": positions.shape,
                     **{name: past for name in cache}})
        return step(embeds, mask, positions, deepstack, cache)

    model.step = recording_step
    scorer.compare(sample_videos[0], sample_videos[1], "a video")
    limits = engine_limits(manifest, prefill_chunk=48)
    profiles = decoder_profiles(manifest, limits)
    assert len(seen) >= 4
    kinds = [profiles[pick_profile(profiles, shapes)].name for shapes in seen]
    for shapes, kind in zip(seen, kinds):
        single = shapes["inputs_embeds"][1] == 1 and shapes["past_key_values.0.key"][2] > 0
        assert kind == ("decode" if single else "prefill")
    assert "decode" in kinds and "prefill" in kinds
    # a third video in the batch is beyond --max-batch 2: refused, saying how to rebuild
    too_big = {**seen[0], "inputs_embeds": (3, *seen[0]["inputs_embeds"][1:])}
    with pytest.raises(InvalidInputError, match="--max-batch"):
        pick_profile(profiles, too_big)


def test_vision_profile_holds_the_real_vision_feed(scale_bundle, sample_videos, manifest):
    from descore_sdk.runtime.vision_inputs import VisionGraphSpec, vision_graph_inputs
    from descore_sdk.scorer import Scorer

    scorer = Scorer.from_pretrained(scale_bundle, device="cpu", backend_options={"threads": 1})
    inputs = scorer.prepare(sample_videos[0], "a video")
    feed = vision_graph_inputs(VisionGraphSpec.from_dict(manifest["model"]["vision"]), inputs.patches, inputs.grid_thw)
    (profile,) = vision_profiles(manifest, engine_limits(manifest))
    assert profile.shapes["pixel_values"] == ((4, 1176), (260, 1176), (260, 1176))
    assert profile.shapes["patch_position_ids"] == ((4, 2), (130, 2), (130, 2))
    assert pick_profile([profile], {k: v.shape for k, v in feed.items()}) == 0


# -- precision path by TensorRT version -------------------------------------------------------------------------
def test_build_strategy_by_version():
    s = build_strategy("10.3.0", "fp16", "fp16")  # JetPack 6.1/6.2
    assert s.strongly_typed and s.flags == () and s.graph_precision == "fp16"
    assert build_strategy("10.8.0", "bf16", None).graph_precision == "bf16"  # a checkpoint: exported as bf16
    assert build_strategy("11.0.0", "fp32", "fp32").strongly_typed
    s = build_strategy("8.6.2", "fp16", "fp32")  # JetPack 6.0
    assert not s.strongly_typed and s.flags == ("FP16",) and s.graph_precision == "fp32"
    assert build_strategy("8.5.2", "fp16", None).graph_precision == "fp32"  # JetPack 5.1: export fp32, flag FP16


@pytest.mark.parametrize("version, precision, bundle, message", [
    ("10.3.0", "fp16", "fp32", "--precision fp16"),
    ("8.6.2", "bf16", None, "TensorRT ≥ 9"),
    ("8.6.2", "fp16", "fp16", "fp32 bundle"),
    ("9.3.0", "fp8", None, "TensorRT ≥ 10"),
    ("10.8.0", "fp8", "int8-qdq", "FP8 Q/DQ"),
    ("7.2.3", "int8", None, "8.0"),
    ("10.8.0", "int8", "fp16", "fp32 graphs with Q/DQ"),
    ("10.8.0", "int8", "int4", "fp32 graphs with Q/DQ"),
    ("10.8.0", "fp16", "int8-qdq", "int8-qdq"),
    ("10.8.0", "int4", None, "Unknown TensorRT precision"),
    ("10.8.0", "fp16", "int4", "MatMulNBits"),
])
def test_build_strategy_refusals(version, precision, bundle, message):
    with pytest.raises(InvalidInputError, match=message):
        build_strategy(version, precision, bundle)


def test_int8_strategy_by_version():
    s = build_strategy("10.3.0", "int8", "fp32")  # strongly typed: the Q/DQ graph's types, no precision flag
    assert (s.strongly_typed, s.flags, s.quantize, s.graph_precision) == (True, (), True, "fp32")
    s = build_strategy("8.6.2", "int8", None)  # weakly typed: the INT8 flag enables the Q/DQ layers
    assert (s.strongly_typed, s.flags, s.quantize, s.graph_precision) == (False, ("INT8",), True, "fp32")
    s = build_strategy("10.8.0", "int8", "int8-qdq")  # rebuilding from an int8 TensorRT bundle: already quantized
    assert not s.quantize and s.graph_precision == "int8-qdq"
    s = build_strategy("10.8.0", "fp8", "fp32")  # FP8 E4M3 Q/DQ, strongly typed only
    assert (s.strongly_typed, s.flags, s.quantize, s.graph_precision) == (True, (), True, "fp32")
    assert not build_strategy("10.8.0", "fp8", "fp8-qdq").quantize


# -- engine compatibility -----------------------------------------------------------------------------------------
RECORD = {"tensorrt_version": "10.3.0", "compute_capability": "8.7", "gpu_name": "Orin"}


def _env(version="10.3.0", cc="8.7"):
    return TrtEnvironment(version, GpuInfo(0, "Some GPU", cc, 16 << 30))


def test_engine_compat():
    check_engine_compat(RECORD, _env())
    with pytest.raises(EngineCompatibilityError, match=r"TensorRT 10\.3\.0.*TensorRT 10\.3\.1.*descore export b NEW_FOLDER --format tensorrt"):
        check_engine_compat(RECORD, _env("10.3.1"), "b")
    with pytest.raises(EngineCompatibilityError, match=r"compute capability 8\.7.*8\.9"):
        check_engine_compat(RECORD, _env(cc="8.9"))
    portable = {**RECORD, "version_compatible": True, "hardware_compatibility": "ampere_plus"}
    check_engine_compat(portable, _env("10.8.0", "8.9"))
    for env in (_env("10.2.0"), _env("11.0.0"), _env(cc="7.5")):
        with pytest.raises(EngineCompatibilityError):
            check_engine_compat(portable, env)


def test_backend_refuses_a_bundle_without_engines(scale_bundle):
    from descore_sdk.runtime.tensorrt_backend import TensorRTBackend

    with pytest.raises(ModelLoadError, match="no TensorRT engines.*--format tensorrt"):
        TensorRTBackend(scale_bundle, verify=False)


def test_backend_refuses_engines_of_another_tensorrt(scale_bundle, tmp_path, monkeypatch):
    from descore_sdk.runtime.tensorrt_backend import TensorRTBackend

    bundle = tmp_path / "bundle"
    shutil.copytree(scale_bundle, bundle)
    manifest = read_manifest(bundle)
    manifest["engines"] = {**RECORD, "decoder": {"file": "decoder.plan", "profiles": []}, "vision": {"file": "vision.plan"}}
    write_manifest(bundle, manifest)
    monkeypatch.setattr(tensorrt_backend, "tensorrt_environment", lambda index=0: _env("10.8.0", "8.9"))
    with pytest.raises(EngineCompatibilityError, match="Rebuild them on this machine"):
        TensorRTBackend(bundle, verify=False)
    with pytest.raises(InvalidInputError, match="'cuda' or 'cuda:N'"):
        TensorRTBackend(bundle, device="cpu", verify=False)


# -- device buffers: plans checked with numpy ----------------------------------------------------------------------
@pytest.mark.parametrize("rows, start, stop", [([2, 0], 1, 4), ([1], 0, None), ([0, 1, 2], 2, 2), ([], 0, 3)])
def test_slice_copies_match_numpy_indexing(rows, start, stop):
    rng = np.random.default_rng(0)
    batch, kv, length, head = 3, 2, 5, 4
    cache = rng.standard_normal((batch, kv, length, head)).astype(np.float32)
    copies, new_length = slice_copies(batch, length, kv, head, 4, rows, start, stop)
    expected = cache[np.asarray(rows, dtype=np.int64)][:, :, start:stop]
    assert new_length == expected.shape[2]
    src = cache.tobytes()
    dst = bytearray(expected.nbytes)
    for c in copies:  # what cudaMemcpy2DAsync does, byte for byte
        for r in range(c.height):
            s, d = c.src_offset + r * c.src_pitch, c.dst_offset + r * c.dst_pitch
            dst[d:d + c.width] = src[s:s + c.width]
    np.testing.assert_array_equal(np.frombuffer(bytes(dst), np.float32).reshape(expected.shape), expected)


def test_slice_copies_refuse_a_row_outside_the_batch():
    with pytest.raises(InvalidInputError):
        slice_copies(2, 5, 2, 4, 4, [2], 0, None)


def test_cache_plan_by_hand(manifest):
    plan = cache_plan(manifest, max_batch=2, max_seq=4096)
    assert plan.names == ("past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value")
    assert plan.tensor_bytes == 2 * 2 * 4096 * 16 * 4  # already a multiple of 256
    assert plan.offsets == (0, 1 << 20, 2 << 20, 3 << 20) and plan.slab_bytes == 4 << 20
    with pytest.raises(InvalidInputError, match="--max-seq"):
        plan.check_fits(1, 4097)


def test_slab_pool_reuses_slabs_across_a_decode(manifest):
    plan = cache_plan(manifest, max_batch=2, max_seq=64)
    allocated, freed = [], []

    def allocate(nbytes):
        allocated.append(nbytes)
        return 0x1000 * len(allocated)

    pool = KVSlabPool(plan, allocate, freed.append)
    cache = pool.new_cache(2, 0)
    for step in range(20):  # a step turns the past into a present one column longer
        cache = pool.new_cache(2, cache.length + 1)
    assert pool.allocated == 2 and cache.length == 20
    rescore = pool.new_cache(1, 10)  # a one-row copy alive next to the batch's cache
    for step in range(5):
        rescore = pool.new_cache(1, rescore.length + 1)
    assert pool.allocated == 3 and allocated == [plan.slab_bytes] * 3
    assert cache.tensor_address(2) - cache.address == 2 * plan.tensor_bytes
    del cache, rescore
    assert pool.idle == 3
    pool.release_all()
    assert sorted(freed) == [0x1000, 0x2000, 0x3000]


def test_memory_plan_by_hand(manifest):
    limits = engine_limits(manifest)
    plan = memory_plan(manifest, limits, "fp16")
    onnx = sum(r["bytes"] for n, r in manifest["files"].items() if n.endswith((".onnx", ".onnx.data")))
    assert plan["weights"] == onnx // 2  # fp32 graphs, fp16 engine
    assert plan["kv_slab"] == 2 * 2 * 2 * 2 * 4096 * 16 * 4
    assert plan["total"] == plan["weights"] + 3 * plan["kv_slab"]
    check_fits(plan, 8 << 30, "Orin Nano")
    with pytest.raises(InvalidInputError, match="Lower --max-seq or --max-batch"):
        check_fits(plan, plan["total"], "a small GPU")


def test_batch_groups():
    assert [list(g) for g in batch_groups(5, 2)] == [[0, 1], [2, 3], [4]]
    assert [list(g) for g in batch_groups(2, 2)] == [[0, 1]]


# -- onnxruntime's GPU providers: option assembly -----------------------------------------------------------------
def test_resolve_providers_options(monkeypatch, tmp_path):
    import onnxruntime

    from descore_sdk.runtime.onnxruntime_runner import resolve_providers

    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(MissingDependencyError, match=r"descore-sdk\[gpu\]"):
            resolve_providers("tensorrt")
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    providers = resolve_providers("tensorrt:1", fp16=True, cache_dir=tmp_path)
    assert providers == [
        ("TensorrtExecutionProvider", {"device_id": 1, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                       "trt_engine_cache_path": str(tmp_path / "engines"), "trt_timing_cache_enable": True,
                                       "trt_timing_cache_path": str(tmp_path / "timing")}),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert resolve_providers("cuda:2", cuda_graph=True) == [
        ("CUDAExecutionProvider", {"device_id": 2, "enable_cuda_graph": True}), "CPUExecutionProvider"]
    assert resolve_providers("cuda") == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    with pytest.raises(InvalidInputError):
        resolve_providers("cuda:x")


# -- on a GPU with TensorRT only -------------------------------------------------------------------------------------
def _engines_score_like_onnxruntime(engines, scale_bundle, sample_videos):
    """Think mode on two sample videos: the engines' CoT is onnxruntime's on the CPU, rewards within 1e-3."""
    from descore_sdk.scorer import Scorer

    trt = Scorer.from_pretrained(engines, backend="tensorrt", mode="think", max_new_tokens=8)
    ort = Scorer.from_pretrained(scale_bundle, device="cpu", mode="think", max_new_tokens=8)
    for video in sample_videos[:2]:
        a, b = trt.score(video, "a video"), ort.score(video, "a video")
        assert a.rationale == b.rationale
        np.testing.assert_allclose(list(a.rewards.values()), list(b.rewards.values()), atol=1e-3)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(NO_GPU is not None, reason=f"needs TensorRT and an NVIDIA GPU: {NO_GPU}")
def test_engines_score_like_onnxruntime(scale_bundle, sample_videos, tmp_path):
    """Build fp32 engines of the tiny bundle and compare fast- and think-mode rewards with onnxruntime on the CPU."""
    out = build_engines(scale_bundle, tmp_path / "trt", precision="fp32", max_seq=1024, progress=False)
    _engines_score_like_onnxruntime(out, scale_bundle, sample_videos)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(NO_GPU is not None, reason=f"needs TensorRT and an NVIDIA GPU: {NO_GPU}")
def test_in_place_engines_from_the_checkpoint_score_like_onnxruntime(scale_bundle, sample_videos, tmp_path):
    """From the checkpoint, TensorRT ≥ 10.15 builds the in-place decoder (IKVCacheUpdateLayer + IAttention);
    its CoTs and rewards are onnxruntime's on the CPU (older TensorRT builds the concat form: same check)."""
    out = build_engines(scale_bundle.parent / "checkpoint", tmp_path / "trt", precision="fp32", max_seq=1024,
                        max_frames=4, max_pixels=160 * 160, progress=False)
    print("\nKV cache:", read_manifest(out)["engines"]["kv_cache"]["used"])
    _engines_score_like_onnxruntime(out, scale_bundle, sample_videos)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(NO_GPU is not None, reason=f"needs TensorRT and an NVIDIA GPU: {NO_GPU}")
def test_int8_engines_score_like_their_qdq_graph(scale_bundle, sample_videos, tmp_path):
    """Build int8 engines (Q/DQ decoder) and compare think-mode rewards with the same bundle's Q/DQ graph run by
    onnxruntime on the CPU (both int8 in the linear layers; 0.05 allows TensorRT's fused int8 GEMMs and fp32
    reductions in another order), and with the fp32 graph at the CPU test's int8 tolerance."""
    from descore_sdk.scorer import Scorer

    out = build_engines(scale_bundle, tmp_path / "trt-int8", precision="int8", max_seq=1024, progress=False)
    trt = Scorer.from_pretrained(out, backend="tensorrt", mode="think", max_new_tokens=8)
    qdq = Scorer.from_pretrained(out, backend="onnxruntime", device="cpu", mode="think", max_new_tokens=8)
    fp32 = Scorer.from_pretrained(scale_bundle, device="cpu", mode="think", max_new_tokens=8)
    for video in sample_videos[:2]:
        a, b, c = trt.score(video, "a video"), qdq.score(video, "a video"), fp32.score(video, "a video")
        np.testing.assert_allclose(list(a.rewards.values()), list(b.rewards.values()), atol=0.05)
        np.testing.assert_allclose(list(a.rewards.values()), list(c.rewards.values()), atol=0.15)


def test_real_cuda_python_without_a_gpu_says_so():
    """With cuda-python installed on a machine without an NVIDIA driver (this one, when the extra is in the
    venv), the GPU probe is a DeviceUnavailableError naming the CUDA error, not a traceback."""
    try:
        cudart = tensorrt_runner.import_cudart()
    except MissingDependencyError:
        pytest.skip("cuda-python is not installed")
    err, count = cudart.cudaGetDeviceCount()
    if int(err) == 0 and count:
        pytest.skip("a GPU is visible here")
    with pytest.raises(DeviceUnavailableError, match=r"No (usable )?CUDA GPU"):
        tensorrt_runner.gpu_info()


def test_cuda_graph_policy_captures_recurring_keys_only():
    """First sight: run. Second: run + capture. Then: replay. Checked with a recording stand-in for cudart."""
    from descore_sdk.runtime.tensorrt_runner import CudaGraphCache

    calls = []
    ok = _CudaError.cudaSuccess
    cudart = types.SimpleNamespace(
        cudaStreamCaptureMode=types.SimpleNamespace(cudaStreamCaptureModeThreadLocal="thread-local"),
        cudaStreamBeginCapture=lambda stream, mode: calls.append(("begin", mode)) or (ok,),
        cudaStreamEndCapture=lambda stream: calls.append(("end",)) or (ok, "graph"),
        cudaGraphInstantiate=lambda graph, flags: calls.append(("instantiate", graph)) or (ok, "exec"),
        cudaGraphDestroy=lambda graph: calls.append(("destroy", graph)) or (ok,),
        cudaGraphLaunch=lambda graph_exec, stream: calls.append(("launch", graph_exec)) or (ok,),
        cudaGraphExecDestroy=lambda graph_exec: calls.append(("exec-destroy", graph_exec)) or (ok,),
    )
    cache = CudaGraphCache(types.SimpleNamespace(cudart=cudart, handle="stream"))

    def step():
        calls.append(("execute",))

    cache.run("A", step)
    assert calls == [("execute",)]
    cache.run("B", step)  # another key: still plain
    calls.clear()
    cache.run("A", step)
    assert calls == [("execute",), ("begin", "thread-local"), ("execute",), ("end",), ("instantiate", "graph"),
                     ("destroy", "graph")]
    calls.clear()
    cache.run("A", step)
    assert calls == [("launch", "exec")]
    assert (cache.plain, cache.captures, cache.replays) == (3, 1, 1)
    cache.clear()
    assert calls[-1] == ("exec-destroy", "exec")


def test_step_buffers_by_hand(manifest):
    from descore_sdk.runtime.tensorrt_backend import step_buffer_bytes

    sizes = step_buffer_bytes(manifest, decoder_profiles(manifest, engine_limits(manifest)))
    # prefill profile maxima: embeds 2×2048×64 f32, mask 2×4096 i64, positions 4×2×2048 i64; outputs at batch 2
    assert sizes == {"inputs_embeds": 2 * 2048 * 64 * 4, "attention_mask": 2 * 4096 * 8, "position_ids": 4 * 2 * 2048 * 8,
                     "logits": 2 * 2232 * 4, "hidden": 2 * 64 * 4, "reward": 2 * 3 * 4}


# -- build orchestration and manifest bookkeeping (TensorRT itself replaced) -----------------------------------------
def _fake_environment(monkeypatch, version="10.8.0", cc="8.9", memory=24 << 30):
    from descore_sdk.export import tensorrt as export_trt

    env = TrtEnvironment(version, GpuInfo(0, "Test GPU", cc, memory))
    monkeypatch.setattr(export_trt, "tensorrt_environment", lambda index=0: env)
    return env


def test_build_engines_records_engines_in_the_manifest(scale_bundle, tmp_path, monkeypatch):
    """The build's bookkeeping with TensorRT's part (`_build_engine`) replaced by a writer of placeholder
    bytes: limits, profiles and the environment land in manifest["engines"], the plans in
    manifest["files"] with their sha256, the ONNX bundle is carried over, and the result loads as a bundle
    — whose engines are then refused on another TensorRT, as a real build's would be."""
    from descore_sdk.bundle import load_bundle
    from descore_sdk.export import tensorrt as export_trt
    from descore_sdk.runtime.tensorrt_backend import TensorRTBackend

    _fake_environment(monkeypatch)
    built = []

    def placeholder_build(onnx_path, plan_path, profiles, strategy, cache_path, workspace_gib):
        built.append((onnx_path.name, [p.name for p in profiles], strategy.strongly_typed, strategy.flags))
        plan_path.write_bytes(b"placeholder, not an engine: " + onnx_path.name.encode())

    monkeypatch.setattr(export_trt, "_build_engine", placeholder_build)
    out = build_engines(scale_bundle, tmp_path / "trt", precision="fp32", max_seq=1024, progress=False,
                        timing_cache=tmp_path / "timing.cache")
    assert built == [("vision.onnx", ["vision"], True, ()), ("decoder.onnx", ["decode", "prefill"], True, ())]
    bundle = load_bundle(out, verify=True)  # every file, plans included, matches its sha256
    engines = bundle.manifest["engines"]
    assert (engines["tensorrt_version"], engines["compute_capability"], engines["gpu_name"]) == ("10.8.0", "8.9", "Test GPU")
    assert engines["strongly_typed"] and engines["precision"] == "fp32" and engines["limits"]["max_seq"] == 1024
    assert engines["kv_cache"]["in_place_layers_available"] == []  # TensorRT 10.8
    assert engine_profiles(engines["decoder"]) == decoder_profiles(read_manifest(scale_bundle), engine_limits(
        read_manifest(scale_bundle), max_seq=1024))
    assert {"vision.plan", "decoder.plan", "decoder.onnx", "vision.onnx"} <= set(bundle.manifest["files"])
    assert "engines" not in read_manifest(scale_bundle)  # the source bundle is untouched
    monkeypatch.setattr(tensorrt_backend, "tensorrt_environment", lambda index=0: _env("10.9.0", "8.9"))
    with pytest.raises(EngineCompatibilityError, match="10.8.0"):
        TensorRTBackend(out)


def _quantized_engines(scale_bundle, tmp_path_factory, precision: str):
    """`build_engines(--precision int8|fp8)` on the concat scale bundle for an sm 8.9 GPU, TensorRT's own build
    replaced by placeholder bytes (the Q/DQ export, calibration and manifest are the real ones)."""
    from descore_sdk.export import tensorrt as export_trt

    folder = tmp_path_factory.mktemp(precision)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_trt, "tensorrt_environment", lambda index=0: TrtEnvironment("10.8.0", GpuInfo(0, "Test GPU", "8.9", 24 << 30)))
        patch.setattr(export_trt, "_build_engine", lambda onnx_path, plan_path, *rest: plan_path.write_bytes(b"placeholder"))
        return build_engines(scale_bundle, folder / "trt", precision=precision, max_seq=1024, progress=False,
                             timing_cache=folder / "timing.cache")


@pytest.fixture(scope="module")
def int8_bundle(scale_bundle, tmp_path_factory):
    return _quantized_engines(scale_bundle, tmp_path_factory, "int8")


def test_int8_build_writes_a_qdq_decoder(int8_bundle, scale_bundle):
    """The decoder in the int8 bundle: every linear layer's activation and weight behind an int8 Q/DQ pair with
    zero point 0 (TensorRT's symmetric quantization); each weight's scales per output channel equal to
    max|W[:, j]| / 127 computed here from the fp32 weights; the heads (Gemm) untouched; the source unchanged."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from descore_sdk.bundle import load_bundle

    bundle = load_bundle(int8_bundle, verify=True)  # every file, the new decoder included, matches its sha256
    manifest = bundle.manifest
    assert manifest["graphs"]["decoder"]["precision"] == "int8-qdq" and manifest["engines"]["precision"] == "int8"
    assert manifest["engines"]["strongly_typed"] and manifest["engines"]["builder_flags"] == []
    assert manifest["quantization"]["quantized_nodes"] == 14  # 2 layers × (q, k, v, o, gate, up, down)
    assert manifest["quantization"]["calibration_calls"] > 0
    source = onnx.load(str(scale_bundle / "decoder.onnx"))
    assert not any(n.op_type == "QuantizeLinear" for n in source.graph.node)
    model = onnx.load(str(int8_bundle / "decoder.onnx"))
    fp32 = {i.name: numpy_helper.to_array(i) for i in source.graph.initializer}
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    linear = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in producer
              and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(linear) == 14
    for node in linear:
        for index in (0, 1):  # activation and weight both dequantized from int8
            dq = producer[node.input[index]]
            q = producer[dq.input[0]]
            assert dq.op_type == "DequantizeLinear" and q.op_type == "QuantizeLinear"
            zero = values[q.input[2]]
            assert zero.dtype == np.int8 and not zero.any()
        q = producer[producer[node.input[1]].input[0]]
        weight = fp32[q.input[0]]
        np.testing.assert_allclose(values[q.input[1]], np.abs(weight).max(axis=0) / 127, rtol=1e-6)
    assert [n.op_type for n in model.graph.node if n.op_type == "Gemm"] == ["Gemm", "Gemm"]
    assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear"
               for n in model.graph.node if n.op_type == "Gemm" for i in n.input)


def _teacher_forced_against_fp32(bundle, scale_bundle, sample_videos):
    """(quantized, fp32) results of one think-mode pass with a teacher-forced CoT on a prompt the calibration
    never saw, both bundles on onnxruntime's CPU provider (step logits recorded)."""
    from descore_sdk.runtime.onnx_backend import OnnxBackend
    from descore_sdk.scorer import Scorer

    quantized, fp32 = OnnxBackend(bundle, threads=1), OnnxBackend(scale_bundle, threads=1)
    scorer = Scorer.from_pretrained(scale_bundle, device="cpu", backend_options={"threads": 1})
    inputs = scorer.prepare(sample_videos[0], "a man rides a horse along a beach at sunset", mode="think")
    cot = scorer.prompts.encode("The motion is fluid, the lighting is consistent and the subject matches the text.")
    options = scorer.options.replace(mode="think")
    return tuple(backend.score_batch([inputs], options, scorer.stop_ids, [len(cot)], forced_cots=[cot], record_logits=True)[0]
                 for backend in (quantized, fp32))


def test_int8_qdq_decoder_tracks_fp32_on_onnxruntime(int8_bundle, scale_bundle, sample_videos):
    """The Q/DQ graph run by onnxruntime's CPU provider against the fp32 graph, teacher-forced on a prompt the
    calibration never saw. Stated tolerance: mean |Δ logits| ≤ 0.08 and max ≤ 0.6 (the logits' std is ~1:
    int8 per-tensor activations in 2 layers, measured 0.03–0.04 / 0.2–0.28), rewards within 0.15, the greedy
    choice the same at ≥ 80% of steps (measured 17 of 19: a random-weight model's top logits are often near
    ties); and not equal (the graph is really quantized). Deterministic: same graphs, same inputs."""
    a, b = _teacher_forced_against_fp32(int8_bundle, scale_bundle, sample_videos)
    diff = np.abs(a.step_logits - b.step_logits)
    print(f"\nint8 Q/DQ vs fp32: logits mean {diff.mean():.4f} max {diff.max():.4f} (std {b.step_logits.std():.3f}), "
          f"rewards {np.abs(a.rewards - b.rewards).max():.4f}")
    assert 0.5 < b.step_logits.std() < 2
    assert 1e-3 < diff.mean() <= 0.08 and diff.max() <= 0.6
    assert np.abs(a.rewards - b.rewards).max() <= 0.15
    assert (a.step_logits.argmax(-1) == b.step_logits.argmax(-1)).mean() >= 0.8


@pytest.fixture(scope="module")
def fp8_bundle(scale_bundle, tmp_path_factory):
    return _quantized_engines(scale_bundle, tmp_path_factory, "fp8")


def test_fp8_build_writes_an_e4m3_qdq_decoder(fp8_bundle, int8_bundle, scale_bundle):
    """Every linear layer's activation and weight behind an FP8 E4M3 Q/DQ pair: zero points float8 0, one scale
    per tensor; a weight's scale is max|W| / 448 (the E4M3 maximum) from the fp32 weights, an activation's the
    calibrated amax / 448 (the int8 build's scale × 127 / 448: the same min/max calibration); opset ≥ 19."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, numpy_helper

    bundle = load_bundle(fp8_bundle, verify=True)
    assert bundle.manifest["graphs"]["decoder"]["precision"] == "fp8-qdq" and bundle.manifest["engines"]["precision"] == "fp8"
    assert bundle.manifest["engines"]["kv_cache"]["used"].startswith("device-resident")  # Q/DQ: the concat graph
    model = onnx.load(str(fp8_bundle / "decoder.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    fp32 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(scale_bundle / "decoder.onnx")).graph.initializer}
    int8 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(int8_bundle / "decoder.onnx")).graph.initializer}
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    linear = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in producer
              and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(linear) == 14
    for node in linear:
        for index in (0, 1):
            q = producer[producer[node.input[index]].input[0]]
            assert q.op_type == "QuantizeLinear" and not any(a.name == "axis" for a in q.attribute)
            zero = inits[q.input[2]]
            assert zero.data_type == TensorProto.FLOAT8E4M3FN and not numpy_helper.to_array(zero).astype(np.float32).any()
            scale = numpy_helper.to_array(inits[q.input[1]])
            assert scale.shape == ()
            if index == 1:
                np.testing.assert_allclose(scale, np.abs(fp32[q.input[0]]).max() / 448, rtol=1e-6)
            else:
                np.testing.assert_allclose(scale, int8[q.input[1]] * 127 / 448, rtol=1e-6)


def test_fp8_qdq_decoder_tracks_fp32_on_onnxruntime(fp8_bundle, scale_bundle, sample_videos):
    """onnxruntime's CPU provider runs the E4M3 Q/DQ graph; teacher-forced against fp32 on a prompt the calibration
    never saw. Stated tolerance: mean |Δ logits| ≤ 0.15 and max ≤ 1.0 (logits' std ~1; E4M3 keeps 3 mantissa bits,
    per-tensor weights: measured mean 0.092, max 0.60, rewards 0.11, greedy 0.74), rewards within 0.3, greedy choice
    equal at ≥ 70 % of steps; and not equal (really quantized)."""
    a, b = _teacher_forced_against_fp32(fp8_bundle, scale_bundle, sample_videos)
    diff = np.abs(a.step_logits - b.step_logits)
    agree = (a.step_logits.argmax(-1) == b.step_logits.argmax(-1)).mean()
    print(f"\nfp8 Q/DQ vs fp32: logits mean {diff.mean():.4f} max {diff.max():.4f} (std {b.step_logits.std():.3f}), "
          f"rewards {np.abs(a.rewards - b.rewards).max():.4f}, greedy agree {agree:.2f}")
    assert 1e-3 < diff.mean() <= 0.15 and diff.max() <= 1.0
    assert np.abs(a.rewards - b.rewards).max() <= 0.3
    assert agree >= 0.7


def test_fp8_needs_an_fp8_gpu(scale_bundle, tmp_path, monkeypatch):
    _fake_environment(monkeypatch, cc="8.7")  # Orin: no FP8 tensor cores
    with pytest.raises(InvalidInputError, match="compute capability ≥ 8.9"):
        build_engines(scale_bundle, tmp_path / "a", precision="fp8", progress=False)
    assert not (tmp_path / "a").exists()


def test_build_engines_refuses_before_writing(scale_bundle, tmp_path, monkeypatch):
    _fake_environment(monkeypatch)
    with pytest.raises(InvalidInputError, match="--precision fp16"):  # strongly typed: the fp32 bundle is not fp16
        build_engines(scale_bundle, tmp_path / "a", precision="fp16", progress=False)
    _fake_environment(monkeypatch, memory=1 << 20)  # a 1 MiB "GPU"
    with pytest.raises(InvalidInputError, match="Lower --max-seq"):
        build_engines(scale_bundle, tmp_path / "b", precision="fp32", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # The default ONNX export's decoder (in-place cache via onnxruntime's GroupQueryAttention) is not TensorRT's.
    _fake_environment(monkeypatch)
    with pytest.raises(InvalidInputError, match="GroupQueryAttention.*--kv-cache shared-standard"):
        build_engines(scale_bundle.parent / "bundle", tmp_path / "c", precision="fp32", progress=False)
    assert not (tmp_path / "c").exists()


def test_cli_passes_the_tensorrt_flags(scale_bundle, tmp_path, monkeypatch):
    from descore_sdk.cli import main
    from descore_sdk.export import tensorrt as export_trt

    monkeypatch.setattr(tensorrt_runner, "tensorrt_environment", lambda index=0: _env())
    calls = []
    monkeypatch.setattr(export_trt, "build_engines", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert main(["export", str(scale_bundle), str(tmp_path / "out"), "--format", "tensorrt", "--max-batch", "4",
                 "--max-seq", "1024", "--max-frames", "8"]) == 0
    (source, out), kwargs = calls[0]
    assert (source, out) == (scale_bundle, str(tmp_path / "out"))
    assert (kwargs["precision"], kwargs["max_batch"], kwargs["max_seq"], kwargs["max_frames"]) == ("fp16", 4, 1024, 8)
    assert main(["export", str(scale_bundle), str(tmp_path / "x"), "--max-seq", "1024"]) != 0  # onnx format: refused


# -- the TensorRT backend's device logic, with the device emulated in host memory -------------------------------------
class _HostDevice:
    """Stands in for CudaStream: "device memory" is one numpy byte array, addresses are offsets into it."""

    def __init__(self, size: int = 1 << 26):
        self.memory = np.zeros(size, np.uint8)
        self.next = 256
        self.freed = []

    def malloc(self, nbytes):
        address, self.next = self.next, self.next + -(-int(nbytes) // 256) * 256
        assert self.next <= self.memory.size, "emulated device out of memory"
        return address

    def free(self, address):
        self.freed.append(address)

    def upload(self, address, array):
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self.memory[address:address + data.size] = data

    def download(self, address, shape, dtype):
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.memory[address:address + count].copy().view(dtype).reshape(shape)

    def memset(self, address, nbytes):
        self.memory[address:address + int(nbytes)] = 0

    def copy_2d(self, dst, src, copy):
        for r in range(copy.height):
            s, d = src + copy.src_offset + r * copy.src_pitch, dst + copy.dst_offset + r * copy.dst_pitch
            self.memory[d:d + copy.width] = self.memory[s:s + copy.width]

    def synchronize(self):
        pass


def _emulated_runner_class(steps: list, bound: list | None = None):
    """TensorRTRunner whose engine is the bundle's ONNX graph on onnxruntime (CPU), reading its inputs from and
    writing its outputs to the emulated device at the addresses the backend bound — everything but TensorRT."""
    from descore_sdk.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from descore_sdk.runtime.tensorrt_runner import TensorRTRunner

    class EmulatedRunner(TensorRTRunner):
        def _activate(self):
            self.stream = _HostDevice()
            self.onnx = OnnxRuntimeRunner(self.path.with_suffix(".onnx"), threads=1).activate()

        def _deactivate(self):
            self.onnx.deactivate()

        def _metadata(self):
            return self.onnx.input_metadata(), self.onnx.output_metadata()

        def _infer(self, feed):
            pick_profile(self.profiles, {name: value.shape for name, value in feed.items()})
            return self.onnx.infer(feed)

        def execute(self, shapes, addresses, *, graph=False):
            index = pick_profile(self.profiles, shapes)
            inputs = self.onnx.input_metadata()
            feed = {name: self.stream.download(addresses[name], shapes[name], meta.dtype) for name, meta in inputs.items()}
            for name, value in self.onnx.infer(feed).items():
                self.stream.upload(addresses[name], value)
            steps.append((self.profiles[index].name, tuple(shapes["inputs_embeds"]), graph))
            if bound is not None:  # where the first layer's cache was bound as past and as present
                bound.append((tuple(shapes["inputs_embeds"]), addresses["past_key_values.0.key"], addresses["present.0.key"]))
            return index

    return EmulatedRunner


def _placeholder_engines(source, tmp_path_factory):
    """`source` with manifest["engines"] from a real `build_engines` run whose TensorRT step wrote placeholders
    (the emulated runner reads the ONNX graphs next to them instead)."""
    from descore_sdk.export import tensorrt as export_trt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_trt, "tensorrt_environment", lambda index=0: _env("10.8.0", "8.9"))
        patch.setattr(export_trt, "_build_engine", lambda onnx, plan, *rest: plan.write_bytes(b"placeholder"))
        return build_engines(source, tmp_path_factory.mktemp("engines") / "trt", precision="fp32", max_seq=1024,
                             progress=False, timing_cache=tmp_path_factory.mktemp("timing") / "t.cache")


@pytest.fixture(scope="module")
def engine_bundle(scale_bundle, tmp_path_factory):
    return _placeholder_engines(scale_bundle, tmp_path_factory)


def _same_outputs(a_list, b_list):
    assert len(a_list) == len(b_list)
    for a, b in zip(a_list, b_list):
        np.testing.assert_array_equal(a.cot_ids, b.cot_ids)
        np.testing.assert_allclose(a.rewards, b.rewards, atol=1e-5)
        np.testing.assert_allclose(a.hidden, b.hidden, atol=1e-5)


def test_tensorrt_backend_decodes_like_onnxruntime(engine_bundle, scale_bundle, sample_videos, monkeypatch):
    """The TensorRT backend's own logic — step bindings, KV slabs, device slicing on row drops and adaptive
    cuts, profile choice, batch groups — over the same graphs gives onnxruntime's CoTs and rewards."""
    from descore_sdk.runtime.onnx_backend import OnnxBackend
    from descore_sdk.runtime.tensorrt_backend import TensorRTBackend
    from descore_sdk.scorer import Scorer

    steps = []
    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", _emulated_runner_class(steps))
    monkeypatch.setattr(tensorrt_backend, "tensorrt_environment", lambda index=0: _env("10.8.0", "8.9"))
    trt = TensorRTBackend(engine_bundle)
    ort = OnnxBackend(scale_bundle, threads=1)
    # the Scorer sees the engines' limits: context 1024 (built with --max-seq 1024), frames as the bundle's
    assert trt.descore_config.max_context == 1024 and ort.descore_config.max_context == 4096
    assert trt.descore_config.sampling == ort.descore_config.sampling
    scorer = Scorer.from_pretrained(scale_bundle, device="cpu", backend_options={"threads": 1})
    videos = [sample_videos[0], sample_videos[1], sample_videos[0]]
    long_prompt = "a slow pan over a snowy forest at dawn, with a red fox running from left to right " * 3
    think = [scorer.prepare(v, p, mode="think") for v, p in zip(videos, [long_prompt, "a cat", "something else"])]
    assert len(think[0].input_ids) > len(think[1].input_ids)  # row 1 is left-padded
    options = scorer.options.replace(mode="think")

    same = _same_outputs
    # free-running CoTs of different budgets, 3 videos > max_batch 2: the longer row 0 leaves first, so the
    # cache loses a row and the leading columns that were padding in row 1 (a device slice with start > 0)
    same(trt.score_batch(think, options, scorer.stop_ids, [1, 7, 4]), ort.score_batch(think, options, scorer.stop_ids, [1, 7, 4]))
    # teacher-forced CoTs of different lengths
    forced = [np.asarray([11, 12, 13, 14, 15]), np.asarray([21])]
    same(trt.score_batch(think[:2], options, scorer.stop_ids, [5, 5], forced_cots=forced),
         ort.score_batch(think[:2], options, scorer.stop_ids, [5, 5], forced_cots=forced))
    # adaptive: only the second row thinks (its cache rows are cut out on the device)
    adaptive = [scorer.prepare(v, "a video", mode="adaptive") for v in videos[:2]]
    rule = lambda fast: np.array([False, True])  # noqa: E731
    a = trt.score_batch(adaptive, options.replace(mode="adaptive"), scorer.stop_ids, [3, 3], think_if=rule)
    b = ort.score_batch(adaptive, options.replace(mode="adaptive"), scorer.stop_ids, [3, 3], think_if=rule)
    same(a, b)
    assert [r.mode for r in a] == ["fast", "think"]
    kinds = {(kind, shape[1] == 1, graph) for kind, shape, graph in steps}
    assert ("decode", True, True) in kinds and ("prefill", False, False) in kinds
    assert all(kind == "decode" for kind, shape, graph in steps if graph)
    pool = trt.model.pool
    assert pool.allocated <= 4, "KV slabs are reused, not allocated per step"


@pytest.mark.slow
def test_tensorrt_backend_deepstack_decodes_like_onnxruntime(tmp_path_factory, sample_videos, monkeypatch):
    """The same on a qwen3_vl bundle: DeepStack features go in as a fourth step input (zeros at decode steps)."""
    from bundles import MAX_FRAMES, MAX_PIXELS, tiny_bundle

    from descore_sdk.runtime.onnx_backend import OnnxBackend
    from descore_sdk.runtime.tensorrt_backend import TensorRTBackend
    from descore_sdk.scorer import Scorer

    from descore_sdk.export.bundle import export_bundle

    checkpoint, _ = tiny_bundle(tmp_path_factory, "qwen3_vl")
    bundle = export_bundle(checkpoint, tmp_path_factory.mktemp("qwen3-concat") / "bundle", max_frames=MAX_FRAMES,
                           max_pixels=MAX_PIXELS, progress=False, parity=False, kv_cache="concat")  # TensorRT's input
    assert read_manifest(bundle)["model"]["num_deepstack"] > 0
    engines = _placeholder_engines(bundle, tmp_path_factory)
    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", _emulated_runner_class([]))
    monkeypatch.setattr(tensorrt_backend, "tensorrt_environment", lambda index=0: _env("10.8.0", "8.9"))
    trt, ort = TensorRTBackend(engines), OnnxBackend(bundle, threads=1)
    scorer = Scorer.from_pretrained(bundle, device="cpu", backend_options={"threads": 1}, max_frames=MAX_FRAMES,
                                    max_pixels=MAX_PIXELS)
    think = [scorer.prepare(v, "a video", mode="think") for v in sample_videos[:2]]
    options = scorer.options.replace(mode="think")
    _same_outputs(trt.score_batch(think, options, scorer.stop_ids, [2, 5]), ort.score_batch(think, options, scorer.stop_ids, [2, 5]))


@pytest.fixture(scope="module")
def in_place_engines(scale_bundle, tmp_path_factory):
    """build_engines on TensorRT 10.15 (emulated: placeholders for the plans) from the scale bundle's checkpoint:
    the decoder exported in standard ops with its cache updated in place (export/standard_attention.py)."""
    from descore_sdk.export import tensorrt as export_trt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_trt, "tensorrt_environment", lambda index=0: _env("10.15.1", "8.9"))
        patch.setattr(export_trt, "_build_engine", lambda onnx, plan, *rest: plan.write_bytes(b"placeholder"))
        return build_engines(scale_bundle.parent / "checkpoint", tmp_path_factory.mktemp("in_place") / "trt",
                             precision="fp32", max_seq=1024, max_frames=4, max_pixels=160 * 160, progress=False,
                             timing_cache=tmp_path_factory.mktemp("timing") / "t.cache")


def test_in_place_engines_are_built_from_a_static_standard_decoder(in_place_engines):
    manifest = read_manifest(in_place_engines)
    engines = manifest["engines"]
    assert engines["kv_cache"]["used"].startswith("in place") and "in_place_not_used_because" not in engines["kv_cache"]
    decoder = manifest["graphs"]["decoder"]
    names = [io["name"] for io in decoder["inputs"]]
    assert "seqlens_k" in names and "total_sequence_length" not in names and "attention_mask" not in names
    caches = [io for io in decoder["inputs"] + decoder["outputs"] if io["name"].startswith(("past_key_values.", "present."))]
    assert caches and all(io["shape"][2] == 1024 and io["shape"][0] == "batch_size" for io in caches)
    assert decoder["opsets"] == {"ai.onnx": 24}
    decode, prefill = (ProfileShapes(p["name"], {k: tuple(map(tuple, v)) for k, v in p["shapes"].items()})
                       for p in engines["decoder"]["profiles"])
    assert decode.shapes["seqlens_k"] == ((1,), (2,), (2,)) and decode.shapes["inputs_embeds"][2][1] == 1
    assert decode.shapes["past_key_values.0.key"][0][2] == decode.shapes["past_key_values.0.key"][2][2] == 1024
    load_bundle(in_place_engines, verify=True)  # the rewritten decoder's sha256 is the manifest's
    plan = engines["memory_bytes"]
    assert plan["kv_slabs"] == 2


def test_in_place_engines_decode_like_onnxruntime(in_place_engines, scale_bundle, sample_videos, monkeypatch):
    """The in-place TensorRT path — one slab per batch bound as past AND present, prefill row by row at row
    addresses inside it, decode steps batched, rows dropped by device copies — over the engines' graph (run by
    onnxruntime in the emulated runner) gives the GroupQueryAttention bundle's CoTs and rewards; every decode
    step of a batch has one key (shapes and addresses), so a CUDA graph replays them; the same bundle scored by
    onnxruntime itself (a static-capacity host cache) agrees too."""
    from descore_sdk.runtime.onnx_backend import OnnxBackend
    from descore_sdk.runtime.tensorrt_backend import TensorRTBackend, TrtSharedCache
    from descore_sdk.scorer import Scorer

    steps, bound = [], []
    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", _emulated_runner_class(steps, bound))
    monkeypatch.setattr(tensorrt_backend, "tensorrt_environment", lambda index=0: _env("10.15.1", "8.9"))
    trt, ort = TensorRTBackend(in_place_engines), OnnxBackend(scale_bundle, threads=1)
    static = OnnxBackend(in_place_engines, threads=1)
    assert isinstance(trt.model.new_cache(2), TrtSharedCache) and static.model.static_capacity == 1024
    scorer = Scorer.from_pretrained(scale_bundle, device="cpu", backend_options={"threads": 1})
    videos = [sample_videos[0], sample_videos[1], sample_videos[0]]
    long_prompt = "a slow pan over a snowy forest at dawn, with a red fox running from left to right " * 3
    think = [scorer.prepare(v, p, mode="think") for v, p in zip(videos, [long_prompt, "a cat", "something else"])]
    options = scorer.options.replace(mode="think")
    expected = ort.score_batch(think, options, scorer.stop_ids, [1, 7, 4])
    _same_outputs(trt.score_batch(think, options, scorer.stop_ids, [1, 7, 4]), expected)
    _same_outputs(static.score_batch(think, options, scorer.stop_ids, [1, 7, 4]), expected)
    forced = [np.asarray([11, 12, 13, 14, 15]), np.asarray([21])]
    _same_outputs(trt.score_batch(think[:2], options, scorer.stop_ids, [5, 5], forced_cots=forced),
                  ort.score_batch(think[:2], options, scorer.stop_ids, [5, 5], forced_cots=forced))
    adaptive = [scorer.prepare(v, "a video", mode="adaptive") for v in videos[:2]]
    rule = lambda fast: np.array([False, True])  # noqa: E731
    a = trt.score_batch(adaptive, options.replace(mode="adaptive"), scorer.stop_ids, [3, 3], think_if=rule)
    _same_outputs(a, ort.score_batch(adaptive, options.replace(mode="adaptive"), scorer.stop_ids, [3, 3], think_if=rule))
    assert [r.mode for r in a] == ["fast", "think"]
    assert all(past == present for _, past, present in bound)  # in place: one buffer bound as both
    decode = [(shape, past) for shape, past, _ in bound if shape[0] == 2 and shape[1] == 1]
    assert len(decode) > 4 and len(set(decode)) < len(decode) / 2  # batched decode steps repeat one key
    assert all(graph for kind, shape, graph in steps if shape[0] == 2 and shape[1] == 1)
    assert all(shape[0] == 1 for kind, shape, graph in steps if kind == "prefill")  # prefill row by row
    assert trt.model.pool.allocated <= 3, "in place: the live slab and a row-drop copy, reused"


def test_in_place_graphs_need_tensorrt_10_15(in_place_engines, tmp_path, monkeypatch):
    from descore_sdk.export import tensorrt as export_trt
    from descore_sdk.export.tensorrt import decoder_form

    assert decoder_form("10.14.1") == "concat" and decoder_form("10.15.0") == "shared-standard"
    assert decoder_form("10.16.0", quantize=True) == "concat"
    monkeypatch.setattr(export_trt, "tensorrt_environment", lambda index=0: _env("10.8.0", "8.9"))
    with pytest.raises(InvalidInputError, match="IKVCacheUpdateLayer/IAttention from 10.15"):
        build_engines(in_place_engines, tmp_path / "out", precision="fp32", progress=False)
    assert not (tmp_path / "out").exists()


def test_engines_for_tensorrt_8_are_parsed_from_opset_17_graphs(scale_bundle, sample_videos, tmp_path, monkeypatch):
    """TensorRT 8.6 (JetPack 6.0) parses ONNX opsets up to 17: the engine bundle's graphs are converted, and
    onnxruntime gives the same CoTs and rewards from them as from the opset-18 source graphs."""
    from descore_sdk.export import tensorrt as export_trt
    from descore_sdk.runtime.onnx_backend import OnnxBackend
    from descore_sdk.scorer import Scorer

    monkeypatch.setattr(export_trt, "tensorrt_environment", lambda index=0: _env("8.6.2", "8.7"))
    monkeypatch.setattr(export_trt, "_build_engine", lambda onnx, plan, *rest: plan.write_bytes(b"placeholder"))
    out = build_engines(scale_bundle, tmp_path / "trt", precision="fp16", max_seq=1024, progress=False,
                        timing_cache=tmp_path / "t.cache")
    manifest = load_bundle(out, verify=True).manifest
    assert all(manifest["graphs"][kind]["opsets"] == {"ai.onnx": 17} for kind in ("vision", "decoder"))
    assert read_manifest(scale_bundle)["graphs"]["decoder"]["opsets"] == {"ai.onnx": 18}
    assert manifest["engines"]["builder_flags"] == ["FP16"] and not manifest["engines"]["strongly_typed"]
    scorer = Scorer.from_pretrained(scale_bundle, device="cpu", backend_options={"threads": 1})
    think = [scorer.prepare(v, p, mode="think") for v, p in zip(sample_videos[:2], ["a cat", "a red car at night"])]
    options = scorer.options.replace(mode="think")
    _same_outputs(OnnxBackend(out, threads=1).score_batch(think, options, scorer.stop_ids, [3, 6]),
                  OnnxBackend(scale_bundle, threads=1).score_batch(think, options, scorer.stop_ids, [3, 6]))


def test_config_within_limits():
    from descore_sdk.config import DescoreConfig, SamplingConfig
    from descore_sdk.runtime.tensorrt_backend import config_within_limits

    config = DescoreConfig(sampling=SamplingConfig(min_frames=4, max_frames=768, min_pixels=3136, max_pixels=200704),
                           max_context=32768)
    lowered = config_within_limits(config, {"max_frames": 2, "max_pixels": 100352, "max_seq": 8192})
    assert (lowered.max_context, lowered.sampling.max_frames, lowered.sampling.min_frames) == (8192, 2, 2)
    assert (lowered.sampling.max_pixels, lowered.sampling.min_pixels, lowered.sampling.fps) == (100352, 3136, 2.0)
    assert config_within_limits(config, {"max_frames": 1000, "max_pixels": 10**7, "max_seq": 10**6}) == config


def test_kv_cache_strategy_by_version():
    from descore_sdk.export.tensorrt import kv_cache_strategy

    assert kv_cache_strategy("10.3.0")["in_place_layers_available"] == []  # JetPack 6.2
    assert kv_cache_strategy("10.14.1")["in_place_layers_available"] == ["IAttention"]
    assert kv_cache_strategy("10.15.1")["in_place_layers_available"] == ["IAttention", "IKVCacheUpdateLayer"]
    assert "concat" in kv_cache_strategy("11.0.0")["in_place_not_used_because"]
