"""The onnxruntime Scorer on exported bundles, per family, against transformers and the torch backend.

References are independent of the runtime under test:
- transformers' own uncached forward of the backbone (`backbone.model(...)`, its own M-RoPE positions)
  → LM head / reward-head weight, for the teacher-forced logits, final hidden state and rewards;
- the torch reference backend (HF `generate`) for the free-running greedy CoT;
- a fresh Python process with torch/transformers imports blocked for the torch-free claim.

Weights are redrawn at O(1) scale so logits and rewards are O(1) and the 1e-4 tolerance means
something (default init makes every output ~0.02). Bundles are exported once per family per session
(`tiny_bundle` in tests/bundles.py, shared with test_bundle.py and test_decode_loop.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from descore_sdk import Scorer  # noqa: E402
from descore_sdk.bundle import PARITY_NAME  # noqa: E402
from descore_sdk.errors import InvalidInputError  # noqa: E402
from bundles import MAX_FRAMES, MAX_PIXELS, hf_forward, tiny_bundle, torch_model  # noqa: E402,F401

torch.set_num_threads(1)

FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")
TOLERANCE = 1e-4
PROMPT = "A girl in a pink dress walks to a chair in a cozy bedroom and sits on it."
COT_TEXT = "The girl walks in smoothly and sits down. The colors are warm and the frame is sharp."
RUNTIME = dict(backend_options={"threads": 1})


@pytest.fixture(scope="module", params=FAMILIES)
def family_bundle(request, tmp_path_factory):
    checkpoint, bundle = tiny_bundle(tmp_path_factory, request.param)
    return request.param, checkpoint, bundle


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return tiny_bundle(tmp_path_factory, "qwen3_vl")


def _max(diff) -> float:
    return float(np.abs(np.asarray(diff, dtype=np.float64)).max())


# -- parity ----------------------------------------------------------------------------------------------
def test_teacher_forced_think_and_fast_match_transformers(family_bundle, sample_videos):
    family, checkpoint, bundle = family_bundle
    scorer = Scorer.from_pretrained(bundle, **RUNTIME)
    assert scorer.backend.name == "onnxruntime"
    model = torch_model(checkpoint)
    think = scorer.prepare(sample_videos[0], PROMPT, mode="think")
    fast = scorer.prepare(sample_videos[0], PROMPT, mode="fast")
    cot = scorer.prompts.encode(COT_TEXT)
    assert len(cot) > 10

    out = scorer.backend.score_batch([think], scorer.options, scorer.stop_ids, [len(cot)], forced_cots=[cot],
                                     record_logits=True)[0]
    reward_id = scorer.backend.reward_token_id
    ref = hf_forward(model, think, np.concatenate([think.input_ids, cot, [reward_id]]))
    length = len(think.input_ids)
    ref_steps = ref["logits"][length - 1 : length + len(cot)]  # the logits each CoT token (and <Reward>) follows
    np.testing.assert_array_equal(out.cot_ids, cot)
    assert out.step_logits.shape == ref_steps.shape
    think_diff = {"logits": _max(out.step_logits - ref_steps), "hidden": _max(out.hidden - ref["hidden"]),
                  "reward": _max(out.rewards - ref["reward"])}

    fast_out = scorer.backend.score(fast, scorer.options, scorer.stop_ids, 0)
    fast_ref = hf_forward(model, fast, fast.input_ids)
    fast_diff = {"hidden": _max(fast_out.hidden - fast_ref["hidden"]), "reward": _max(fast_out.rewards - fast_ref["reward"])}
    print(f"\n[{family}] onnx vs transformers: think {think_diff}, fast {fast_diff}")
    # O(1) references (a single reward is O(1) only on average), so an absolute 1e-4 is a real check.
    assert np.abs(ref_steps).mean() > 0.3 and np.abs(ref["hidden"]).mean() > 0.3 and np.abs(ref["reward"]).min() > 0.01
    assert max(think_diff.values()) <= TOLERANCE and max(fast_diff.values()) <= TOLERANCE

    # The export-time report in the bundle measured the same thing against DeScoreModel.forward.
    report = json.loads((bundle / PARITY_NAME).read_text())
    assert report["passed"] and report["max_abs_diff"] <= TOLERANCE and report["num_cot_tokens"] > 10


def test_greedy_cot_equals_the_torch_backend(family_bundle, sample_videos):
    """Free-running greedy decoding writes the torch backend's CoT; the test first proves the choice is
    not a near-tie: the top-2 logit margin at every step is > 10× the measured ONNX-vs-HF logit diff."""
    family, checkpoint, bundle = family_bundle
    options = dict(mode="think", max_new_tokens=10)
    scorer = Scorer.from_pretrained(bundle, **RUNTIME, **options)
    video = sample_videos[1]
    inputs = scorer.prepare(video, PROMPT)
    out = scorer.backend.score_batch([inputs], scorer.options, scorer.stop_ids, [10], record_logits=True)[0]
    cot = out.cot_ids
    assert len(cot) >= 3, "pick a seed/prompt whose CoT is not trivially short"

    ref = hf_forward(torch_model(checkpoint), inputs, np.concatenate([inputs.input_ids, cot]))
    length = len(inputs.input_ids)
    ref_steps = ref["logits"][length - 1 :]  # (C+1, V): the logits every CoT token and the stop/limit follow
    measured = _max(out.step_logits - ref_steps)
    top2 = np.sort(ref_steps[: len(cot)], axis=-1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    print(f"\n[{family}] greedy CoT of {len(cot)} tokens: min top-2 margin {margins.min():.3e}, max logit diff {measured:.2e}")
    assert margins.min() > 10 * measured

    torch_scorer = Scorer.from_pretrained(checkpoint, backend="torch", max_frames=MAX_FRAMES, max_pixels=MAX_PIXELS, **options)
    torch_inputs = torch_scorer.prepare(video, PROMPT)
    np.testing.assert_array_equal(torch_inputs.input_ids, inputs.input_ids)
    torch_out = torch_scorer.backend.score(torch_inputs, torch_scorer.options, torch_scorer.stop_ids, 10)
    np.testing.assert_array_equal(cot, torch_out.cot_ids)
    assert _max(out.rewards - torch_out.rewards) <= TOLERANCE

    # The public API says the same.
    result, torch_result = scorer.score(video, PROMPT), torch_scorer.score(video, PROMPT)
    assert result.rationale == torch_result.rationale and result.mode == "think"
    assert result.backend == "onnxruntime" and torch_result.backend == "torch"
    assert abs(result.reward - torch_result.reward) <= TOLERANCE


# -- torch-free ------------------------------------------------------------------------------------------
def test_scoring_a_bundle_never_imports_torch(qwen3, sample_videos):
    _, bundle = qwen3
    script = f"""
import importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    # Any attempt to import torch or transformers fails loudly instead of passing unnoticed.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError("blocked: " + name)
        return None

sys.meta_path.insert(0, Blocked())
from descore_sdk import Scorer
from descore_sdk.cli import main

bundle, a, b, prompt = {str(bundle)!r}, {str(sample_videos[0])!r}, {str(sample_videos[1])!r}, {PROMPT!r}
scorer = Scorer.from_pretrained(bundle, backend_options={{"threads": 1}}, max_new_tokens=4)
result = scorer.score(a, prompt)
pair = scorer.compare(a, b, prompt, mode="adaptive", adaptive_threshold=1e9)
batch = scorer.score_batch([a, b], prompt, mode="fast")
code = main(["score", a, "--prompt", prompt, "--model", bundle, "--json", "--threads", "1", "--max-new-tokens", "3"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print("RESULT " + json.dumps({{"loaded": loaded, "backend": result.backend, "modes": [pair.a.mode, pair.b.mode],
                              "batch": len(batch), "code": code}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    summary = json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT "):])
    assert summary == {"loaded": [], "backend": "onnxruntime", "modes": ["think", "think"], "batch": 2, "code": 0}
    cli = json.loads(next(line for line in lines if line.startswith("{")))
    assert cli["backend"] == "onnxruntime" and cli["mode"] == "think" and np.isfinite(cli["reward"])


# -- batching and threads --------------------------------------------------------------------------------
def test_batch_equals_one_at_a_time(qwen3, sample_videos):
    """Videos of different sizes with prompts of different lengths (so rows are left-padded) give the
    results they get alone, in think mode (greedy and seeded sampling) and fast mode."""
    from descore_sdk.video import load_video

    _, bundle = qwen3
    scorer = Scorer.from_pretrained(bundle, **RUNTIME, mode="think", max_new_tokens=6)
    square = load_video(sample_videos[2], fps=2.0, max_frames=MAX_FRAMES).frames[:, :, 100:484]  # a real clip, cropped square
    videos = [sample_videos[5], sample_videos[2], square]
    prompts = [PROMPT, "A dark corridor.", PROMPT + " The camera does not move at all, and the light is warm."]
    grids = {tuple(scorer.prepare(v, p).grid_thw) for v, p in zip(videos, prompts)}
    assert len(grids) == 2  # two video sizes in one batch
    for overrides in ({}, {"temperature": 1.0, "top_p": 0.9, "seed": 3}, {"mode": "fast"}):
        alone = [scorer.score(v, p, **overrides) for v, p in zip(videos, prompts)]
        together = scorer.score_batch(videos, prompts, batch_size=3, **overrides)
        pairs_of_two = scorer.score_batch(videos, prompts, batch_size=2, **overrides)
        assert len({r.num_prompt_tokens for r in alone}) == 3  # really different lengths
        for single, batched, grouped in zip(alone, together, pairs_of_two):
            for other in (batched, grouped):
                assert other.rationale == single.rationale and other.mode == single.mode
                assert abs(other.reward - single.reward) <= 1e-5
        if overrides.get("mode") != "fast":
            assert all(r.num_cot_tokens > 0 for r in alone)


def test_threads_give_the_serial_results(qwen3, sample_videos):
    _, bundle = qwen3
    scorer = Scorer.from_pretrained(bundle, **RUNTIME, mode="think", max_new_tokens=5)
    jobs = [(sample_videos[(5, 2, 1)[i % 3]], PROMPT if i % 2 else "A dark corridor.") for i in range(12)]
    serial = [scorer.score(v, p) for v, p in jobs]
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for index in range(worker, len(jobs), 4):
                results[index] = scorer.score(*jobs[index])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for index, expected in enumerate(serial):
        assert results[index].reward == expected.reward and results[index].rationale == expected.rationale


# -- adaptive mode ---------------------------------------------------------------------------------------
def test_adaptive_compare_thinks_only_for_close_pairs(qwen3, sample_videos):
    _, bundle = qwen3
    scorer = Scorer.from_pretrained(bundle, **RUNTIME, max_new_tokens=5)
    a, b = sample_videos[0], sample_videos[5]
    fast = scorer.compare(a, b, PROMPT, mode="fast")
    think = scorer.compare(a, b, PROMPT, mode="think")
    gap = abs(fast.a.reward - fast.b.reward)
    assert gap > 1e-3  # the two rules below are distinguishable

    close = scorer.compare(a, b, PROMPT, mode="adaptive", adaptive_threshold=gap * 2)
    far = scorer.compare(a, b, PROMPT, mode="adaptive", adaptive_threshold=gap / 2)
    assert (close.a.mode, close.b.mode) == ("think", "think") and (far.a.mode, far.b.mode) == ("fast", "fast")
    for got, want in ((close.a, think.a), (close.b, think.b), (far.a, fast.a), (far.b, fast.b)):
        assert abs(got.reward - want.reward) <= 1e-5 and got.rationale == want.rationale

    # score: think only inside the band around the fast reward.
    r = fast.a.reward
    assert scorer.score(a, PROMPT, mode="adaptive", adaptive_band=(r - 0.01, r + 0.01)).mode == "think"
    assert scorer.score(a, PROMPT, mode="adaptive", adaptive_band=(r + 0.01, r + 1.0)).mode == "fast"
    assert scorer.score(a, PROMPT, mode="adaptive").mode == "fast"  # no band: the fast score is the answer

    # The torch backend, which scores one video at a time, follows the same rule.
    checkpoint = bundle.parent / "checkpoint"
    torch_scorer = Scorer.from_pretrained(checkpoint, backend="torch", max_new_tokens=5, max_frames=MAX_FRAMES, max_pixels=MAX_PIXELS)
    torch_close = torch_scorer.compare(a, b, PROMPT, mode="adaptive", adaptive_threshold=gap * 2)
    torch_far = torch_scorer.compare(a, b, PROMPT, mode="adaptive", adaptive_threshold=gap / 2)
    assert (torch_close.a.mode, torch_far.a.mode) == ("think", "fast")
    assert abs(torch_close.a.reward - think.a.reward) <= TOLERANCE and abs(torch_far.b.reward - fast.b.reward) <= TOLERANCE


def test_swscale_resize_option_runs_end_to_end(qwen3, sample_videos):
    """ScoreOptions.resize="swscale" reaches the video loader (frames come from FFmpeg's scaler, close to
    Pillow's: tests/test_video.py); a bad value is a typed error at construction."""
    _, bundle = qwen3
    exact = Scorer.from_pretrained(bundle, **RUNTIME, mode="fast")
    fast = Scorer.from_pretrained(bundle, **RUNTIME, mode="fast", resize="swscale")
    a, b = exact.score(sample_videos[1], PROMPT), fast.score(sample_videos[1], PROMPT)
    assert a.num_frames == b.num_frames and np.isfinite(b.reward) and a.reward != b.reward
    with pytest.raises(InvalidInputError, match="resize"):
        Scorer.from_pretrained(bundle, **RUNTIME, resize="nearest")
