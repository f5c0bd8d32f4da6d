"""Next-token choice in numpy: greedy, temperature, top-k, top-p and repetition penalty.

The rules are those of Hugging Face `generate`, applied in its order, so the runtime writes the CoT
the torch reference would:

1. repetition penalty (also when greedy): for every token already in the row — prompt and generated
   text, padding excluded — a positive logit is divided by the penalty, a negative one multiplied;
2. temperature: logits / T (T = 0 means greedy: take the argmax after step 1);
3. top-k: keep the tokens whose logit is at least the k-th largest (ties at the border are kept);
4. top-p: walking down from the most likely token, keep a token while the probability mass of the
   tokens strictly above it is below p (so the most likely token always stays);
5. draw from the softmax of what is left with the row's own `np.random.Generator`.

Every row has its own generator seeded with the same seed, so a video scored inside a batch draws
exactly what it draws when scored alone with that seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from descore_sdk.errors import InvalidInputError
from descore_sdk.options import check_sampling


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off

    def __post_init__(self):
        check_sampling(self.temperature, self.top_p, self.top_k, self.repetition_penalty)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_options(cls, options) -> "SamplingParams":
        """From a `ScoreOptions` (or anything with the same four attributes)."""
        return cls(options.temperature, options.top_p, options.top_k, options.repetition_penalty)


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """logits (B, V) float; seen (B, V) bool, True where the token already occurs in the row.
    Returns a new array: seen tokens' positive logits / penalty, negative ones × penalty."""
    if penalty == 1.0:
        return logits
    penalised = np.where(logits < 0, logits * penalty, logits / penalty)
    return np.where(seen, penalised, logits)


def apply_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """(B, V): everything below each row's k-th largest logit set to -inf (k = 0 or ≥ V: unchanged)."""
    vocab = logits.shape[-1]
    if k <= 0 or k >= vocab:
        return logits
    kth = np.partition(logits, vocab - k, axis=-1)[:, vocab - k : vocab - k + 1]  # (B, 1) k-th largest
    return np.where(logits < kth, -np.inf, logits)


def apply_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """(B, V): keep, per row, each token whose strictly-more-likely tokens hold less than `p` of the
    probability; the rest set to -inf. Ties are ranked by token id (lower first)."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1, kind="stable")  # most likely first
    probs = softmax(np.take_along_axis(logits, order, axis=-1))
    mass_above = np.cumsum(probs, axis=-1) - probs  # (B, V) mass of the tokens ranked strictly higher
    keep_sorted = mass_above < p
    keep = np.empty_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, logits, -np.inf)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64; -inf entries get probability 0."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def filtered_logits(logits: np.ndarray, params: SamplingParams, seen: np.ndarray | None = None) -> np.ndarray:
    """Steps 1–4 of the module docstring on float64 logits (B, V); temperature only when sampling."""
    x = np.asarray(logits, dtype=np.float64)
    if seen is not None:
        x = apply_repetition_penalty(x, seen, params.repetition_penalty)
    if params.greedy:
        return x
    x = x / params.temperature
    x = apply_top_k(x, params.top_k)
    return apply_top_p(x, params.top_p)


def row_generators(seed: int | None, rows: int) -> list[np.random.Generator]:
    """One generator per row, each seeded with `seed` (None: fresh OS entropy per row)."""
    return [np.random.default_rng(seed) for _ in range(rows)]


def next_tokens(
    logits: np.ndarray,
    params: SamplingParams,
    generators: list[np.random.Generator] | None = None,
    seen: np.ndarray | None = None,
) -> np.ndarray:
    """Choose one token per row. logits (B, V); generators: one per row (sampling only); seen (B, V)
    bool for the repetition penalty. Returns (B,) int64."""
    x = filtered_logits(logits, params, seen)
    if params.greedy:
        return x.argmax(axis=-1).astype(np.int64)
    if generators is None or len(generators) != x.shape[0]:
        raise InvalidInputError("Sampling needs one np.random.Generator per row.")
    cumulative = np.cumsum(softmax(x), axis=-1)
    tokens = np.empty(x.shape[0], dtype=np.int64)
    for row, generator in enumerate(generators):
        # Inverse-CDF draw: the first token whose cumulative probability exceeds u. Tokens filtered
        # out have probability 0 and so never add a step the draw could land on.
        u = generator.random() * cumulative[row, -1]
        tokens[row] = min(int(np.searchsorted(cumulative[row], u, side="right")), x.shape[1] - 1)
    return tokens
