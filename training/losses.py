"""Training losses: Bradley–Terry preference losses (with or without ties) and rationale LM loss.

Every loss returns a `LossSum` — the SUM of its per-item terms and how many items there were — rather
than a mean. The trainer divides by the item count of the whole global batch (all micro-batches, all
processes), so the gradient is the same whether a batch runs on one process or is split over eight,
even though each split holds a different number of human ties or rationale tokens. A per-process
mean would weight the items of a shard with few valid items more.

Preference codes (per pair and reward dimension, as `training/metrics.py` encodes labels):
    +1  A preferred     −1  B preferred     0  human tie ("same")     IGNORE_LABEL  not labelled

Bradley–Terry (`bradley_terry_loss`): with Δ = r_A − r_B and s = ±1 the preference,
    loss = −log σ(s·Δ) = softplus(−s·Δ)
per labelled, non-tie (pair, dimension); human ties are dropped.

Bradley–Terry with ties (`bt_with_ties_loss`), the Rao–Kupper (1967) model in the form VideoAlign's
VideoReward trains with ("BTT", θ = 5): with π = exp(r) and θ > 1,
    P(w ≻ l) = π_w / (π_w + θ·π_l)                          = σ(Δ_wl − log θ)
    P(tie)   = (θ² − 1)·π_w·π_l / ((π_w + θ·π_l)(π_l + θ·π_w)) = (θ² − 1)·σ(Δ − log θ)·σ(−Δ − log θ)
(the three probabilities sum to 1). A decided pair costs −log σ(Δ_wl − log θ) — a BT loss with a
margin of log θ — and a tie costs −log σ(Δ − log θ) − log σ(−Δ − log θ) − log(θ² − 1), which is
smallest at Δ = 0. Larger θ predicts more ties and asks decided pairs for a wider margin. We keep θ
fixed (not learned), as VideoAlign does; its value is `DEFAULT_TIE_THETA`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from descore_sdk.errors import InvalidInputError

from .arguments import DEFAULT_TIE_THETA, TIE_MODES  # noqa: E402  (torch-free home of the settings)

IGNORE_LABEL = -100  # preference code of a dimension a pair has no label for
IGNORE_INDEX = -100  # LM label of a token without a target (as in transformers)


@dataclass
class LossSum:
    """`total`: () sum of per-item losses (differentiable); `count`: number of items summed."""

    total: torch.Tensor
    count: int

    def mean(self) -> torch.Tensor:
        """Mean over this shard only (for logging or single-process use); 0 when empty."""
        return self.total / max(self.count, 1)


def _check_preferences(rewards_a: torch.Tensor, rewards_b: torch.Tensor, preference: torch.Tensor) -> None:
    if rewards_a.shape != rewards_b.shape or rewards_a.shape != preference.shape:
        raise InvalidInputError(
            f"rewards_a {tuple(rewards_a.shape)}, rewards_b {tuple(rewards_b.shape)} and preference "
            f"{tuple(preference.shape)} must all be (pairs, dimensions)."
        )
    valid = (preference == 1) | (preference == -1) | (preference == 0) | (preference == IGNORE_LABEL)
    if not bool(valid.all()):
        raise InvalidInputError(f"preference codes must be +1, -1, 0 or {IGNORE_LABEL}; got {preference.unique().tolist()}.")


def bradley_terry_loss(rewards_a: torch.Tensor, rewards_b: torch.Tensor, preference: torch.Tensor) -> LossSum:
    """Σ −log σ(s·(r_A − r_B)) over labelled non-tie entries.

    rewards_a, rewards_b: (B, K) rewards of the A and B videos; preference: (B, K) int codes.
    """
    _check_preferences(rewards_a, rewards_b, preference)
    decided = (preference == 1) | (preference == -1)
    sign = preference.clamp(-1, 1).to(rewards_a.dtype)
    terms = F.softplus(-sign * (rewards_a - rewards_b))  # = −log σ(s·Δ), stable for large |Δ|
    return LossSum(total=(terms * decided).sum(), count=int(decided.sum()))


def bt_with_ties_loss(
    rewards_a: torch.Tensor, rewards_b: torch.Tensor, preference: torch.Tensor, theta: float = DEFAULT_TIE_THETA
) -> LossSum:
    """Rao–Kupper negative log-likelihood over labelled entries, ties included (see module docstring)."""
    if not theta > 1:
        raise InvalidInputError(f"The tie parameter theta must be > 1 (P(tie) ∝ θ² − 1), got {theta}.")
    _check_preferences(rewards_a, rewards_b, preference)
    log_theta = math.log(theta)
    delta = rewards_a - rewards_b
    sign = preference.clamp(-1, 1).to(delta.dtype)
    decided_terms = F.softplus(-(sign * delta - log_theta))  # −log σ(Δ_wl − log θ)
    tie_terms = F.softplus(-(delta - log_theta)) + F.softplus(-(-delta - log_theta)) - math.log(theta**2 - 1)
    decided = (preference == 1) | (preference == -1)
    tie = preference == 0
    terms = torch.where(decided, decided_terms, torch.where(tie, tie_terms, torch.zeros_like(delta)))
    return LossSum(total=terms.sum(), count=int((decided | tie).sum()))


def preference_loss(
    rewards_a: torch.Tensor, rewards_b: torch.Tensor, preference: torch.Tensor, *, ties: str = "drop", theta: float = DEFAULT_TIE_THETA
) -> LossSum:
    """`bradley_terry_loss` (ties="drop") or `bt_with_ties_loss` (ties="rao_kupper")."""
    if ties == "drop":
        return bradley_terry_loss(rewards_a, rewards_b, preference)
    if ties == "rao_kupper":
        return bt_with_ties_loss(rewards_a, rewards_b, preference, theta)
    raise InvalidInputError(f"ties must be one of {TIE_MODES}, got {ties!r}.")


def preference_item_count(preference: torch.Tensor, ties: str = "drop") -> int:
    """How many terms `preference_loss` sums for these codes (known before the forward pass, so the
    trainer can agree on the global count across processes first)."""
    decided = int(((preference == 1) | (preference == -1)).sum())
    return decided + (int((preference == 0).sum()) if ties == "rao_kupper" else 0)


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> LossSum:
    """Σ next-token cross-entropy over positions whose label is not IGNORE_INDEX.

    logits: (B, L, V); labels: (B, L), aligned with the input ids: labels[:, j] is the token the
    model should predict from position j − 1 (the same convention as transformers' causal LMs).
    """
    if logits.shape[:2] != labels.shape:
        raise InvalidInputError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must share (batch, length).")
    targets = labels[:, 1:].to(logits.device)
    keep = targets != IGNORE_INDEX
    if not bool(keep.any()):
        return LossSum(total=logits.sum() * 0.0, count=0)  # keeps the graph connected for DDP
    # Only the predicted positions go through log-softmax: rationale tokens are a fraction of a row.
    picked_logits = logits[:, :-1][keep].float()  # (T, V)
    total = F.cross_entropy(picked_logits, targets[keep], reduction="sum")
    return LossSum(total=total, count=int(keep.sum()))


def selected_token_cross_entropy(hidden: torch.Tensor, labels: torch.Tensor, output_layer) -> LossSum:
    """`token_cross_entropy` computed from final hidden states, projecting only the positions that
    have a target through `output_layer` (the LM head) — a rationale is a fraction of each row, and
    full-vocabulary logits at every position would dominate the step's cost.

    hidden: (B, L, H) post-norm hidden states; labels: (B, L) as in `token_cross_entropy`.
    """
    if hidden.shape[:2] != labels.shape:
        raise InvalidInputError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} must share (batch, length).")
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    if not bool(keep.any()):
        return LossSum(total=hidden.sum() * 0.0, count=0)
    logits = output_layer(hidden[:, :-1][keep]).float()  # (T, V)
    total = F.cross_entropy(logits, targets[keep], reduction="sum")
    return LossSum(total=total, count=int(keep.sum()))


def label_token_count(labels: torch.Tensor | None) -> int:
    """How many terms `token_cross_entropy` sums for these labels."""
    if labels is None:
        return 0
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def pair_accuracy(rewards_a: torch.Tensor, rewards_b: torch.Tensor, preference: torch.Tensor) -> tuple[int, int]:
    """(correct, decided): how many labelled non-tie entries the rewards order correctly (Δ = 0 is wrong)."""
    decided = (preference == 1) | (preference == -1)
    correct = (torch.sign(rewards_a - rewards_b) == preference) & decided
    return int(correct.sum()), int(decided.sum())
