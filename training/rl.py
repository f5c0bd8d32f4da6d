"""DeScore stage 3: dual-objective RL — GRPO on the sampled CoTs plus Bradley–Terry on the reward head.

    python -m descore_sdk.training.rl --model COLD_START_CKPT --data train.jsonl --out DIR
    descore train rl --model ... --data ... --out ...          (the CLI mounts `add_rl_subcommand`)

One step, for each preference pair (prompt, video A, video B, per-dimension labels) of the step:

1. Rollout. The current policy samples n CoTs for video A and n for video B (temperature sampling,
   stopped by `<|im_end|>` / `<|endoftext|>` or `max_new_tokens`). Sample i is the pair (CoT_A_i, CoT_B_i).
2. Rule reward (`grpo.rule_reward`): 0.7 · sub-dimension accuracy of the verdicts the two CoTs state,
   against the pair's labels + 0.1 · format + 0.2 · length. Advantages are normalised within the
   group of n samples (`grpo.group_advantages`); both CoTs of sample i share its advantage
   (`credit="pair"`, the paper's). With `credit="marginal"` each CoT gets its own: CoT_A_i's reward is
   the mean rule reward of (CoT_A_i, CoT_B_j) over the n samples j of the other video, normalised
   among the n CoTs of its video, and likewise for CoT_B_j (`marginal_rewards`). With
   `credit="section"` the tokens of each CoT section get the advantage of that section's dimension:
   the rule reward of sample i judged on that dimension alone, normalised within the group
   (`section_rewards`, `token_sections`); the opening sentence and the stop token keep the shared one,
   and so does a section whose tie `reward_tied_dimensions=False` leaves unjudged, unless
   `unjudged_sections="zero"` gives it none.
   With `verdict_consistency` = w > 0, whatever the credit, the words of the alignment checklist's
   verdicts ("colour asked red, seen blue, mismatch") get their own advantage instead: −w when the
   verdict contradicts its two words, 0 when it agrees (`verdict_credit`: label-free, local).
3. One forward of prompt + CoT + `<Reward>` per sequence gives both the log-probabilities of the CoT
   tokens (and of the stop token that ended it) and the head's rewards at `<Reward>`. The
   log-probabilities are those of the sampling distribution, softmax(logits / temperature), for the
   policy and for the reference alike, as in the authors' actor (verl's `dp_actor` divides the logits
   by the rollout temperature); with `min_p` also restricted to the tokens min-p sampling keeps and
   renormalised (the authors sample without min-p).
4. Two losses on that one forward:
     GRPO  clipped policy gradient on the CoT tokens + β · KL(π ‖ π_ref) (k3), β = 1e-2, to the frozen
           reference policy (a copy of the starting model);
     BT    −log σ(r_win − r_lose) per labelled dimension of the head (human ties dropped, or
           Rao–Kupper with `bt_ties`), on the rewards the head gives the same sampled CoTs +
           `<Reward>`, averaged over samples and dimensions, weighted by `bt_weight` (5e-3). With
           `bt_rows` BT can also (or instead) be computed on the pair's greedy CoTs, the ones think mode
           scores, or on its fast-layout rows, each in a forward of its own after the rollouts.

What trains is set up as in cold start (`trainer.prepare_model`): all backbone weights or LoRA
adapters, the vision tower only with `train_vision`, the LM head frozen, and of the input embeddings
only the `<Reward>` row. The reward head always trains.

Where BT's gradient goes (`bt_scope`). With "backbone" (the default) GRPO + bt_weight · BT is
backpropagated through the whole model as one summed loss, so BT also trains the backbone weights
that compute the `<Reward>` hidden state from the CoT, and the weight balances the two objectives on
the shared weights. This is what the authors' code does (DeScore_project_page `dual_rl`: the actor's
update adds bt_weight · BT, computed on the `<Reward>` hidden state of a forward through the
trainable actor, to the policy loss before one backward; their `train.sh` sets bt_weight 5e-3 and
freezes the vision tower). On the synthetic benchmark (training/BENCHMARK.md, session 14) think-mode
accuracy rose with it in all nine runs from two cold starts (once beyond two standard errors;
log-probs then at temperature 1, see step 3), and moved between −0.015 and +0.024 with the head
scope: the head learns to read the CoTs the policy writes, not only the gold ones of the cold start.
On a factor the CoT has no words for, think mode then follows the CoT's mistake.
Too large a BT share rewrites the policy instead (weight 0.1 at lr 1e-4 broke the CoTs: BENCHMARK.md,
"Recipe changes measured", S1).

With "head" the two objectives stay independent: the gradients are taken separately with
`torch.autograd.grad` from the shared forward:
  * the policy (every trainable backbone weight) gets the GRPO gradient only;
  * the reward head gets the BT gradient only (it is not in the GRPO graph at all), and so does the
    `<Reward>` row of the input embeddings (BT's gradient on every other backbone weight is dropped;
    GRPO's on that row is zero, since `<Reward>` comes after every scored token).
So BT cannot rewrite the policy's CoTs and GRPO cannot move the head's calibration. With AdamW
(per-element, scale-free updates) a constant factor on a loss that alone drives a parameter barely
changes its steps: under this scope `bt_weight` mostly matters through gradient clipping; the head's
learning rate (`head_lr`) is the knob. Either way gradients are clipped per side (policy, head).

Further choices: the model stays in eval mode (Qwen-VL has no dropout; sampling and training see the
same network); sampling never emits vision placeholders or `<Reward>` (`SUPPRESSED_TOKENS`); the
reference policy is a frozen deep copy (2× the weights in memory); `micro_batch` samples
(2·micro_batch sequences) go through one forward, gradients being accumulated over micro-batches and
pairs with step-wide normalisers, so micro-batching does not change the result. Each sequence's LM
logits are computed in full (batch × length × vocab): keep `micro_batch` small for real models.
Video inputs come from `descore_sdk.inputs` / `batching`, the code path the Scorer serves with.

Output: the checkpoint in OUT (`checkpoint.export_model`: LoRA merged), plus `rl_log.jsonl`, `rl_config.json`
(the settings used) and `rl_summary.json`. There is no resumable mid-run checkpointing in this stage.

What the log says about the learning signal (one line per step; `descore train plot OUT` draws it):
  rule_reward, rule_accuracy / _format / _length   the sampled CoTs' rule reward and its terms
  reward_std, accuracy_std   mean within-group std of the reward and of its accuracy term
  zero_variance_groups       fraction of groups whose samples all got the same reward: A = 0, no
                             policy gradient from them (with `dynamic_sampling` they are replaced;
                             with `credit="section"` such a group can still carry per-section advantages)
  parsed                     fraction of CoTs whose every section states a verdict the parser reads
  contradicted               fraction of CoTs with a section that contradicts itself (a wrong answer)
  verdicts_contradicted      of the alignment checklist's verdicts, the share that contradicts its own
                             asked / seen words ("colour asked yellow, seen green, match")
  entropy                    the sampling policy's next-token entropy per CoT token (nats; of softmax(logits / temperature),
                             over the tokens min-p keeps)
  kl, clip_fraction, ratio   k3 KL to the reference per token; clipped share and mean ρ (ρ = 1 and
                             no clipping with one update per batch)
  anchor_kl                  with `verdict_anchor`: exact KL(π_ref ‖ π) per anchored verdict position
  bt_loss, grpo_loss, *_grad_norm, pairs_rolled_out, groups_trained, cot_tokens, finished, seconds
With eval data (`--eval-data`), `evaluate_policy` runs before the first step, every `eval_every` steps
and at the end (think-mode, fast-mode and CoT-verdict accuracy, the greedy CoTs' contradicted checklist
verdicts and `VerdictProbe`, whose "mismatch" mean tracked RL's flips of uncertain verdicts;
`{"step", "eval"}` lines), and
`rl_summary.json` (`metrics.rl_run_summary`, printed as one line) says whether the run improved on its
starting checkpoint: the rule reward's trend over 5 blocks of steps (beyond 2 standard errors?) and
the accuracies before vs after.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from descore_sdk.errors import ContextLengthError, InvalidInputError
from descore_sdk.inputs import VideoFeatures, model_inputs
from descore_sdk.options import ScoreOptions
from descore_sdk.prompt import PromptBuilder

from .batching import PAD_TOKEN, STOP_TOKEN, FeatureCache, Row, collate_rows, preference_codes
from .checkpoint import export_model
from .data import PreferencePair, read_pairs
from .grpo import (
    SUB_DIMENSIONS,
    VERDICT_WORDS,
    LengthTarget,
    RewardWeights,
    checklist_verdicts,
    group_advantages,
    grpo_policy_loss,
    read_cot,
    rule_reward,
    section_starts,
)
from .losses import IGNORE_INDEX, TIE_MODES, preference_item_count, preference_loss
from .model import DeScoreModel
from .trainer import TrainConfig, prepare_model

logger = logging.getLogger(__name__)

STOP_TOKENS = ScoreOptions().stop_tokens  # what the Scorer stops a CoT on
LOG_FILE = "rl_log.jsonl"
CONFIG_FILE = "rl_config.json"
SUMMARY_FILE = "rl_summary.json"
BT_SCOPES = ("head", "backbone")
BT_ROWS = ("sampled", "greedy", "fast")
CREDITS = ("pair", "marginal", "section")
UNJUDGED_SECTIONS = ("shared", "zero")


@dataclass
class RLConfig:
    """Settings of the RL stage.

    Where the authors' RL config (DeScore_project_page `dual_rl/examples/config.yaml`, EasyR1) gives a
    value it is the default: temperature 1.0, top_p 1.0, actor lr 1e-6, weight decay 1e-2, max grad
    norm 1.0, KL loss (`low_var_kl` = k3) with coefficient 1e-2. Theirs differ on batch sizes (512
    prompts per rollout batch, 128 per update, n = 5): one preference pair per step, as this stage
    had, gives a gradient from 2 · n CoTs of one pair, which AdamW turns into a full-size step
    whatever its noise; `pairs_per_step` = 8 is what measurably moved the tiny benchmark model
    (training/BENCHMARK.md, "The RL stage").
    """

    num_samples: int = 8  # n: CoTs sampled per video of a pair (the GRPO group)
    max_new_tokens: int = 1024  # generation budget per CoT
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    # Min-p sampling (Nguyen et al. 2024, transformers' `min_p`, applied after the temperature): keep only
    # tokens with at least min_p × the top token's probability. With a temperature above 1 it makes the
    # rollouts explore where the policy has real alternatives (a verdict word) without sampling the
    # long tail that breaks the CoT's template elsewhere (training/BENCHMARK.md, "The RL stage").
    # The policy-gradient log-probs stay those of the untempered policy π (no correction for sampling
    # from a different distribution). 0 = off.
    min_p: float = 0.0
    steps: int | None = None  # optimizer steps; None = one pass over the pairs
    pairs_per_step: int = 8  # preference pairs (GRPO groups) per optimizer step
    micro_batch: int = 1  # samples (pairs of CoTs) per forward
    updates_per_batch: int = 1  # policy updates per batch of samples (μ); > 1 makes the clipping bite
    dynamic_sampling: bool = False  # drop zero-advantage groups and draw more pairs (DAPO); see DualObjectiveRL.step
    max_draws_per_step: int = 0  # dynamic sampling's cap on pairs rolled out per step; 0 = 3 × pairs_per_step
    # Which pairs the steps draw. None: shuffled passes over the data (each pair once per pass). A dict
    # {dimension: weight}: pairs are drawn at random with replacement, a pair decided ("A" / "B") on a
    # listed dimension with that weight (the largest, if several), every other pair with 1
    # (`draw_probabilities`). Focuses the rollouts on the dimension whose verdict the CoT has yet to learn.
    draw_weights: dict | None = None
    lr: float = 1e-6  # policy
    head_lr: float = 1e-5  # reward head (BT)
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0  # per side (policy / head); 0 = no clipping
    clip_eps: float = 0.2
    kl_coef: float = 1e-2
    bt_weight: float = 5e-3
    bt_scope: str = "backbone"  # "backbone": BT through the model too (the authors'); "head": BT → head + <Reward> row only
    bt_ties: str = "drop"  # "drop": plain BT, human ties skipped; "rao_kupper": BT with ties (losses.py)
    # Which rows of each step's pairs BT is computed on; each kind's BT is a mean over its own decided
    # (row pair, dimension) entries, and the kinds add. "sampled": the n sampled CoTs + `<Reward>` (the
    # authors'); "greedy": the pair's greedy CoTs + `<Reward>`, written by the current policy (what think
    # mode scores); "fast": prompt + `<Reward>` (fast mode). See `DualObjectiveRL.bt_rollouts`. Measured
    # (training/BENCHMARK.md, session 20): BT on the sampled CoTs teaches the head to read the CoT (within a
    # group only the CoT varies); ("greedy", "fast") at bt_weight 0.1, with section credit, decided dimensions,
    # TA draws and verdict_consistency 1, raised think mode beyond 2 SE in six seeds of six, by the head
    # overriding wrong CoTs more often (on a held-out factor only the CoT sees, that can cost think mode).
    bt_rows: tuple = ("sampled",)
    # "pair": CoT_A_i and CoT_B_i share sample i's advantage; "marginal": one per CoT (`marginal_rewards`);
    # "section": one per CoT section, from the reward of the section's own dimension (`section_rewards`)
    credit: str = "pair"
    # With credit="section": the advantage of a section whose dimension the pair is not judged on (a tie
    # left out by reward_tied_dimensions=False): "shared" (the sample's full reward) or "zero".
    unjudged_sections: str = "shared"
    # The rule reward's accuracy term over every labelled sub-dimension (True, the paper's rule), or
    # (False) only over those where the label prefers one video, unless all are tied (`reward_labels`).
    # The logged `rule_reward` is always the paper's; this changes what the advantages follow.
    reward_tied_dimensions: bool = True
    # w > 0: the alignment checklist's verdict words are credited by the parser's consistency rule alone,
    # not by the sample's advantage: −w on a verdict that contradicts its own asked / seen words, 0 on one
    # that agrees (`verdict_credit`; label-free). 0 = off (the paper's GRPO).
    verdict_consistency: float = 0.0
    # a > 0: at the first token of every sampled checklist verdict that agrees with its own words, the
    # loss adds a · KL(π_ref ‖ π) over the whole next-token distribution (temperature 1), averaged over
    # those positions: a label-free anchor for the verdicts the policy already gets right, which RL's
    # updates elsewhere otherwise drag toward the frequent "match" (`verdict_anchor_loss`). 0 = off.
    # Measured (training/BENCHMARK.md, session 19): it slowed the flips of uncertain "mismatch" verdicts
    # but did not stop them (they are rarely sampled, so rarely anchored); A = 5 lowered think mode.
    verdict_anchor: float = 0.0
    length_min_tokens: int = 32
    length_max_tokens: int = 1024
    reward_weights: RewardWeights = field(default_factory=RewardWeights)
    train_vision: bool = False
    lora: bool = False  # LoRA adapters instead of all backbone weights (trainer.prepare_model)
    lora_r: int = 64
    lora_alpha: int = 128
    seed: int = 0
    eval_every: int = 0  # with eval data: evaluate before step 1, every eval_every steps (0: only) and at the end
    eval_max_pairs: int = 64  # the first pairs of the eval data that are used (greedy CoTs cost time)

    def __post_init__(self):
        if isinstance(self.reward_weights, dict):
            self.reward_weights = RewardWeights(**self.reward_weights)
        positive = ("num_samples", "pairs_per_step", "micro_batch", "updates_per_batch", "eval_max_pairs")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(f"{name} must be ≥ 1, got {getattr(self, name)}.")
        if self.eval_every < 0:
            raise InvalidInputError(f"eval_every must be ≥ 0 (0 = before and after the run only), got {self.eval_every}.")
        if self.steps is not None and self.steps < 1:
            raise InvalidInputError(f"steps must be ≥ 1 (or None for one pass), got {self.steps}.")
        if self.max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be ≥ 1 for the model to write a CoT, got {self.max_new_tokens}.")
        if self.temperature <= 0:
            raise InvalidInputError(f"temperature must be > 0: GRPO needs sampled, different CoTs; got {self.temperature}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidInputError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}.")
        if self.bt_ties not in TIE_MODES:
            raise InvalidInputError(f"bt_ties must be one of {TIE_MODES}, got {self.bt_ties!r}.")
        if self.credit not in CREDITS:
            raise InvalidInputError(f"credit must be one of {CREDITS}, got {self.credit!r}.")
        if self.unjudged_sections not in UNJUDGED_SECTIONS:
            raise InvalidInputError(f"unjudged_sections must be one of {UNJUDGED_SECTIONS}, got {self.unjudged_sections!r}.")
        if self.unjudged_sections == "zero" and (self.credit != "section" or self.reward_tied_dimensions):
            raise InvalidInputError(
                'unjudged_sections="zero" changes nothing unless credit="section" and reward_tied_dimensions=False '
                "(only then is a section left unjudged); add --credit section --no-reward-tied-dimensions, or drop it.")
        if self.bt_scope not in BT_SCOPES:
            raise InvalidInputError(f"bt_scope must be one of {BT_SCOPES}, got {self.bt_scope!r}.")
        if (not isinstance(self.bt_rows, (list, tuple)) or not self.bt_rows or any(k not in BT_ROWS for k in self.bt_rows)
                or len(set(self.bt_rows)) != len(self.bt_rows)):
            raise InvalidInputError(f"bt_rows must name one or more distinct kinds of {BT_ROWS}, got {self.bt_rows!r}.")
        self.bt_rows = tuple(self.bt_rows)
        for name in ("lr", "head_lr", "weight_decay", "max_grad_norm", "clip_eps", "kl_coef", "bt_weight", "verdict_consistency",
                     "verdict_anchor"):
            if not getattr(self, name) >= 0 or not math.isfinite(getattr(self, name)):
                raise InvalidInputError(f"{name} must be a finite number ≥ 0, got {getattr(self, name)}.")
        self.length_target  # validates the range
        if self.max_draws_per_step < 0:
            raise InvalidInputError(f"max_draws_per_step must be ≥ 0 (0 = 3 × pairs_per_step), got {self.max_draws_per_step}.")
        if self.draw_weights is not None:
            if not isinstance(self.draw_weights, dict) or not self.draw_weights:
                raise InvalidInputError(f"draw_weights must be a non-empty {{dimension: weight}} dict or None, got {self.draw_weights!r}.")
            for dim, weight in self.draw_weights.items():
                if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
                    raise InvalidInputError(f"draw_weights[{dim!r}] must be a finite number > 0, got {weight!r}.")

    @property
    def length_target(self) -> LengthTarget:
        return LengthTarget(self.length_min_tokens, self.length_max_tokens)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RLResult:
    """What `run_rl` returns: the checkpoint folder, one dict of metrics per step, the evaluations
    (`evaluate_policy` plus "step"; empty without eval data) and `metrics.rl_run_summary`."""

    out_dir: Path
    history: list[dict]
    evals: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Rollouts


@dataclass
class Rollout:
    """One sampled CoT for one video.

    prompt_ids: (P,) int64 think-layout prompt ids (`descore_sdk.inputs.model_inputs`, as the Scorer).
    cot_ids:    the sampled CoT, stop token excluded.
    stop_id:    the token that ended it; None when the generation budget cut it off.
    """

    features: VideoFeatures
    prompt_ids: np.ndarray
    cot_ids: list[int]
    stop_id: int | None

    @property
    def finished(self) -> bool:
        return self.stop_id is not None

    def row(self, reward_id: int) -> Row:
        """prompt + CoT + `<Reward>`, labelled (batching's "think" convention) with the CoT tokens and,
        at the `<Reward>` position, the stop token that really ended the CoT (none if cut off)."""
        ids = np.concatenate([self.prompt_ids, self.cot_ids, [reward_id]]).astype(np.int64)
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        labels[len(self.prompt_ids) : len(self.prompt_ids) + len(self.cot_ids)] = self.cot_ids
        if self.finished:
            labels[-1] = self.stop_id
        return Row(ids, labels, self.features)


def _to_model(batch: dict[str, torch.Tensor], model: DeScoreModel) -> dict[str, torch.Tensor]:
    device, dtype = model.reward_head.weight.device, model.backbone.dtype
    out = {k: v.to(device) for k, v in batch.items()}
    out["pixel_values_videos"] = out["pixel_values_videos"].to(dtype)
    if model.family != "qwen2_5_vl":
        out.pop("second_per_grid_ts", None)
    return out


# Tokens a CoT must never contain: vision placeholders would be taken for video patches by the scoring
# forward, and a `<Reward>` inside the CoT would be read as a reward position.
SUPPRESSED_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def suppressed_ids(model: DeScoreModel) -> list[int]:
    """Ids that sampling never emits (their logits are set to −inf during generation only; the policy's
    log-probs in the loss are the model's own, unsuppressed ones)."""
    vocab = model.tokenizer.get_vocab(with_added_tokens=True)
    return sorted({vocab[t] for t in SUPPRESSED_TOKENS if t in vocab} | {model.reward_token_id})


@torch.no_grad()
def sample_cots(
    model: DeScoreModel, features: VideoFeatures, prompt_ids: np.ndarray, n: int, config: "RLConfig", stop_ids: Sequence[int], pad_id: int,
    *, greedy: bool = False,
) -> list[Rollout]:
    """n CoTs for one video, sampled by the backbone's own `generate` (one batch of n identical prompts;
    the video's patches are repeated per row, since generate's own expansion would interleave them).
    greedy: decode greedily instead (the Scorer's think mode at temperature 0), for evaluation."""
    room = model.descore_config.max_context - len(prompt_ids) - 1  # keep one slot for <Reward>
    if room < 1:
        raise ContextLengthError(
            f"The prompt is {len(prompt_ids)} tokens, leaving no room for a CoT in the model's context of "
            f"{model.descore_config.max_context}. Lower max_frames / max_pixels in descore_config.json."
        )
    batch = _to_model(collate_rows([Row(prompt_ids, None, features)] * n, pad_id), model)
    ids = batch.pop("input_ids")
    generated = model.backbone.generate(
        input_ids=ids,
        mm_token_type_ids=model.mm_token_type_ids(ids),
        **batch,
        max_new_tokens=min(config.max_new_tokens, room),
        **(dict(do_sample=False) if greedy else dict(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                                                     min_p=config.min_p or None)),
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
        suppress_tokens=suppressed_ids(model),
    )
    stops = set(int(s) for s in stop_ids)
    rollouts = []
    for row in generated[:, ids.shape[1]:].tolist():
        end = next((i for i, token in enumerate(row) if token in stops), None)
        rollouts.append(Rollout(features, prompt_ids, row if end is None else row[:end], None if end is None else row[end]))
    return rollouts


# ----------------------------------------------------------------------------------------------------
# Scoring sampled sequences


@dataclass
class ScoredBatch:
    """Policy-side view of a batch of rollouts.

    logp:    (B, L−1) log-prob of each scored token (the CoT tokens, then the stop token if any) at
             the position that predicts it; 0 elsewhere.
    mask:    (B, L−1) 1 at scored positions.
    rewards: (B, K) the head's rewards for prompt + CoT + `<Reward>`.
    entropy: (B, L−1) entropy (nats) of the policy's next-token distribution at each scored position,
             no graph; 0 elsewhere.
    at:      (N, V) with `at=`: the full next-token log-probs (temperature 1) that predict the asked
             CoT tokens, rows in the order asked; None otherwise.
    """

    logp: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    entropy: torch.Tensor | None = None
    at: torch.Tensor | None = None


def score_rollouts(model: DeScoreModel, rollouts: Sequence[Rollout], pad_id: int, temperature: float = 1.0,
                   min_p: float = 0.0, at: Sequence[Sequence[int]] | None = None) -> ScoredBatch:
    """One forward over prompt + CoT + `<Reward>` for each rollout (a right-padded batch). The log-probs
    and the entropy are those of the distribution the CoTs were sampled from: softmax(logits /
    `temperature`), and with `min_p` > 0 restricted to the tokens min-p sampling keeps (probability ≥
    min_p × the top one's, as transformers' `MinPLogitsWarper`) and renormalised; the scored token is
    always kept, so its log-prob stays finite after the policy has moved. The rewards depend on neither.
    at: per rollout, CoT token indices whose full predicting distribution (temperature 1) to return."""
    batch, labels = _rollout_batch(model, rollouts, pad_id)
    out = model(**batch, return_logits=True)
    targets = labels[:, 1:]  # position j predicts token j + 1
    mask = targets != IGNORE_INDEX
    rows = None
    if at is not None:  # CoT token k of row b is predicted at position len(prompt_b) + k − 1
        where = [(b, len(r.prompt_ids) + k - 1) for b, (r, ks) in enumerate(zip(rollouts, at)) for k in ks]
        rows = torch.log_softmax(out.logits[[b for b, _ in where], [j for _, j in where]].float(), dim=-1)  # (0, V) if none
    logits = out.logits[:, :-1].float() / temperature
    index = targets.clamp(min=0).unsqueeze(-1)
    if min_p > 0:  # p ≥ min_p · p_max  ⇔  logit ≥ max logit + log(min_p), at the same temperature
        with torch.no_grad():
            keep = logits >= logits.max(dim=-1, keepdim=True).values + math.log(min_p)
            keep.scatter_(-1, index, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    log_probs = torch.log_softmax(logits, dim=-1)  # once, for the log-probs and the entropy
    logp = log_probs.gather(-1, index).squeeze(-1) * mask
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs.clamp(min=torch.finfo(log_probs.dtype).min)).sum(dim=-1) * mask
    return ScoredBatch(logp=logp, mask=mask.to(logp.dtype), rewards=out.rewards, entropy=entropy, at=rows)


def _rollout_batch(model: DeScoreModel, rollouts: Sequence[Rollout], pad_id: int) -> tuple[dict, torch.Tensor]:
    """The model's inputs for prompt + CoT + `<Reward>` of each rollout (a right-padded batch), and the labels."""
    batch = _to_model(collate_rows([r.row(model.reward_token_id) for r in rollouts], pad_id), model)
    return batch, batch.pop("labels")


def reward_rows(model: DeScoreModel, rollouts: Sequence[Rollout], pad_id: int) -> torch.Tensor:
    """(B, K) the head's rewards for each rollout's prompt + CoT + `<Reward>` (one forward, no LM logits)."""
    return model(**_rollout_batch(model, rollouts, pad_id)[0]).rewards


# ----------------------------------------------------------------------------------------------------
# Per-step diagnostics


def reward_diagnostics(groups: Sequence[Sequence], reports: Sequence = ()) -> dict:
    """What a step's rollouts carry as a learning signal.

    groups:  per GRPO group (one pair), the `grpo.RuleReward` of each of its n samples.
    reports: every sampled CoT's `grpo.CoTReport`.
    Returns the mean rule reward and its terms, the mean within-group population std of the reward
    (`reward_std`) and of its accuracy term (`accuracy_std`), the fraction of groups whose rewards are
    all equal (`zero_variance_groups`: `grpo.group_advantages` gives them A = 0, so they teach
    nothing), the fraction of CoTs whose every section states a verdict the parser reads
    (`parsed`), and the fraction with a section that contradicts itself (`contradicted`, e.g. "seen
    blue, match" under "a red circle"; `grpo.read_cot`).
    """
    totals = [np.array([r.total for r in g], dtype=np.float64) for g in groups]
    accs = [np.array([r.accuracy for r in g], dtype=np.float64) for g in groups]
    flat = [r for g in groups for r in g]
    return {
        "rule_reward": float(np.mean([r.total for r in flat])),
        "rule_accuracy": float(np.mean([r.accuracy for r in flat])),
        "rule_format": float(np.mean([r.format for r in flat])),
        "rule_length": float(np.mean([r.length for r in flat])),
        "reward_std": float(np.mean([t.std() for t in totals])),
        "accuracy_std": float(np.mean([a.std() for a in accs])),
        # The advantages GRPO really uses: an all-zero group is one group_advantages judged flat.
        "zero_variance_groups": float(np.mean([not bool(group_advantages(t).any()) for t in totals])),
        "parsed": float(np.mean([all(v is not None for v in r.severities.values()) for r in reports])) if reports else float("nan"),
        "contradicted": float(np.mean([bool(r.contradictions) for r in reports])) if reports else float("nan"),
    }


def reward_labels(labels: dict, tied_dimensions: bool) -> dict:
    """The labels the training reward judges a pair on. With `tied_dimensions=False`, the sub-dimensions
    labelled "same" are left out when at least one is decided ("A" / "B"); a pair tied everywhere keeps
    them all.

    Why: most synthetic pairs differ in one dimension, so two thirds of the paper's accuracy term are
    tied dimensions, which a CoT wins by calling both videos clean whatever it sees. What a CoT cannot
    tell apart it learns to call clean (measured: training/BENCHMARK.md, "RL, second session"), and
    the head, which reads the CoT in think mode, loses what the CoT used to carry."""
    if tied_dimensions:
        return labels
    decided = {d: v for d, v in labels.items() if d in SUB_DIMENSIONS and v in ("A", "B")}
    return decided or labels


def marginal_rewards(reports_a: Sequence, reports_b: Sequence, labels, *, weights: RewardWeights, length_target: LengthTarget):
    """Each CoT's own reward for `credit="marginal"`: R[i, j] = rule reward of (CoT_A_i, CoT_B_j) over
    all n × n combinations; CoT_A_i gets the mean of row i, CoT_B_j the mean of column j. Returns two
    (n,) arrays.

    Why: the rule reward judges a PAIR of CoTs, so with the paper's pairing (sample i = (CoT_A_i,
    CoT_B_i), one shared advantage) a right verdict in CoT_A_i is punished whenever CoT_B_i happens to
    be wrong. The expected reward of CoT_A_i over the other video's CoTs is what its own gradient
    should follow (E_A[∇log π(A) · E_B R(A, B)], with E_B estimated by the n samples of B); the n²
    rule rewards are regular expressions on text, no model call."""
    table = np.array([[rule_reward(a, b, labels, weights=weights, length_target=length_target).total for b in reports_b]
                      for a in reports_a], dtype=np.float64)
    return table.mean(axis=1), table.mean(axis=0)


def section_rewards(reports_a: Sequence, reports_b: Sequence, labels, *, weights: RewardWeights,
                    length_target: LengthTarget) -> dict[str | None, np.ndarray]:
    """The rewards `credit="section"` normalises, per sample i = (CoT_A_i, CoT_B_i): for each labelled
    sub-dimension d, the rule reward of the pair judged on d alone (`rule_reward` with the label of d
    only: the accuracy term is whether the two CoTs' d sections order the pair right; format and length
    are the sample's own); under the key None, the full rule reward, which the tokens outside any judged
    section follow. Returns key → (n,) rewards.

    Why: GRPO gives every token of a CoT one advantage, so the verdict of one section is credited with
    the luck of the others; most synthetic pairs differ in one dimension, and the other two sections'
    guesses set much of the group's spread. Measured on the synthetic benchmark: it raises the rule
    reward as fast or faster, but not think-mode accuracy, and it reaches the "copy the prompt into
    seen" shortcut sooner (training/BENCHMARK.md, session 13). Opt-in."""
    samples = list(zip(reports_a, reports_b))
    judged = [d for d in SUB_DIMENSIONS if d in labels and d in reports_a[0].severities] if samples else []
    out: dict[str | None, np.ndarray] = {
        None: np.array([rule_reward(a, b, labels, weights=weights, length_target=length_target).total for a, b in samples])}
    for dim in judged:
        out[dim] = np.array([rule_reward(a, b, {dim: labels[dim]}, weights=weights, length_target=length_target).total
                             for a, b in samples])
    return out


def _token_at(decode: Callable[[Sequence[int]], str], ids: list[int], char: int) -> int:
    """The index of the token that holds character `char` of decode(ids): the first token whose
    decoded prefix reaches past it (a binary search: the decoded prefix lengths only grow)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if len(decode(ids[: mid + 1])) > char else (mid + 1, hi)
    return lo


def token_sections(decode: Callable[[Sequence[int]], str], cot_ids: Sequence[int]) -> list[str | None]:
    """The CoT section (a sub-dimension, as `grpo.read_cot` splits the text) each sampled token is in;
    None before the first heading. A token belongs to the section its last character is in, found by
    decoding prefixes (a binary search per heading: the decoded prefix lengths only grow)."""
    ids = list(cot_ids)
    bounds = [(_token_at(decode, ids, char), dim)
              for dim, char in sorted(section_starts(decode(ids)).items(), key=lambda item: item[1])]
    sections: list[str | None] = [None] * len(ids)
    for (first, dim), (end, _) in zip(bounds, bounds[1:] + [(len(ids), None)]):
        sections[first:end] = [dim] * (end - first)
    return sections


def token_advantages(rollout: Rollout, sample: int, by_section: dict, decode: Callable[[Sequence[int]], str],
                     unjudged: str = "shared") -> torch.Tensor:
    """One advantage per scored token of `rollout` (its CoT tokens, then the stop token if it ended on
    one) for `credit="section"`: the advantage of sample `sample` under the token's section's reward,
    the shared one (key None) before the first section and for the stop token. A section whose
    dimension the pair is not judged on (`reward_labels` leaves out its tie) gets the shared one too,
    or, with `unjudged="zero"`, none: its tokens are then moved only by the KL term."""
    shared = float(by_section[None][sample])
    fallback = {"shared": shared, "zero": 0.0}[unjudged]
    values = [float(by_section[sec][sample]) if sec in by_section else fallback  # None (before any heading) is a key
              for sec in token_sections(decode, rollout.cot_ids)]
    return torch.tensor(values + [shared] * rollout.finished, dtype=torch.float32)


def verdict_credit(decode: Callable[[Sequence[int]], str], cot_ids: Sequence[int], verdicts: Sequence[tuple[int, int, bool]],
                   weight: float) -> torch.Tensor:
    """The advantages `verdict_consistency` gives the alignment checklist's verdict words, one value per
    CoT token: −weight on the tokens of a verdict that contradicts its own two words ("colour asked
    yellow, seen green, match"), 0 on those of a verdict that agrees with them, NaN on every other token
    (those keep the advantage the credit mode gives them). `verdicts`: `grpo.checklist_verdicts` of
    decode(cot_ids).

    Why: measured on the synthetic benchmark (training/BENCHMARK.md, session 18), RL's loss of TA
    accuracy is boundary verdicts flipping: items whose greedy verdict was a consistent "mismatch" at
    P ≈ 0.8 turn into a contradicting "match"; 30-step runs already show it, with or without BT. Under
    a sequence-level advantage the verdict word shares the sample's luck, and since nine verdicts in
    ten are "match", reinforcing well-formed samples reinforces "match" wherever it is uncertain.
    Crediting the verdict by the parser's own rule alone removes both: the word is judged only on
    whether it agrees with its words (no label needed), a consistent verdict is not reinforced (so
    "match" gains nothing from being frequent), and a contradiction is pushed down. The "seen" word
    gets no credit from this, so copying the asked word into "seen" (consistent and false, session 13's
    shortcut) earns nothing from it either."""
    ids = list(cot_ids)
    values = torch.full((len(ids),), float("nan"), dtype=torch.float32)
    for start, end, consistent in verdicts:
        first, last = _token_at(decode, ids, start), _token_at(decode, ids, end - 1)
        values[first : last + 1] = 0.0 if consistent else -weight
    return values


def consistent_verdict_starts(decode: Callable[[Sequence[int]], str], cot_ids: Sequence[int],
                              verdicts: Sequence[tuple[int, int, bool]]) -> list[int]:
    """The CoT token index of the first token of each consistent checklist verdict (`verdicts`:
    `grpo.checklist_verdicts` of decode(cot_ids)): where `verdict_anchor` holds the distribution and
    `VerdictProbe` reads it."""
    ids = list(cot_ids)
    return [_token_at(decode, ids, start) for start, _, consistent in verdicts if consistent]


def verdict_anchor_loss(policy_rows: torch.Tensor, reference_rows: torch.Tensor) -> torch.Tensor:
    """Σ over rows of KL(π_ref ‖ π) = Σ_v p_ref(v) · (log p_ref(v) − log π(v)), from (N, V) log-prob
    rows; the caller divides by the step's number of anchored positions. Forward KL from the
    reference: the policy is held to keep the mass the reference gave each verdict word."""
    reference = reference_rows.detach()  # no rows: 0
    return (reference.exp() * (reference - policy_rows)).sum()


def draw_probabilities(pairs: Sequence[PreferencePair], draw_weights: dict) -> np.ndarray:
    """The probability of drawing each pair under `RLConfig.draw_weights`: a pair decided ("A" / "B") on
    listed dimensions weighs the largest of their weights, any other pair 1; normalised to sum to 1."""
    known = {d for p in pairs for d in p.labels}
    unknown = sorted(set(draw_weights) - known)
    if unknown:
        raise InvalidInputError(f"draw_weights names {unknown}, which no pair is labelled on; the pairs' dimensions are {sorted(known)}.")
    weight = np.array([max([float(w) for d, w in draw_weights.items() if p.labels.get(d) in ("A", "B")], default=1.0) for p in pairs])
    return weight / weight.sum()


# ----------------------------------------------------------------------------------------------------
# The trainer


class DualObjectiveRL:
    """Holds the policy, the frozen reference and the optimizer, and runs steps (see the module docstring).

    `model` is trained in place. The reference policy is a frozen copy of it taken before training.
    """

    def __init__(self, model: DeScoreModel, config: RLConfig, cache: FeatureCache | None = None):
        self.config = config
        self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.prompts = PromptBuilder(model.tokenizer, model.descore_config)
        self.cache = cache or FeatureCache(model.descore_config)
        vocab = model.tokenizer.get_vocab(with_added_tokens=True)
        self.stop_ids = [vocab[t] for t in STOP_TOKENS if t in vocab]
        if STOP_TOKEN not in vocab or PAD_TOKEN not in vocab:
            raise InvalidInputError(f"The tokenizer lacks {STOP_TOKEN} or {PAD_TOKEN}; it is not a Qwen-VL tokenizer.")
        self.pad_id = vocab[PAD_TOKEN]

        # What trains is set up as in the other stages (`trainer.prepare_model`): LoRA or all backbone
        # weights, the vision tower per `train_vision`, the LM head frozen, and of the input embeddings
        # only the `<Reward>` row (a gradient hook zeroes the others).
        prepare_model(model, TrainConfig(lora=config.lora, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                                         train_vision=config.train_vision, seed=config.seed))
        self.model = model.eval()
        self.embeddings = model.backbone.get_input_embeddings().weight
        self.policy_params = [p for p in model.backbone.parameters() if p.requires_grad]
        self.head_params = [model.reward_head.weight]
        if not self.policy_params:
            raise InvalidInputError("The backbone has no trainable weights; GRPO would not change the policy.")
        # As `trainer.build_optimizer`: no weight decay on the embedding matrix (it would move the
        # frozen rows), biases and norms.
        decay = [p for p in self.policy_params if p.ndim >= 2 and p is not self.embeddings]
        no_decay = [p for p in self.policy_params if p.ndim < 2 or p is self.embeddings]
        groups = [
            {"params": decay, "lr": config.lr, "weight_decay": config.weight_decay},
            {"params": no_decay, "lr": config.lr, "weight_decay": 0.0},
            {"params": self.head_params, "lr": config.head_lr, "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]])

    # -- gradients ------------------------------------------------------------------------------------
    def accumulate_gradients(self, grpo_loss: torch.Tensor | None, bt_loss: torch.Tensor | None) -> None:
        """Add one micro-batch's gradients to `.grad`, routed as the module docstring says.

        bt_loss is the unweighted BT term; `config.bt_weight` is applied here. None: that loss is not
        computed on this forward (BT off for sampled rows, or a BT-only forward of `bt_rows`).
        """
        weighted_bt = None if bt_loss is None else self.config.bt_weight * bt_loss
        params = self.policy_params + self.head_params
        if self.config.bt_scope == "backbone":
            total = sum(loss for loss in (grpo_loss, weighted_bt) if loss is not None)
            grads = list(torch.autograd.grad(total, params, allow_unused=True))
        elif weighted_bt is None:
            grads = list(torch.autograd.grad(grpo_loss, params, allow_unused=True))  # the head is not in GRPO's graph: None
        else:
            grads = ([None] * len(self.policy_params) if grpo_loss is None else
                     list(torch.autograd.grad(grpo_loss, self.policy_params, retain_graph=True, allow_unused=True)))
            row_trains = self.embeddings.requires_grad
            bt_grads = torch.autograd.grad(weighted_bt, self.head_params + ([self.embeddings] if row_trains else []), allow_unused=True)
            if row_trains and bt_grads[-1] is not None:
                index = next(i for i, p in enumerate(self.policy_params) if p is self.embeddings)
                reward_row = torch.zeros_like(self.embeddings)
                reward_row[self.model.reward_token_id] = bt_grads[-1][self.model.reward_token_id]
                grads[index] = reward_row if grads[index] is None else grads[index] + reward_row
            grads += list(bt_grads[: len(self.head_params)])
        for param, grad in zip(params, grads):
            if grad is not None:
                param.grad = grad.detach() if param.grad is None else param.grad + grad.detach()

    def _clip_and_step(self) -> dict:
        """Clip the policy's and the head's gradients separately (neither side's norm scales the
        other's), then step. Returns the norms before clipping."""
        norms = {}
        limit = self.config.max_grad_norm if self.config.max_grad_norm > 0 else math.inf
        for name, params in (("policy_grad_norm", self.policy_params), ("head_grad_norm", self.head_params)):
            with_grad = [p for p in params if p.grad is not None]
            norms[name] = float(torch.nn.utils.clip_grad_norm_(with_grad, limit)) if with_grad else 0.0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norms

    # -- one step -------------------------------------------------------------------------------------
    def rollout(self, pair: PreferencePair) -> tuple[list[Rollout], list[Rollout], list, list]:
        """n sampled CoTs per video of `pair`, the rule reward of each sample (CoT_A_i, CoT_B_i) and the
        parsed CoTs (`grpo.CoTReport`, A_i then B_i per sample)."""
        cfg = self.config
        sampled = []
        for video in (pair.video_a, pair.video_b):
            features = self.cache(video)
            prompt_ids = model_inputs(self.prompts, features, pair.prompt, "think").input_ids
            sampled.append(sample_cots(self.model, features, prompt_ids, cfg.num_samples, cfg, self.stop_ids, self.pad_id))
        rewards, parsed = [], []
        for ra, rb in zip(*sampled):
            reports = [
                read_cot(self.prompts.decode(r.cot_ids), num_tokens=len(r.cot_ids), finished=r.finished, dimensions=SUB_DIMENSIONS)
                for r in (ra, rb)
            ]
            rewards.append(rule_reward(*reports, pair.labels, weights=cfg.reward_weights, length_target=cfg.length_target))
            parsed += reports
        return sampled[0], sampled[1], rewards, parsed

    def bt_rollouts(self, pair: PreferencePair, kind: str) -> list[Rollout]:
        """The two rows (A, B) of `pair` that BT of `kind` (`RLConfig.bt_rows`, not "sampled") is computed
        on, as rollouts: "greedy" the current policy's greedy CoT of each video (think mode's, at the
        run's `max_new_tokens`), "fast" no CoT at all (the fast layout, prompt + `<Reward>`)."""
        rollouts = []
        for video in (pair.video_a, pair.video_b):
            features = self.cache(video)
            if kind == "greedy":
                prompt_ids = model_inputs(self.prompts, features, pair.prompt, "think").input_ids
                rollouts += sample_cots(self.model, features, prompt_ids, 1, self.config, self.stop_ids, self.pad_id, greedy=True)
            else:  # the fast layout ends with <Reward>, which Rollout.row appends
                ids = model_inputs(self.prompts, features, pair.prompt, "fast").input_ids
                rollouts.append(Rollout(features, ids[:-1], [], None))
        return rollouts

    def step(self, pairs: Sequence[PreferencePair], draw: Callable[[], PreferencePair] | None = None) -> dict:
        """One optimizer step (or `updates_per_batch` of them) on `pairs`: rollout → rule reward →
        GRPO + BT. Returns the step's metrics.

        With `config.dynamic_sampling` and a `draw` (which returns the next training pair), a group
        whose rewards are all equal (zero advantage: no policy gradient) is dropped and further pairs
        are drawn until `pairs_per_step` groups carry a signal or `max_draws_per_step` pairs have been
        rolled out (DAPO's dynamic sampling, Yu et al. 2025). The step's reward metrics cover every
        rolled-out group; with no informative group at all, nothing is updated.
        """
        cfg, model, n = self.config, self.model, self.config.num_samples
        started = time.perf_counter()
        groups = []  # (pair, rollouts_a, rollouts_b, advantages (2n,: CoT_A_0..n-1, CoT_B_0..n-1), preference (1, K))
        rule_rewards, cot_tokens, finished, reports, verdicts = [], [], [], [], []
        anchors: dict[int, list[int]] = {}  # id(rollout) → CoT token indices `verdict_anchor` holds
        filtering = cfg.dynamic_sampling and draw is not None
        todo, drawn = list(pairs), 0
        cap = cfg.max_draws_per_step or 3 * cfg.pairs_per_step
        while todo or (filtering and len(groups) < cfg.pairs_per_step and drawn < cap):
            pair = todo.pop(0) if todo else draw()
            drawn += 1
            rollouts_a, rollouts_b, rewards, parsed = self.rollout(pair)
            judged = reward_labels(pair.labels, cfg.reward_tied_dimensions)
            if cfg.credit == "marginal":
                own_a, own_b = marginal_rewards(parsed[0::2], parsed[1::2], judged, weights=cfg.reward_weights,
                                                length_target=cfg.length_target)
                advantages = torch.cat([group_advantages(own_a), group_advantages(own_b)])  # (2n,): A's, then B's
            elif cfg.credit == "section":
                by_section = {key: group_advantages(values) for key, values in section_rewards(
                    parsed[0::2], parsed[1::2], judged, weights=cfg.reward_weights, length_target=cfg.length_target).items()}
                advantages = [token_advantages(r, i, by_section, self.prompts.decode, cfg.unjudged_sections)  # 2n per-token vectors: A's, then B's
                              for r_list in (rollouts_a, rollouts_b) for i, r in enumerate(r_list)]
            else:
                totals = ([r.total for r in rewards] if judged == pair.labels else
                          [rule_reward(a, b, judged, weights=cfg.reward_weights, length_target=cfg.length_target).total
                           for a, b in zip(parsed[0::2], parsed[1::2])])
                shared = group_advantages(totals)
                advantages = torch.cat([shared, shared])
            found = [checklist_verdicts(self.prompts.decode(r.cot_ids)) for r in rollouts_a + rollouts_b]  # A's, then B's
            verdicts += [ok for items in found for _, _, ok in items]
            if cfg.verdict_anchor > 0:
                for r, items in zip(rollouts_a + rollouts_b, found):
                    anchors[id(r)] = consistent_verdict_starts(self.prompts.decode, r.cot_ids, items)
            if cfg.verdict_consistency > 0:
                advantages = [(adv if adv.ndim else adv.expand(len(r.cot_ids) + r.finished)).clone() for adv, r in zip(
                    advantages, rollouts_a + rollouts_b)]  # per-token vectors, A's then B's
                for adv, r, items in zip(advantages, rollouts_a + rollouts_b, found):
                    credit = verdict_credit(self.prompts.decode, r.cot_ids, items, cfg.verdict_consistency)
                    adv[: len(r.cot_ids)] = torch.where(credit.isnan(), adv[: len(r.cot_ids)], credit)
            rule_rewards.append(rewards)
            reports += parsed
            cot_tokens += [len(r.cot_ids) for r in rollouts_a + rollouts_b]
            finished += [r.finished for r in rollouts_a + rollouts_b]
            if filtering and not any(bool(a.any()) for a in advantages):
                continue
            preference = torch.from_numpy(preference_codes([pair], model.dimension_names))
            groups.append((pair, rollouts_a, rollouts_b, advantages, preference))
        common = {
            **reward_diagnostics(rule_rewards, reports),
            # Of the sampled CoTs' alignment checklist verdicts, the share that contradicts its own two words.
            "verdicts_contradicted": float(1 - np.mean(verdicts)) if verdicts else float("nan"),
            "pairs_rolled_out": drawn,
            "groups_trained": len(groups),
            "cot_tokens": float(np.mean(cot_tokens)),
            "finished": float(np.mean(finished)),
        }
        if not groups:
            nan = float("nan")
            return {**common, **dict.fromkeys(("grpo_loss", "bt_loss", "policy_grad_norm", "head_grad_norm", "kl", "clip_fraction",
                                              "ratio", "entropy", "anchor_kl"), nan), "seconds": time.perf_counter() - started}

        # Micro-batches of samples; sample i contributes rows A_i and B_i, which share its advantage.
        micro = []
        for _, ra, rb, adv, pref in groups:
            for i in range(0, n, cfg.micro_batch):
                idx = list(range(i, min(i + cfg.micro_batch, n)))
                rows_adv = [adv[j] for j in idx] + [adv[n + j] for j in idx]
                micro.append(([ra[j] for j in idx] + [rb[j] for j in idx],
                              torch.stack(rows_adv) if isinstance(adv, torch.Tensor) else rows_adv, pref.expand(len(idx), -1)))
        # Normalisers over the whole step, so micro-batching does not change the losses: GRPO is a mean
        # over sequences with at least one scored token, BT a mean over decided (sample, dimension) entries.
        grpo_count = sum(len(r.cot_ids) + r.finished > 0 for rows, _, _ in micro for r in rows)
        bt_count = sum(preference_item_count(pref, cfg.bt_ties) for _, _, pref in micro)
        # BT-only rows (`bt_rows` other than "sampled"), one (kind, [row A, row B], preference) per group
        # and kind, written by the policy that sampled; each kind normalised over its own entries.
        bt_only = [(kind, self.bt_rollouts(pair, kind), pref) for pair, _, _, _, pref in groups for kind in cfg.bt_rows if kind != "sampled"]
        bt_only_count = {kind: sum(preference_item_count(pref, cfg.bt_ties) for k, _, pref in bt_only if k == kind) for kind in cfg.bt_rows}

        anchored = (lambda rows: [anchors.get(id(r), []) for r in rows]) if cfg.verdict_anchor > 0 else (lambda rows: None)
        anchor_count = sum(len(k) for rows, _, _ in micro for k in (anchored(rows) or []))
        with torch.no_grad():
            reference_scored = [score_rollouts(self.reference, rows, self.pad_id, cfg.temperature, cfg.min_p, at=anchored(rows))
                                for rows, _, _ in micro]
            reference = [r.logp for r in reference_scored]
            behaviour = ([score_rollouts(model, rows, self.pad_id, cfg.temperature, cfg.min_p).logp for rows, _, _ in micro]
                         if cfg.updates_per_batch > 1 else None)

        updates = []
        token_count = sum(float(len(r.cot_ids) + r.finished) for rows, _, _ in micro for r in rows)
        entropy_sum = 0.0
        for update in range(cfg.updates_per_batch):
            totals = {"grpo_loss": 0.0, "bt_loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "ratio": 0.0, "anchor_kl": 0.0}
            for index, (rows, advantages, pref) in enumerate(micro):
                scored = score_rollouts(model, rows, self.pad_id, cfg.temperature, cfg.min_p, at=anchored(rows))
                if update == 0:  # the entropy of the policy that sampled
                    entropy_sum += float(scored.entropy.sum())
                logp_old = scored.logp.detach() if behaviour is None else behaviour[index]
                if isinstance(advantages, list):  # per-token vectors, in the order of the scored positions
                    per_token = torch.zeros_like(scored.mask)
                    per_token[scored.mask.bool()] = torch.cat(advantages).to(per_token.dtype)
                    advantages = per_token
                policy = grpo_policy_loss(
                    scored.logp, logp_old, reference[index], advantages, scored.mask, clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef
                )
                m = len(rows) // 2
                with_tokens = int((scored.mask.sum(dim=1) > 0).sum())
                grpo_part = policy.loss * (with_tokens / max(grpo_count, 1))
                if scored.at is not None and anchor_count:
                    anchor = verdict_anchor_loss(scored.at, reference_scored[index].at) / anchor_count
                    grpo_part = grpo_part + cfg.verdict_anchor * anchor
                    totals["anchor_kl"] += anchor.item()
                bt_part = None
                if "sampled" in cfg.bt_rows:
                    bt = preference_loss(scored.rewards[:m], scored.rewards[m:], pref.to(scored.rewards.device), ties=cfg.bt_ties)
                    bt_part = bt.total / max(bt_count, 1)
                    totals["bt_loss"] += bt_part.item()
                self.accumulate_gradients(grpo_part, bt_part)
                share = len(rows) / (2 * n * len(groups))
                totals["grpo_loss"] += grpo_part.item()
                totals["kl"] += policy.kl * share
                totals["clip_fraction"] += policy.clip_fraction * share
                totals["ratio"] += policy.mean_ratio * share
            for kind, rows, pref in bt_only:
                rewards = reward_rows(model, rows, self.pad_id)
                bt_part = preference_loss(rewards[:1], rewards[1:], pref.to(rewards.device), ties=cfg.bt_ties).total / max(
                    bt_only_count[kind], 1)
                self.accumulate_gradients(None, bt_part)
                totals["bt_loss"] += bt_part.item()
            updates.append({**totals, **self._clip_and_step()})
        return {
            **common,
            # Losses and norms of the last update; KL of the first (the policy that sampled against the
            # reference); clip fraction and ratio averaged over the updates (the first has ρ = 1 exactly).
            **{k: updates[-1][k] for k in ("grpo_loss", "bt_loss", "policy_grad_norm", "head_grad_norm")},
            "kl": updates[0]["kl"],
            # KL(π_ref ‖ π) per anchored verdict position, of the policy that sampled (0 with verdict_anchor off)
            "anchor_kl": updates[0]["anchor_kl"],
            "clip_fraction": float(np.mean([u["clip_fraction"] for u in updates])),
            "ratio": float(np.mean([u["ratio"] for u in updates])),
            "entropy": entropy_sum / max(token_count, 1.0),
            "seconds": time.perf_counter() - started,
        }


# ----------------------------------------------------------------------------------------------------
# Evaluation during the run


@dataclass
class VerdictProbe:
    """Do the policy's uncertain checklist verdicts hold? Built from the first evaluation's greedy
    CoTs (the starting policy's): every alignment checklist verdict that agrees with its own two words
    (`grpo.checklist_verdicts`) and whose first token the starting policy gave a probability below
    `threshold`. Each later evaluation reads, teacher-forced on the same CoTs, the probability the
    current policy gives those tokens; `evaluate_policy` reports the mean per verdict word
    (`verdict_probe_match`, `verdict_probe_mismatch`).

    Why per word: on the synthetic benchmark (training/BENCHMARK.md, sessions 18 and 19) RL lowered TA
    accuracy by flipping uncertain "mismatch" verdicts ("shape asked circle, seen triangle, mismatch"
    at P ≈ 0.8 becoming "match") while its uncertain "match" verdicts grew surer. Over 23 runs the
    "mismatch" mean tracked the run's TA change at r = 0.92 (the mean over both words at r = 0.44),
    while the sampled CoTs' own contradiction rate (temperature 2) fell in every run. Greedy decoding
    hides a verdict's drift until it flips; the probe sees it before. Uncertain "mismatch" verdicts
    are rare (15 in the greedy CoTs of 300 pairs there): evaluate on a few hundred pairs for it."""

    threshold: float = 0.95
    rollouts: list[Rollout] | None = None  # None until built
    positions: list[list[int]] = field(default_factory=list)  # per rollout: CoT token index of each probed verdict's first token
    words: list[str] = field(default_factory=list)  # each probed verdict's word ("match" / "mismatch"), in order
    start: list[float] = field(default_factory=list)  # the starting policy's probabilities, in order

    @property
    def built(self) -> bool:
        return self.rollouts is not None

    def build(self, decode: Callable[[Sequence[int]], str], cots: Sequence[tuple[Rollout, np.ndarray]]) -> None:
        """cots: (greedy rollout, probability of each of its CoT tokens under the policy) pairs."""
        self.rollouts, self.positions, self.words, self.start = [], [], [], []
        for rollout, probs in cots:
            text = decode(rollout.cot_ids)
            verdicts = checklist_verdicts(text)
            found = zip(consistent_verdict_starts(decode, rollout.cot_ids, verdicts), [text[a:b] for a, b, ok in verdicts if ok])
            keep = [(k, word) for k, word in found if probs[k] < self.threshold]
            if keep:
                self.rollouts.append(rollout)
                self.positions.append([k for k, _ in keep])
                self.words += [word for _, word in keep]
                self.start += [float(probs[k]) for k, _ in keep]

    @torch.no_grad()
    def read(self, model: DeScoreModel, pad_id: int) -> list[float]:
        """The current policy's probability of each probed token (teacher-forced), in `start`'s order."""
        out = []
        for rollout, keep in zip(self.rollouts or [], self.positions):
            probs = token_probabilities(score_rollouts(model, [rollout], pad_id))[0]
            out += [float(probs[k]) for k in keep]
        return out

    def report(self, probabilities: Sequence[float]) -> dict:
        """{verdict_probe_W: mean probability, verdict_probe_W_items: count} for W in match, mismatch
        (NaN mean when no item has that word)."""
        out = {}
        for word in VERDICT_WORDS:
            mine = [p for p, w in zip(probabilities, self.words) if w == word]
            out[f"verdict_probe_{word}"] = float(np.mean(mine)) if mine else float("nan")
            out[f"verdict_probe_{word}_items"] = len(mine)
        return out


def token_probabilities(scored: ScoredBatch) -> list[np.ndarray]:
    """Per rollout, the probability (temperature 1) of each scored token in order: its CoT tokens,
    then the stop token if it ended on one."""
    return [row[mask.bool()].exp().cpu().numpy() for row, mask in zip(scored.logp.detach().float(), scored.mask)]


@torch.no_grad()
def evaluate_policy(trainer: DualObjectiveRL, pairs: Sequence[PreferencePair], probe: VerdictProbe | None = None) -> dict:
    """What the run is meant to improve, measured on `pairs` (normally a held-back slice):

    think_accuracy  the head's accuracy without ties (`metrics.evaluate`, macro mean over VQ/MQ/TA)
                    on prompt + the model's own greedy CoT + `<Reward>` (the Scorer's think mode);
    fast_accuracy   the same on prompt + `<Reward>` (fast mode);
    cot_accuracy    the rule reward's accuracy term of the pair's two greedy CoTs (does the text
                    itself judge the pair right?), averaged over pairs;
    parsed          fraction of greedy CoTs whose every section the verdict parser reads;
    verdicts_contradicted  of the greedy CoTs' alignment checklist verdicts, the share that contradicts
                    its own two words (NaN: no verdict);
    verdict_probe_match, verdict_probe_mismatch  with `probe`: the mean probability the policy gives
                    the starting policy's uncertain, consistent checklist verdicts of that word
                    (`VerdictProbe`; built from these greedy CoTs when `probe` is not built yet), and
                    verdict_probe_match_items / _mismatch_items how many (NaN mean when none).

    Greedy CoTs are written with the run's `max_new_tokens`.
    """
    from . import metrics as metrics_module
    from .grpo import accuracy as cot_pair_accuracy
    from .trainer import pair_predictions

    model, cfg = trainer.model, trainer.config
    greedy: dict[tuple[str, str], tuple] = {}  # (video, prompt) → (report, rewards (K,))
    cots: list[tuple[Rollout, np.ndarray]] = []  # (greedy rollout, its tokens' probabilities)
    verdicts: list[bool] = []
    for pair in pairs:
        for video in (pair.video_a, pair.video_b):
            key = (str(video), pair.prompt)
            if key in greedy:
                continue
            features = trainer.cache(video)
            prompt_ids = model_inputs(trainer.prompts, features, pair.prompt, "think").input_ids
            rollout = sample_cots(model, features, prompt_ids, 1, cfg, trainer.stop_ids, trainer.pad_id, greedy=True)[0]
            text = trainer.prompts.decode(rollout.cot_ids)
            report = read_cot(text, num_tokens=len(rollout.cot_ids), finished=rollout.finished, dimensions=SUB_DIMENSIONS)
            scored = score_rollouts(model, [rollout], trainer.pad_id)
            greedy[key] = (report, scored.rewards[0].float().cpu().numpy())
            cots.append((rollout, token_probabilities(scored)[0]))
            verdicts += [ok for _, _, ok in checklist_verdicts(text)]
    probed = {}
    if probe is not None:
        if probe.built:
            probed = probe.report(probe.read(model, trainer.pad_id))
        else:  # the starting policy: its probabilities are the ones just computed
            probe.build(trainer.prompts.decode, cots)
            probed = probe.report(probe.start)
    dims = [d for d in model.dimension_names if d in SUB_DIMENSIONS and any(d in p.labels for p in pairs)]
    index = {d: model.dimension_names.index(d) for d in dims}
    pred_a = {d: [float(greedy[(str(p.video_a), p.prompt)][1][index[d]]) for p in pairs if d in p.labels] for d in dims}
    pred_b = {d: [float(greedy[(str(p.video_b), p.prompt)][1][index[d]]) for p in pairs if d in p.labels] for d in dims}
    labels = {d: [p.labels[d] for p in pairs if d in p.labels] for d in dims}
    think_report = metrics_module.evaluate(pred_a, pred_b, labels) if dims else None
    think = think_report["mean"]["accuracy_without_ties"] if dims else float("nan")
    decided = sum(r["n_pairs"] - r["n_human_ties"] for r in think_report["dims"].values()) if dims else 0
    fa, fb, fl = pair_predictions(model, pairs, trainer.prompts, trainer.cache)
    fast_dims = [d for d in fl if d in SUB_DIMENSIONS]
    fast_report = (metrics_module.evaluate({d: fa[d] for d in fast_dims}, {d: fb[d] for d in fast_dims}, {d: fl[d] for d in fast_dims})
                   if fast_dims else None)
    fast = fast_report["mean"]["accuracy_without_ties"] if fast_report else float("nan")

    def per_dimension(report):
        return {d: r["accuracy_without_ties"] for d, r in report["dims"].items()} if report else {}

    cot = [cot_pair_accuracy(greedy[(str(p.video_a), p.prompt)][0], greedy[(str(p.video_b), p.prompt)][0], p.labels) for p in pairs]
    reports = [r for r, _ in greedy.values()]
    return {
        "think_accuracy": float(think),
        "fast_accuracy": float(fast),
        "cot_accuracy": float(np.mean(cot)),
        "parsed": float(np.mean([all(v is not None for v in r.severities.values()) for r in reports])),
        "verdicts_contradicted": float(1 - np.mean(verdicts)) if verdicts else float("nan"),
        **probed,
        "think_dims": per_dimension(think_report),  # accuracy without ties per dimension (NaN: no decided pair)
        "fast_dims": per_dimension(fast_report),
        "n_pairs": len(pairs),
        "n_decided": int(decided),  # (pair, dimension) entries without a human tie, over VQ/MQ/TA
        "n_cot_items": int(sum(len([d for d in SUB_DIMENSIONS if d in p.labels]) or 1 for p in pairs)),  # what cot_accuracy averages
    }


# ----------------------------------------------------------------------------------------------------
# Entry points


def run_rl(
    model: str | os.PathLike | DeScoreModel,
    data: str | os.PathLike | Sequence[PreferencePair],
    out_dir: str | os.PathLike,
    config: RLConfig | None = None,
    eval_data: str | os.PathLike | Sequence[PreferencePair] | None = None,
) -> RLResult:
    """Run the RL stage and save the checkpoint to `out_dir`.

    model: a checkpoint folder (normally the cold-start one) or a loaded `DeScoreModel` (trained in place).
    data:  a pairs file (`read_pairs` formats) or the pairs themselves.
    eval_data: pairs to evaluate on (`evaluate_policy`; the first `config.eval_max_pairs`) before the
        first step, every `config.eval_every` steps and after the last; pairs the run does not train on.
    The log (`rl_log.jsonl`) has one line per step and one `{"step": s, "eval": {...}}` line per
    evaluation; `rl_summary.json` holds `metrics.rl_run_summary` of the run.
    """
    from .evaluation import without_nan
    from .metrics import rl_run_summary

    config = config or RLConfig()
    if not isinstance(model, DeScoreModel):
        model = DeScoreModel.from_pretrained(model)
    cot_position = model.descore_config.layout.cot_position
    if cot_position != "assistant":
        # The rollouts are scored as prompt + CoT + <Reward> in the assistant turn (Rollout.row); a model that
        # reads its reward elsewhere would be trained on rewards think mode never reads.
        raise InvalidInputError(
            f"RL needs a model that writes its CoT and reads its reward in the assistant turn (layout cot_position "
            f"'assistant'); this one's is {cot_position!r} "
            + ("(the authors' layout, which re-scores the CoT inside the user turn; RL of that layout is not supported). "
               "The authors' released checkpoints have had their RL stage; score them with the Scorer, or run RL from a "
               "cold start trained from a backbone in the SDK's layout (`descore train cold-start`)."
               if cot_position == "user" else "(it scores without a CoT, so there is no CoT to refine).")
        )
    pairs = list(data) if not isinstance(data, (str, os.PathLike)) else read_pairs(data)
    if not pairs:
        raise InvalidInputError("No preference pairs to train on; check the data file.")
    eval_pairs = None
    if eval_data is not None:
        eval_pairs = (list(eval_data) if not isinstance(eval_data, (str, os.PathLike)) else read_pairs(eval_data))[: config.eval_max_pairs]
        if not eval_pairs:
            raise InvalidInputError("The evaluation data has no pairs; check the --eval-data file.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    order = np.random.default_rng(config.seed)

    trainer = DualObjectiveRL(model, config)
    per_step = config.pairs_per_step
    steps = config.steps if config.steps is not None else math.ceil(len(pairs) / per_step)
    queue: list[int] = []
    history, evals = [], []

    weights = draw_probabilities(pairs, config.draw_weights) if config.draw_weights else None

    def refill() -> list[int]:  # one more pass of the shuffled stream, or as many weighted draws
        return order.permutation(len(pairs)).tolist() if weights is None else order.choice(len(pairs), size=len(pairs), p=weights).tolist()

    def draw() -> PreferencePair:  # the next pair of the stream (dynamic sampling's extra draws)
        nonlocal queue
        if not queue:
            queue = refill()
        return pairs[queue.pop(0)]

    with open(out / LOG_FILE, "w", encoding="utf-8") as log:

        probe = VerdictProbe()  # built from the first evaluation's greedy CoTs

        def evaluate(step: int) -> None:
            record = {"step": step, **evaluate_policy(trainer, eval_pairs, probe)}
            evals.append(record)
            log.write(json.dumps(without_nan({"step": step, "eval": record})) + "\n")
            log.flush()
            logger.info("rl eval at step %d: think %.3f, fast %.3f, CoT verdicts %.3f, parsed %.2f, verdicts contradicted %.3f, "
                        "verdict probe: mismatch %.3f (%d items), match %.3f (%d)", step, record["think_accuracy"],
                        record["fast_accuracy"], record["cot_accuracy"], record["parsed"], record["verdicts_contradicted"],
                        record["verdict_probe_mismatch"], record["verdict_probe_mismatch_items"],
                        record["verdict_probe_match"], record["verdict_probe_match_items"])

        if eval_pairs:
            evaluate(0)
        for step in range(steps):
            while len(queue) < per_step:
                queue += refill()  # reshuffled every pass
            batch, queue = [pairs[i] for i in queue[:per_step]], queue[per_step:]
            metrics = {"step": step + 1, **trainer.step(batch, draw)}
            history.append(metrics)
            log.write(json.dumps(without_nan(metrics)) + "\n")
            log.flush()
            logger.info(
                "rl step %d/%d: rule reward %.3f (acc %.3f, format %.3f, length %.3f; group std %.3f, flat groups %.2f), "
                "kl %.2e, entropy %.3f, parsed %.2f, clip %.3f, bt %.4f, %.1fs",
                step + 1, steps, metrics["rule_reward"], metrics["rule_accuracy"], metrics["rule_format"],
                metrics["rule_length"], metrics["reward_std"], metrics["zero_variance_groups"], metrics["kl"],
                metrics["entropy"], metrics["parsed"], metrics["clip_fraction"], metrics["bt_loss"], metrics["seconds"],
            )
            done = step + 1
            if eval_pairs and ((config.eval_every and done % config.eval_every == 0) or done == steps):
                evaluate(done)
    export_model(model, out)
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    summary = rl_run_summary(history, evals)
    (out / SUMMARY_FILE).write_text(json.dumps(without_nan(summary), indent=2) + "\n", encoding="utf-8")
    return RLResult(out_dir=out, history=history, evals=evals, summary=summary)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    d = RLConfig()
    p.add_argument("--model", required=True, help="DeScore checkpoint to start from (normally the cold-start one)")
    p.add_argument("--data", required=True, help="preference pairs: VideoAlign CSV, GenAI-Bench JSON or DeScore JSONL")
    p.add_argument("--out", required=True, help="folder for the RL checkpoint and rl_log.jsonl")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one pass over the pairs)")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="CoTs sampled per video (GRPO group size)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--min-p", type=float, default=d.min_p,
                   help="min-p sampling for the rollouts (after the temperature; 0 = off): explore without breaking the template")
    p.add_argument("--pairs-per-step", type=int, default=d.pairs_per_step)
    p.add_argument("--micro-batch", type=int, default=d.micro_batch, help="samples per forward")
    p.add_argument("--updates-per-batch", type=int, default=d.updates_per_batch)
    p.add_argument("--dynamic-sampling", action=argparse.BooleanOptionalAction, default=d.dynamic_sampling,
                   help="drop groups whose samples all got the same reward and draw more pairs (DAPO)")
    p.add_argument("--max-draws-per-step", type=int, default=d.max_draws_per_step, help="dynamic sampling's cap (0: 3 × pairs per step)")
    p.add_argument("--draw-weight", action="append", default=None, metavar="DIM=WEIGHT", dest="draw_weights",
                   help="draw pairs decided on DIM WEIGHT times as often as the rest (repeatable; with replacement)")
    p.add_argument("--lr", type=float, default=d.lr, help="policy learning rate")
    p.add_argument("--head-lr", type=float, default=d.head_lr, help="reward head learning rate")
    p.add_argument("--kl-coef", type=float, default=d.kl_coef)
    p.add_argument("--clip-eps", type=float, default=d.clip_eps)
    p.add_argument("--bt-weight", type=float, default=d.bt_weight)
    p.add_argument("--bt-scope", default=d.bt_scope, choices=BT_SCOPES,
                   help="backbone: BT trains the whole model with GRPO (the authors'); head: BT trains only the head and <Reward>")
    p.add_argument("--bt-ties", default=d.bt_ties, choices=TIE_MODES)
    p.add_argument("--bt-rows", nargs="+", default=list(d.bt_rows), choices=BT_ROWS,
                   help="rows BT is computed on (each a mean over its own entries, summed): sampled CoTs (the authors'), "
                        "the pair's greedy CoTs (what think mode scores), fast-layout rows")
    p.add_argument("--reward-tied-dimensions", action=argparse.BooleanOptionalAction, default=d.reward_tied_dimensions,
                   help="the training reward's accuracy term also judges the pair's tied dimensions (the paper's rule)")
    p.add_argument("--credit", default=d.credit, choices=CREDITS,
                   help="pair: the two CoTs of a sample share its advantage (the paper's); marginal: each CoT its own; "
                        "section: each CoT section the advantage of its own dimension's reward")
    p.add_argument("--unjudged-sections", default=d.unjudged_sections, choices=UNJUDGED_SECTIONS,
                   help="with --credit section and --no-reward-tied-dimensions: a section whose (tied) dimension the pair is not "
                        "judged on gets the sample's full advantage (shared) or none (zero)")
    p.add_argument("--verdict-consistency", type=float, default=d.verdict_consistency, metavar="W",
                   help="credit each alignment checklist verdict word by its consistency alone: -W when it contradicts its own "
                        "asked and seen words, 0 when it agrees, instead of the sample's advantage (0 = off)")
    p.add_argument("--verdict-anchor", type=float, default=d.verdict_anchor, metavar="A",
                   help="add A x KL(reference || policy) over the next-token distribution at each sampled checklist verdict that "
                        "agrees with its own words (0 = off)")
    p.add_argument("--length-min-tokens", type=int, default=d.length_min_tokens)
    p.add_argument("--length-max-tokens", type=int, default=d.length_max_tokens)
    p.add_argument("--train-vision", action="store_true")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the saved checkpoint)")
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eval-data", default=None, help="pairs to evaluate on before, during and after the run (not trained on)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between evaluations (0: before and after only)")
    p.add_argument("--eval-max-pairs", type=int, default=d.eval_max_pairs, help="use the first N pairs of --eval-data")


def parse_draw_weights(items: Sequence[str] | None) -> dict | None:
    """["TA=3", "MQ=2"] → {"TA": 3.0, "MQ": 2.0} (the CLI's --draw-weight); None when not given."""
    if not items:
        return None
    weights = {}
    for item in items:
        dim, sep, value = item.partition("=")
        try:
            weights[dim.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not dim.strip():
            raise InvalidInputError(f"--draw-weight takes DIM=WEIGHT (e.g. TA=3), got {item!r}.")
    return weights


def config_from_args(args: argparse.Namespace) -> RLConfig:
    return RLConfig(
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        min_p=args.min_p,
        steps=args.steps,
        pairs_per_step=args.pairs_per_step,
        micro_batch=args.micro_batch,
        updates_per_batch=args.updates_per_batch,
        dynamic_sampling=args.dynamic_sampling,
        max_draws_per_step=args.max_draws_per_step,
        draw_weights=parse_draw_weights(args.draw_weights),
        lr=args.lr,
        head_lr=args.head_lr,
        kl_coef=args.kl_coef,
        clip_eps=args.clip_eps,
        bt_weight=args.bt_weight,
        bt_scope=args.bt_scope,
        bt_ties=args.bt_ties,
        bt_rows=tuple(args.bt_rows),
        credit=args.credit,
        unjudged_sections=args.unjudged_sections,
        reward_tied_dimensions=args.reward_tied_dimensions,
        verdict_consistency=args.verdict_consistency,
        verdict_anchor=args.verdict_anchor,
        length_min_tokens=args.length_min_tokens,
        length_max_tokens=args.length_max_tokens,
        train_vision=args.train_vision,
        lora=args.lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        seed=args.seed,
        eval_every=args.eval_every,
        eval_max_pairs=args.eval_max_pairs,
    )


def cmd_rl(args: argparse.Namespace) -> int:
    from .metrics import format_rl_summary

    result = run_rl(args.model, args.data, args.out, config_from_args(args), eval_data=args.eval_data)
    print(format_rl_summary(result.summary))
    print(f"RL done: {len(result.history)} steps; checkpoint in {result.out_dir} "
          f"(curves: descore train plot {result.out_dir})")
    return 0


def add_rl_subcommand(subparsers) -> argparse.ArgumentParser:
    """Mount `rl` on an argparse subparsers object (for `descore train rl`); sets `func=cmd_rl`."""
    p = subparsers.add_parser("rl", help="dual-objective RL: GRPO on sampled CoTs + Bradley–Terry on the head")
    _add_arguments(p)
    p.set_defaults(func=cmd_rl)
    return p


def main(argv: list[str] | None = None, prog: str = "python -m descore_sdk.training.rl") -> int:
    from .arguments import stage_main

    return stage_main(argv, prog=prog, description=__doc__.split("\n")[0], add_arguments=_add_arguments, run=cmd_rl)


if __name__ == "__main__":
    sys.exit(main())
