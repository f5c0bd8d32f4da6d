"""Short runs of the fuzz and load harness (tests/fuzz_harness.py; its docstring has the long runs).

Fuzz: mutated containers, odd frame arrays and odd prompts all end in a score or a DescoreError
within the per-call limit, and the worker still scores the canary video identically afterwards.
Threads: several threads on one Scorer give exactly the serial results, on both backends."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import fuzz_harness  # noqa: E402  (test helper next to this file)

from descore_sdk.cli import main  # noqa: E402

FUZZ_CASES = 300  # ~10 s on one core; the long run is 10,000


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained quickstart model: the checkpoint (torch) and its bundle in onnx/ (onnxruntime)."""
    out = tmp_path_factory.mktemp("fuzz_model")
    assert main(["quickstart", "--out", str(out), "--mode", "fast", "--untrained"]) == 0
    return out


def test_fuzz_every_call_is_a_score_or_a_descore_error(tiny_model):
    report = fuzz_harness.run_fuzz(str(tiny_model / "onnx"), cases=FUZZ_CASES, seed=1, limit_s=60)
    assert report["n_failures"] == 0, report["failures"]
    assert report["worker_restarts"] == 0 and report["canary_unchanged"]
    outcomes = report["outcomes"]
    # The run exercised both ends: real scores and each kind of refusal.
    assert outcomes.get("score", 0) > 20
    for error in ("error:VideoDecodeError", "error:InvalidInputError"):
        assert outcomes.get(error, 0) > 20
    # Prompts holding special-token text are scored (as text), not refused or crashed.
    assert report["by_kind"]["prompt:special"].get("score", 0) + report["by_kind"]["prompt:reward"].get("score", 0) > 0


def test_case_generation_is_reproducible():
    samples = fuzz_harness.sample_video_bytes()
    first, again = fuzz_harness.make_case(17, 3, samples), fuzz_harness.make_case(17, 3, samples)
    assert first["kinds"] == again["kinds"] and first["prompt"] == again["prompt"]
    for a, b in zip(first["videos"], again["videos"]):
        assert (a == b).all() if hasattr(a, "shape") else a == b


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_threads_on_one_scorer_equal_serial_calls(tiny_model, backend):
    model = tiny_model / "onnx" if backend == "onnxruntime" else tiny_model
    report = fuzz_harness.run_threads(str(model), threads=4, calls=6, rounds=1, backend=backend, max_new_tokens=8)
    assert report["backend"] == backend
    assert report["mismatches"] == 0 and not report["errors"] and not report["deadlock"]
