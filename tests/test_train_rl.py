"""The RL stage: rollouts and their scoring against transformers' own forward, the routing of the GRPO
and BT gradients, a GRPO run that learns what its reward asks for, and a short RL run from a
cold-started model that writes a loadable checkpoint without losing accuracy.

References: per-sequence forwards of the HF backbone (no padding, no batching: `backbone.model` +
`lm_head` + the head's weight), greedy decoding checked against the argmax of that forward, and
gradients of each loss taken alone with `.backward()` on fresh forwards.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from descore_sdk.errors import InvalidInputError  # noqa: E402
from descore_sdk.inputs import model_inputs, video_features  # noqa: E402
from descore_sdk.prompt import PromptBuilder  # noqa: E402
from descore_sdk.training.data import read_pairs  # noqa: E402
from descore_sdk.training.losses import preference_loss  # noqa: E402
from descore_sdk.training.rl import (  # noqa: E402
    DualObjectiveRL,
    RLConfig,
    Rollout,
    add_rl_subcommand,
    main,
    run_rl,
    sample_cots,
    score_rollouts,
)
from descore_sdk.training.tiny import build_tiny_model  # noqa: E402

DIMS = ("VQ", "MQ", "TA")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from descore_sdk.training.synth import generate_benchmark

    return generate_benchmark(tmp_path_factory.mktemp("bench"), n_train=8, n_test=4, n_heldout=0, seed=1, size=(32, 32), num_frames=5)


@pytest.fixture(scope="module")
def pairs(bench):
    return read_pairs(bench["train"])


def _rollouts(model, pair, texts_and_stops):
    """Hand-made rollouts of `pair.video_a`: (CoT text, stopped?) each."""
    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    features = video_features(pair.video_a, model.descore_config)
    prompt_ids = model_inputs(prompts, features, pair.prompt, "think").input_ids
    stop = model.tokenizer.token_to_id("<|im_end|>")
    return [Rollout(features, prompt_ids, prompts.encode(text).tolist(), stop if stopped else None) for text, stopped in texts_and_stops]


def _hf_hidden(model, rollout):
    """transformers' own unpadded forward over prompt + CoT + <Reward>: final hidden states (L, H)."""
    ids = np.concatenate([rollout.prompt_ids, rollout.cot_ids, [model.reward_token_id]]).astype(np.int64)
    input_ids = torch.from_numpy(ids)[None]
    kwargs = dict(
        pixel_values_videos=torch.from_numpy(rollout.features.patches),
        video_grid_thw=torch.from_numpy(rollout.features.grid_thw)[None],
        mm_token_type_ids=(input_ids == model.backbone.config.video_token_id).int() * 2,
    )
    if model.family == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = torch.tensor([rollout.features.second_per_grid])
    hidden = model.backbone.model(input_ids=input_ids, **kwargs).last_hidden_state[0]
    return hidden


def _sampling_log_probs(logits, targets, temperature, min_p):
    """log-softmax of logits / temperature over the tokens transformers' own `MinPLogitsWarper` keeps
    (plus the scored token), rows (T, V) against `targets` (T,)."""
    from transformers.generation.logits_process import MinPLogitsWarper

    scores = logits.float() / temperature
    if min_p > 0:
        warped = MinPLogitsWarper(min_p)(None, scores.clone())
        removed = torch.isinf(warped)
        removed[torch.arange(len(targets)), targets] = False
        scores = scores.masked_fill(removed, float("-inf"))
    return torch.log_softmax(scores, dim=-1)


def _reference_forward(model, rollout, temperature=1.0, min_p=0.0):
    """(log-probs of the CoT tokens and stop token under the sampling distribution, rewards) from one
    unpadded HF forward."""
    hidden = _hf_hidden(model, rollout)
    targets = rollout.cot_ids + ([rollout.stop_id] if rollout.finished else [])
    rows = _reference_distributions(model, rollout, temperature, min_p)
    token_logp = rows[torch.arange(len(targets)), torch.tensor(targets, dtype=torch.long)] if targets else torch.zeros(0)
    return token_logp, model.reward_head.weight @ hidden[-1]


def _reference_distributions(model, rollout, temperature=1.0, min_p=0.0):
    """(T, V) rows of the sampling distribution's log-probs (see `_sampling_log_probs`) of one unpadded
    HF forward at the positions that predict the CoT tokens and the stop token."""
    hidden = _hf_hidden(model, rollout)
    start = len(rollout.prompt_ids) - 1
    targets = rollout.cot_ids + ([rollout.stop_id] if rollout.finished else [])
    rows = model.backbone.lm_head(hidden)[start : start + len(targets)]
    return _sampling_log_probs(rows, torch.tensor(targets, dtype=torch.long), temperature, min_p)


# -- per-step diagnostics ------------------------------------------------------------------------------
def test_reward_diagnostics_hand_values():
    from descore_sdk.training.grpo import RuleReward, read_cot
    from descore_sdk.training.rl import reward_diagnostics

    same = RuleReward(total=0.8, accuracy=1.0, format=1.0, length=0.5)
    groups = [
        [same, same, same],  # all equal: zero advantage, no signal
        [RuleReward(1.0, 1.0, 1.0, 1.0), RuleReward(0.3, 0.0, 1.0, 1.0)],  # std 0.35, accuracy std 0.5
    ]
    readable = read_cot("Visual quality: very blurry. Motion: smooth and steady. Alignment: the video matches the prompt.", num_tokens=20)
    unreadable = read_cot("Visual quality: very blurry. Motion: fine.", num_tokens=9)
    contradicted = read_cot("Visual quality: very blurry. Motion: smooth and steady. Alignment: colour asked red, seen blue, "
                            "match; so the video matches the prompt.", num_tokens=20)
    d = reward_diagnostics(groups, [readable, unreadable, contradicted, readable])
    assert d["zero_variance_groups"] == 0.5
    assert d["reward_std"] == pytest.approx((0.0 + 0.35) / 2)
    assert d["accuracy_std"] == pytest.approx((0.0 + 0.5) / 2)
    assert d["rule_reward"] == pytest.approx((3 * 0.8 + 1.0 + 0.3) / 5)
    assert d["rule_accuracy"] == pytest.approx(4 / 5) and d["rule_length"] == pytest.approx((1.5 + 2) / 5)
    assert d["parsed"] == 0.5 and d["contradicted"] == 0.25
    # Equal within float rounding is still a flat group: the advantages GRPO uses are all zero.
    assert reward_diagnostics([[RuleReward(0.1 + 0.2, 0, 0, 0), RuleReward(0.3, 0, 0, 0)]])["zero_variance_groups"] == 1.0


# -- scoring and sampling ----------------------------------------------------------------------------
@pytest.mark.parametrize("family, temperature, min_p", [("qwen3_vl", 1.0, 0.0), ("qwen2_5_vl", 1.0, 0.0), ("qwen3_vl", 2.5, 0.0),
                                                   ("qwen3_vl", 2.5, 0.5)])
def test_score_rollouts_matches_unpadded_transformers_forward(family, temperature, min_p, pairs):
    """Log-probs and entropy of the sampling distribution: softmax(logits / temperature), as the authors'
    actor scores them (verl divides the logits by the rollout temperature), over the tokens that
    transformers' min-p warper keeps."""
    model = build_tiny_model(family, seed=2, dimension_names=DIMS)
    rollouts = _rollouts(
        model,
        pairs[0],
        [("Visual quality: sharp, clean. Motion: smooth and steady.", True), ("Alignment: the", False), ("", True), ("x", False)],
    )
    with torch.no_grad():
        if min_p:  # a random model's next-token distribution is nearly flat: sharpen it so min-p removes tokens
            model.backbone.lm_head.weight.mul_(60.0)
            rows = _reference_distributions(model, rollouts[0], temperature, min_p)
            assert 0 < int(torch.isinf(rows).sum()) < rows.numel() - len(rows), "min-p must remove some tokens, not all"
        scored = score_rollouts(model, rollouts, pad_id=model.tokenizer.token_to_id("<|endoftext|>"), temperature=temperature,
                                min_p=min_p)
        for b, rollout in enumerate(rollouts):
            expected_logp, expected_rewards = _reference_forward(model, rollout, temperature, min_p)
            got = scored.logp[b][scored.mask[b].bool()]
            assert len(got) == len(rollout.cot_ids) + rollout.finished
            torch.testing.assert_close(got, expected_logp, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(scored.rewards[b], expected_rewards, atol=2e-5, rtol=1e-5)
            assert float(scored.logp[b][~scored.mask[b].bool()].abs().sum()) == 0.0
            # The policy's entropy at the scored positions: −Σ p log p of the reference forward's rows.
            full = _reference_distributions(model, rollout, temperature, min_p)
            expected_entropy = -(full.exp() * full.nan_to_num(neginf=0.0)).sum(dim=-1)
            torch.testing.assert_close(scored.entropy[b][scored.mask[b].bool()], expected_entropy, atol=1e-4, rtol=1e-5)
            assert float(scored.entropy[b][~scored.mask[b].bool()].abs().sum()) == 0.0


def test_sampled_cots_stop_and_condition_on_the_video(pairs):
    model = build_tiny_model("qwen3_vl", seed=3, dimension_names=DIMS)
    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    features = video_features(pairs[0].video_a, model.descore_config)
    prompt_ids = model_inputs(prompts, features, pairs[0].prompt, "think").input_ids
    stops = [model.tokenizer.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")]
    pad = stops[1]
    torch.manual_seed(0)
    rollouts = sample_cots(model, features, prompt_ids, 6, RLConfig(max_new_tokens=10), stops, pad)
    assert len(rollouts) == 6
    for r in rollouts:
        assert not set(r.cot_ids) & set(stops)
        assert len(r.cot_ids) == 10 if not r.finished else len(r.cot_ids) < 10 and r.stop_id in stops
    # Near-zero temperature = greedy: every row must follow the argmax of an unbatched forward with the
    # same video, token after token (so the repeated patches reach each row correctly).
    greedy = sample_cots(model, features, prompt_ids, 3, RLConfig(max_new_tokens=5, temperature=1e-6), stops, pad)
    cot = []
    with torch.no_grad():
        for _ in range(5):
            probe = Rollout(features, prompt_ids, cot, None)
            ids = np.concatenate([prompt_ids, cot])
            input_ids = torch.from_numpy(ids.astype(np.int64))[None]
            hidden = model.backbone.model(
                input_ids=input_ids,
                pixel_values_videos=torch.from_numpy(probe.features.patches),
                video_grid_thw=torch.from_numpy(features.grid_thw)[None],
                mm_token_type_ids=(input_ids == model.backbone.config.video_token_id).int() * 2,
            ).last_hidden_state
            cot = cot + [int(model.backbone.lm_head(hidden[0, -1]).argmax())]
    for r in greedy:
        assert (r.cot_ids + [r.stop_id])[: len(cot)] == cot[: len(r.cot_ids) + r.finished]


def test_min_p_keeps_only_tokens_near_the_top(pairs):
    """min_p = 1 keeps the top token alone: at a temperature that otherwise scrambles the samples, every
    row must equal the greedy CoT (reference: the greedy rows, whose argmax the test above checks)."""
    model = build_tiny_model("qwen3_vl", seed=3, dimension_names=DIMS)
    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    features = video_features(pairs[0].video_a, model.descore_config)
    prompt_ids = model_inputs(prompts, features, pairs[0].prompt, "think").input_ids
    stops = [model.tokenizer.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")]
    greedy = sample_cots(model, features, prompt_ids, 1, RLConfig(max_new_tokens=8), stops, stops[1], greedy=True)[0].cot_ids
    torch.manual_seed(0)
    hot = sample_cots(model, features, prompt_ids, 4, RLConfig(max_new_tokens=8, temperature=50.0), stops, stops[1])
    assert any(r.cot_ids != greedy for r in hot)  # without min-p the temperature does scramble them
    torch.manual_seed(0)
    kept = sample_cots(model, features, prompt_ids, 4, RLConfig(max_new_tokens=8, temperature=50.0, min_p=1.0), stops, stops[1])
    assert all(r.cot_ids == greedy for r in kept)


# -- gradient routing ----------------------------------------------------------------------------------
def _losses(trainer, rollouts, advantages, labels):
    """Fresh forward → (GRPO loss, unweighted BT loss) of rows [A..., B...]."""
    from descore_sdk.training.batching import preference_codes
    from descore_sdk.training.grpo import grpo_policy_loss

    model = trainer.model
    scored = score_rollouts(model, rollouts, trainer.pad_id)
    with torch.no_grad():
        reference = score_rollouts(trainer.reference, rollouts, trainer.pad_id).logp
    grpo = grpo_policy_loss(scored.logp, scored.logp.detach(), reference, advantages, scored.mask, kl_coef=1e-5).loss
    m = len(rollouts) // 2
    pref = torch.from_numpy(preference_codes([type("P", (), {"labels": labels})()] * m, model.dimension_names))
    return grpo, preference_loss(scored.rewards[:m], scored.rewards[m:], pref).mean()


def _grads(model):
    return {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("scope", ["head", "backbone"])
def test_gradient_routing(scope, pairs):
    model = build_tiny_model("qwen3_vl", seed=4, dimension_names=DIMS)
    trainer = DualObjectiveRL(model, RLConfig(bt_weight=0.5, bt_scope=scope))
    texts = [("Visual quality: very blurry. Motion: smooth", True), ("Motion: shakes slightly", False)]
    rollouts = _rollouts(model, pairs[0], texts) + _rollouts(model, pairs[0], texts[::-1])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    labels = {"VQ": "A", "MQ": "B", "TA": "same"}
    # Perturb the policy so the KL term is live (policy ≠ reference).
    with torch.no_grad():
        model.backbone.lm_head.weight.add_(0.05 * torch.randn_like(model.backbone.lm_head.weight))

    grpo, bt = _losses(trainer, rollouts, advantages, labels)
    model.zero_grad(set_to_none=True)
    trainer.accumulate_gradients(grpo, bt)
    routed = _grads(model)

    def alone(weight_grpo, weight_bt):
        model.zero_grad(set_to_none=True)
        g, b = _losses(trainer, rollouts, advantages, labels)
        (weight_grpo * g + weight_bt * 0.5 * b).backward()
        return _grads(model)

    only_grpo, only_bt = alone(1.0, 0.0), alone(0.0, 1.0)
    both = alone(1.0, 1.0)
    model.zero_grad(set_to_none=True)
    emb = "backbone.model.language_model.embed_tokens.weight"
    row = model.reward_token_id
    head = "reward_head.weight"
    assert only_grpo[head] is None or float(only_grpo[head].abs().max()) == 0.0  # the head is not in the GRPO graph
    # BT alone would reach deep into the backbone: that is what the "head" scope drops.
    deep = "backbone.model.language_model.layers.0.mlp.up_proj.weight"
    assert float(only_bt[deep].abs().max()) > 0
    assert float(only_bt[emb][row].abs().max()) > 0

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "backbone.model.visual.patch_embed.proj.weight" not in trainable  # vision tower frozen
    for name in trainable:
        got = routed[name] if routed[name] is not None else torch.zeros_like(dict(model.named_parameters())[name])
        if scope == "backbone":
            expected = both[name]
        elif name == head:
            expected = only_bt[name]
        elif name == emb:
            expected = only_grpo[name].clone()
            expected[row] += only_bt[name][row]
        else:
            expected = only_grpo[name]
        torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-5, msg=name)


@pytest.mark.parametrize("updates", [1, 2])
def test_micro_batching_does_not_change_the_gradients(updates, pairs):
    """The same rollouts split into micro-batches of 1 or of 4 samples give the same gradients (the
    losses are normalised over the whole step), for every policy update of the step."""

    def gradients_of_one_step(micro_batch):
        model = build_tiny_model("qwen3_vl", seed=6, dimension_names=DIMS)
        config = RLConfig(num_samples=4, max_new_tokens=6, micro_batch=micro_batch, updates_per_batch=updates,
                          lr=1e-2, head_lr=1e-2, max_grad_norm=0.0, bt_weight=1.0, length_min_tokens=6)
        trainer = DualObjectiveRL(model, config)
        bias = torch.zeros(model.backbone.lm_head.weight.shape[0])
        bias[trainer.stop_ids[0]] = 6.0  # stop often, so the samples' rewards differ
        for m in (model, trainer.reference):
            m.backbone.lm_head.register_forward_hook(lambda module, args, out: out + bias)
        recorded, step = [], trainer.optimizer.step

        def record_then_step(*args, **kwargs):
            recorded.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            return step(*args, **kwargs)

        trainer.optimizer.step = record_then_step
        torch.manual_seed(0)
        metrics = trainer.step([pairs[0]])  # labelled TA: B, so BT is live too
        return recorded, metrics

    one, metrics_one = gradients_of_one_step(1)
    four, metrics_four = gradients_of_one_step(4)
    assert len(one) == len(four) == updates
    assert metrics_one["rule_reward"] == metrics_four["rule_reward"]  # the same rollouts
    assert 0 < metrics_one["finished"] < 1
    for grads_one, grads_four in zip(one, four):
        assert grads_one.keys() == grads_four.keys()
        assert any(float(g.abs().max()) > 0 for n, g in grads_one.items() if ".layers." in n)  # GRPO is live
        assert float(grads_one["reward_head.weight"].abs().max()) > 0
        for name in grads_one:
            torch.testing.assert_close(grads_one[name], grads_four[name], atol=1e-6, rtol=1e-4, msg=name)


def test_step_scores_at_the_rollout_temperature(pairs, monkeypatch):
    """Policy, behaviour and reference log-probs all come from the sampling distribution (rollout
    temperature, min-p), not from softmax(logits) at T = 1; `score_rollouts`' numbers are checked
    against transformers above, this checks that the step asks for them with the rollout settings."""
    from descore_sdk.training import rl

    calls, real = [], rl.score_rollouts

    def spy(model, rollouts, pad_id, temperature=1.0, min_p=0.0, **kw):
        calls.append((model, (temperature, min_p)))
        return real(model, rollouts, pad_id, temperature, min_p, **kw)

    monkeypatch.setattr(rl, "score_rollouts", spy)
    model = build_tiny_model("qwen3_vl", seed=6, dimension_names=DIMS)
    trainer = DualObjectiveRL(model, RLConfig(num_samples=2, max_new_tokens=4, updates_per_batch=2, temperature=1.7, min_p=0.2,
                                              length_min_tokens=1, lr=1e-3))
    torch.manual_seed(0)
    trainer.step([pairs[0]])
    assert {id(m) for m, _ in calls} == {id(model), id(trainer.reference)}
    assert len(calls) >= 4 and all(sampling == (1.7, 0.2) for _, sampling in calls), calls


def test_dynamic_sampling_drops_flat_groups_and_draws_more(pairs):
    """Groups whose samples all got the same reward are dropped and more pairs drawn, up to the cap;
    with no informative group nothing moves. (Rewards are set by hand on real rollouts.)"""
    from descore_sdk.training.grpo import RuleReward

    def trainer_with(flat, **settings):
        model = build_tiny_model("qwen3_vl", seed=7, dimension_names=DIMS)
        config = RLConfig(num_samples=2, max_new_tokens=3, pairs_per_step=2, length_min_tokens=1, lr=1e-2, **settings)
        trainer = DualObjectiveRL(model, config)
        real, seen = trainer.rollout, []

        def rollout(pair):
            ra, rb, _, parsed = real(pair)
            seen.append(pairs.index(pair))
            value = [RuleReward(0.5, 0.5, 1, 1)] * 2 if pairs.index(pair) in flat else [RuleReward(1, 1, 1, 1), RuleReward(0, 0, 0, 0)]
            return ra, rb, value, parsed

        trainer.rollout = rollout
        stream = iter(pairs[2:])
        return trainer, seen, lambda: next(stream)

    # Pairs 0 and 1 are flat: pair 2 (informative), 3 (flat), 4 (informative) are drawn, then it stops.
    trainer, seen, draw = trainer_with({0, 1, 3}, dynamic_sampling=True, max_draws_per_step=6)
    metrics = trainer.step(pairs[:2], draw)
    assert seen == [0, 1, 2, 3, 4]
    assert metrics["pairs_rolled_out"] == 5 and metrics["groups_trained"] == 2
    assert metrics["zero_variance_groups"] == pytest.approx(3 / 5) and metrics["rule_reward"] == pytest.approx((3 * 0.5 + 2 * 0.5) / 5)
    assert np.isfinite(metrics["grpo_loss"]) and metrics["policy_grad_norm"] > 0

    # Everything flat: the cap (here 4 pairs) ends the search and nothing is updated.
    trainer, seen, draw = trainer_with(set(range(8)), dynamic_sampling=True, max_draws_per_step=4)
    before = {n: t.clone() for n, t in trainer.model.state_dict().items()}
    metrics = trainer.step(pairs[:2], draw)
    assert seen == [0, 1, 2, 3] and metrics["groups_trained"] == 0 and np.isnan(metrics["grpo_loss"])
    assert all(torch.equal(before[n], t) for n, t in trainer.model.state_dict().items())
    # The default cap is 3 × pairs_per_step.
    trainer, seen, draw = trainer_with(set(range(8)), dynamic_sampling=True)
    trainer.step(pairs[:2], draw)
    assert seen == [0, 1, 2, 3, 4, 5]

    # Off: the step's pairs only, flat groups included (their advantages are zero).
    trainer, seen, draw = trainer_with({0}, dynamic_sampling=False)
    metrics = trainer.step(pairs[:2], draw)
    assert seen == [0, 1] and metrics["groups_trained"] == 2 and metrics["zero_variance_groups"] == 0.5


def _report(visual: str, tokens: int = 50, motion: str = "smooth and steady along a straight path"):
    """A parsed CoT whose visual-quality section says `visual` (and motion section `motion`), alignment clean."""
    from descore_sdk.training.grpo import read_cot

    text = (f"I see a red circle. Visual quality: {visual}. Motion: {motion}. "
            "Alignment: colour asked red, seen red, match; so the video matches the prompt.")
    return read_cot(text, num_tokens=tokens)


# Two samples per video of a pair labelled VQ: A, MQ and TA: same. Visual-quality severities: A_0 0,
# A_1 1 (slightly soft), B_0 2 (very blurry), B_1 0. Rule accuracy by hand (VQ right iff sev A < sev B;
# MQ and TA right, both clean): (A_0, B_0) 1, (A_0, B_1) 2/3, (A_1, B_0) 1, (A_1, B_1) 2/3; reward =
# 0.7 · accuracy + 0.1 · 1 (well formed) + 0.2 · 1 (50 tokens, in range).
HAND_LABELS = {"VQ": "A", "MQ": "same", "TA": "same"}


def _hand_reports():
    return ([_report("sharp, clean and with natural colours"), _report("the image is slightly soft, with blurred edges")],
            [_report("the image is very blurry and the object's edges smear into the background"),
             _report("sharp, clean and with natural colours")])


def test_marginal_rewards_hand_values():
    from descore_sdk.training.grpo import LengthTarget, RewardWeights
    from descore_sdk.training.rl import marginal_rewards

    reports_a, reports_b = _hand_reports()
    own_a, own_b = marginal_rewards(reports_a, reports_b, HAND_LABELS, weights=RewardWeights(), length_target=LengthTarget())
    # A_0: mean(1, 2/3), A_1: mean(1, 2/3); B_0: mean(1, 1), B_1: mean(2/3, 2/3).
    np.testing.assert_allclose(own_a, [0.7 * 5 / 6 + 0.3, 0.7 * 5 / 6 + 0.3])
    np.testing.assert_allclose(own_b, [1.0, 0.7 * 2 / 3 + 0.3])


@pytest.mark.parametrize("credit", ["pair", "marginal"])
def test_advantages_reach_the_right_rows(credit, pairs, monkeypatch):
    """Which advantage each sequence's policy loss gets: with the paper's pairing both CoTs of sample i
    share (r_i − mean) / std; with marginal credit A's CoTs get A's own (here all equal: 0) and B's
    theirs (+1, −1). Rollouts are real, their parsed verdicts the hand-made ones above."""
    import descore_sdk.training.rl as rl_module
    from descore_sdk.training.grpo import RuleReward

    model = build_tiny_model("qwen3_vl", seed=7, dimension_names=DIMS)
    trainer = DualObjectiveRL(model, RLConfig(num_samples=2, max_new_tokens=3, pairs_per_step=1, micro_batch=1, credit=credit))
    real = trainer.rollout
    reports_a, reports_b = _hand_reports()

    def rollout(pair):
        ra, rb, _, _ = real(pair)
        paired = [RuleReward(1.0, 1.0, 1, 1), RuleReward(0.7 * 2 / 3 + 0.3, 2 / 3, 1, 1)]  # (A_0, B_0), (A_1, B_1)
        return ra, rb, paired, [reports_a[0], reports_b[0], reports_a[1], reports_b[1]]

    seen = []
    real_loss = rl_module.grpo_policy_loss
    monkeypatch.setattr(rl_module, "grpo_policy_loss", lambda *a, **k: seen.append(a[3].tolist()) or real_loss(*a, **k))
    trainer.rollout = rollout
    trainer.step([dataclasses.replace(pairs[0], labels=HAND_LABELS)])  # the rewards judge the pair on its labels
    expected = {"pair": [[1.0, 1.0], [-1.0, -1.0]], "marginal": [[0.0, 1.0], [0.0, -1.0]]}[credit]  # micro-batch i: [A_i, B_i]
    np.testing.assert_allclose(seen, expected, atol=1e-5)


# Section credit. Each CoT is built from separately encoded pieces, so which tokens belong to which
# section is known by construction, not by the code under test. Labels VQ: A, MQ: same, TA: B.
# Severities (VQ, MQ, TA), by the phrases: A_0 (0, 0, 0), A_1 (1, 0, 1), B_0 (2, 0, 0), B_1 (0, 0, 0).
# Sample 0 = (A_0, B_0): VQ A right, MQ same right, TA same wrong → 2/3. Sample 1 = (A_1, B_1): VQ B
# wrong, MQ right, TA B right → 2/3. The paper's reward is flat (no advantage); judged per dimension:
# VQ 1 vs 0 → (+1, −1), MQ 1 vs 1 → (0, 0), TA 0 vs 1 → (−1, +1). Every CoT is well formed and its
# length is inside the target, so the format and length terms are the same for all samples.
SECTION_LABELS = {"VQ": "A", "MQ": "same", "TA": "B"}
_CLEAN_TA = " Alignment: colour asked red, seen red, match; so the video matches the prompt."
_WRONG_TA = (" Alignment: colour asked red, seen blue, mismatch; so the prompt asks for a red circle but the object"
             " is a blue circle.")
SECTION_COTS = {  # (preamble, VQ, MQ, TA) pieces of A_0, A_1, B_0, B_1
    "A_0": ("The prompt asks for a red circle.", " Visual quality: sharp, clean and with natural colours.",
            " Motion: smooth and steady.", _CLEAN_TA),
    "A_1": ("The prompt asks for a red circle.", " Visual quality: the image is slightly soft.", " Motion: smooth and steady.", _WRONG_TA),
    "B_0": ("The prompt asks for a red circle.", " Visual quality: the image is very blurry.", " Motion: smooth and steady.", _CLEAN_TA),
    "B_1": ("The prompt asks for a red circle.", " Visual quality: sharp, clean and with natural colours.",
            " Motion: smooth and steady.", _CLEAN_TA),
}
SECTION_ADVANTAGES = {"A_0": (0.0, 1.0, 0.0, -1.0), "A_1": (0.0, -1.0, 0.0, 1.0),  # preamble, VQ, MQ, TA
                      "B_0": (0.0, 1.0, 0.0, -1.0), "B_1": (0.0, -1.0, 0.0, 1.0)}


def _piece_ids(prompts, pieces):
    return [prompts.encode(piece).tolist() for piece in pieces]


def test_token_sections_follow_the_headings(pairs):
    from descore_sdk.training.rl import token_sections

    model = build_tiny_model("qwen3_vl", seed=7, dimension_names=DIMS)
    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    for pieces in SECTION_COTS.values():
        ids = _piece_ids(prompts, pieces)
        expected = [section for section, piece in zip((None, "VQ", "MQ", "TA"), ids) for _ in piece]
        assert token_sections(prompts.decode, sum(ids, [])) == expected
    # No heading: everything is outside any section; a missing middle heading extends the section before.
    assert token_sections(prompts.decode, prompts.encode("a red circle").tolist()) == [None] * len(prompts.encode("a red circle"))
    pieces = _piece_ids(prompts, SECTION_COTS["A_0"])
    assert token_sections(prompts.decode, pieces[0] + pieces[1] + pieces[3]) == [None] * len(pieces[0]) + ["VQ"] * len(pieces[1]) + ["TA"] * len(pieces[3])


def test_section_rewards_hand_values():
    from descore_sdk.training.grpo import LengthTarget, RewardWeights, read_cot
    from descore_sdk.training.rl import section_rewards

    reports = {name: read_cot("".join(pieces), num_tokens=40) for name, pieces in SECTION_COTS.items()}
    got = section_rewards([reports["A_0"], reports["A_1"]], [reports["B_0"], reports["B_1"]], SECTION_LABELS,
                          weights=RewardWeights(), length_target=LengthTarget())
    assert set(got) == {None, "VQ", "MQ", "TA"}
    np.testing.assert_allclose(got[None], [0.7 * 2 / 3 + 0.3] * 2)
    np.testing.assert_allclose(got["VQ"], [1.0, 0.3])
    np.testing.assert_allclose(got["MQ"], [1.0, 1.0])
    np.testing.assert_allclose(got["TA"], [0.3, 1.0])
    # Only labelled sub-dimensions get their own reward; a pair judged on "overall" alone has just the shared one.
    assert set(section_rewards([reports["A_0"]], [reports["B_0"]], {"overall": "A"}, weights=RewardWeights(),
                               length_target=LengthTarget())) == {None}


def _section_rollouts(pairs, labels):
    """The tiny model, pairs[0] relabelled, the pieces of SECTION_COTS as token ids, and a stand-in for
    `DualObjectiveRL.rollout` that returns those CoTs (A_0, A_1 and B_0, B_1) with their rule rewards."""
    from descore_sdk.training.grpo import read_cot, rule_reward

    model = build_tiny_model("qwen3_vl", seed=7, dimension_names=DIMS)
    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    pair = dataclasses.replace(pairs[0], labels=labels)
    features = video_features(pair.video_a, model.descore_config)
    prompt_ids = model_inputs(prompts, features, pair.prompt, "think").input_ids
    stop = model.tokenizer.token_to_id("<|im_end|>")
    built = {name: _piece_ids(prompts, pieces) for name, pieces in SECTION_COTS.items()}
    rollouts = {name: Rollout(features, prompt_ids, sum(ids, []), stop) for name, ids in built.items()}

    def rollout(_pair):
        ra, rb = [rollouts["A_0"], rollouts["A_1"]], [rollouts["B_0"], rollouts["B_1"]]
        parsed = [read_cot(prompts.decode(r.cot_ids), num_tokens=len(r.cot_ids)) for pair_ in zip(ra, rb) for r in pair_]
        return ra, rb, [rule_reward(a, b, labels) for a, b in zip(parsed[0::2], parsed[1::2])], parsed

    return model, pair, built, rollout


def test_section_credit_reaches_each_sections_tokens(pairs, monkeypatch):
    """The per-token advantages the policy loss gets with credit="section" (hand values above): each
    section's tokens its own dimension's advantage, the opening sentence and the stop token the
    shared (here flat: 0) one. With the paper's pair credit the same samples give no gradient at all."""
    import descore_sdk.training.rl as rl_module

    model, pair, built, rollout = _section_rollouts(pairs, SECTION_LABELS)

    for credit in ("section", "pair"):
        trainer = DualObjectiveRL(model, RLConfig(num_samples=2, max_new_tokens=3, pairs_per_step=1, micro_batch=1, credit=credit,
                                                  length_min_tokens=1, lr=0.0, head_lr=0.0))
        trainer.rollout = rollout
        seen = []
        real_loss = rl_module.grpo_policy_loss
        monkeypatch.setattr(rl_module, "grpo_policy_loss",
                            lambda *a, **k: seen.append((a[3].clone(), a[4].clone())) or real_loss(*a, **k))
        trainer.step([pair])
        monkeypatch.setattr(rl_module, "grpo_policy_loss", real_loss)
        got = {}
        for (advantages, mask), names in zip(seen, (("A_0", "B_0"), ("A_1", "B_1"))):  # micro-batch i: [A_i, B_i]
            for row, name in enumerate(names):
                values = (advantages[row] if advantages.dim() == 2 else advantages[row].expand(mask.shape[1]))[mask[row].bool()]
                got[name] = values.tolist()
        for name, ids in built.items():
            if credit == "section":
                want = [a for a, piece in zip(SECTION_ADVANTAGES[name], ids) for _ in piece] + [0.0]  # + the stop token
            else:
                want = [0.0] * (sum(map(len, ids)) + 1)
            np.testing.assert_allclose(got[name], want, atol=1e-5, err_msg=f"{credit} {name}")


def test_unjudged_sections_get_the_shared_advantage_or_none(pairs, monkeypatch):
    """With reward_tied_dimensions=False a pair decided on VQ alone is judged on VQ alone (hand values
    from the CoTs above): sample 0 orders VQ right, sample 1 wrong, so the judged reward's advantages are
    (+1, −1). The MQ and TA sections, whose ties are not judged, follow that advantage by default
    ("shared") and get none with unjudged_sections="zero"; the opening sentence and the stop token keep
    the shared one either way."""
    import descore_sdk.training.rl as rl_module

    model, pair, built, rollout = _section_rollouts(pairs, {"VQ": "A", "MQ": "same", "TA": "same"})

    sample = {"A_0": 1.0, "B_0": 1.0, "A_1": -1.0, "B_1": -1.0}  # the judged (VQ) reward's advantage
    for unjudged in ("shared", "zero"):
        trainer = DualObjectiveRL(model, RLConfig(num_samples=2, max_new_tokens=3, pairs_per_step=1, micro_batch=1, credit="section",
                                                  reward_tied_dimensions=False, unjudged_sections=unjudged,
                                                  length_min_tokens=1, lr=0.0, head_lr=0.0))
        trainer.rollout = rollout
        seen = []
        real_loss = rl_module.grpo_policy_loss
        monkeypatch.setattr(rl_module, "grpo_policy_loss", lambda *a, **k: seen.append((a[3].clone(), a[4].clone())) or real_loss(*a, **k))
        trainer.step([pair])
        monkeypatch.setattr(rl_module, "grpo_policy_loss", real_loss)
        for (advantages, mask), names in zip(seen, (("A_0", "B_0"), ("A_1", "B_1"))):
            for row, name in enumerate(names):
                a = sample[name]
                other = a if unjudged == "shared" else 0.0
                want = [value for value, piece in zip((a, a, other, other), built[name]) for _ in piece] + [a]  # + the stop token
                np.testing.assert_allclose(advantages[row][mask[row].bool()].tolist(), want, atol=1e-5, err_msg=f"{unjudged} {name}")
    with pytest.raises(InvalidInputError, match="unjudged_sections"):
        RLConfig(unjudged_sections="none")
    for silent in (dict(credit="pair", reward_tied_dimensions=False), dict(credit="section")):  # zero would change nothing
        with pytest.raises(InvalidInputError, match="changes nothing unless"):
            RLConfig(unjudged_sections="zero", **silent)


_VERDICT_COT = ("The prompt asks for a red circle.", " Visual quality: sharp, clean and with natural colours.", " Motion: smooth and steady.",
                " Alignment: colour asked red, seen {colour},", " match", "; shape asked circle, seen circle,", " match",
                "; so the video matches the prompt.")
_VERDICT_PIECES = (4, 6)  # the pieces that hold a verdict word


def _verdict_group(model, pairs):
    """The hand-made group of the verdict tests: A_0 says "colour asked red, seen blue, match" (a
    contradiction); A_1, B_0 and B_1 see red. Labels all "same". Returns (prompts, pair, piece ids per
    rollout name, rollouts by name, a `DualObjectiveRL.rollout` replacement that returns them)."""
    import descore_sdk.training.grpo as grpo_module

    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    labels = {"VQ": "same", "MQ": "same", "TA": "same"}
    pair = dataclasses.replace(pairs[0], labels=labels)
    features = video_features(pair.video_a, model.descore_config)
    prompt_ids = model_inputs(prompts, features, pair.prompt, "think").input_ids
    stop = model.tokenizer.token_to_id("<|im_end|>")
    built = {name: _piece_ids(prompts, [piece.format(colour=colour) for piece in _VERDICT_COT])
             for name, colour in (("A_0", "blue"), ("A_1", "red"), ("B_0", "red"), ("B_1", "red"))}
    rollouts = {name: Rollout(features, prompt_ids, sum(ids, []), stop) for name, ids in built.items()}

    def rollout(_pair):
        ra, rb = [rollouts["A_0"], rollouts["A_1"]], [rollouts["B_0"], rollouts["B_1"]]
        parsed = [grpo_module.read_cot(prompts.decode(r.cot_ids), num_tokens=len(r.cot_ids)) for both in zip(ra, rb) for r in both]
        return ra, rb, [grpo_module.rule_reward(a, b, labels) for a, b in zip(parsed[0::2], parsed[1::2])], parsed

    return prompts, pair, built, rollouts, rollout


@pytest.mark.parametrize("credit", ["pair", "section"])
def test_verdict_consistency_reaches_the_verdict_tokens(credit, pairs, monkeypatch):
    """A_0 says "colour asked red, seen blue, match" (a contradiction); A_1, B_0 and B_1 see red. Labels
    all "same": sample 0 gets TA wrong (reward 0.7 · 2/3 + 0.3), sample 1 all right (1.0), so the
    shared advantages are (−1, +1), by hand; with section credit the preamble and TA get them, VQ and MQ
    (flat) 0. With verdict_consistency = 0.5 the verdict words' tokens get their own advantage instead:
    −0.5 for A_0's colour verdict, 0 for every other (consistent) one. Off, the advantages are as before."""
    import descore_sdk.training.rl as rl_module

    model = build_tiny_model("qwen3_vl", seed=7, dimension_names=DIMS)
    prompts, pair, built, rollouts, rollout = _verdict_group(model, pairs)

    sample = {"A_0": -1.0, "B_0": -1.0, "A_1": 1.0, "B_1": 1.0}
    for weight in (0.5, 0.0):
        trainer = DualObjectiveRL(model, RLConfig(num_samples=2, max_new_tokens=3, pairs_per_step=1, micro_batch=1, credit=credit,
                                                  verdict_consistency=weight, length_min_tokens=1, lr=0.0, head_lr=0.0))
        trainer.rollout = rollout
        seen = []
        real_loss = rl_module.grpo_policy_loss
        monkeypatch.setattr(rl_module, "grpo_policy_loss", lambda *a, **k: seen.append((a[3].clone(), a[4].clone())) or real_loss(*a, **k))
        metrics = trainer.step([pair])
        monkeypatch.setattr(rl_module, "grpo_policy_loss", real_loss)
        assert metrics["verdicts_contradicted"] == pytest.approx(1 / 8)
        for (advantages, mask), names in zip(seen, (("A_0", "B_0"), ("A_1", "B_1"))):
            for row, name in enumerate(names):
                a = sample[name]
                base = [a] * 8 if credit == "pair" else [a, 0.0, 0.0] + [a] * 5  # preamble, VQ, MQ, then the TA pieces
                if weight:
                    for piece in _VERDICT_PIECES:
                        base[piece] = -weight if (name, piece) == ("A_0", 4) else 0.0
                want = [value for value, ids in zip(base, built[name]) for _ in ids] + [a]  # + the stop token (shared)
                got = (advantages[row] if advantages.dim() == 2 else advantages[row].expand(mask.shape[1]))[mask[row].bool()]
                np.testing.assert_allclose(got.tolist(), want, atol=1e-5, err_msg=f"{credit} w={weight} {name}")
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(InvalidInputError, match="verdict_consistency"):
            RLConfig(verdict_consistency=bad)


def test_verdict_anchor_holds_the_consistent_verdicts(pairs):
    """Rollouts as in the verdict-consistency test (A_0's colour verdict contradicts its words; every
    other verdict agrees: 7 anchored positions). With the policy moved away from its frozen reference,
    the logged anchor_kl is the mean over those 7 positions of KL(π_ref ‖ π), computed by hand from
    transformers' own unpadded forwards of both models at temperature 1; the policy loss carries
    verdict_anchor × that, and nothing with the anchor off."""
    _, pair, built, rollouts, rollout = _verdict_group(build_tiny_model("qwen3_vl", seed=7, dimension_names=DIMS), pairs)
    anchored = {name: [sum(len(ids) for ids in built[name][:piece]) for piece in _VERDICT_PIECES if (name, piece) != ("A_0", 4)]
                for name in built}

    results = {}
    for weight in (0.5, 0.0):
        model = build_tiny_model("qwen3_vl", seed=7, dimension_names=DIMS)
        trainer = DualObjectiveRL(model, RLConfig(num_samples=2, max_new_tokens=3, pairs_per_step=1, micro_batch=1, verdict_anchor=weight,
                                                  length_min_tokens=1, lr=0.0, head_lr=0.0))
        with torch.no_grad():  # the policy moves; its reference (a copy made above) does not
            torch.manual_seed(3)
            for param in model.backbone.model.language_model.layers[0].parameters():
                param.add_(0.05 * torch.randn_like(param))
        trainer.rollout = rollout
        results[weight] = trainer.step([pair])

    metrics = results[0.5]
    with torch.no_grad():
        kls = []
        for name, r in rollouts.items():
            policy = _reference_distributions(trainer.model, r)  # (T, V) log-probs at temperature 1
            reference = _reference_distributions(trainer.reference, r)
            kls += [float((reference[k].exp() * (reference[k] - policy[k])).sum()) for k in anchored[name]]
    assert len(kls) == 7 and min(kls) > 0
    assert metrics["anchor_kl"] == pytest.approx(np.mean(kls), rel=1e-3)
    off = results[0.0]  # the same weights, anchor off (lr 0: trainer.model is still the moved policy)
    assert off["anchor_kl"] == 0.0
    assert metrics["grpo_loss"] - off["grpo_loss"] == pytest.approx(0.5 * np.mean(kls), rel=1e-3)
    for bad in (-1.0, float("nan")):
        with pytest.raises(InvalidInputError, match="verdict_anchor"):
            RLConfig(verdict_anchor=bad)


@pytest.mark.parametrize("scope", ["head", "backbone"])
def test_bt_rows_greedy_and_fast(scope, pairs):
    """bt_rows=("greedy", "fast"): BT is computed on the pair's greedy CoTs + <Reward> and on its
    fast-layout rows (prompt + <Reward>), not on the sampled CoTs. The head's gradient at the optimizer
    step and the logged bt_loss equal a hand BT (−log σ(r_win − r_lose), a mean over the pair's decided
    dimensions per kind, the kinds summed, × bt_weight) on rewards from transformers' own unpadded
    forwards of those rows; with "sampled" added the loss grows by the sampled rows' share."""
    pair = dataclasses.replace(pairs[0], labels={"VQ": "A", "MQ": "B", "TA": "same"})
    results = {}
    for rows in (("greedy", "fast"), ("sampled", "greedy", "fast")):
        model = build_tiny_model("qwen3_vl", seed=8, dimension_names=DIMS)
        config = RLConfig(num_samples=2, max_new_tokens=6, length_min_tokens=6, max_grad_norm=0.0, bt_weight=0.5, bt_scope=scope,
                          bt_rows=rows)
        trainer = DualObjectiveRL(model, config)
        prompts = PromptBuilder(model.tokenizer, model.descore_config)
        with torch.no_grad():  # the rows the starting policy gives: greedy CoTs, fast layout
            expected = {"greedy": [], "fast": []}
            for video in (pair.video_a, pair.video_b):
                features = video_features(video, model.descore_config)
                think = model_inputs(prompts, features, pair.prompt, "think").input_ids
                expected["greedy"] += sample_cots(model, features, think, 1, config, trainer.stop_ids, trainer.pad_id, greedy=True)
                fast = model_inputs(prompts, features, pair.prompt, "fast").input_ids
                assert fast[-1] == model.reward_token_id
                expected["fast"].append(Rollout(features, fast[:-1], [], None))  # _hf_hidden appends <Reward>
            hidden = {kind: [_hf_hidden(model, r)[-1] for r in found] for kind, found in expected.items()}
        assert any(r.cot_ids for r in expected["greedy"])
        head = model.reward_head.weight.detach().clone().requires_grad_(True)
        hand = 0.0
        for kind, (h_a, h_b) in hidden.items():
            r_a, r_b = head @ h_a, head @ h_b
            hand = hand + (-torch.nn.functional.logsigmoid(r_a[0] - r_b[0]) - torch.nn.functional.logsigmoid(r_b[1] - r_a[1])) / 2
        (0.5 * hand).backward()
        recorded, step = [], trainer.optimizer.step

        def record_then_step(*args, **kwargs):
            recorded.append(model.reward_head.weight.grad.clone())
            return step(*args, **kwargs)

        trainer.optimizer.step = record_then_step
        torch.manual_seed(0)
        metrics = trainer.step([pair])
        results[rows] = (metrics, recorded, head.grad, float(hand.detach()))
    metrics, recorded, hand_grad, hand = results[("greedy", "fast")]
    assert metrics["bt_loss"] == pytest.approx(hand, rel=1e-4)
    torch.testing.assert_close(recorded[0], hand_grad, atol=1e-6, rtol=1e-4)
    with_sampled = results[("sampled", "greedy", "fast")][0]["bt_loss"]
    assert with_sampled > hand + 0.1  # the sampled rows' BT (about log 2) is added, not averaged in
    for bad in ((), ("greedy", "greedy"), ("beam",), "greedy"):
        with pytest.raises(InvalidInputError, match="bt_rows"):
            RLConfig(bt_rows=bad)


def test_verdict_probe_reads_the_starting_verdicts(pairs, monkeypatch):
    """evaluate_policy on one pair whose greedy CoTs are hand-made: A's says "colour asked red, seen
    blue, match" (a contradiction) and "shape asked circle, seen circle, match"; B's says "colour asked
    red, seen blue, mismatch" and the same shape item: 1 of 4 verdicts contradicts. The probe keeps only
    consistent verdicts, those whose first token the starting weights give less than the threshold
    (set between the three, so two are kept), with the probabilities of transformers' own unpadded
    forward, and reports their mean per word; after the weights move, it reads the same tokens under
    the new weights."""
    import descore_sdk.training.rl as rl_module
    from descore_sdk.training.rl import VerdictProbe, evaluate_policy

    model = build_tiny_model("qwen3_vl", seed=7, dimension_names=DIMS)
    trainer = DualObjectiveRL(model, RLConfig(num_samples=2, max_new_tokens=8, pairs_per_step=1, micro_batch=1))
    prompts = trainer.prompts
    pair = dataclasses.replace(pairs[0], labels={"VQ": "A", "MQ": "same", "TA": "B"})
    stop = model.tokenizer.token_to_id("<|im_end|>")
    texts = {name: [piece.format(colour="blue") for piece in _VERDICT_COT] for name in "AB"}
    texts["B"][4] = " mismatch"
    built = {name: _piece_ids(prompts, pieces) for name, pieces in texts.items()}
    video_a = trainer.cache(pair.video_a)

    def greedy_cot(model_, features, prompt_ids, n, config, stop_ids, pad_id, *, greedy=False):
        assert greedy and n == 1
        name = "A" if np.array_equal(features.patches, video_a.patches) else "B"
        return [Rollout(features, prompt_ids, sum(built[name], []), stop)]

    monkeypatch.setattr(rl_module, "sample_cots", greedy_cot)
    rollouts = {name: greedy_cot(model, trainer.cache(video), model_inputs(prompts, trainer.cache(video), pair.prompt, "think").input_ids,
                                 1, None, None, None, greedy=True)[0] for name, video in (("A", pair.video_a), ("B", pair.video_b))}
    # The consistent verdicts' first tokens, by hand: A's shape verdict (piece 6), B's colour and shape ones (pieces 4, 6).
    items = [(name, sum(len(ids) for ids in built[name][:piece])) for name, piece in (("A", 6), ("B", 4), ("B", 6))]
    words = ["match", "mismatch", "match"]

    def reference():
        with torch.no_grad():
            logp = {name: _reference_forward(model, r)[0] for name, r in rollouts.items()}
        return [float(logp[name][k].exp()) for name, k in items]

    def by_word(probabilities, keep):
        return {word: [p for p, w, k in zip(probabilities, words, keep) if w == word and k] for word in ("match", "mismatch")}

    start = reference()
    everything = VerdictProbe(threshold=1.0)  # every consistent verdict, never the contradicted one
    record = evaluate_policy(trainer, [pair], everything)
    assert record["verdict_probe_match_items"] == 2 and record["verdict_probe_mismatch_items"] == 1
    assert everything.start == pytest.approx(start, rel=1e-4) and everything.words == words
    threshold = sorted(start)[2]  # keeps the two lower ones
    keep = [p < threshold for p in start]
    probe = VerdictProbe(threshold=threshold)
    first = evaluate_policy(trainer, [pair], probe)
    assert first["verdicts_contradicted"] == pytest.approx(1 / 4)
    for word, kept in by_word(start, keep).items():
        assert first[f"verdict_probe_{word}_items"] == len(kept)
        assert first[f"verdict_probe_{word}"] == (pytest.approx(np.mean(kept), rel=1e-4) if kept else pytest.approx(float("nan"), nan_ok=True))

    with torch.no_grad():
        for param in model.backbone.model.language_model.layers[0].parameters():
            param.add_(0.05 * torch.randn_like(param))
    moved = reference()
    assert not np.allclose(moved, start, rtol=1e-2)  # the weights really moved the verdicts
    second = evaluate_policy(trainer, [pair], probe)
    for word, kept in by_word(moved, keep).items():
        assert second[f"verdict_probe_{word}_items"] == len(kept)
        if kept:
            assert second[f"verdict_probe_{word}"] == pytest.approx(np.mean(kept), rel=1e-4)
    assert probe.read(model, trainer.pad_id) == pytest.approx([p for p, k in zip(moved, keep) if k], rel=1e-4)  # with autograd on
    assert not any(k.startswith("verdict_probe") for k in evaluate_policy(trainer, [pair]))  # no probe, no probe keys


def test_policy_loss_takes_per_token_advantages():
    """A per-token advantage equal on every token gives the per-sequence loss; a token's advantage only
    weighs its own log-prob (the gradient, by hand: −A_t · mask / tokens per sequence / sequences)."""
    from descore_sdk.training.grpo import grpo_policy_loss

    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    per_sequence = grpo_policy_loss(logp, logp.detach(), logp.detach(), torch.tensor([0.5, -1.0]), mask, kl_coef=0.0)
    per_token = grpo_policy_loss(logp, logp.detach(), logp.detach(), torch.tensor([[0.5] * 3, [-1.0] * 3]), mask, kl_coef=0.0)
    assert per_sequence.loss.item() == pytest.approx(per_token.loss.item())
    advantages = torch.tensor([[1.0, 0.0, -2.0], [3.0, -1.0, 7.0]])
    (grad,) = torch.autograd.grad(grpo_policy_loss(logp, logp.detach(), logp.detach(), advantages, mask, kl_coef=0.0).loss, logp)
    expected = torch.tensor([[-1.0 / 3, 0.0, 2.0 / 3], [-3.0 / 2, 1.0 / 2, 0.0]]) / 2
    torch.testing.assert_close(grad, expected)
    with pytest.raises(InvalidInputError, match="one per token"):
        grpo_policy_loss(logp, logp.detach(), logp.detach(), torch.zeros(2, 2), mask)


@pytest.mark.parametrize("tied", [True, False])
def test_reward_without_tied_dimensions(tied, pairs, monkeypatch):
    """Labels VQ: A, MQ and TA: same. Sample 0: A_0 clean but "shakes slightly" (MQ 1), B_0 very
    blurry: VQ right, MQ wrong, TA right → 2/3. Sample 1: both clean: VQ wrong, MQ and TA right → 2/3.
    The paper's rule: a flat group, no advantage. Judged on the decided dimension (VQ) alone: 1 vs 0,
    so sample 0 gets +1 and sample 1 −1 (by hand)."""
    import descore_sdk.training.rl as rl_module
    from descore_sdk.training.grpo import rule_reward

    assert rl_module.reward_labels(HAND_LABELS, False) == {"VQ": "A"}
    assert rl_module.reward_labels({"VQ": "same", "MQ": "same", "TA": "same", "overall": "same"}, False)["MQ"] == "same"
    model = build_tiny_model("qwen3_vl", seed=7, dimension_names=DIMS)
    trainer = DualObjectiveRL(model, RLConfig(num_samples=2, max_new_tokens=3, pairs_per_step=1, micro_batch=1,
                                              reward_tied_dimensions=tied))
    real = trainer.rollout
    clean = "sharp, clean and with natural colours"
    parsed = [_report(clean, motion="the camera shakes slightly, so the whole picture jumps around"),
              _report("the image is very blurry and the object's edges smear into the background"), _report(clean), _report(clean)]

    def rollout(pair):
        ra, rb, _, _ = real(pair)
        return ra, rb, [rule_reward(parsed[0], parsed[1], HAND_LABELS), rule_reward(parsed[2], parsed[3], HAND_LABELS)], parsed

    seen = []
    real_loss = rl_module.grpo_policy_loss
    monkeypatch.setattr(rl_module, "grpo_policy_loss", lambda *a, **k: seen.append(a[3].tolist()) or real_loss(*a, **k))
    trainer.rollout = rollout
    metrics = trainer.step([dataclasses.replace(pairs[0], labels=HAND_LABELS)])
    assert metrics["rule_accuracy"] == pytest.approx(2 / 3)  # the log keeps the paper's reward
    expected = [[0.0, 0.0], [0.0, 0.0]] if tied else [[1.0, 1.0], [-1.0, -1.0]]
    np.testing.assert_allclose(seen, expected, atol=1e-5)


# -- learning ------------------------------------------------------------------------------------------
def _stop_probability(model, trainer, pairs):
    """Mean probability of the stop tokens right after the assistant header, over the pairs' videos."""
    probs = []
    with torch.no_grad():
        for pair in pairs:
            rollout = _rollouts(model, pair, [("", False)])[0]
            scored_ids = np.concatenate([rollout.prompt_ids, [model.reward_token_id]])
            input_ids = torch.from_numpy(scored_ids)[None]
            out = model(
                input_ids=input_ids,
                pixel_values_videos=torch.from_numpy(rollout.features.patches),
                video_grid_thw=torch.from_numpy(rollout.features.grid_thw)[None],
                return_logits=True,
            )
            p = torch.softmax(out.logits[0, -2], dim=-1)
            probs.append(float(p[trainer.stop_ids].sum()))
    return float(np.mean(probs))


def test_grpo_moves_the_policy_the_way_the_rule_reward_asks(pairs):
    """A random policy that stops early half the time; the length reward favours long CoTs (min 12
    tokens), so GRPO must lower the stop probability. With the signs flipped it would raise it."""
    model = build_tiny_model("qwen3_vl", seed=5, dimension_names=DIMS)
    stop = model.tokenizer.token_to_id("<|im_end|>")
    config = RLConfig(
        num_samples=8, max_new_tokens=12, steps=6, lr=3e-3, head_lr=0.0, micro_batch=8,
        length_min_tokens=12, length_max_tokens=64, kl_coef=1e-5, seed=0,
    )
    trainer = DualObjectiveRL(model, config)
    # Make <|im_end|> likely, so CoT lengths vary across samples: a fixed bias on its logit (not a
    # parameter), on the policy and the reference alike.
    bias = torch.zeros(model.backbone.lm_head.weight.shape[0])
    bias[stop] = 7.0
    model.backbone.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    trainer.reference.backbone.lm_head.register_forward_hook(lambda module, args, out: out + bias)

    before = _stop_probability(model, trainer, pairs[:4])
    torch.manual_seed(0)
    history = [trainer.step([pairs[i % len(pairs)]]) for i in range(config.steps)]
    after = _stop_probability(model, trainer, pairs[:4])
    assert 0.05 < before < 0.95, before
    assert any(h["policy_grad_norm"] > 0 for h in history)
    assert after < before * 0.8, (before, after, [h["cot_tokens"] for h in history])


# -- a real short run from a cold-started model --------------------------------------------------------
@pytest.fixture(scope="module")
def cold_start(tmp_path_factory):
    """A tiny qwen2_vl model after 40 steps of the cold-start recipe on a synthetic benchmark."""
    from descore_sdk.training.cold_start import train_cold_start
    from descore_sdk.training.synth import generate_benchmark
    from descore_sdk.training.trainer import TrainConfig

    root = tmp_path_factory.mktemp("cold")
    data = generate_benchmark(root / "data", n_train=48, n_test=48, n_heldout=0, seed=0, size=(32, 32), num_frames=5)
    build_tiny_model("qwen2_vl", seed=0, dimension_names=DIMS, out_dir=root / "base")
    config = TrainConfig(steps=40, batch_size=8, lr=2e-3, warmup_steps=5, schedule="cosine", seed=0, progress=False)
    model_dir = train_cold_start(root / "base", data["train"], root / "run", config, cot_drop=0.5, lm_weight=1.0)
    return model_dir, data


def _accuracy(pred_a, pred_b, labels):
    """Macro mean accuracy without ties over VQ/MQ/TA, and its binomial standard error."""
    from descore_sdk.training.metrics import evaluate

    report = evaluate(pred_a, pred_b, labels)
    variances = []
    for dim in DIMS:
        acc = report["dims"][dim]["accuracy_without_ties"]
        decided = report["dims"][dim]["n_pairs"] - report["dims"][dim]["n_human_ties"]
        variances.append(acc * (1 - acc) / decided)
    return report["mean"]["accuracy_without_ties"], float(np.sqrt(sum(variances))) / len(DIMS)


def _fast_accuracy(model, pairs):
    from descore_sdk.training.batching import FeatureCache
    from descore_sdk.training.trainer import pair_predictions

    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    return _accuracy(*pair_predictions(model, pairs, prompts, FeatureCache(model.descore_config)))


def _think_accuracy(path, pairs):
    """Accuracy of the torch Scorer in think mode (greedy CoT of ≤ 16 tokens, then `<Reward>`)."""
    from descore_sdk import Scorer

    scorer = Scorer.from_pretrained(path, backend="torch", mode="think", max_new_tokens=16)
    pred_a, pred_b, labels = ({d: [] for d in DIMS} for _ in range(3))
    for pair in pairs:
        result = scorer.compare(pair.video_a, pair.video_b, pair.prompt)
        for d in DIMS:
            pred_a[d].append(result.a.rewards[d])
            pred_b[d].append(result.b.rewards[d])
            labels[d].append(pair.labels[d])
    return _accuracy(pred_a, pred_b, labels)


def test_short_rl_run_from_cold_start(cold_start, tmp_path):
    from descore_sdk.training.model import DeScoreModel

    model_dir, data = cold_start
    test_pairs = read_pairs(data["test_id"])
    model = DeScoreModel.from_pretrained(model_dir)
    start = {name: t.clone() for name, t in model.state_dict().items()}
    fast_before, fast_se = _fast_accuracy(model, test_pairs)
    think_before, think_se = _think_accuracy(model_dir, test_pairs)

    config = RLConfig(
        num_samples=8, max_new_tokens=16, steps=4, pairs_per_step=1, micro_batch=8, lr=1e-4, head_lr=1e-3,
        length_min_tokens=16, length_max_tokens=64, seed=0, kl_coef=1e-5, weight_decay=0.0,
    )
    result = run_rl(model, data["train"], tmp_path / "rl", config, eval_data=data["test_id"])

    # The log and the settings are written.
    log = [json.loads(line) for line in (tmp_path / "rl" / "rl_log.jsonl").read_text().splitlines()]
    evals = [entry["eval"] for entry in log if "eval" in entry]
    log = [entry for entry in log if "eval" not in entry]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4] == [h["step"] for h in result.history]
    # The run's own evaluations (before step 1 and after the last) are the Scorer's think mode (greedy
    # CoT of ≤ 16 tokens, then `<Reward>`) and fast mode of the same weights.
    from descore_sdk.training.evaluation import without_nan

    assert [e["step"] for e in evals] == [0, 4] and evals == without_nan(result.evals)
    assert evals[0]["think_accuracy"] == pytest.approx(think_before, abs=1e-9)
    assert evals[0]["fast_accuracy"] == pytest.approx(fast_before, abs=1e-9)
    assert 0.0 <= evals[0]["cot_accuracy"] <= 1.0 and 0.0 <= evals[0]["parsed"] <= 1.0
    # The verdict probe is built once, at the first evaluation, and read again on the same items.
    assert "verdicts_contradicted" in evals[0]
    assert [evals[1][f"verdict_probe_{w}_items"] for w in ("match", "mismatch")] == [evals[0][f"verdict_probe_{w}_items"] for w in ("match", "mismatch")]
    assert json.loads((tmp_path / "rl" / "rl_config.json").read_text())["bt_weight"] == 5e-3
    assert all(0.0 <= h["rule_reward"] <= 1.0 and np.isfinite(h["bt_loss"]) for h in log)

    # What trains changed; what is frozen did not.
    end = model.state_dict()
    layers = [n for n in start if ".layers." in n and "visual" not in n]
    assert any(not torch.equal(start[n], end[n]) for n in layers), "GRPO did not move the policy"
    assert not torch.equal(start["reward_head.weight"], end["reward_head.weight"]), "BT did not move the head"
    for name in start:
        if "visual" in name or "lm_head" in name:
            assert torch.equal(start[name], end[name]), name
    emb = "backbone.model.language_model.embed_tokens.weight"
    changed_rows = torch.nonzero((start[emb] != end[emb]).any(dim=1)).flatten().tolist()
    assert changed_rows == [model.reward_token_id]

    # The checkpoint loads, exactly, in training and in the Scorer.
    reloaded = DeScoreModel.from_pretrained(result.out_dir)
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, end[name]), name
    fast_after, _ = _fast_accuracy(reloaded, test_pairs)
    think_after, _ = _think_accuracy(result.out_dir, test_pairs)
    assert evals[1]["think_accuracy"] == pytest.approx(think_after, abs=1e-9)
    assert evals[1]["fast_accuracy"] == pytest.approx(fast_after, abs=1e-9)

    # A few RL steps must not cost accuracy beyond noise (2 standard errors of the cold-start accuracy,
    # ≈ 0.17 here with 48 test pairs). Measured (seed 0): fast 0.627 → 0.664, think 0.669 → 0.688,
    # standard errors 0.084 and 0.082.
    assert fast_after >= fast_before - 2 * fast_se, (fast_before, fast_after, fast_se)
    assert think_after >= think_before - 2 * think_se, (think_before, think_after, think_se)


def test_command_line(cold_start, tmp_path):
    import argparse

    model_dir, data = cold_start
    out = tmp_path / "cli"
    code = main([
        "--model", str(model_dir), "--data", str(data["train"]), "--out", str(out),
        "--steps", "1", "--num-samples", "2", "--max-new-tokens", "4", "--bt-weight", "0.01",
    ])
    assert code == 0
    assert len((out / "rl_log.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / "rl_config.json").read_text())["bt_weight"] == 0.01
    assert (out / "model.safetensors").is_file()

    # Mounted as `descore train rl`.
    parser = argparse.ArgumentParser(prog="descore")
    train = parser.add_subparsers(dest="command").add_parser("train").add_subparsers(dest="stage")
    add_rl_subcommand(train)
    args = parser.parse_args(["train", "rl", "--model", "m", "--data", "d", "--out", "o", "--kl-coef", "0.001"])
    assert args.stage == "rl" and args.kl_coef == 0.001 and args.num_samples == 8 and callable(args.func)

    # Errors are typed and readable.
    assert main(["--model", str(model_dir), "--data", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 1


@pytest.mark.parametrize(
    "bad",
    [dict(num_samples=0), dict(temperature=0.0), dict(bt_scope="all"), dict(bt_ties="x"), dict(length_min_tokens=50, length_max_tokens=10),
     dict(length_max_tokens=5000), dict(kl_coef=-1.0), dict(steps=0), dict(max_new_tokens=0),
     dict(max_draws_per_step=-1), dict(eval_every=-1), dict(eval_max_pairs=0), dict(min_p=1.5), dict(min_p=-0.1), dict(credit="each"),
     dict(draw_weights={}), dict(draw_weights={"TA": 0}), dict(draw_weights={"TA": float("nan")}), dict(draw_weights="TA")],
)
def test_bad_settings_raise(bad):
    with pytest.raises(InvalidInputError):
        RLConfig(**bad)


def _labelled(pairs, *decided):
    """The fixture's pairs relabelled: pair i decided ("A") on decided[i]'s dimensions, tied elsewhere."""
    return [dataclasses.replace(p, labels={d: ("A" if d in dims else "same") for d in DIMS}) for p, dims in zip(pairs, decided)]


def test_draw_probabilities_hand_values(pairs):
    from descore_sdk.training.rl import draw_probabilities

    relabelled = _labelled(pairs, ("TA",), ("VQ",), ("VQ", "TA"), ())
    # Weights TA 3, VQ 2: pair 0 → 3, pair 1 → 2, pair 2 → max(2, 3) = 3, pair 3 (tied) → 1; total 9.
    np.testing.assert_allclose(draw_probabilities(relabelled, {"TA": 3, "VQ": 2}), [3 / 9, 2 / 9, 3 / 9, 1 / 9])
    with pytest.raises(InvalidInputError, match="no pair is labelled on"):
        draw_probabilities(relabelled, {"TQ": 3})


def test_weighted_draws_reach_the_steps(pairs, tmp_path, monkeypatch):
    """With draw_weights the steps get pairs drawn with replacement at those odds: at TA 1e9, every
    drawn pair is one of the two TA-decided ones; without, one shuffled pass covers every pair once."""
    import descore_sdk.training.rl as rl_module

    relabelled = _labelled(pairs, ("TA",), (), ("VQ",), ("TA",), (), ("MQ",), (), ())
    drawn = []
    real_step = rl_module.DualObjectiveRL.step
    monkeypatch.setattr(rl_module.DualObjectiveRL, "step", lambda self, batch, draw=None: drawn.extend(batch) or real_step(self, batch, draw))
    model = build_tiny_model("qwen3_vl", seed=7, dimension_names=DIMS)
    config = dict(num_samples=2, max_new_tokens=2, pairs_per_step=2, length_min_tokens=1)
    run_rl(model, relabelled, tmp_path / "weighted", RLConfig(steps=4, draw_weights={"TA": 1e9}, **config))
    assert len(drawn) == 8 and {str(p.video_a) for p in drawn} <= {str(relabelled[0].video_a), str(relabelled[3].video_a)}
    drawn.clear()
    run_rl(model, relabelled, tmp_path / "passes", RLConfig(steps=4, **config))
    assert sorted(str(p.video_a) + p.prompt for p in drawn) == sorted(str(p.video_a) + p.prompt for p in relabelled)


def test_draw_weight_flag():
    import argparse

    from descore_sdk.training.rl import config_from_args

    parser = argparse.ArgumentParser(prog="descore")
    train = parser.add_subparsers(dest="command").add_parser("train").add_subparsers(dest="stage")
    add_rl_subcommand(train)
    base = ["train", "rl", "--model", "m", "--data", "d", "--out", "o"]
    assert config_from_args(parser.parse_args(base + ["--draw-weight", "TA=3", "--draw-weight", "MQ=1.5"])).draw_weights == {"TA": 3.0, "MQ": 1.5}
    assert config_from_args(parser.parse_args(base)).draw_weights is None
    assert config_from_args(parser.parse_args(base)).unjudged_sections == "shared"
    assert config_from_args(parser.parse_args(base)).verdict_consistency == 0.0
    assert config_from_args(parser.parse_args(base + ["--verdict-consistency", "0.5"])).verdict_consistency == 0.5
    assert config_from_args(parser.parse_args(base)).verdict_anchor == 0.0
    assert config_from_args(parser.parse_args(base + ["--verdict-anchor", "2"])).verdict_anchor == 2.0
    assert config_from_args(parser.parse_args(base)).bt_rows == ("sampled",)
    assert config_from_args(parser.parse_args(base + ["--bt-rows", "sampled", "greedy"])).bt_rows == ("sampled", "greedy")
    assert config_from_args(parser.parse_args(
        base + ["--credit", "section", "--no-reward-tied-dimensions", "--unjudged-sections", "zero"])).unjudged_sections == "zero"
    for bad in ("TA", "TA=x", "=3"):
        with pytest.raises(InvalidInputError, match="DIM=WEIGHT"):
            config_from_args(parser.parse_args(base + ["--draw-weight", bad]))


def test_empty_data_is_an_error(tmp_path):
    model = build_tiny_model("qwen2_vl", seed=0, dimension_names=DIMS)
    with pytest.raises(InvalidInputError, match="No preference pairs"):
        run_rl(model, [], tmp_path)


@pytest.mark.parametrize("cot_position", ["user", "none"])
def test_a_model_that_reads_its_reward_outside_the_assistant_turn_is_refused(cot_position, pairs, tmp_path):
    model = build_tiny_model("qwen2_vl", seed=0, dimension_names=DIMS)
    model.descore_config.layout.cot_position = cot_position
    with pytest.raises(InvalidInputError, match=f"cot_position 'assistant'\\); this one's is '{cot_position}'"):
        run_rl(model, pairs, tmp_path / "run", RLConfig(steps=1, pairs_per_step=1, num_samples=2, max_new_tokens=4))
    assert not (tmp_path / "run").exists()
