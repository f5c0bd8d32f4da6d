"""How a generated chain of thought ended, so that a runaway CoT is visible in the result.

A small or undertrained model, or a model given a video unlike its training data, can fall into a
loop ("around around around ...") and write until its token budget is spent. The reward read after
such a CoT says little, and the user must be able to see that it happened: `ScoreResult.cot_stop`
says why generation ended and `ScoreResult.cot_repeating` flags a CoT that ends in a loop.
"""

from __future__ import annotations

import numpy as np

# Why a CoT ended (ScoreResult.cot_stop); None for a fast-mode result, which writes no CoT.
STOP_TOKEN = "stop_token"  # the model ended the CoT itself
BUDGET = "budget"  # max_new_tokens were written without a stop token
CONTEXT = "context"  # the model's context was full before max_new_tokens (a long prompt or video)

# A CoT "repeats" when it ends with at least MIN_REPEATS back-to-back copies of a unit of at most
# MAX_PERIOD tokens covering at least MIN_LOOP_TOKENS tokens. A sound rationale does not end like
# that; the loops seen in practice ("around around ...", a clause said over and over) do, by far.
MAX_PERIOD = 32
MIN_REPEATS = 4
MIN_LOOP_TOKENS = 32


def cot_stop_reason(num_cot_tokens: int, budget: int, wanted: int) -> str:
    """`STOP_TOKEN`, `BUDGET` or `CONTEXT` for a CoT of `num_cot_tokens` tokens generated with
    `budget` new tokens allowed, where the user (or the model's defaults) wanted `wanted`."""
    if num_cot_tokens < budget:
        return STOP_TOKEN
    return CONTEXT if budget < wanted else BUDGET


def repeated_tail(ids) -> tuple[int, int]:
    """(period, length) of the longest suffix of `ids` made of at least two back-to-back copies of a
    unit of 1..MAX_PERIOD tokens (the last copy may be partial), the shortest period winning ties;
    (0, 0) when there is none.

    Example: ids [5, 1, 2, 1, 2, 1, 2] → period 2, length 6 (the suffix 1 2 1 2 1 2)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    best = (0, 0)
    for period in range(1, min(MAX_PERIOD, len(ids) - 1) + 1):
        # matches[i]: ids[i] == ids[i + period]; the periodic suffix is the trailing run of matches.
        matches = ids[:-period] == ids[period:]
        mismatch = np.flatnonzero(~matches)
        run = len(matches) - (mismatch[-1] + 1 if len(mismatch) else 0)
        length = int(run + period)
        if run >= period and length > best[1]:  # at least two whole copies of the unit
            best = (period, length)
    return best


def is_repeating(ids) -> bool:
    """Whether a CoT ends in a loop (see MAX_PERIOD, MIN_REPEATS, MIN_LOOP_TOKENS)."""
    period, length = repeated_tail(ids)
    return bool(period > 0 and length >= max(MIN_LOOP_TOKENS, MIN_REPEATS * period))


def describe_runaway(cot_stop: str | None, repeating: bool, num_cot_tokens: int) -> str | None:
    """One line for the CLI when a CoT ran away; None when it ended normally."""
    problems = []
    if cot_stop == BUDGET and num_cot_tokens > 0:  # a budget of 0 asked for no CoT at all
        problems.append(f"hit the max_new_tokens budget ({num_cot_tokens} tokens) without finishing")
    elif cot_stop == CONTEXT:
        problems.append(f"filled the model's context ({num_cot_tokens} tokens) without finishing")
    if repeating:
        problems.append("ends in a repetition loop")
    if not problems:
        return None
    return "the CoT " + " and ".join(problems) + "; its reward is unreliable (try --mode fast, or a model trained on such videos)"
