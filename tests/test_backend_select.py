"""`backend="auto"`: TensorRT engines, then onnxruntime CUDA, then onnxruntime CPU — and the reason said.

Each branch is driven by monkeypatching the two availability probes (`scorer.probe_tensorrt`,
`scorer.probe_ort_cuda`); no fake engine is loaded anywhere. The probes themselves are tested as they
answer on this machine (no TensorRT, CPU-only onnxruntime), and the engine-compatibility branch of
`probe_tensorrt` with a stated TensorRT/GPU environment.
"""

from __future__ import annotations

import json
import logging

import pytest

from descore_sdk import scorer as scorer_module
from descore_sdk.bundle import BUNDLE_FORMAT
from descore_sdk.errors import InvalidInputError, MissingDependencyError
from descore_sdk.scorer import choose_backend, probe_ort_cuda, probe_tensorrt

ENGINES = {"tensorrt_version": "10.8.0", "compute_capability": "8.9", "gpu_name": "NVIDIA L4",
           "decoder": {"file": "decoder.plan"}, "vision": {"file": "vision.plan"}}


def _bundle(tmp_path, engines: dict | None = None):
    folder = tmp_path / "bundle"
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir()
    manifest = {"format": BUNDLE_FORMAT, "format_version": 1}
    if engines is not None:
        manifest["engines"] = engines
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _probes(monkeypatch, trt: str | None, cuda: str | None, calls: list | None = None):
    def fake_trt(manifest, index=0):
        if calls is not None:
            calls.append(("tensorrt", index))
        return trt

    def fake_cuda():
        if calls is not None:
            calls.append(("cuda",))
        return cuda

    monkeypatch.setattr(scorer_module, "probe_tensorrt", fake_trt)
    monkeypatch.setattr(scorer_module, "probe_ort_cuda", fake_cuda)


def test_checkpoint_folder_is_torch(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    choice = choose_backend(tmp_path)
    assert (choice.backend, choice.device) == ("torch", "cpu")
    assert "checkpoint" in choice.reason


def test_engines_that_run_here_are_preferred(tmp_path, monkeypatch):
    _probes(monkeypatch, trt=None, cuda=None)
    choice = choose_backend(_bundle(tmp_path, ENGINES))
    assert (choice.backend, choice.device) == ("tensorrt", "cuda:0")
    assert "10.8.0" in choice.reason and "8.9" in choice.reason
    assert str(choice).startswith("tensorrt on cuda:0: ")


def test_device_index_reaches_the_probe_and_the_backend(tmp_path, monkeypatch):
    calls = []
    _probes(monkeypatch, trt=None, cuda=None, calls=calls)
    choice = choose_backend(_bundle(tmp_path, ENGINES), device="cuda:1")
    assert (choice.backend, choice.device) == ("tensorrt", "cuda:1")
    assert calls == [("tensorrt", 1)]


def test_onnxruntime_cuda_when_tensorrt_cannot_run(tmp_path, monkeypatch):
    _probes(monkeypatch, trt="TensorRT is not installed", cuda=None)
    choice = choose_backend(_bundle(tmp_path, ENGINES))
    assert (choice.backend, choice.device) == ("onnxruntime", "cuda:0")
    assert "CUDA" in choice.reason and "TensorRT is not installed" in choice.reason


def test_cpu_when_no_gpu_path(tmp_path, monkeypatch):
    _probes(monkeypatch, trt="no TensorRT engines", cuda="no CUDA provider")
    choice = choose_backend(_bundle(tmp_path))
    assert (choice.backend, choice.device) == ("onnxruntime", "cpu")
    assert "no TensorRT engines" in choice.reason and "no CUDA provider" in choice.reason


def test_cuda_asked_for_but_no_gpu_path_names_both(tmp_path, monkeypatch):
    _probes(monkeypatch, trt="tensorrt missing", cuda="cuda provider missing")
    with pytest.raises(MissingDependencyError) as info:
        choose_backend(_bundle(tmp_path, ENGINES), device="cuda")
    assert "tensorrt missing" in str(info.value) and "cuda provider missing" in str(info.value)


def test_cpu_device_probes_nothing(tmp_path, monkeypatch):
    calls = []
    _probes(monkeypatch, trt=None, cuda=None, calls=calls)
    choice = choose_backend(_bundle(tmp_path, ENGINES), device="cpu")
    assert (choice.backend, choice.device) == ("onnxruntime", "cpu") and calls == []
    assert "device='cpu'" in choice.reason


def test_tensorrt_device_is_onnxruntimes_tensorrt_provider(tmp_path, monkeypatch):
    _probes(monkeypatch, trt=None, cuda=None)
    choice = choose_backend(_bundle(tmp_path, ENGINES), device="tensorrt:2")
    assert (choice.backend, choice.device) == ("onnxruntime", "tensorrt:2")


def test_named_backend_is_used_as_asked(tmp_path, monkeypatch):
    calls = []
    _probes(monkeypatch, trt=None, cuda=None, calls=calls)
    bundle = _bundle(tmp_path, ENGINES)
    assert choose_backend(bundle, "onnxruntime").device == "cpu"
    assert choose_backend(bundle, "tensorrt").device == "cuda:0"
    choice = choose_backend(bundle, "onnxruntime", "cuda:3")
    assert (choice.backend, choice.device) == ("onnxruntime", "cuda:3") and "asked for" in choice.reason
    assert calls == []


@pytest.mark.parametrize("device", ["gpu", "auto:1", "metal"])
def test_unknown_device_is_refused(tmp_path, device):
    with pytest.raises(InvalidInputError):
        choose_backend(_bundle(tmp_path), device=device)


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="Unknown backend"):
        choose_backend(_bundle(tmp_path), "tflite")


# -- the real probes, as they answer on this machine ----------------------------------------------------
def test_probe_without_engines_says_how_to_build_them():
    reason = probe_tensorrt({"format": BUNDLE_FORMAT})
    assert "no TensorRT engines" in reason and "--format tensorrt" in reason


def test_probe_without_tensorrt_names_the_package():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here; this test checks the message of a machine without it")
    reason = probe_tensorrt({"engines": ENGINES})
    assert "TensorRT is not installed" in reason and "descore-sdk[tensorrt]" in reason


def test_probe_with_engines_of_another_tensorrt_says_rebuild(monkeypatch):
    from descore_sdk.runtime import tensorrt_runner
    from descore_sdk.runtime.tensorrt_runner import GpuInfo, TrtEnvironment

    here = TrtEnvironment("10.3.0", GpuInfo(0, "Orin", "8.7", 8 << 30))
    monkeypatch.setattr(tensorrt_runner, "tensorrt_environment", lambda index=0: here)
    reason = probe_tensorrt({"engines": ENGINES})
    assert "10.8.0" in reason and "10.3.0" in reason and "Rebuild" in reason
    monkeypatch.setattr(tensorrt_runner, "tensorrt_environment",
                        lambda index=0: TrtEnvironment("10.8.0", GpuInfo(0, "NVIDIA L4", "8.9", 24 << 30)))
    assert probe_tensorrt({"engines": ENGINES}) is None


def test_probe_ort_cuda_on_a_cpu_build():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider; the test checks a CPU-only build's message")
    reason = probe_ort_cuda()
    assert "CPUExecutionProvider" in reason and "descore-sdk[gpu]" in reason


# -- end to end: the Scorer records and logs its choice; the CLI shows it ----------------------------------
def test_scorer_records_and_logs_its_choice(scale_bundle, caplog):
    from descore_sdk.scorer import Scorer

    with caplog.at_level(logging.INFO, logger="descore_sdk"):
        scorer = Scorer.from_pretrained(scale_bundle, backend_options={"threads": 1})
    choice = scorer.backend_choice
    assert choice.backend == scorer.backend.name == "onnxruntime"
    if choice.device == "cpu":  # this machine: no TensorRT, CPU-only onnxruntime
        assert "no GPU path" in choice.reason and "no TensorRT engines" in choice.reason
    assert any(str(choice) in record.getMessage() for record in caplog.records)


def test_cli_shows_the_choice(scale_bundle, sample_videos, capsys):
    from descore_sdk.cli import main

    code = main(["score", str(sample_videos[0]), "--prompt", "a video", "--model", str(scale_bundle), "--mode", "fast",
                 "--threads", "1", "--device", "cpu"])
    assert code == 0
    err = capsys.readouterr().err
    assert "backend onnxruntime on cpu: device='cpu' was asked for" in err


def test_cli_device_cuda_without_a_gpu_path_is_one_typed_line(scale_bundle, sample_videos, capsys):
    """On a machine without TensorRT and with CPU-only onnxruntime (this one), asking for CUDA says why not."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    from descore_sdk.cli import main

    code = main(["score", str(sample_videos[0]), "--prompt", "a video", "--model", str(scale_bundle), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "no GPU path can run here" in err and "descore-sdk[gpu]" in err and "no TensorRT engines" in err


def _cache_manifest(tmp_path, inputs: list[dict]):
    folder = _bundle(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"] = {"decoder": {"inputs": inputs}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_an_fp32_in_place_cache_bundle_stays_on_the_cpu(tmp_path, monkeypatch):
    """The default CPU export (--kv-cache shared: GroupQueryAttention updates an fp32 cache in place) is not
    sent to onnxruntime CUDA even when that provider is installed: onnxruntime's CUDA GroupQueryAttention
    takes fp16/bf16 caches only. The reason says so and how to export for a GPU."""
    _probes(monkeypatch, trt="the bundle has no TensorRT engines", cuda=None)
    folder = _cache_manifest(tmp_path, [{"name": "inputs_embeds", "dtype": "float32"}, {"name": "seqlens_k", "dtype": "int32"},
                                        {"name": "past_key_values.0.key", "dtype": "float32"}])
    choice = choose_backend(folder)
    assert (choice.backend, choice.device) == ("onnxruntime", "cpu")
    assert "GroupQueryAttention" in choice.reason and "float16/bfloat16" in choice.reason
    assert "--kv-cache concat" in choice.reason
    with pytest.raises(MissingDependencyError, match="--kv-cache concat"):
        choose_backend(folder, device="cuda")


@pytest.mark.parametrize("inputs", [
    [{"name": "attention_mask", "dtype": "int64"}, {"name": "past_key_values.0.key", "dtype": "float32"}],  # concat
    [{"name": "seqlens_k", "dtype": "int32"}, {"name": "past_key_values.0.key", "dtype": "float16"}],  # in place, fp16
])
def test_device_cache_bundles_go_to_onnxruntime_cuda(tmp_path, monkeypatch, inputs):
    """A concatenating cache, or an in-place one GroupQueryAttention's CUDA kernel takes (fp16), stays on the GPU."""
    _probes(monkeypatch, trt="the bundle has no TensorRT engines", cuda=None)
    choice = choose_backend(_cache_manifest(tmp_path, inputs))
    assert (choice.backend, choice.device) == ("onnxruntime", "cuda:0")
    assert choose_backend(_cache_manifest(tmp_path / "b", inputs), device="cuda:1").device == "cuda:1"


def test_the_runtime_on_a_gpu_provider_keeps_the_cache_on_the_device_or_says_why(scale_bundle):
    from descore_sdk.bundle import load_bundle
    from descore_sdk.errors import ModelLoadError
    from descore_sdk.runtime.onnx_backend import OnnxBackend, OnnxDecoderModel

    bundle = load_bundle(scale_bundle)
    with pytest.raises(ModelLoadError, match="binds host buffers"):  # the host-cache model on a GPU provider
        OnnxDecoderModel(bundle, device="cuda")
    with pytest.raises(ModelLoadError, match="float16/bfloat16"):  # the backend picks the device cache: fp32 GQA
        OnnxBackend(scale_bundle, device="cuda")
    assert OnnxDecoderModel(bundle, providers=["CPUExecutionProvider"], threads=1).shared_cache  # explicit CPU is fine
