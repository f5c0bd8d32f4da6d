"""JRM: the "explain" row layout, its reward equal to the fast layout's (causal attention), the joint
loss against an independent composition, and the checkpoint it writes.

References: the tokenizer's own encoding, separate fast-layout forwards, a hand-written BT formula,
`DeScoreModel.forward`'s own mean LM loss, and the Scorer scoring the saved checkpoint.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from descore_sdk import Scorer  # noqa: E402
from descore_sdk.prompt import PromptBuilder  # noqa: E402
from descore_sdk.training.batching import FeatureCache, PairCollator, build_row, collate_rows  # noqa: E402
from descore_sdk.training.data import read_pairs  # noqa: E402
from descore_sdk.training.jrm import train_jrm  # noqa: E402
from descore_sdk.training.losses import IGNORE_INDEX  # noqa: E402
from descore_sdk.training.model import DeScoreModel  # noqa: E402
from descore_sdk.training.synth import generate_benchmark  # noqa: E402
from descore_sdk.training.tiny import build_tiny_model  # noqa: E402
from descore_sdk.training.trainer import PreferenceObjective, TrainConfig  # noqa: E402

DIMS = ("VQ", "MQ", "TA")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return generate_benchmark(tmp_path_factory.mktemp("bench"), n_train=12, n_test=6, n_heldout=0, seed=3)


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_5_vl"])
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    build_tiny_model(request.param, seed=5, dimension_names=DIMS, out_dir=path)
    return path


def _parts(path):
    model = DeScoreModel.from_pretrained(path)
    return model, PromptBuilder(model.tokenizer, model.descore_config), FeatureCache(model.descore_config)


def test_explain_row_layout(checkpoint, bench):
    model, prompts, cache = _parts(checkpoint)
    pair = read_pairs(bench["train"])[0]
    features = cache(pair.video_b)
    fast = build_row(prompts, features, pair.prompt, "fast").input_ids
    row = build_row(prompts, features, pair.prompt, "explain", pair.rationale_b)
    cot = model.tokenizer.encode(pair.rationale_b, add_special_tokens=False).ids
    stop = model.tokenizer.token_to_id("<|im_end|>")
    np.testing.assert_array_equal(row.input_ids, np.concatenate([fast, cot, [stop]]))  # fast ids, then the rationale
    assert (row.labels[: len(fast)] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(row.labels[len(fast):], np.concatenate([cot, [stop]]))


def test_explain_reward_equals_fast_reward(checkpoint, bench):
    model, prompts, cache = _parts(checkpoint)
    pad = model.tokenizer.token_to_id("<|endoftext|>")
    pairs = read_pairs(bench["train"])[:3]
    explain = [build_row(prompts, cache(p.video_a), p.prompt, "explain", p.rationale_a) for p in pairs]
    batch = collate_rows(explain, pad)
    batch.pop("labels")
    with torch.no_grad():
        rewards = model(**batch).rewards
        for i, p in enumerate(pairs):
            fast = collate_rows([build_row(prompts, cache(p.video_a), p.prompt, "fast")], pad)
            torch.testing.assert_close(rewards[i], model(**fast).rewards[0], rtol=1e-5, atol=1e-6)


def test_joint_loss_equals_bt_plus_weighted_lm(checkpoint, bench):
    model, prompts, cache = _parts(checkpoint)
    pad = model.tokenizer.token_to_id("<|endoftext|>")
    pairs = read_pairs(bench["train"])[:4]
    collator = PairCollator(prompts, cache, model.dimension_names, recipe="jrm", seed=0)
    batch = collator(pairs, [0, 1, 2, 3])
    assert bool(batch.use_cot.all())
    objective = PreferenceObjective(lm_weight=0.7)
    with torch.no_grad():
        loss, _ = objective(model, batch, objective.counts(batch))

        # Independent reference: BT by hand from separate fast-layout forwards ...
        def fast_rewards(videos):
            rows = [build_row(prompts, cache(v), p.prompt, "fast") for v, p in zip(videos, pairs)]
            return model(**collate_rows(rows, pad)).rewards.double()

        ra, rb = fast_rewards([p.video_a for p in pairs]), fast_rewards([p.video_b for p in pairs])
        terms = []
        for i, p in enumerate(pairs):
            for k, dim in enumerate(model.dimension_names):
                label = p.labels[dim]
                if label != "same":
                    delta = float(ra[i, k] - rb[i, k]) * (1 if label == "A" else -1)
                    terms.append(math.log1p(math.exp(-delta)))
        # ... plus the model's own mean cross-entropy over the rationale tokens of the explain rows.
        rows = [build_row(prompts, cache(p.video_a), p.prompt, "explain", p.rationale_a) for p in pairs]
        rows += [build_row(prompts, cache(p.video_b), p.prompt, "explain", p.rationale_b) for p in pairs]
        lm = model(**collate_rows(rows, pad)).loss
    expected = sum(terms) / len(terms) + 0.7 * float(lm)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_jrm_checkpoint_is_marked_and_scores_in_fast_mode(bench, tmp_path):
    base = tmp_path / "base"
    build_tiny_model("qwen2_vl", seed=8, dimension_names=DIMS, out_dir=base)
    config = TrainConfig(steps=8, batch_size=4, lr=5e-3, train_lm_head=True, progress=False)
    final = train_jrm(base, bench["train"], tmp_path / "run", config, lm_weight=1.0)
    saved = json.loads((final / "descore_config.json").read_text())
    assert saved["method"] == "jrm"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lm = [r["lm_loss"] for r in records if "lm_loss" in r]
    assert lm[-1] < lm[0]  # the rationale LM is being learned
    assert all(r["cot_fraction"] == 1.0 for r in records if "cot_fraction" in r)

    model, prompts, cache = _parts(final)
    pair = read_pairs(bench["test_id"])[0]
    scorer = Scorer.from_pretrained(final, backend="torch", mode="fast")
    result = scorer.score(pair.video_a, pair.prompt)
    with torch.no_grad():
        row = build_row(prompts, cache(pair.video_a), pair.prompt, "fast")
        expected = model(**collate_rows([row], model.tokenizer.token_to_id("<|endoftext|>"))).rewards[0]
    assert [result.rewards[d] for d in DIMS] == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-6)
