"""Preference and LM losses against hand-computed values and independent formulas.

References: closed forms worked out by hand (log 6, log 1.5, ...), the Rao–Kupper probabilities
written directly in terms of π = exp(r) (not the σ form the code uses), torch autograd for the
gradient, and `DeScoreModel.forward`'s own mean cross-entropy for the LM loss.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from descore_sdk.errors import InvalidInputError  # noqa: E402
from descore_sdk.training import arguments, losses  # noqa: E402
from descore_sdk.training.losses import (  # noqa: E402
    IGNORE_INDEX,
    IGNORE_LABEL,
    bradley_terry_loss,
    bt_with_ties_loss,
    pair_accuracy,
    preference_item_count,
    preference_loss,
    token_cross_entropy,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def codes(rows):
    return torch.tensor(rows, dtype=torch.long)


def test_bradley_terry_hand_values():
    # Pair 0: A preferred, Δ = 1 → log(1 + e^-1). Pair 1: A preferred, Δ = -2 → log(1 + e^2).
    # Pair 2: B preferred, Δ = 0.5 → log(1 + e^0.5). Pair 3: tie → dropped. Pair 4: unlabelled.
    ra = t([[1.0], [0.0], [0.5], [3.0], [9.0]])
    rb = t([[0.0], [2.0], [0.0], [1.0], [0.0]])
    pref = codes([[1], [1], [-1], [0], [IGNORE_LABEL]])
    out = bradley_terry_loss(ra, rb, pref)
    expected = math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2)) + math.log(1 + math.exp(0.5))
    assert out.count == 3
    assert float(out.total) == pytest.approx(expected, rel=1e-12)
    assert float(out.mean()) == pytest.approx(expected / 3, rel=1e-12)
    assert preference_item_count(pref, "drop") == 3


def test_bradley_terry_per_dimension_and_gradient():
    # Two dimensions with their own labels; d loss / d r_A = -(1 - σ(Δ)) for an A-preferred entry.
    ra = t([[0.3, -0.2]]).requires_grad_(True)
    rb = t([[0.1, 0.4]])
    pref = codes([[1, -1]])
    out = bradley_terry_loss(ra, rb, pref)
    d0, d1 = 0.2, -0.6
    assert float(out.total.detach()) == pytest.approx(math.log(1 + math.exp(-d0)) + math.log(1 + math.exp(d1)), rel=1e-12)
    out.total.backward()
    sigma = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert ra.grad[0, 0].item() == pytest.approx(-(1 - sigma(d0)), rel=1e-12)
    assert ra.grad[0, 1].item() == pytest.approx(sigma(d1), rel=1e-12)  # B preferred: +σ(Δ)


def test_bradley_terry_is_stable_for_huge_margins():
    out = bradley_terry_loss(t([[1000.0], [-1000.0]]), t([[0.0], [0.0]]), codes([[1], [1]]))
    assert math.isfinite(float(out.total))
    assert float(out.total) == pytest.approx(1000.0, rel=1e-9)  # the wrong-way pair costs ≈ |Δ|


def test_rao_kupper_hand_values_theta_5():
    # Δ = 0, θ = 5: decided = −log σ(−log 5) = log 6; tie = 2 log 6 − log 24 = log 1.5.
    pref = codes([[1], [0]])
    out = bt_with_ties_loss(t([[0.0], [0.0]]), t([[0.0], [0.0]]), pref, theta=5.0)
    assert out.count == 2
    assert float(out.total) == pytest.approx(math.log(6) + math.log(1.5), rel=1e-12)
    assert preference_item_count(pref, "rao_kupper") == 2


@pytest.mark.parametrize("theta", [1.5, 5.0])
@pytest.mark.parametrize("delta", [-3.0, -0.4, 0.0, 0.7, 2.5])
def test_rao_kupper_matches_the_pi_form_and_sums_to_one(theta, delta):
    # Rao–Kupper in π form: P(A≻B) = πA/(πA+θπB), P(tie) = (θ²−1)πAπB/((πA+θπB)(πB+θπA)).
    ra, rb = 0.3 + delta, 0.3
    pa, pb = math.exp(ra), math.exp(rb)
    p_a = pa / (pa + theta * pb)
    p_b = pb / (pb + theta * pa)
    p_tie = (theta**2 - 1) * pa * pb / ((pa + theta * pb) * (pb + theta * pa))
    assert p_a + p_b + p_tie == pytest.approx(1.0, abs=1e-12)
    for code, probability in ((1, p_a), (-1, p_b), (0, p_tie)):
        out = bt_with_ties_loss(t([[ra]]), t([[rb]]), codes([[code]]), theta=theta)
        assert float(out.total) == pytest.approx(-math.log(probability), rel=1e-10)


def test_rao_kupper_tie_loss_is_smallest_at_equal_rewards():
    deltas = torch.linspace(-3, 3, 61, dtype=torch.float64).reshape(-1, 1)
    tie = codes([[0]] * 61)
    per_item = torch.stack([bt_with_ties_loss(d.reshape(1, 1), torch.zeros(1, 1, dtype=torch.float64), tie[:1]).total for d in deltas])
    assert int(per_item.argmin()) == 30  # Δ = 0


def test_preference_loss_dispatch_and_validation():
    ra, rb, pref = t([[1.0]]), t([[0.0]]), codes([[1]])
    assert float(preference_loss(ra, rb, pref, ties="drop").total) == pytest.approx(math.log(1 + math.exp(-1)))
    assert float(preference_loss(ra, rb, pref, ties="rao_kupper", theta=5.0).total) == pytest.approx(math.log(1 + 5 * math.exp(-1)))
    with pytest.raises(InvalidInputError, match="ties"):
        preference_loss(ra, rb, pref, ties="bogus")
    with pytest.raises(InvalidInputError, match="theta"):
        bt_with_ties_loss(ra, rb, pref, theta=1.0)
    with pytest.raises(InvalidInputError, match="codes"):
        bradley_terry_loss(ra, rb, codes([[2]]))
    with pytest.raises(InvalidInputError, match="pairs, dimensions"):
        bradley_terry_loss(t([[1.0, 2.0]]), rb, pref)


def test_tie_settings_are_shared_with_the_cli():
    assert losses.TIE_MODES == arguments.TIE_MODES == ("drop", "rao_kupper")
    assert losses.DEFAULT_TIE_THETA == 5.0


def test_token_cross_entropy_hand_values():
    # One row, 3 positions, vocab 2. labels[j] is predicted from position j − 1: targets are
    # labels[1] = 1 (from logits[0] = [0, 0] → log 2) and labels[2] = 0 (from logits[1] = [ln 3, 0]
    # → −log(3/4)). labels[0] and logits[2] have no role.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[7, 1, 0]])
    out = token_cross_entropy(logits, labels)
    assert out.count == 2
    assert float(out.total) == pytest.approx(math.log(2) - math.log(0.75), rel=1e-6)
    ignored = token_cross_entropy(logits, torch.tensor([[7, IGNORE_INDEX, 0]]))
    assert ignored.count == 1 and float(ignored.total) == pytest.approx(-math.log(0.75), rel=1e-6)
    none = token_cross_entropy(logits, torch.full((1, 3), IGNORE_INDEX))
    assert none.count == 0 and float(none.total) == 0.0


def test_token_cross_entropy_matches_the_models_own_lm_loss():
    from descore_sdk.training.tiny import build_tiny_model

    model = build_tiny_model("qwen2_vl", seed=3)
    ids = torch.tensor([[5, 9, 17, 33, 2, model.reward_token_id], [8, 8, 40, 41, 42, model.reward_token_id]])
    labels = ids.clone()
    labels[0, :3] = IGNORE_INDEX
    labels[1, 5] = IGNORE_INDEX
    with torch.no_grad():
        reference = model(input_ids=ids, labels=labels)  # transformers-style mean CE inside DeScoreModel
        ours = token_cross_entropy(reference.logits, labels)
    assert ours.count == 3 + 4  # row 0: labels[3:6]; row 1: labels[1:5]
    assert float(ours.mean()) == pytest.approx(float(reference.loss), rel=1e-5)


def test_pair_accuracy_counts_exact_ties_as_wrong():
    ra = t([[1.0], [0.0], [2.0], [5.0], [0.0]])
    rb = t([[0.0], [1.0], [2.0], [1.0], [3.0]])
    pref = codes([[1], [1], [1], [0], [-1]])
    assert pair_accuracy(ra, rb, pref) == (2, 4)  # right, wrong, exact tie (wrong), skipped, right
