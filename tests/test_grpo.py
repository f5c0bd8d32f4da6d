"""GRPO pieces: the rule reward on handcrafted CoTs and on synth's own rationales, advantages, the loss.

References: hand-computed values (stated next to each assert), the synthetic benchmark's ground truth
(labels and per-video badness written by `synth`, not by the code under test), and the exact KL of
two categorical distributions for the k3 estimator.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from descore_sdk.errors import InvalidInputError  # noqa: E402
from descore_sdk.training.grpo import (  # noqa: E402
    LengthTarget,
    RewardWeights,
    checklist_verdicts,
    group_advantages,
    grpo_policy_loss,
    k3_kl,
    length_score,
    read_cot,
    rule_reward,
    sequence_log_probs,
)

CLEAN = (
    "I see a red circle moving left to right across a gray background. Visual quality: sharp, clean and with "
    "natural colours. Motion: smooth and steady along a straight path. Alignment: the video matches the prompt."
)
BLURRY = (
    "I see a red circle moving left to right across a gray background. Visual quality: the image is very blurry "
    "and the object's edges smear into the background. Motion: smooth and steady along a straight path. "
    "Alignment: the video matches the prompt."
)
ALL_LABELS_RIGHT = {"VQ": "A", "MQ": "same", "TA": "same", "overall": "A"}


def _reward(text_a, text_b, labels, tokens=(50, 50), finished=(True, True), **kw):
    a = read_cot(text_a, num_tokens=tokens[0], finished=finished[0])
    b = read_cot(text_b, num_tokens=tokens[1], finished=finished[1])
    return rule_reward(a, b, labels, **kw)


# -- rule reward: handcrafted CoTs ------------------------------------------------------------------
def test_severities_of_handcrafted_sections():
    assert read_cot(CLEAN, num_tokens=1).severities == {"VQ": 0, "MQ": 0, "TA": 0}
    assert read_cot(BLURRY, num_tokens=1).severities == {"VQ": 2, "MQ": 0, "TA": 0}
    text = (
        "Visual quality: the image is slightly soft, with blurred edges; heavy grainy noise covers every frame. "
        "Motion: it stutters: 3 of the frames repeat the previous one; the object shakes slightly off its path. "
        "Alignment: the prompt asks for a red circle but the object is a blue square; the prompt asks for "
        "movement left to right but the object moves top to bottom."
    )
    report = read_cot(text, num_tokens=1)
    # VQ 1 + 2; MQ ceil(3/2) = 2 + 1; TA colour and shape differ (2) + motion (1)
    assert report.severities == {"VQ": 3, "MQ": 3, "TA": 3}
    assert report.well_formed
    # A consistent checklist before the conclusion keeps it readable; one differing word is severity 1.
    checked = read_cot(BLURRY.replace("Alignment: the video matches the prompt.", "Alignment: colour asked red, seen blue, "
                                      "mismatch; shape asked circle, seen circle, match; path not asked, seen up; so the prompt "
                                      "asks for a red circle but the object is a blue circle."), num_tokens=1)
    assert checked.severities["TA"] == 1 and checked.well_formed


def test_perfect_pair_gets_the_full_reward():
    r = _reward(CLEAN, BLURRY, ALL_LABELS_RIGHT)
    assert (r.accuracy, r.format, r.length, r.total) == (1.0, 1.0, 1.0, pytest.approx(1.0))


def test_partial_accuracy():
    # VQ label says B but the CoTs say A is sharper: 2 of 3 sub-dimensions right ("overall" is not judged).
    r = _reward(CLEAN, BLURRY, {"VQ": "B", "MQ": "same", "TA": "same", "overall": "B"})
    assert r.accuracy == pytest.approx(2 / 3)
    assert r.total == pytest.approx(0.7 * 2 / 3 + 0.1 + 0.2)
    # A tie label where the CoTs see a difference is wrong too.
    r = _reward(CLEAN, BLURRY, {"VQ": "same", "MQ": "B", "TA": "same"})
    assert r.accuracy == pytest.approx(1 / 3)  # only TA
    # Only the labelled sub-dimensions count.
    assert _reward(CLEAN, BLURRY, {"VQ": "A"}).accuracy == 1.0


def test_overall_only_labels_use_the_total_severity():
    assert _reward(CLEAN, BLURRY, {"overall": "A"}).accuracy == 1.0
    assert _reward(CLEAN, BLURRY, {"overall": "same"}).accuracy == 0.0
    with pytest.raises(InvalidInputError, match="labels"):
        _reward(CLEAN, BLURRY, {"style": "A"})


@pytest.mark.parametrize(
    "text, problem",
    [
        (BLURRY.replace("Motion: smooth and steady along a straight path. ", ""), "'Motion' appears 0 times"),
        (BLURRY + " Motion: smooth and steady.", "'Motion' appears 2 times"),
        ("Motion: smooth and steady. Visual quality: very blurry. Alignment: the video matches the prompt.", "out of order"),
        (BLURRY.replace("very blurry", "pleasant"), "'Visual quality' states no verdict"),
    ],
    ids=["missing", "duplicate", "order", "no-verdict"],
)
def test_format_errors(text, problem):
    report = read_cot(text, num_tokens=50)
    assert not report.well_formed
    assert any(problem in p for p in report.problems), report.problems


@pytest.mark.parametrize(
    "text",
    [
        # The clean phrase and a finding at once.
        BLURRY.replace("prompt.", "prompt; the prompt asks for movement up but the object moves down."),
        # RL's session-12 hack: the mismatch phrase between identical words, read as severity 0 before.
        BLURRY.replace("the video matches the prompt.", "the prompt asks for a red circle but the object is a red circle."),
        BLURRY.replace("the video matches the prompt.", "the prompt asks for movement up but the object moves up."),
        # A checklist verdict against its own two words, either way.
        BLURRY.replace("Alignment: ", "Alignment: colour asked red, seen red, mismatch; shape asked circle, seen circle, "
                       "match; path asked up, seen up, match; so "),
        BLURRY.replace("Alignment: the video matches the prompt.", "Alignment: colour asked red, seen blue, match; so the "
                       "prompt asks for a red circle but the object is a blue circle."),
    ],
    ids=["clean-and-finding", "same-words", "same-path", "checklist-mismatch", "checklist-match"],
)
def test_self_contradictions_are_wrong_answers_not_format_errors(text):
    """A section that contradicts itself has no severity (its dimension counts as wrong) but the CoT
    stays well formed: otherwise copying the asked word into "seen" (consistent and false) would beat
    the contradiction on format, and RL learned exactly that (BENCHMARK.md, session 13)."""
    report = read_cot(text, num_tokens=50)
    assert report.well_formed, report.problems
    assert report.contradictions == ("TA",) and report.severities["TA"] is None
    assert report.severities["VQ"] == 2 and report.severities["MQ"] == 0
    # Against a clean CoT under labels that the readable sections get right: TA is wrong, format is full.
    r = _reward(CLEAN, text, ALL_LABELS_RIGHT)
    assert (r.accuracy, r.format) == (pytest.approx(2 / 3), 1.0)


def test_checklist_verdicts_hand_spans():
    """Each alignment checklist verdict's span and whether it agrees with its own two words (by hand):
    colour red/blue "match" contradicts, shape circle/Circle "match" agrees (case is ignored), path
    asked and seen differently "mismatch" agrees; an item with no verdict, one with nothing asked, and
    checklist-like words outside the Alignment section are not verdicts."""
    text = ("Motion: colour asked red, seen blue, match. Alignment: colour asked red, seen blue, match; shape asked circle, "
            "seen Circle, match; path asked left to right, seen right to left, mismatch; colour asked red, seen red; "
            "path not asked, seen top to bottom; so the video matches the prompt.")
    got = [(text[a:b], a, ok) for a, b, ok in checklist_verdicts(text)]
    alignment = text.index("Alignment:")
    starts = [text.index(", match", alignment) + 2, text.index("Circle, match") + 8, text.index("mismatch")]
    assert got == [("match", starts[0], False), ("match", starts[1], True), ("mismatch", starts[2], True)]
    assert checklist_verdicts(CLEAN) == [] and checklist_verdicts("colour asked red, seen blue, match") == []  # no Alignment section


def test_format_error_costs_format_and_the_unreadable_dimension():
    no_motion = BLURRY.replace("Motion: smooth and steady along a straight path. ", "")
    r = _reward(CLEAN, no_motion, ALL_LABELS_RIGHT)
    # format: A ok, B not → 0.5; accuracy: MQ unreadable in B → 2 of 3.
    assert (r.format, r.accuracy) == (0.5, pytest.approx(2 / 3))
    assert r.total == pytest.approx(0.7 * 2 / 3 + 0.1 * 0.5 + 0.2 * 1.0)


def test_unfinished_cot_fails_format_but_keeps_its_verdicts():
    r = _reward(CLEAN, BLURRY, ALL_LABELS_RIGHT, finished=(True, False))
    assert (r.accuracy, r.format) == (1.0, 0.5)
    assert "cut off" in read_cot(CLEAN, num_tokens=9, finished=False).problems[0]


def test_garbage_gets_only_length():
    r = _reward("zq xv", "lorem ipsum", ALL_LABELS_RIGHT, tokens=(16, 32))
    # accuracy 0, format 0, length mean(16/32, 1) = 0.75 → 0.2 · 0.75
    assert (r.accuracy, r.format, r.length) == (0.0, 0.0, 0.75)
    assert r.total == pytest.approx(0.15)


def test_length_score_extremes():
    target = LengthTarget(min_tokens=32, max_tokens=1024)
    assert [length_score(n, target) for n in (0, 8, 32, 500, 1024, 1536, 2048, 4096)] == [0.0, 0.25, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert length_score(0, LengthTarget(0, 10)) == 1.0
    for bad in [(10, 5), (0, 5000), (-1, 10), (0, 0)]:
        with pytest.raises(InvalidInputError):
            LengthTarget(*bad)
    with pytest.raises(InvalidInputError):
        length_score(-1)


def test_custom_weights():
    r = _reward(CLEAN, BLURRY, {"VQ": "B"}, weights=RewardWeights(accuracy=1.0, format=0.0, length=0.0))
    assert r.total == 0.0


# -- rule reward: synth's own rationales --------------------------------------------------------------
def test_synth_ground_truth_rationales_score_full_accuracy(tmp_path):
    from descore_sdk.training.data import read_pairs
    from descore_sdk.training.synth import generate_benchmark

    paths = generate_benchmark(tmp_path, n_train=16, n_test=0, n_heldout=12, seed=3, size=(16, 16), num_frames=5)
    pairs = read_pairs(paths["train"]) + read_pairs(paths["test_heldout"])
    seen_severities = set()
    for pair in pairs:
        a = read_cot(pair.rationale_a, num_tokens=80)
        b = read_cot(pair.rationale_b, num_tokens=80)
        # Severities equal synth's per-video badness, per dimension.
        assert a.severities == pair.meta["meta_a"]["badness"], pair.rationale_a
        assert b.severities == pair.meta["meta_b"]["badness"], pair.rationale_b
        assert a.well_formed and b.well_formed
        assert rule_reward(a, b, pair.labels).total == pytest.approx(1.0)
        seen_severities |= set(a.severities.values()) | set(b.severities.values())
        # Swapping the rationales breaks every non-tie label.
        swapped = rule_reward(b, a, pair.labels)
        wrong = sum(pair.labels[d] != "same" for d in ("VQ", "MQ", "TA"))
        assert swapped.accuracy == pytest.approx(1 - wrong / 3)
    assert {0, 1, 2} <= seen_severities


# -- advantages ---------------------------------------------------------------------------------------
def test_group_advantages_mean_std_normalisation():
    adv = group_advantages([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, population std sqrt(1.25)
    s = math.sqrt(1.25)
    assert adv.tolist() == pytest.approx([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], abs=1e-6)
    two_groups = group_advantages(torch.tensor([[0.0, 1.0], [0.2, 0.2]]))
    assert two_groups.flatten().tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0])


def test_zero_variance_group_has_zero_advantage():
    assert group_advantages([0.37] * 8).tolist() == [0.0] * 8
    assert group_advantages([5.0]).tolist() == [0.0]
    with pytest.raises(InvalidInputError):
        group_advantages(torch.tensor(1.0))


# -- loss -----------------------------------------------------------------------------------------------
def _log(x):
    return torch.log(torch.tensor(x, dtype=torch.float32))


def test_loss_without_clipping_or_kl_is_minus_mean_advantage():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.1, -3.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = grpo_policy_loss(logp, logp.detach(), logp.detach(), torch.tensor([1.0, -0.5]), mask, kl_coef=0.1)
    # ratio 1, KL 0: per sequence −A → (−1 + 0.5) / 2
    assert out.loss.item() == pytest.approx(-0.25)
    assert out.kl == 0.0 and out.clip_fraction == 0.0 and out.mean_ratio == pytest.approx(1.0)
    out.loss.backward()
    # d/dlogp = −A · ratio / tokens / sequences; padding gets nothing
    expected = [[-1 / 2 / 2, -1 / 2 / 2, 0.0], [0.5 / 3 / 2] * 3]
    assert logp.grad.flatten().tolist() == pytest.approx([g for row in expected for g in row])


def test_loss_clipping_hand_values():
    # Four one-token sequences: ratios 1.6, 1.6, 0.5, 0.5 with advantages +1, −1, +1, −1.
    logp = torch.stack([_log(0.8), _log(0.8), _log(0.25), _log(0.25)]).reshape(4, 1).requires_grad_(True)
    old = torch.stack([_log(0.5)] * 4).reshape(4, 1)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = grpo_policy_loss(logp, old, logp.detach(), adv, torch.ones(4, 1), clip_eps=0.2, kl_coef=0.0)
    # surrogates: min(1.6, 1.2) = 1.2; min(−1.6, −1.2) = −1.6; min(0.5, 0.8) = 0.5; min(−0.5, −0.8) = −0.8
    assert out.loss.item() == pytest.approx(-(1.2 - 1.6 + 0.5 - 0.8) / 4, abs=1e-6)
    assert out.clip_fraction == 0.5
    out.loss.backward()
    # Clipped terms pass no gradient; unclipped ones −A · ratio / 4.
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 1.6 / 4, -0.5 / 4, 0.0], abs=1e-6)


def test_kl_term_hand_value_and_gradient():
    logp = _log(0.5).reshape(1, 1).requires_grad_(True)
    ref = _log(0.25).reshape(1, 1)
    out = grpo_policy_loss(logp, logp.detach(), ref, torch.zeros(1), torch.ones(1, 1), kl_coef=0.1)
    # Δ = log(0.25/0.5); k3 = 0.5 − log 0.5 − 1
    k3 = 0.5 - math.log(0.5) - 1
    assert out.kl == pytest.approx(k3, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.1 * k3, rel=1e-6)
    out.loss.backward()
    # d k3 / d logp = 1 − exp(Δ) = 0.5, times β
    assert float(logp.grad) == pytest.approx(0.1 * 0.5, rel=1e-6)


def test_k3_estimates_the_exact_kl():
    generator = torch.Generator().manual_seed(0)
    pi = torch.softmax(torch.randn(6, generator=generator), dim=0)
    ref = torch.softmax(torch.randn(6, generator=generator), dim=0)
    exact = float((pi * (pi.log() - ref.log())).sum())
    samples = torch.multinomial(pi, 200_000, replacement=True, generator=generator)
    estimate = float(k3_kl(pi.log()[samples], ref.log()[samples]).mean())
    assert estimate == pytest.approx(exact, rel=0.03)
    assert bool((k3_kl(pi.log()[samples], ref.log()[samples]) >= 0).all())


def test_loss_ignores_empty_sequences_and_checks_shapes():
    logp = torch.tensor([[-1.0], [-7.0]])
    mask = torch.tensor([[1], [0]])
    out = grpo_policy_loss(logp, logp, logp, torch.tensor([2.0, 100.0]), mask)
    assert out.loss.item() == pytest.approx(-2.0)
    with pytest.raises(InvalidInputError):
        grpo_policy_loss(logp, logp, logp, torch.ones(3), mask)
    with pytest.raises(InvalidInputError):
        grpo_policy_loss(logp, logp[:, :0], logp, torch.ones(2), mask)


def test_sequence_log_probs_matches_softmax():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]])
    tokens = torch.tensor([[2, 0]])
    got = sequence_log_probs(logits, tokens)
    z0 = math.log(1 + math.e + math.e**2)
    z1 = math.log(math.e**3 + 2)
    assert got.flatten().tolist() == pytest.approx([2 - z0, 3 - z1])
