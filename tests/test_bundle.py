"""Bundles: what manifest.json records (checked against hashlib, onnx and onnxruntime directly), the
typed refusals of tampered / incomplete / foreign bundles, and the runner's input checks."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

from descore_sdk import Scorer  # noqa: E402
from descore_sdk.bundle import MANIFEST_NAME, PARITY_NAME, file_record, load_bundle, write_manifest  # noqa: E402
from descore_sdk.errors import BundleIntegrityError, InvalidInputError, MissingDependencyError  # noqa: E402
from descore_sdk.runtime.onnxruntime_runner import OnnxRuntimeRunner  # noqa: E402
from bundles import MAX_FRAMES, MAX_PIXELS, tiny_bundle  # noqa: E402

FAMILY = "qwen2_vl"  # exported through `descore export` by tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory, FAMILY)[1]


@pytest.fixture
def copy(bundle, tmp_path):
    """A private copy of the bundle to tamper with."""
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def _manifest(folder):
    return json.loads((folder / MANIFEST_NAME).read_text())


def test_manifest_records_files_io_and_defaults(bundle):
    import onnx
    import onnxruntime as ort
    from tokenizers import Tokenizer

    manifest = _manifest(bundle)
    listed = set(manifest["files"])
    on_disk = {p.name for p in bundle.iterdir()} - {MANIFEST_NAME}
    assert listed == on_disk  # every other bundle file, nothing more
    assert {"vision.onnx", "decoder.onnx", "embed_tokens.npy", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "descore_config.json", PARITY_NAME} <= listed
    for name, record in manifest["files"].items():
        data = (bundle / name).read_bytes()
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    assert manifest["family"] == FAMILY and manifest["sdk_version"].split(".")[0] == "0"
    for kind in ("vision", "decoder"):
        graph = manifest["graphs"][kind]
        session = ort.InferenceSession(str(bundle / graph["file"]), providers=["CPUExecutionProvider"])
        expected = [{"name": i.name, "shape": list(i.shape)} for i in session.get_inputs()]
        assert [{k: io[k] for k in ("name", "shape")} for io in graph["inputs"]] == expected
        assert [io["name"] for io in graph["outputs"]] == [o.name for o in session.get_outputs()]
        types = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}
        assert [io["dtype"] for io in graph["inputs"]] == [types[i.type] for i in session.get_inputs()]
        opset = {op.domain or "ai.onnx": op.version for op in onnx.load(str(bundle / graph["file"]), load_external_data=False).opset_import}
        assert graph["opsets"]["ai.onnx"] == opset["ai.onnx"] == manifest["opset"] == 18

    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    assert manifest["reward_token_id"] == tokenizer.token_to_id("<Reward>") == tokenizer.token_to_id(manifest["reward_token"])
    assert manifest["generation"]["stop_token_ids"] == [tokenizer.token_to_id(t) for t in manifest["generation"]["stop_tokens"]]
    assert manifest["dimension_names"] == ["overall"]
    assert manifest["sampling"]["max_frames"] == MAX_FRAMES and manifest["sampling"]["max_pixels"] == MAX_PIXELS
    assert manifest["embedding"]["shape"] == list(np.load(bundle / "embed_tokens.npy", mmap_mode="r").shape)
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_diff"] <= 1e-4
    loaded = load_bundle(bundle, family=FAMILY)
    assert loaded.descore_config.sampling.max_pixels == MAX_PIXELS


def test_tampered_graph_is_refused(copy):
    path = copy / "decoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="sha256"):
        load_bundle(copy)
    with pytest.raises(BundleIntegrityError, match="decoder.onnx"):
        Scorer.from_pretrained(copy)
    load_bundle(copy, verify=False)  # sizes still agree: only the checksum can tell


def test_resized_and_missing_files_are_refused_even_without_checksums(copy):
    table = copy / "embed_tokens.npy"
    original = table.read_bytes()
    table.write_bytes(original + b"\0")
    with pytest.raises(BundleIntegrityError, match="bytes but the manifest records"):
        load_bundle(copy, verify=False)
    table.write_bytes(original)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BundleIntegrityError, match="missing tokenizer.json"):
        load_bundle(copy, verify=False)


def test_other_sdk_major_version_and_newer_format_are_refused(copy):
    manifest = _manifest(copy)
    write_manifest(copy, {**manifest, "sdk_version": "1.0.0"})
    with pytest.raises(BundleIntegrityError, match="MAJOR"):
        load_bundle(copy)
    write_manifest(copy, {**manifest, "sdk_version": "0.99.3"})  # same major: accepted
    load_bundle(copy)
    write_manifest(copy, {**manifest, "format_version": 2})
    with pytest.raises(BundleIntegrityError, match="format_version 2"):
        load_bundle(copy)


def test_bundle_of_another_family_is_refused(bundle, tmp_path):
    with pytest.raises(BundleIntegrityError, match="qwen2_vl model, but a qwen3_vl model was requested"):
        load_bundle(bundle, family="qwen3_vl")
    with pytest.raises(BundleIntegrityError, match="qwen3_vl"):
        Scorer.from_pretrained(bundle, family="qwen3_vl")
    assert Scorer.from_pretrained(bundle, family=FAMILY, backend_options={"threads": 1}).config.family == FAMILY


def test_swapped_graph_with_rehashed_manifest_is_refused(copy):
    """Checksums cannot catch a consistent forgery; the graph's own I/O against the manifest can."""
    shutil.copyfile(copy / "decoder.onnx", copy / "vision.onnx")
    manifest = _manifest(copy)
    manifest["files"]["vision.onnx"] = file_record(copy, "vision.onnx")
    write_manifest(copy, manifest)
    load_bundle(copy)  # the files match the manifest ...
    with pytest.raises(BundleIntegrityError, match="does not belong to this bundle"):
        Scorer.from_pretrained(copy)  # ... but not the graph contract


def test_mismatched_descore_config_and_not_a_bundle(copy, tmp_path):
    config = json.loads((copy / "descore_config.json").read_text())
    (copy / "descore_config.json").write_text(json.dumps({**config, "family": "qwen3_vl"}))
    manifest = _manifest(copy)
    manifest["files"]["descore_config.json"] = file_record(copy, "descore_config.json")
    write_manifest(copy, manifest)
    with pytest.raises(BundleIntegrityError, match="mixes two exports"):
        load_bundle(copy)
    with pytest.raises(BundleIntegrityError, match="not an exported bundle"):
        load_bundle(tmp_path)


def test_runner_checks_the_feed_before_running(bundle):
    runner = OnnxRuntimeRunner(bundle / "decoder.onnx", threads=1)
    with pytest.raises(InvalidInputError, match="not active"):
        runner.infer({})
    with runner:
        meta = runner.input_metadata()
        # The default export's decoder updates its KV cache in place (--kv-cache shared).
        assert list(meta)[:4] == ["inputs_embeds", "position_ids", "seqlens_k", "total_sequence_length"]
        assert meta["inputs_embeds"].shape[:2] == ("batch_size", "sequence_length")
        hidden = meta["inputs_embeds"].shape[2]
        feed = {
            "inputs_embeds": np.random.default_rng(0).standard_normal((2, 3, hidden)).astype(np.float32),
            "position_ids": np.broadcast_to(np.arange(3), (3, 2, 3)).copy(),
            "seqlens_k": np.full(2, 2, np.int32),  # 3 tokens per row after the call
            "total_sequence_length": np.asarray(3, np.int32),
        }
        for name, m in meta.items():
            if name.startswith("past_key_values."):
                feed[name] = np.zeros((2, m.shape[1], 4, m.shape[3]), np.float32)  # room for 4 tokens
        out = runner.infer(feed)
        assert out["logits"].shape[0] == 2

        # In place: the new keys land in the caller's buffer (columns 0-2; column 3 untouched) and the
        # other outputs are the same as without binding.
        buffers = {k: v.copy() for k, v in feed.items() if k.startswith("past_key_values.")}
        inplace = {k.replace("past_key_values.", "present.", 1): k for k in buffers}
        bound = runner.infer_inplace({**feed, **buffers}, inplace)
        assert set(bound) == {"logits", "hidden", "reward"}
        np.testing.assert_array_equal(bound["logits"], out["logits"])
        key = buffers["past_key_values.0.key"]
        assert np.abs(key[:, :, :3]).min() > 0 and not key[:, :, 3].any()
        np.testing.assert_array_equal(key[:, :, :3], out["present.0.key"][:, :, :3])

        bad_cases = [
            ({"inputs_embeds": feed["inputs_embeds"].astype(np.float64)}, "dtype float64"),
            ({"inputs_embeds": feed["inputs_embeds"][0]}, "rank 2"),
            ({"inputs_embeds": np.zeros((2, 3, hidden + 1), np.float32)}, "axis 2"),
            ({"seqlens_k": np.full(3, 2, np.int32)}, "disagree on 'batch_size'"),
            ({"unknown": np.zeros(1)}, "unknown input"),
        ]
        for change, message in bad_cases:
            with pytest.raises(InvalidInputError, match=message):
                runner.infer({**feed, **change})
        with pytest.raises(InvalidInputError, match="lacks input"):
            runner.infer({k: v for k, v in feed.items() if k != "position_ids"})
        with pytest.raises(InvalidInputError, match="C-contiguous"):
            strided = np.zeros(key.shape[:3] + (2 * key.shape[3],), np.float32)[..., ::2]  # same shape, not contiguous
            runner.infer_inplace({**feed, "past_key_values.0.key": strided}, inplace)
    assert not runner.is_active


def test_cuda_needs_the_gpu_build(bundle):
    import onnxruntime as ort

    runner = OnnxRuntimeRunner(bundle / "vision.onnx", device="cuda")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        with runner:
            assert runner.active_providers[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(MissingDependencyError, match=r"descore-sdk\[gpu\]"):
            runner.activate()
    with pytest.raises(InvalidInputError, match="Unknown device"):
        OnnxRuntimeRunner(bundle / "vision.onnx", device="tpu").activate()
