"""The pure pieces of DeScore's RL stage: rule-based CoT reward, group-relative advantages, GRPO loss.

The RL stage (`training/rl.py`) samples n chains of thought (CoTs) per video of a preference pair,
scores each sampled pair of CoTs with the rule reward below, normalises the rewards within the group
of n, and updates the policy with a clipped policy gradient plus a KL penalty to the frozen reference
policy. Nothing here runs a model: the reward works on text, the losses on given tensors.

CoT format (what `read_cot` accepts)
------------------------------------
The CoT is the templated rationale of `training/synth.py`: one section per sub-dimension, introduced
by its heading and a colon, each heading exactly once and in this order::

    The prompt asks for a red circle moving left to right on a gray background.
    Visual quality: <findings>. Motion: <findings>. Alignment: <findings>.

    VQ → "Visual quality:"    MQ → "Motion:"    TA → "Alignment:"      (`SECTION_HEADINGS`)

A section runs from its heading to the next heading (the last one to the end of the text). Its
verdict is a *severity*: 0 when it states the clean finding, otherwise the sum of the severities of
the problems it names. The phrases are the ones `synth.describe` writes (`SEVERITY_CUES`):

    VQ  clean "sharp, clean and with natural colours"
        "slightly soft" 1, "very blurry" 2; "visible grain" 1, "heavy grainy noise" 2;
        "noticeable colour cast" 1, "strong colour cast" 2
    MQ  clean "smooth and steady"
        "N of the frames repeat" ceil(N/2)  (synth drops 2 / 4 frames at severity 1 / 2);
        "shakes slightly" 1, "shakes violently" 2
    TA  clean "the video matches the prompt"
        "the prompt asks for a C S but the object is a C' S'" 1 per differing word (colour, shape);
        "the prompt asks for movement ... but the object moves ..." 1

These severities add up to exactly the per-dimension "badness" synth labels pairs by, so a pair of
ground-truth rationales scores full accuracy (tested on generated benchmarks). A section states *no
verdict* when it has neither the clean phrase nor any cue. It *contradicts itself* when it has both,
or a mismatch phrase between identical words ("the prompt asks for a red circle but the object is a
red circle"), or a checklist item whose verdict disagrees with the two words it compares ("colour
asked red, seen red, mismatch"). Either way its severity is None: its dimension counts as wrong.
Without the identical-words rule RL learned to write the mismatch phrase on every clip, which scored
as clean and took away what the head reads (training/BENCHMARK.md, session 12).

A CoT is *well formed* when it ended on its own (a stop token within the generation budget), every
heading appears exactly once and in order, and every section states a verdict. A self-contradiction
is a wrong answer, not a format error: it costs its dimension's accuracy but not the format term.
When it also cost format, RL learned to resolve "shape asked triangle, seen square, match" by copying
the asked word into "seen" (consistent, well formed, and false) rather than by writing "mismatch"
(training/BENCHMARK.md, session 13).

Rule reward of one sampled pair (CoT_A, CoT_B) — the paper's weights, `RewardWeights`
-------------------------------------------------------------------------------------
    reward = 0.7 · accuracy + 0.1 · format + 0.2 · length                       (each term in [0, 1])

* accuracy: over the pair's labelled sub-dimensions (labels ∩ headings; "overall" is not a
  sub-dimension), the fraction whose predicted preference equals the human label. The prediction
  compares the two CoTs' severities: lower severity wins, equal severities predict "same". A
  dimension whose section is missing or unreadable in either CoT counts as wrong. A pair labelled
  only "overall" is judged on the total severity (all sections needed).
* format: the mean over the two CoTs of 1 (well formed) or 0.
* length: the mean over the two CoTs of `length_score`: 1 inside the target token range
  [min_tokens, max_tokens] (`LengthTarget`, max ≤ 4096), rising linearly from 0 (empty) to 1 at
  min_tokens, falling linearly from 1 at max_tokens to 0 at 2·max_tokens. A CoT cut off by the
  generation budget is scored on the tokens it has (a lower bound of its length) and fails format.

Advantages and loss — GRPO (DeepSeekMath, Shao et al. 2024) with the k3 KL estimator
-------------------------------------------------------------------------------------
    A_i = (r_i − mean(r)) / std(r)          over the group of n samples (population std);
                                            a group whose rewards are all equal gets A = 0
    ρ_t = exp(log π(o_t) − log π_old(o_t))   π_old: the policy that sampled the CoTs
    KL_t = exp(log π_ref − log π) − (log π_ref − log π) − 1          (k3: unbiased, ≥ 0)
    L_t = −[min(ρ_t A, clip(ρ_t, 1 − ε, 1 + ε) A) − β · KL_t]
    loss = mean over sequences (with ≥ 1 token) of the mean of L_t over the sequence's tokens

ε = 0.2 and β = 1e-5 by default here (the RL stage's `RLConfig.kl_coef` is 1e-2, the authors' EasyR1
config's `low_var_kl` coefficient). With one update per batch of samples
π_old = π (detached), so ρ = 1 and the loss's gradient is the plain advantage-weighted one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from descore_sdk.errors import InvalidInputError

SUB_DIMENSIONS = ("VQ", "MQ", "TA")
SECTION_HEADINGS = {"VQ": "Visual quality", "MQ": "Motion", "TA": "Alignment"}
MAX_LENGTH_TOKENS = 4096  # the paper's cap on the CoT length target

# The clean finding of each section (severity 0).
CLEAN_PHRASES = {
    "VQ": re.compile(r"sharp, clean and with natural colou?rs", re.I),
    "MQ": re.compile(r"smooth and steady", re.I),
    "TA": re.compile(r"the video matches the prompt", re.I),
}


def _fixed(severity: int) -> Callable[[re.Match], int]:
    return lambda match: severity


def _repeated_frames(match: re.Match) -> int:
    return math.ceil(int(match.group(1)) / 2)


def _mismatched_words(match: re.Match) -> int:
    asked, seen = match.group(1, 2), match.group(3, 4)
    return sum(a.lower() != s.lower() for a, s in zip(asked, seen))


def _other_path(match: re.Match) -> int:
    return int(match.group(1).strip().lower() != match.group(2).strip().lower())


# One item of the alignment checklist: "colour asked red, seen blue, mismatch" ("path not asked, seen
# left to right" when the prompt leaves the path out). `synth.read_checklist` reads it with this too.
VERDICT_WORDS = ("match", "mismatch")  # an alignment checklist item's verdict
CHECKLIST_ITEM = re.compile(r"\b(colour|shape|path) (?:asked (.+?)|not asked), seen (.+?)(?:, (" + "|".join(VERDICT_WORDS) + r"))?(?=;|\.|$)")


# (pattern, severity of a match) per section; see the module docstring for where they come from.
SEVERITY_CUES: dict[str, list[tuple[re.Pattern, Callable[[re.Match], int]]]] = {
    "VQ": [
        (re.compile(r"slightly soft", re.I), _fixed(1)),
        (re.compile(r"very blurry", re.I), _fixed(2)),
        (re.compile(r"visible grain", re.I), _fixed(1)),
        (re.compile(r"heavy grainy noise", re.I), _fixed(2)),
        (re.compile(r"noticeable colou?r cast", re.I), _fixed(1)),
        (re.compile(r"strong colou?r cast", re.I), _fixed(2)),
    ],
    "MQ": [
        (re.compile(r"(\d+) of the frames repeat", re.I), _repeated_frames),
        (re.compile(r"shakes slightly", re.I), _fixed(1)),
        (re.compile(r"shakes violently", re.I), _fixed(2)),
    ],
    "TA": [
        (re.compile(r"asks for an? (\w+) (\w+) but the object is an? (\w+) (\w+)", re.I), _mismatched_words),
        (re.compile(r"asks for movement (.+?) but the object moves (.+?)(?=[;.]|$)", re.I), _other_path),
    ],
}


# ----------------------------------------------------------------------------------------------------
# Rule reward


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the rule reward's terms (the paper's 0.7 / 0.1 / 0.2)."""

    accuracy: float = 0.7
    format: float = 0.1
    length: float = 0.2


@dataclass(frozen=True)
class LengthTarget:
    """CoT lengths (in tokens) that get the full length reward: [min_tokens, max_tokens]."""

    min_tokens: int = 32
    max_tokens: int = 1024

    def __post_init__(self):
        if not 0 <= self.min_tokens <= self.max_tokens or not 1 <= self.max_tokens <= MAX_LENGTH_TOKENS:
            raise InvalidInputError(
                f"Length target [{self.min_tokens}, {self.max_tokens}] tokens is not a valid range; need "
                f"0 ≤ min_tokens ≤ max_tokens ≤ {MAX_LENGTH_TOKENS} and max_tokens ≥ 1."
            )


def length_score(num_tokens: int, target: LengthTarget = LengthTarget()) -> float:
    """1 inside [min_tokens, max_tokens]; n/min_tokens below; 1 − (n − max)/max above, floored at 0."""
    n = int(num_tokens)
    if n < 0:
        raise InvalidInputError(f"A CoT cannot have {n} tokens.")
    if n < target.min_tokens:
        return n / target.min_tokens
    if n <= target.max_tokens:
        return 1.0
    return max(0.0, 1.0 - (n - target.max_tokens) / target.max_tokens)


@dataclass(frozen=True)
class CoTReport:
    """What `read_cot` found in one CoT.

    severities:     sub-dimension → severity, or None when its section is missing, states no verdict
                    or contradicts itself.
    problems:       why the CoT is not well formed (empty when it is).
    contradictions: the sections that contradict themselves (wrong answers, not format errors).
    """

    severities: dict[str, int | None]
    num_tokens: int
    finished: bool
    problems: tuple[str, ...] = ()
    contradictions: tuple[str, ...] = ()

    @property
    def well_formed(self) -> bool:
        return not self.problems


NO_VERDICT, CONTRADICTION = "no verdict", "contradiction"


def _section_severity(dimension: str, body: str) -> int | str:
    """Severity stated by one section's text, or NO_VERDICT / CONTRADICTION (see the module docstring)."""
    clean = CLEAN_PHRASES[dimension].search(body) is not None
    severity, found = 0, False
    for pattern, weight in SEVERITY_CUES[dimension]:
        for match in pattern.finditer(body):
            stated = weight(match)
            if stated == 0:  # a finding that names no problem ("asks for a red circle but the object is a red circle")
                return CONTRADICTION
            severity += stated
            found = True
    if not clean and not found:
        return NO_VERDICT
    if clean and found:
        return CONTRADICTION
    if dimension == "TA":  # a checklist verdict against its own two words ("asked red, seen red, mismatch")
        for item in CHECKLIST_ITEM.finditer(body):
            asked, seen, verdict = item.group(2), item.group(3), item.group(4)
            if asked is not None and verdict is not None and (verdict == "match") != (asked.lower() == seen.lower()):
                return CONTRADICTION
    return severity


def _heading_hits(text: str, dimension: str) -> list[re.Match]:
    return list(re.finditer(rf"\b{re.escape(SECTION_HEADINGS[dimension])}:", text))


def section_starts(text: str, dimensions: Sequence[str] = SUB_DIMENSIONS) -> dict[str, int]:
    """Where each dimension's section begins in a CoT: the character offset of its heading's first
    occurrence, as `read_cot` reads it (dimensions whose heading is missing are left out). A section
    runs to the next section's start, the last one to the end of the text."""
    return {dim: hits[0].start() for dim in dimensions if (hits := _heading_hits(text, dim))}


def read_cot(text: str, *, num_tokens: int, finished: bool = True, dimensions: Sequence[str] = SUB_DIMENSIONS) -> CoTReport:
    """Parse one CoT's per-dimension verdicts (see the module docstring for the format).

    num_tokens: generated tokens, the stop token excluded. finished: the CoT ended with a stop token
    (False when the generation budget cut it off).
    """
    unknown = [d for d in dimensions if d not in SECTION_HEADINGS]
    if unknown:
        raise InvalidInputError(f"No CoT section is defined for dimension(s) {unknown}; known: {list(SECTION_HEADINGS)}.")
    problems = [] if finished else ["cut off by the generation budget"]
    starts: dict[str, re.Match] = {}
    for dim in dimensions:
        hits = _heading_hits(text, dim)
        if len(hits) != 1:
            problems.append(f"heading {SECTION_HEADINGS[dim]!r} appears {len(hits)} times")
        if hits:
            starts[dim] = hits[0]
    found = sorted(starts, key=lambda d: starts[d].start())
    if found != [d for d in dimensions if d in starts]:
        problems.append("sections out of order")

    severities: dict[str, int | None] = {dim: None for dim in dimensions}
    contradictions = []
    for i, dim in enumerate(found):
        end = starts[found[i + 1]].start() if i + 1 < len(found) else len(text)
        verdict = _section_severity(dim, text[starts[dim].end():end])
        if verdict == NO_VERDICT:
            problems.append(f"section {SECTION_HEADINGS[dim]!r} states no verdict")
        elif verdict == CONTRADICTION:
            contradictions.append(dim)
        else:
            severities[dim] = verdict
    return CoTReport(severities=severities, num_tokens=int(num_tokens), finished=bool(finished), problems=tuple(problems),
                     contradictions=tuple(contradictions))


def checklist_verdicts(text: str) -> list[tuple[int, int, bool]]:
    """The alignment checklist's verdicts in a CoT: one (start, end, consistent) per item of the
    Alignment section that compares two words and states a verdict ("colour asked red, seen blue,
    mismatch"), where [start, end) is the verdict word's character span in `text` and `consistent`
    whether it agrees with the two words ("match" exactly when they are equal, ignoring case). Items
    with no verdict or nothing asked ("path not asked, seen ...") are left out. This is the rule by
    which `read_cot` calls a TA section self-contradictory, made local to the word that breaks it."""
    starts = section_starts(text)
    if "TA" not in starts:
        return []
    later = [c for c in starts.values() if c > starts["TA"]]
    begin, end = starts["TA"], min(later, default=len(text))
    verdicts = []
    for item in CHECKLIST_ITEM.finditer(text, begin, end):
        asked, seen, verdict = item.group(2), item.group(3), item.group(4)
        if asked is not None and verdict is not None:
            verdicts.append((item.start(4), item.end(4), (verdict == "match") == (asked.lower() == seen.lower())))
    return verdicts


def predicted_preference(severity_a: int, severity_b: int) -> str:
    """"A" / "B" / "same": the video with the lower severity is preferred."""
    return "A" if severity_a < severity_b else "B" if severity_b < severity_a else "same"


@dataclass(frozen=True)
class RuleReward:
    """The rule reward of one sampled pair of CoTs and its terms (each term in [0, 1])."""

    total: float
    accuracy: float
    format: float
    length: float


def _judged_dimensions(labels: Mapping[str, str], dimensions: Sequence[str]) -> list[str]:
    judged = [d for d in dimensions if d in labels]
    if judged:
        return judged
    if "overall" in labels:
        return ["overall"]
    raise InvalidInputError(
        f"The pair's labels {sorted(labels)} name none of the CoT's dimensions {list(dimensions)} nor 'overall'; "
        "the rule reward cannot judge it."
    )


def accuracy(report_a: CoTReport, report_b: CoTReport, labels: Mapping[str, str]) -> float:
    """Fraction of the pair's labelled sub-dimensions that the two CoTs' severities predict correctly."""
    dims = list(report_a.severities)
    judged = _judged_dimensions(labels, dims)
    correct = 0
    for dim in judged:
        if dim == "overall":
            sev_a = None if None in report_a.severities.values() else sum(report_a.severities.values())
            sev_b = None if None in report_b.severities.values() else sum(report_b.severities.values())
        else:
            sev_a, sev_b = report_a.severities[dim], report_b.severities[dim]
        if sev_a is not None and sev_b is not None and predicted_preference(sev_a, sev_b) == labels[dim]:
            correct += 1
    return correct / len(judged)


def rule_reward(
    report_a: CoTReport,
    report_b: CoTReport,
    labels: Mapping[str, str],
    *,
    weights: RewardWeights = RewardWeights(),
    length_target: LengthTarget = LengthTarget(),
) -> RuleReward:
    """Rule reward of a sampled pair: weights.accuracy · accuracy + weights.format · format + weights.length · length."""
    acc = accuracy(report_a, report_b, labels)
    fmt = (report_a.well_formed + report_b.well_formed) / 2
    length = (length_score(report_a.num_tokens, length_target) + length_score(report_b.num_tokens, length_target)) / 2
    total = weights.accuracy * acc + weights.format * fmt + weights.length * length
    return RuleReward(total=total, accuracy=acc, format=fmt, length=length)


# ----------------------------------------------------------------------------------------------------
# Advantages and loss (torch, imported lazily so the rule reward stays torch-free)


def group_advantages(rewards, eps: float = 1e-6):
    """Group-relative advantages: (r − mean) / std over the last dimension (population std).

    rewards: (..., n) one reward per sample of a group. A group whose std is below `eps` (all samples
    equally good) gets zero advantages: it carries no signal about which CoT is better.
    Returns a float tensor of the same shape.
    """
    import torch

    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() == 0 or rewards.shape[-1] < 1:
        raise InvalidInputError(f"rewards must have a group dimension of at least one sample; got shape {tuple(rewards.shape)}.")
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, unbiased=False, keepdim=True)
    flat = std < eps
    return torch.where(flat, torch.zeros_like(centred), centred / torch.where(flat, torch.ones_like(std), std))


@dataclass
class PolicyLoss:
    """`grpo_policy_loss`'s result. loss has a graph; the rest are detached floats for logging."""

    loss: "object"  # torch.Tensor, ()
    kl: float  # mean k3 KL per token
    clip_fraction: float  # share of tokens where the clipped term was the smaller one
    mean_ratio: float
    stats: dict = field(default_factory=dict)


def k3_kl(logp, logp_ref):
    """Per-token k3 estimate of KL(π ‖ π_ref) from samples of π: exp(Δ) − Δ − 1, Δ = log π_ref − log π."""
    import torch

    delta = logp_ref - logp
    return torch.exp(delta) - delta - 1


def grpo_policy_loss(logp, logp_old, logp_ref, advantages, mask, *, clip_eps: float = 0.2, kl_coef: float = 1e-5) -> PolicyLoss:
    """The GRPO objective (negated, to minimise) over sampled sequences.

    logp:       (N, T) log π(o_t) of the sampled tokens under the policy being trained (with a graph).
    logp_old:   (N, T) the same under the policy that sampled them (no graph).
    logp_ref:   (N, T) the same under the frozen reference policy (no graph).
    advantages: (N,) one advantage per sequence (every token of a sequence shares it), or (N, T) one per
                token (section credit: each token gets the advantage of the CoT section it is in).
    mask:       (N, T) 1 for real tokens, 0 for padding.
    """
    import torch

    if not (logp.shape == logp_old.shape == logp_ref.shape == mask.shape) or logp.dim() != 2:
        raise InvalidInputError(
            f"logp {tuple(logp.shape)}, logp_old {tuple(logp_old.shape)}, logp_ref {tuple(logp_ref.shape)} and "
            f"mask {tuple(mask.shape)} must all be the same (sequences, tokens) shape."
        )
    if advantages.shape not in (logp.shape[:1], logp.shape):
        raise InvalidInputError(
            f"advantages must be one per sequence, shape ({logp.shape[0]},), or one per token, {tuple(logp.shape)}; "
            f"got {tuple(advantages.shape)}."
        )
    if clip_eps < 0 or kl_coef < 0:
        raise InvalidInputError(f"clip_eps ({clip_eps}) and kl_coef ({kl_coef}) must be ≥ 0.")
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv  # (N, 1) or (N, T)
    ratio = torch.exp(logp - logp_old.detach())
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    surrogate = torch.minimum(unclipped, clipped)
    kl = k3_kl(logp, logp_ref.detach())
    per_token = -(surrogate - kl_coef * kl)  # (N, T)

    tokens = mask.sum(dim=-1)  # (N,)
    has_tokens = tokens > 0
    per_sequence = (per_token * mask).sum(dim=-1) / tokens.clamp(min=1)
    loss = per_sequence[has_tokens].mean() if bool(has_tokens.any()) else per_token.sum() * 0.0

    with torch.no_grad():
        count = mask.sum().clamp(min=1)
        mean_kl = float((kl * mask).sum() / count)
        clip_fraction = float(((clipped < unclipped).to(mask.dtype) * mask).sum() / count)
        mean_ratio = float((ratio * mask).sum() / count)
    return PolicyLoss(loss=loss, kl=mean_kl, clip_fraction=clip_fraction, mean_ratio=mean_ratio)


def sequence_log_probs(logits, tokens):
    """log softmax(logits)[token] per position: logits (N, T, V), tokens (N, T) → (N, T), in float32."""
    import torch

    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
