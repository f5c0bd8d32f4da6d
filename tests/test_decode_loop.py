"""The shared decode loop on a real exported bundle, against transformers' uncached forward.

For every row of a left-padded batch, the reference recomputes the whole sequence (prompt + CoT, and
prompt + CoT + `<Reward>`) with transformers' own backbone and positions: each CoT token must be the
argmax there (greedy), a stop must be the argmax right after the CoT, and the reward must match. The
torch backend (HF `generate`) is the reference for the repetition penalty.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from descore_sdk import Scorer  # noqa: E402
from descore_sdk.bundle import load_bundle  # noqa: E402
from descore_sdk.errors import InvalidInputError  # noqa: E402
from descore_sdk.options import ScoreOptions  # noqa: E402
from descore_sdk.runtime.decode import DecodeRequest, DecodeSettings, decode  # noqa: E402
from descore_sdk.runtime.onnx_backend import OnnxDecoderModel  # noqa: E402
from bundles import hf_forward, tiny_bundle, torch_model  # noqa: E402

torch.set_num_threads(1)

FAMILY = "qwen2_5_vl"  # window attention, fractional temporal rope steps, 3 reward dimensions
PROMPTS = ["A dark corridor.", "A girl sits on a chair in a warm bedroom.", "An astronaut runs across the moon, filmed from a low angle."]
TOL = 1e-4


class RecordingModel:
    """Wraps a DecoderModel and records the batch size and length of every decoder call."""

    def __init__(self, inner):
        self.inner = inner
        self.rope, self.num_deepstack = inner.rope, inner.num_deepstack
        self.calls: list[tuple[int, int]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, inputs_embeds, *rest):
        self.calls.append(inputs_embeds.shape[:2])
        return self.inner.step(inputs_embeds, *rest)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_videos):
    checkpoint, bundle = tiny_bundle(tmp_path_factory, FAMILY)
    scorer = Scorer.from_pretrained(bundle, backend_options={"threads": 1})
    videos = [sample_videos[5], sample_videos[0], sample_videos[2]]
    inputs = [scorer.prepare(v, p, mode="think") for v, p in zip(videos, PROMPTS)]
    model = OnnxDecoderModel(load_bundle(bundle), threads=1)
    return scorer, model, inputs, torch_model(checkpoint), checkpoint


def _requests(inputs, budgets, forced=None):
    forced = forced or [None] * len(inputs)
    return [DecodeRequest(i.input_ids, i.patches, i.grid_thw, i.second_per_grid, b, f) for i, b, f in zip(inputs, budgets, forced)]


def _settings(scorer, **kw):
    return DecodeSettings(mode=kw.pop("mode", "think"), reward_token_id=scorer.backend.reward_token_id, **kw)


def _check_against_transformers(model_torch, inputs, result, budget, stop_ids, reward_id):
    """Greedy CoT = argmax of the full forward at every step; the end is the budget or a stop token;
    the reward is the full forward's at <Reward>."""
    cot = result.cot_ids
    ref = hf_forward(model_torch, inputs, np.concatenate([inputs.input_ids, cot]))
    length = len(inputs.input_ids)
    np.testing.assert_array_equal(ref["logits"][length - 1 : length - 1 + len(cot)].argmax(-1), cot)
    if len(cot) < budget:  # it stopped: the next greedy token is a stop token
        assert int(ref["logits"][-1].argmax()) in stop_ids
    else:
        assert len(cot) == budget
    reward_ref = hf_forward(model_torch, inputs, np.concatenate([inputs.input_ids, cot, [reward_id]]))
    assert np.abs(result.rewards - reward_ref["reward"]).max() <= TOL
    assert np.abs(result.hidden - reward_ref["hidden"]).max() <= TOL


def test_left_padded_batch_with_budgets_and_stop_tokens(setup):
    scorer, model, inputs, model_torch, _ = setup
    assert len({len(i.input_ids) for i in inputs}) == 3  # three prompt lengths: rows are left-padded
    budgets = [0, 4, 9]
    free = decode(model, _requests(inputs, budgets), _settings(scorer))
    assert [len(r.cot_ids) for r in free] == budgets  # no stop tokens: every budget used up exactly
    for i, r, b in zip(inputs, free, budgets):
        _check_against_transformers(model_torch, i, r, b, (), scorer.backend.reward_token_id)

    # Make a token of row 2's CoT a stop token: that row (and any other that writes it) ends before it.
    cot = free[2].cot_ids.tolist()
    position = next(k for k in range(2, len(cot)) if cot[k] not in cot[:k])
    stop = cot[position]
    recorder = RecordingModel(model)
    stopped = decode(recorder, _requests(inputs, budgets), _settings(scorer, stop_ids=(stop,)))
    assert stopped[2].cot_ids.tolist() == cot[:position]
    for i, r, b, original in zip(inputs, stopped, budgets, free):
        expected = original.cot_ids.tolist()
        expected = expected[: expected.index(stop)] if stop in expected else expected
        assert r.cot_ids.tolist() == expected
        _check_against_transformers(model_torch, i, r, b, (stop,), scorer.backend.reward_token_id)

    # One prefill for the batch, then single tokens; a row feeds its C CoT tokens and <Reward>, then leaves.
    assert recorder.calls[0] == (3, max(len(i.input_ids) for i in inputs))
    assert all(length == 1 for _, length in recorder.calls[1:])
    lengths = [len(r.cot_ids) for r in stopped]
    expected = [sum(c + 1 >= step for c in lengths) for step in range(1, max(lengths) + 2)]
    assert [size for size, _ in recorder.calls[1:]] == expected


def test_chunked_prefill_equals_one_chunk(setup):
    scorer, model, inputs, _, _ = setup
    whole = decode(model, _requests(inputs, [5, 5, 5]), _settings(scorer, record_logits=True))
    chunked = decode(model, _requests(inputs, [5, 5, 5]), _settings(scorer, record_logits=True, prefill_chunk=7))
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a.cot_ids, b.cot_ids)
        assert np.abs(a.step_logits - b.step_logits).max() <= 1e-5
        assert np.abs(a.rewards - b.rewards).max() <= 1e-5


def test_adaptive_probe_then_think_equals_think_and_fast(setup):
    scorer, model, inputs, _, _ = setup
    think = decode(model, _requests(inputs, [6, 6, 6]), _settings(scorer))
    fast_inputs = _requests(inputs, [0, 0, 0])
    for request in fast_inputs:
        request.input_ids = np.append(request.input_ids, scorer.backend.reward_token_id)
    fast = decode(model, fast_inputs, _settings(scorer, mode="fast"))
    seen = []

    def think_if(rewards):
        seen.append(rewards.copy())
        return np.array([True, False, True])

    adaptive = decode(model, _requests(inputs, [6, 6, 6]), _settings(scorer, mode="adaptive", think_if=think_if))
    assert len(seen) == 1 and seen[0].shape == (3, 3)
    assert [r.mode for r in adaptive] == ["think", "fast", "think"]
    for row, result in enumerate(adaptive):
        assert np.abs(result.fast_rewards - fast[row].rewards).max() <= 1e-5
        want = think[row] if result.mode == "think" else fast[row]
        np.testing.assert_array_equal(result.cot_ids, want.cot_ids)
        assert np.abs(result.rewards - want.rewards).max() <= 1e-5


def test_repetition_penalty_follows_hf_generate(setup):
    """HF penalises every token already in the row, prompt included; so must we."""
    scorer, _, inputs, _, checkpoint = setup
    think = inputs[1]
    options = ScoreOptions(mode="think", max_new_tokens=12, repetition_penalty=1.8)
    reference = Scorer.from_pretrained(checkpoint, backend="torch")
    ours = scorer.backend.score(think, options, scorer.stop_ids, 12)
    theirs = reference.backend.score(think, options, reference.stop_ids, 12)
    plain = scorer.backend.score(think, options.replace(repetition_penalty=1.0), scorer.stop_ids, 12)
    assert len(ours.cot_ids) >= 4
    np.testing.assert_array_equal(ours.cot_ids, theirs.cot_ids)
    assert not np.array_equal(ours.cot_ids, plain.cot_ids)  # the penalty changed the text: the check bites
    assert np.abs(ours.rewards - theirs.rewards).max() <= TOL


def test_malformed_requests_are_refused(setup):
    scorer, model, inputs, _, _ = setup
    first = inputs[0]
    cut = DecodeRequest(first.input_ids[:-3], first.patches, first.grid_thw, first.second_per_grid, 2)
    short_video = DecodeRequest(first.input_ids, first.patches[: len(first.patches) // 2], first.grid_thw // [2, 1, 1], first.second_per_grid, 2)
    with pytest.raises(InvalidInputError, match="video placeholder"):
        decode(model, [short_video], _settings(scorer))
    with pytest.raises(InvalidInputError, match="must end with the reward token"):
        decode(model, [cut], _settings(scorer, mode="fast"))
    with pytest.raises(InvalidInputError, match="mode must be"):
        _settings(scorer, mode="slow")


class _PrefersBlockedTokens:
    """A stand-in decoder whose logits always rank a blocked id first and token 7 second."""

    num_deepstack = 0

    def __init__(self, vocab=16, hidden=4, blocked=(3, 5)):
        from descore_sdk.runtime.decode import RopeSpec

        self.rope = RopeSpec(family="qwen2_vl", video_token_id=15, image_token_id=14, spatial_merge_size=2)
        self.vocab, self.hidden, self.blocked = vocab, hidden, blocked

    def encode_video(self, patches, grid_thw):
        return np.zeros((len(patches) // 4, self.hidden), np.float32), None

    def embed(self, ids):
        return np.zeros((*np.shape(ids), self.hidden), np.float32)

    def new_cache(self, batch):
        return np.zeros((batch, 0))

    def slice_cache(self, cache, rows, start, stop=None):
        return cache[rows][:, start:stop]

    def step(self, inputs_embeds, attention_mask, position_ids, deepstack_embeds, cache):
        from descore_sdk.runtime.decode import StepOutput

        b, s, _ = inputs_embeds.shape
        logits = np.zeros((b, self.vocab), np.float32)
        logits[:, 7] = 5.0
        logits[:, list(self.blocked)] = [10.0, 9.0]
        out = StepOutput(logits=logits, hidden=np.zeros((b, self.hidden), np.float32), reward=np.ones((b, 1), np.float32))
        return out, np.zeros((b, cache.shape[1] + s))


def test_blocked_ids_are_never_generated():
    from descore_sdk.runtime.decode import DecodeRequest, DecodeSettings, decode

    model = _PrefersBlockedTokens()
    ids = np.array([1, 2, 15, 15, 4], np.int64)
    request = DecodeRequest(input_ids=ids, patches=np.zeros((8, 6), np.float32), grid_thw=np.array([1, 2, 4]), max_new_tokens=5)
    free = decode(model, [request], DecodeSettings(mode="think", reward_token_id=12))[0]
    assert free.cot_ids.tolist() == [3] * 5  # the stand-in really prefers a blocked id
    blocked = decode(model, [request], DecodeSettings(mode="think", reward_token_id=12, blocked_ids=(3, 5)))[0]
    assert blocked.cot_ids.tolist() == [7] * 5
