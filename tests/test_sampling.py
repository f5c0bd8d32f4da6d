"""numpy next-token choice: hand-computed cases for each rule, seeded reproducibility, and the same
filtering as transformers' own logits processors on random logits."""

from __future__ import annotations

import numpy as np
import pytest

from descore_sdk.errors import InvalidInputError
from descore_sdk.runtime.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    filtered_logits,
    next_tokens,
    row_generators,
    softmax,
)

NEG = -np.inf


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = np.array([[2.0, -1.0, 0.5, 3.0]])
    seen = np.array([[True, True, False, False]])
    np.testing.assert_array_equal(apply_repetition_penalty(logits, seen, 2.0), [[1.0, -2.0, 0.5, 3.0]])
    np.testing.assert_array_equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_greedy_takes_the_argmax_after_the_penalty():
    logits = np.array([[3.0, 2.0, -5.0], [0.0, 1.0, 0.5]])
    seen = np.array([[True, False, False], [False, False, False]])
    greedy = SamplingParams()
    np.testing.assert_array_equal(next_tokens(logits, greedy), [0, 1])
    # 3 / 2 = 1.5 < 2: the penalty flips row 0; row 1 has nothing seen.
    np.testing.assert_array_equal(next_tokens(logits, SamplingParams(repetition_penalty=2.0), seen=seen), [1, 1])


def test_top_k_keeps_the_k_largest_and_ties_at_the_border():
    logits = np.array([[1.0, 3.0, 2.0, 3.0, 0.0]])
    np.testing.assert_array_equal(apply_top_k(logits, 2), [[NEG, 3.0, NEG, 3.0, NEG]])
    np.testing.assert_array_equal(apply_top_k(logits, 3), [[NEG, 3.0, 2.0, 3.0, NEG]])
    np.testing.assert_array_equal(apply_top_k(logits, 1), [[NEG, 3.0, NEG, 3.0, NEG]])  # both maxima tie
    np.testing.assert_array_equal(apply_top_k(logits, 0), logits)
    np.testing.assert_array_equal(apply_top_k(logits, 9), logits)


def test_top_p_keeps_tokens_while_the_mass_above_them_is_below_p():
    # probabilities 0.5, 0.25, 0.15, 0.10 (in a shuffled order): cumulative mass above each is 0, .5, .75, .9
    probs = np.array([0.15, 0.5, 0.1, 0.25])
    logits = np.log(probs)[None]
    kept = lambda p: np.flatnonzero(np.isfinite(apply_top_p(logits, p)[0])).tolist()  # noqa: E731
    assert kept(0.3) == [1]
    assert kept(0.74) == [1, 3]
    assert kept(0.76) == [0, 1, 3]
    assert kept(0.95) == [0, 1, 2, 3]
    assert kept(1.0) == [0, 1, 2, 3]


def test_temperature_rescales_logits_before_the_filters():
    logits = np.array([[2.0, 1.0, -1.0]])
    np.testing.assert_allclose(filtered_logits(logits, SamplingParams(temperature=0.5)), [[4.0, 2.0, -2.0]])
    # top-k on tempered logits, then top-p on what is left: 0.5·[2, 1] → p ∝ e^4, e^2 → 0.881, 0.119.
    out = filtered_logits(logits, SamplingParams(temperature=0.5, top_k=2, top_p=0.85))
    np.testing.assert_array_equal(out, [[4.0, NEG, NEG]])


def test_sampled_frequencies_follow_the_tempered_distribution():
    probs = np.array([0.5, 0.3, 0.2])
    logits = np.log(probs)[None]
    draws = 20000
    for temperature, expected in ((1.0, probs), (0.5, probs**2 / (probs**2).sum())):
        params = SamplingParams(temperature=temperature)
        generator = [np.random.default_rng(0)]
        counts = np.bincount([next_tokens(logits, params, generator)[0] for _ in range(draws)], minlength=3)
        np.testing.assert_allclose(counts / draws, expected, atol=0.015)
    # Filtered tokens are never drawn.
    params = SamplingParams(temperature=1.0, top_k=1)
    generator = [np.random.default_rng(1)]
    assert {int(next_tokens(logits, params, generator)[0]) for _ in range(200)} == {0}


def test_seeded_sampling_is_reproducible_and_per_row():
    logits = np.random.default_rng(5).standard_normal((3, 50))
    params = SamplingParams(temperature=1.3, top_p=0.95, top_k=20)

    def run(seed, rows):
        gens = row_generators(seed, rows)
        return np.stack([next_tokens(logits[:rows], params, gens) for _ in range(30)])

    np.testing.assert_array_equal(run(7, 3), run(7, 3))
    assert not np.array_equal(run(7, 3), run(8, 3))
    # Row 0 of a batch draws what it draws alone with the same seed.
    np.testing.assert_array_equal(run(7, 3)[:, 0], run(7, 1)[:, 0])


def test_softmax_and_invalid_parameters():
    np.testing.assert_allclose(softmax(np.array([[0.0, np.log(3.0), NEG]])), [[0.25, 0.75, 0.0]])
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2), dict(repetition_penalty=0)):
        with pytest.raises(InvalidInputError):
            SamplingParams(**bad)
    with pytest.raises(InvalidInputError, match="Generator per row"):
        next_tokens(np.zeros((2, 3)), SamplingParams(temperature=1.0), [np.random.default_rng(0)])


def test_filters_match_transformers_processors_on_random_logits():
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 300)).astype(np.float32) * 3
    history = rng.integers(0, 300, size=(4, 40))
    seen = np.zeros(logits.shape, dtype=bool)
    np.put_along_axis(seen, history, True, axis=1)
    params = SamplingParams(temperature=0.7, top_k=40, top_p=0.8, repetition_penalty=1.3)
    ours = filtered_logits(logits, params, seen)

    ids, scores = torch.from_numpy(history), torch.from_numpy(logits.copy())
    for processor in (RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.8)):
        scores = processor(ids, scores)
    theirs = scores.numpy()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    assert 1 < np.isfinite(ours).sum(axis=1).min() < 40  # the filters really cut
    np.testing.assert_allclose(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)], rtol=1e-6)
