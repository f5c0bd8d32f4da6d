"""Reduced-precision export (`descore export --precision`): the fidelity statistics against hand-computed
values, MatMulNBits quantization against numpy, and int4 / int8 / fp16 / bf16 bundles of a tiny O(1)-weight
model against its fp32 bundle and the torch model.

Tolerances are for the tiny 2-layer width-64 qwen3_vl model with O(1) weights (tests/weights.py), whose
rewards have a spread (std) of ~0.65 over the generated videos. Measured at export (2 cores, ORT 1.32):
int4 Spearman 0.947, pair agreement 0.88, max |Δreward| 0.52; int8 0.998 / 0.97 / 0.097;
fp16 1.0000 / 1.00 / 2.6e-3 (teacher-forced logits 9.7e-3 from torch).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from descore_sdk.bundle import FIDELITY_NAME, MANIFEST_NAME, load_bundle  # noqa: E402
from descore_sdk.errors import InvalidInputError, ModelLoadError  # noqa: E402
from descore_sdk.export.precision import (  # noqa: E402
    pair_agreement,
    quantize_graph,
    spearman,
    synthetic_pairs,
)
from bundles import MAX_FRAMES, MAX_PIXELS, tiny_bundle, torch_model  # noqa: E402

FAMILY = "qwen3_vl"
DECODER_LINEARS = 2 * 4 + 1  # per layer q|k|v (packed into one product), o, gate|up (packed), down; plus the LM head (the reward head stays fp32)


def _export(tmp_path_factory, precision: str, **kwargs):
    """(torch model, fp32 bundle, `precision` bundle) of the same tiny model with the same video bounds."""
    checkpoint, fp32 = tiny_bundle(tmp_path_factory, FAMILY)
    model = torch_model(checkpoint)
    from descore_sdk.export.bundle import export_bundle

    out = tmp_path_factory.mktemp(f"bundle_{precision}")
    export_bundle(model, out, max_frames=MAX_FRAMES, max_pixels=MAX_PIXELS, progress=False, parity_threads=1,
                  precision=precision, **kwargs)
    return model, fp32, out


def _manifest(folder):
    return json.loads((folder / MANIFEST_NAME).read_text())


def _initializer_types(path) -> dict[str, str]:
    model = onnx.load(str(path))
    return {init.name: onnx.TensorProto.DataType.Name(init.data_type) for init in model.graph.initializer}


def _fast_rewards(bundle, videos, prompts):
    from descore_sdk import Scorer

    scorer = Scorer.from_pretrained(bundle, backend_options={"threads": 1}, mode="fast", max_frames=4)
    return np.array([r.reward for r in scorer.score_batch(videos, prompts, batch_size=4)])


# -- statistics --------------------------------------------------------------------------------------
def test_spearman_and_pair_agreement_match_hand_computed_values():
    # b's ranks: 5→1, 6→2, the two 7s share (3+4)/2 = 3.5, 8→5. Centred: a (-2,-1,0,1,2),
    # b (-2,-1,0.5,2,0.5): Σab = 8, Σa² = 10, Σb² = 9.5 → ρ = 8/√95.
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / np.sqrt(95), abs=1e-12)
    assert spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)
    assert spearman([3, 1, 2], [-30, -10, -20]) == pytest.approx(-1.0)
    # Reference orders +, −, tie, −; the test's +→−, −→+, tie→tie, −→+: only the tie agrees.
    assert pair_agreement([1, 2, 3, 4], [0, 3, 3, 5], [1, 2, 2, 6], [2, 1, 2, 5]) == pytest.approx(0.25)
    assert pair_agreement([1, 2], [0, 3], [5, 0], [4, 1]) == 1.0


def test_synthetic_pairs_are_clean_versus_worsened_twins():
    pairs = synthetic_pairs(6, seed=3)
    assert len(pairs) == 6
    for a, b, prompt in pairs:
        assert a.shape == b.shape == (4, 64, 64, 3) and a.dtype == np.uint8
        assert not np.array_equal(a, b)  # one factor made the twin worse
        assert prompt.startswith("a ") and " moving " in prompt
    again = synthetic_pairs(6, seed=3)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(pairs, again))


# -- MatMulNBits against numpy -------------------------------------------------------------------------
def _linear_graph(path, weight, head):
    """y = x @ W (MatMul) and r = Gemm(x, head, transB=1) (a bias-free linear on 2-D input, as exported)."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="proj"),
         helper.make_node("Gemm", ["x", "lm_head.weight"], ["logits"], name="lm_head", transB=1),
         helper.make_node("Gemm", ["x", "reward_head.weight"], ["r"], name="reward_head", transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", None]) for name in ("y", "logits", "r")],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(head, "lm_head.weight"),
         numpy_helper.from_array(head[:2].copy(), "reward_head.weight")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.mark.parametrize("bits, tolerance", [(8, 0.02), (4, 0.15)])
def test_matmulnbits_quantization_keeps_the_reward_head_and_approximates_numpy(tmp_path, bits, tolerance):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((128, 96)) / np.sqrt(128)).astype(np.float32)
    head = (rng.standard_normal((40, 128)) / np.sqrt(128)).astype(np.float32)  # (V, K) as nn.Linear stores it
    _linear_graph(tmp_path / "fp32.onnx", weight, head)
    info = quantize_graph(tmp_path / "fp32.onnx", tmp_path / "q.onnx", bits)

    model = onnx.load(str(tmp_path / "q.onnx"))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == info["quantized"] == 2  # the MatMul and the LM head's Gemm
    for node in nbits:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == bits and attrs["accuracy_level"] == 4 and attrs["block_size"] == 32
        assert attrs["K"] == 128 and attrs["N"] in (96, 40)
    kept = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert [n.name for n in kept] == info["kept_fp32"] == ["reward_head"]
    assert _initializer_types(tmp_path / "q.onnx")["reward_head.weight"] == "FLOAT"

    x = rng.standard_normal((5, 128)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    y, logits, r = session.run(None, {"x": x})
    for got, want in ((y, x @ weight), (logits, x @ head.T)):
        error = np.abs(got - want).max() / np.abs(want).max()
        assert 1e-5 < error < tolerance  # quantized (not a silent fp32 pass-through), yet close
    np.testing.assert_allclose(r, x @ head[:2].T, rtol=1e-5, atol=1e-5)  # the reward head is exact fp32


def test_quantize_graph_rejects_bad_settings(tmp_path):
    with pytest.raises(InvalidInputError, match="4 or 8 bits"):
        quantize_graph(tmp_path / "a.onnx", tmp_path / "b.onnx", 3)
    with pytest.raises(InvalidInputError, match="power of two"):
        quantize_graph(tmp_path / "a.onnx", tmp_path / "b.onnx", 4, block_size=48)


def test_unknown_precision_is_refused_before_any_work(tmp_path):
    from descore_sdk.export.bundle import export_bundle
    from descore_sdk.export.onnx_export import export_onnx

    with pytest.raises(InvalidInputError, match="fp16, bf16, int8, int4"):
        export_bundle(tmp_path / "no-checkpoint", tmp_path / "out", precision="int3")
    assert not (tmp_path / "out").exists()
    with pytest.raises(InvalidInputError, match="float_type"):
        export_onnx(None, tmp_path / "out", float_type="int8")  # integer types are a bundle step, not an export


# -- int4 bundle ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int4(tmp_path_factory, sample_data_dir):
    # The sample videos of the fidelity report: the packaged ones and the VideoAlign originals they were
    # re-encoded from (example.csv: path_A, path_B, prompt).
    import csv

    from descore_sdk.export.precision import packaged_samples

    with open(sample_data_dir / "example.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    shared = [(sample_data_dir / row[key], row["prompt"]) for row in rows for key in ("path_A", "path_B")]
    return _export(tmp_path_factory, "int4", fidelity_samples=packaged_samples() + shared)


def test_int4_bundle_records_its_precision_and_verifies(int4):
    _, _, bundle = int4
    manifest = _manifest(bundle)
    assert manifest["graphs"]["decoder"]["precision"] == "int4"
    assert manifest["graphs"]["vision"]["precision"] == "fp32"
    assert manifest["precision"]["requested"] == "int4" and manifest["precision"]["accuracy_level"] == 4
    assert FIDELITY_NAME in manifest["files"] and not (bundle / ".fp32-reference").exists()
    loaded = load_bundle(bundle, verify=True)  # every sha256, the quantized graph's included
    assert loaded.precision("decoder") == "int4" and loaded.precision("vision") == "fp32"
    # Graph I/O is float32 as at fp32: the host side is unchanged.
    assert {io["dtype"] for io in manifest["graphs"]["decoder"]["inputs"]} == {"float32", "int64", "int32"}  # int32: seqlens_k

    decoder = onnx.load(str(bundle / "decoder.onnx"))
    nbits = [n for n in decoder.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == DECODER_LINEARS
    assert all({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["bits"] == 4 for n in nbits)
    assert _initializer_types(bundle / "decoder.onnx")["reward_head.weight"] == "FLOAT"


def test_int4_fidelity_report_is_the_bundles_real_rewards_and_within_tolerance(int4):
    _, fp32, bundle = int4
    report = json.loads((bundle / FIDELITY_NAME).read_text())
    generated = report["generated"]
    assert generated["num_videos"] == 200 and generated["num_pairs"] == 100
    reference, test = np.array(generated["rewards"]["reference"]), np.array(generated["rewards"]["test"])

    # The stored rewards are what the two bundles give (rescored here for the first pairs) ...
    pairs = synthetic_pairs(3)
    videos = [v for a, b, _ in pairs for v in (a, b)]
    prompts = [p for _, _, p in pairs for _ in range(2)]
    np.testing.assert_allclose(_fast_rewards(fp32, videos, prompts), reference[:6], atol=1e-5)
    np.testing.assert_allclose(_fast_rewards(bundle, videos, prompts), test[:6], atol=1e-5)
    # ... and the statistics follow from them (ranks by a double argsort: continuous rewards, no ties).
    ranks = [np.argsort(np.argsort(v)) for v in (reference, test)]
    assert generated["spearman"] == pytest.approx(np.corrcoef(*ranks)[0, 1], abs=1e-9)
    agree = np.mean((reference[0::2] > reference[1::2]) == (test[0::2] > test[1::2]))
    assert generated["pair_agreement"] == pytest.approx(agree)
    # One reward dimension ("overall"), so the headline's max |Δ| is the max over all dimensions.
    assert generated["max_abs_diff"] == pytest.approx(np.abs(reference - test).max(), rel=1e-6)

    # int4 really changed the rewards, but kept their order (tolerances: module docstring).
    assert 1e-3 < generated["max_abs_diff"] < 1.0
    assert generated["spearman"] > 0.85 and generated["pair_agreement"] > 0.75
    assert report["samples"]["max_abs_diff"] < 1.0 and len(report["samples"]["abs_diff"]) == 12
    summary = _manifest(bundle)["fidelity"]
    assert summary["reward_spearman"] == generated["spearman"] and summary["finite"]


# -- fp16 / bf16 / int8 (each a full export: slow) -------------------------------------------------------
def _float_types(path) -> dict[str, int]:
    """Element type of every value in the graph, from ONNX shape inference."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return model, types


@pytest.mark.slow
def test_fp16_graphs_keep_fp32_islands_and_match_torch(tmp_path_factory):
    from descore_sdk.export.parity import default_video, parity_report

    model, _, bundle = _export(tmp_path_factory, "fp16")
    manifest = _manifest(bundle)
    assert {manifest["graphs"][k]["precision"] for k in ("vision", "decoder")} == {"fp16"}
    FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    decoder, types = _float_types(bundle / "decoder.onnx")
    floats = {i.name for i in decoder.graph.initializer if i.data_type == FLOAT and len(i.dims)}
    halves = {i.name for i in decoder.graph.initializer if i.data_type == HALF}
    # fp32 matrices/vectors: final norm, reward head, rotary frequencies, nothing else (scalars aside).
    assert floats == {"norm.weight", "reward_head.weight", "rotary_inv_freq"}
    assert "lm_head.weight" in halves and len(halves) >= 2 * 9  # every layer's weights are fp16
    ops = {node.op_type: node for node in decoder.graph.node}
    for op in ("Softmax", "ReduceMean", "Cos", "Sin"):  # softmax, RMSNorm variance, rotary: fp32
        for node in (n for n in decoder.graph.node if n.op_type == op):
            assert types[node.input[0]] == FLOAT, (op, node.name)
    assert "MatMul" in ops and any(types.get(n.input[1]) == HALF for n in decoder.graph.node if n.op_type == "MatMul")
    assert all(types[v.name] in (FLOAT, onnx.TensorProto.INT64) for v in decoder.graph.input)
    assert all(types[v.name] == FLOAT for v in decoder.graph.output)

    vision, types = _float_types(bundle / "vision.onnx")
    assert sum(i.data_type == HALF for i in vision.graph.initializer) > sum(i.data_type == FLOAT for i in vision.graph.initializer)
    conv = next(n for n in vision.graph.node if n.op_type == "Conv")
    assert types[conv.input[1]] == FLOAT  # the patch embedding stays fp32 (DESIGN.md)
    softmaxes = [n for n in vision.graph.node if n.op_type == "Softmax"]
    assert softmaxes and all(types[n.input[0]] == FLOAT for n in softmaxes)

    # fp16 against the fp32 torch model, teacher-forced, on a video the fidelity report did not use.
    report = parity_report(model, bundle, default_video().with_name("example_3_B.mp4"), threads=1, print_table=False)
    assert 1e-5 < report["think"]["logits"]["max_abs"] < 5e-2  # measured 9.7e-3 (mean |logit| 0.8)
    assert report["think"]["reward"]["max_abs"] < 5e-3 and report["fast"]["reward"]["max_abs"] < 5e-3
    fidelity = manifest["fidelity"]
    assert fidelity["reward_spearman"] > 0.999 and fidelity["pair_agreement"] >= 0.99
    assert fidelity["max_abs_reward_diff_samples"] < 1e-2


@pytest.mark.slow
def test_bf16_graphs_are_written_and_marked_not_measurable_on_cpu(tmp_path_factory):
    from descore_sdk import Scorer

    _, _, bundle = _export(tmp_path_factory, "bf16", fidelity_videos=20)
    for name in ("vision.onnx", "decoder.onnx"):
        onnx.checker.check_model(onnx.load(str(bundle / name)), full_check=True)  # valid ONNX with bf16 types
    types = _initializer_types(bundle / "decoder.onnx")
    assert types["lm_head.weight"] == "BFLOAT16" and types["reward_head.weight"] == "FLOAT"
    manifest = _manifest(bundle)
    assert manifest["fidelity"]["measurable"] is False and "bf16" in manifest["fidelity"]["reason"]
    assert json.loads((bundle / FIDELITY_NAME).read_text())["measurable"] is False
    with pytest.raises(ModelLoadError, match="bf16.*GPU"):
        Scorer.from_pretrained(bundle)


@pytest.mark.slow
def test_cli_exports_int8(tmp_path_factory):
    from descore_sdk.cli import main

    checkpoint, fp32 = tiny_bundle(tmp_path_factory, FAMILY)
    out = tmp_path_factory.mktemp("cli_int8")
    argv = ["export", str(checkpoint), str(out), "--max-frames", str(MAX_FRAMES), "--max-pixels", str(MAX_PIXELS),
            "--precision", "int8", "--fidelity-videos", "200"]
    assert main(argv) == 0
    manifest = _manifest(out)
    assert manifest["graphs"]["decoder"]["precision"] == "int8" and manifest["precision"]["bits"] == 8
    nbits = [n for n in onnx.load(str(out / "decoder.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == DECODER_LINEARS
    fidelity = manifest["fidelity"]
    assert fidelity["reward_spearman"] > 0.98 and fidelity["pair_agreement"] > 0.9  # measured 0.998 / 0.97
    assert 1e-4 < fidelity["max_abs_reward_diff_generated"] < 0.3


@pytest.mark.slow
def test_fp16_overflow_is_reported_and_fails_a_strict_export(tmp_path_factory):
    """A model whose residual stream exceeds fp16's range (65504) is fine in fp32 but gives NaN rewards in
    fp16; the fidelity report must say so and a strict export must refuse the bundle."""
    import torch

    from descore_sdk.errors import BundleIntegrityError
    from descore_sdk.export.bundle import export_bundle
    from descore_sdk.training.tiny import build_tiny_model
    from weights import spread_weights

    model = build_tiny_model(FAMILY, seed=0)
    spread_weights(model, seed=1)
    with torch.no_grad():  # layer 0's MLP output ×1e5: residuals of ~1e5, normalised away by the next RMSNorm
        model.backbone.model.language_model.layers[0].mlp.down_proj.weight.mul_(1e5)
    out = tmp_path_factory.mktemp("overflow")
    with pytest.raises(BundleIntegrityError, match="non-finite"):
        export_bundle(model, out, max_frames=MAX_FRAMES, max_pixels=MAX_PIXELS, progress=False, parity=False,
                      precision="fp16", fidelity_videos=20)
    report = json.loads((out / FIDELITY_NAME).read_text())
    assert report["measurable"] and not report["finite"] and not report["generated"]["finite"]
    assert np.isfinite(report["generated"]["rewards"]["reference"]).all()  # fp32 copes; fp16 overflowed
    assert not np.isfinite(report["generated"]["rewards"]["test"]).all()
    assert _manifest(out)["fidelity"]["finite"] is False


# -- an in-place decoder with an fp16 cache, written at export (--kv-cache shared-fp16) ----------------
@pytest.mark.slow
def test_cli_exports_a_shared_fp16_cache_bundle_with_its_fidelity_report(tmp_path_factory):
    """`descore export --kv-cache shared-fp16`: the cache I/O of the in-place decoder is fp16 (what onnxruntime
    CUDA's GroupQueryAttention takes), every weight is the fp32 bundle's, and the fidelity report holds the
    rewards the fp32 bundle and this one really give (rescored here), close but not equal (fp16 attention)."""
    from descore_sdk.cli import main

    checkpoint, fp32 = tiny_bundle(tmp_path_factory, FAMILY)
    out = tmp_path_factory.mktemp("cli_half_cache")
    argv = ["export", str(checkpoint), str(out), "--max-frames", str(MAX_FRAMES), "--max-pixels", str(MAX_PIXELS),
            "--kv-cache", "shared-fp16", "--fidelity-videos", "20"]
    assert main(argv) == 0
    manifest = _manifest(out)
    assert manifest["kv_cache"]["cache_type"] == "float16" and manifest["precision"]["requested"] == "fp32"
    load_bundle(out, verify=True)
    for io in manifest["graphs"]["decoder"]["inputs"] + manifest["graphs"]["decoder"]["outputs"]:
        if io["name"].startswith(("past_key_values.", "present.")):
            assert io["dtype"] == "float16"
    weights = [{i.name: i.raw_data for i in onnx.load(str(b / "decoder.onnx")).graph.initializer} for b in (fp32, out)]
    assert weights[0] == weights[1]  # the same weights; only the attention core and the cache I/O change
    assert _manifest(fp32)["files"]["decoder.onnx"] != manifest["files"]["decoder.onnx"]
    report = json.loads((out / FIDELITY_NAME).read_text())
    assert report["graphs"]["decoder"] == "fp32, fp16 KV cache"
    generated = report["generated"]
    pairs = synthetic_pairs(2)
    videos = [v for a, b, _ in pairs for v in (a, b)]
    prompts = [p for _, _, p in pairs for _ in range(2)]
    np.testing.assert_allclose(_fast_rewards(fp32, videos, prompts), generated["rewards"]["reference"][:4], atol=1e-5)
    np.testing.assert_allclose(_fast_rewards(out, videos, prompts), generated["rewards"]["test"][:4], atol=1e-5)
    assert 0 < generated["max_abs_diff"] < 2e-2 and manifest["fidelity"]["finite"]


def test_shared_fp16_cache_is_refused_for_half_graphs(tmp_path):
    from descore_sdk.export.bundle import export_bundle

    with pytest.raises(InvalidInputError, match="shared-fp16 is for fp32 / int8 / int4"):
        export_bundle(tmp_path / "no-checkpoint", tmp_path / "out", precision="fp16", kv_cache="shared-fp16")
    with pytest.raises(InvalidInputError, match="shared, shared-fp16, shared-standard, concat"):
        export_bundle(tmp_path / "no-checkpoint", tmp_path / "out", kv_cache="paged")


# -- half graphs straight from a half checkpoint (--no-fp32-reference) -----------------------------------
@pytest.mark.slow
def test_half_export_without_the_fp32_reference_matches_the_default_path(tmp_path_factory, monkeypatch):
    """A checkpoint saved in bf16 (as real Qwen-VL checkpoints are), exported --precision fp16 with and without
    the fp32 reference: without it the checkpoint is loaded in bf16 only (never as an fp32 copy) and no parity
    or fidelity is claimed; the graphs give the default path's rewards (bf16 → fp16 weights are exact either
    way; the fp32 islands are the same upcast values). Other precisions cannot skip the reference."""
    import torch

    from descore_sdk.cli import main
    from descore_sdk.export.bundle import export_bundle
    from descore_sdk.export.precision import synthetic_pairs
    from descore_sdk.training import model as model_module
    from descore_sdk.training.tiny import build_tiny_model
    from weights import spread_weights

    model = build_tiny_model(FAMILY, seed=0, dimension_names=("overall",))
    spread_weights(model, seed=1)
    checkpoint = tmp_path_factory.mktemp("bf16_checkpoint") / "model"
    model.to(torch.bfloat16).save_pretrained(checkpoint)
    default = tmp_path_factory.mktemp("fp16_default") / "bundle"
    export_bundle(checkpoint, default, max_frames=MAX_FRAMES, max_pixels=MAX_PIXELS, progress=False, parity_threads=1,
                  precision="fp16", fidelity_videos=20)

    loaded = []
    real = model_module.DeScoreModel.from_pretrained.__func__
    monkeypatch.setattr(model_module.DeScoreModel, "from_pretrained",
                        classmethod(lambda cls, path, **kw: loaded.append(kw.get("dtype")) or real(cls, path, **kw)))
    direct = tmp_path_factory.mktemp("fp16_direct") / "bundle"
    assert main(["export", str(checkpoint), str(direct), "--max-frames", str(MAX_FRAMES), "--max-pixels", str(MAX_PIXELS),
                 "--precision", "fp16", "--no-fp32-reference"]) == 0
    assert loaded == [torch.bfloat16]  # as stored: never float32
    manifest = _manifest(direct)
    assert manifest["graphs"]["decoder"]["precision"] == "fp16" and manifest["graphs"]["vision"]["precision"] == "fp16"
    assert manifest["fidelity"] == {"measured": False, "reason": "exported without the fp32 reference (--no-fp32-reference)"}
    assert "parity" not in manifest and not (direct / FIDELITY_NAME).exists()
    load_bundle(direct, verify=True)
    pairs = synthetic_pairs(3)
    videos = [v for a, b, _ in pairs for v in (a, b)]
    prompts = [p for _, _, p in pairs for _ in range(2)]
    np.testing.assert_allclose(_fast_rewards(direct, videos, prompts), _fast_rewards(default, videos, prompts), rtol=0, atol=1e-6)
    with pytest.raises(InvalidInputError, match="Only fp16/bf16"):
        export_bundle(checkpoint, tmp_path_factory.mktemp("int8_direct"), precision="int8", fp32_reference=False)
