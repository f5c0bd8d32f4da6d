"""Cold-start training: inputs identical to the Scorer's, padding-invariant rewards, the shared CoT
drop, what trains (only the <Reward> embedding row; frozen parts bitwise unchanged), LoRA mechanics,
and the accuracy the recipe reaches on the synthetic benchmark.

References: the Scorer's own preprocessing (`Scorer._load/_prepare`), unpadded single-row forwards,
the tokenizer's own encoding of the rationale, the initial weights (bitwise), the merged checkpoint
reloaded by `DeScoreModel.from_pretrained`, and the benchmark's ground-truth labels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from descore_sdk import Scorer  # noqa: E402
from descore_sdk.options import ScoreOptions  # noqa: E402
from descore_sdk.prompt import PromptBuilder  # noqa: E402
from descore_sdk.training.batching import FeatureCache, PairCollator, build_row, collate_rows  # noqa: E402
from descore_sdk.training.cold_start import train_cold_start  # noqa: E402
from descore_sdk.training.data import read_pairs  # noqa: E402
from descore_sdk.training.losses import IGNORE_INDEX  # noqa: E402
from descore_sdk.training.model import DeScoreModel  # noqa: E402
from descore_sdk.training.synth import generate_benchmark  # noqa: E402
from descore_sdk.training.tiny import build_tiny_model  # noqa: E402
from descore_sdk.training.trainer import TrainConfig  # noqa: E402

DIMS = ("VQ", "MQ", "TA", "overall")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return generate_benchmark(tmp_path_factory.mktemp("bench"), n_train=12, n_test=8, n_heldout=4, seed=0)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    build_tiny_model(request.param, seed=1, dimension_names=DIMS, out_dir=path)
    return path


@pytest.fixture(scope="module")
def q2_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("q2")
    build_tiny_model("qwen2_vl", seed=2, dimension_names=DIMS, out_dir=path)
    return path


def _parts(path):
    model = DeScoreModel.from_pretrained(path)
    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    return model, prompts, FeatureCache(model.descore_config)


def test_training_rows_equal_the_scorers_inputs(checkpoint, bench):
    """One code path: a fast training row is exactly what the Scorer feeds the backend."""
    model, prompts, cache = _parts(checkpoint)
    scorer = Scorer.from_pretrained(checkpoint, backend="torch")
    pair = read_pairs(bench["train"])[0]
    for mode in ("fast", "think"):
        options = ScoreOptions(mode=mode)
        reference = scorer._prepare(scorer._load(pair.video_a, options), pair.prompt, options)
        features = cache(pair.video_a)
        np.testing.assert_array_equal(features.patches, reference.patches)
        np.testing.assert_array_equal(features.grid_thw, reference.grid_thw)
        assert features.second_per_grid == reference.second_per_grid
        if mode == "fast":
            np.testing.assert_array_equal(build_row(prompts, features, pair.prompt, "fast").input_ids, reference.input_ids)
        else:
            row = build_row(prompts, features, pair.prompt, "think", pair.rationale_a)
            cot = np.asarray(model.tokenizer.encode(pair.rationale_a, add_special_tokens=False).ids)
            expected = np.concatenate([reference.input_ids, cot, [model.reward_token_id]])
            np.testing.assert_array_equal(row.input_ids, expected)
            stop = model.tokenizer.token_to_id("<|im_end|>")
            head = len(reference.input_ids)
            assert (row.labels[:head] == IGNORE_INDEX).all()
            np.testing.assert_array_equal(row.labels[head:-1], cot)
            assert row.labels[-1] == stop  # the last CoT token learns to stop
    assert cache.misses == 1 and cache.hits == 1


def test_feature_cache_keeps_decoded_clips_within_its_byte_budget(checkpoint, bench, tmp_path):
    """Cached or not, the features are the Scorer's (`inputs.video_features`, decoding afresh); the
    cache holds at most `max_bytes` of frames, drops the least recently used, and rereads an edited file."""
    import shutil

    from descore_sdk.inputs import load_clip, video_features

    model = DeScoreModel.from_pretrained(checkpoint)
    config = model.descore_config
    pairs = read_pairs(bench["train"])[:2]
    videos = [pairs[0].video_a, pairs[0].video_b, pairs[1].video_a]
    sizes = [load_clip(v, config).frames.nbytes for v in videos]
    cache = FeatureCache(config, max_bytes=sizes[0] + sizes[1])
    for video in videos + videos[::-1]:
        got, want = cache(video), video_features(video, config)
        np.testing.assert_array_equal(got.patches, want.patches)
        np.testing.assert_array_equal(got.grid_thw, want.grid_thw)
        np.testing.assert_array_equal(got.timestamps, want.timestamps)
        assert got.second_per_grid == want.second_per_grid
        assert cache.bytes <= sizes[0] + sizes[1]
    # v0 v1 v2 (drops v0) | v2 hit, v1 hit, v0 miss (drops v2)
    assert (cache.misses, cache.hits, len(cache)) == (4, 2, 2)
    # Warming ahead of training fills the cache up to its budget and no further; a warmed clip is a hit.
    warmed = FeatureCache(config, max_bytes=sizes[0] + sizes[1])
    assert [warmed.warm(v) for v in videos] == [True, True, False]
    assert len(warmed) == 2 and warmed.bytes == sizes[0] + sizes[1]
    np.testing.assert_array_equal(warmed(videos[0]).patches, video_features(videos[0], config).patches)
    assert (warmed.hits, warmed.misses) == (1, 0)
    empty = FeatureCache(config, max_bytes=0)
    empty(videos[0]), empty(videos[0])
    assert (empty.misses, empty.hits, len(empty), empty.bytes) == (2, 0, 0, 0)
    # An edited file (new size/mtime) is decoded again, not served from the cache.
    copy = tmp_path / "clip.mp4"
    shutil.copyfile(videos[0], copy)
    unbounded = FeatureCache(config, max_bytes=None)
    first = unbounded(copy).patches
    shutil.copyfile(videos[2], copy)
    np.testing.assert_array_equal(unbounded(copy).patches, video_features(videos[2], config).patches)
    assert unbounded.misses == 2 and not np.array_equal(first, unbounded(copy).patches)


def test_padded_batch_rewards_equal_single_row_rewards(checkpoint, bench):
    model, prompts, cache = _parts(checkpoint)
    pairs = read_pairs(bench["train"])[:3]
    pad = model.tokenizer.token_to_id("<|endoftext|>")
    rows = [build_row(prompts, cache(p.video_a), p.prompt, "think", p.rationale_a) for p in pairs[:2]]
    rows.append(build_row(prompts, cache(pairs[2].video_b), pairs[2].prompt, "fast"))
    assert len({len(r.input_ids) for r in rows}) > 1  # really padded
    batch = collate_rows(rows, pad)
    batch.pop("labels")
    with torch.no_grad():
        together = model(**batch).rewards
        for i, row in enumerate(rows):
            alone = collate_rows([row], pad)
            alone.pop("labels", None)
            torch.testing.assert_close(together[i], model(**alone).rewards[0], rtol=1e-5, atol=1e-5)


def test_cot_drop_is_shared_by_the_pair_and_has_the_asked_rate(q2_checkpoint, bench):
    model, prompts, cache = _parts(q2_checkpoint)
    pairs = read_pairs(bench["train"])
    collator = PairCollator(prompts, cache, model.dimension_names, recipe="descore", cot_drop=0.5, seed=7)
    draws = [collator.uses_cot(pairs[0], key) for key in range(4000)]
    assert abs(np.mean(draws) - 0.5) < 0.03
    assert draws == [collator.uses_cot(pairs[0], key) for key in range(4000)]  # a pure function of (seed, key)
    batch = collator(pairs[:6], list(range(100, 106)))
    n = batch.num_pairs
    reward_id = model.reward_token_id
    for i in range(n):
        a, b = batch.inputs["input_ids"][i], batch.inputs["input_ids"][n + i]
        ends_fast = [int(row[row != collator.pad_id][-1]) == reward_id and int((row == reward_id).sum()) == 1 for row in (a, b)]
        lengths = [int((row != collator.pad_id).sum()) for row in (a, b)]
        fast = [bool(l < 150) for l in lengths]  # fast rows are ~100 tokens, with a rationale ~170
        assert fast[0] == fast[1] == (not bool(batch.use_cot[i]))  # both videos laid out the same way
        assert all(ends_fast)
    never = PairCollator(prompts, cache, model.dimension_names, recipe="descore", cot_drop=1.0)
    always = PairCollator(prompts, cache, model.dimension_names, recipe="descore", cot_drop=0.0)
    assert not any(never.uses_cot(pairs[0], k) for k in range(50))
    assert all(always.uses_cot(pairs[0], k) for k in range(50))


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("train_vision", [True, False])
def test_only_the_reward_row_of_the_embeddings_trains(q2_checkpoint, bench, tmp_path, train_vision):
    before = DeScoreModel.from_pretrained(q2_checkpoint)
    initial = _weights(before)
    config = TrainConfig(steps=3, batch_size=4, lr=1e-2, weight_decay=0.1, train_vision=train_vision, progress=False)
    final = train_cold_start(q2_checkpoint, bench["train"], tmp_path / "run", config, cot_drop=0.5, lm_weight=0.5)
    after = _weights(DeScoreModel.from_pretrained(final))
    reward_id = before.reward_token_id
    emb_key = "model.language_model.embed_tokens.weight"
    emb_before, emb_after = initial[f"backbone.{emb_key}"], after[f"backbone.{emb_key}"]
    others = torch.ones(emb_before.shape[0], dtype=torch.bool)
    others[reward_id] = False
    assert torch.equal(emb_before[others], emb_after[others])  # bitwise, despite weight decay
    assert not torch.equal(emb_before[reward_id], emb_after[reward_id])
    assert torch.equal(initial["backbone.lm_head.weight"], after["backbone.lm_head.weight"])  # frozen by default
    assert not torch.equal(initial["reward_head.weight"], after["reward_head.weight"])
    layer = "backbone.model.language_model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(initial[layer], after[layer])
    vision = [k for k in initial if ".visual." in k]
    changed = [k for k in vision if not torch.equal(initial[k], after[k])]
    if train_vision:
        assert changed
    else:
        assert not changed


def test_lora_trains_adapters_and_exports_a_merged_checkpoint(q2_checkpoint, bench, tmp_path):
    from descore_sdk.training.trainer import prepare_model

    config = TrainConfig(steps=3, batch_size=4, lr=5e-3, lora=True, lora_r=8, lora_alpha=16, progress=False)
    final = train_cold_start(q2_checkpoint, bench["train"], tmp_path / "run", config, cot_drop=0.5)
    ckpt = tmp_path / "run" / "checkpoints" / "step-000003"
    assert (ckpt / "trainable.safetensors").is_file()

    from safetensors.torch import load_file

    trainable = load_file(str(ckpt / "trainable.safetensors"))
    assert any("lora_A" in k for k in trainable) and any("lora_B" in k for k in trainable)
    assert not any(k.endswith("q_proj.base_layer.weight") for k in trainable)  # base weights stay frozen
    assert not any(".visual." in k and "lora" in k for k in trainable)  # LoRA only on the language model

    # Rebuild the trained LoRA model from base + trainable tensors, and compare its rewards with the
    # merged checkpoint that the run exported (an independent path: peft's merge + save + reload).
    lora_model = prepare_model(DeScoreModel.from_pretrained(q2_checkpoint), config).eval()
    with torch.no_grad():
        params = dict(lora_model.named_parameters())
        for name, tensor in trainable.items():
            params[name].copy_(tensor)
    merged = DeScoreModel.from_pretrained(final).eval()
    base = DeScoreModel.from_pretrained(q2_checkpoint)
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.backbone.state_dict()[key], base.backbone.state_dict()[key])
    _, prompts, cache = _parts(final)
    pair = read_pairs(bench["test_id"])[0]
    batch = collate_rows([build_row(prompts, cache(pair.video_a), pair.prompt, "fast")], model_pad(merged))
    with torch.no_grad():
        torch.testing.assert_close(lora_model(**batch).rewards, merged(**batch).rewards, rtol=1e-4, atol=1e-5)


def model_pad(model):
    return model.tokenizer.token_to_id("<|endoftext|>")


def test_metrics_log_and_eval_records(q2_checkpoint, bench, tmp_path):
    config = TrainConfig(steps=4, batch_size=4, lr=1e-3, eval_every=2, progress=False)
    train_cold_start(q2_checkpoint, bench["train"], tmp_path / "run", config, eval_data=bench["test_id"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert set(evals[0]["eval"]["dims"]) == set(DIMS)
    assert records[-1]["event"] == "end" and len(records[-1]["param_sha256_per_rank"]) == 1
    saved = json.loads((tmp_path / "run" / "model" / "descore_config.json").read_text())
    assert saved["method"] == "descore" and saved["dimension_names"] == list(DIMS)


@pytest.mark.slow
def test_quick_train_learns_visual_quality_within_minutes(tmp_path):
    """`quick_train` from nothing: the trained model ranks a clean clip above its blurred / noisy twin.

    Reference: the benchmark's ground truth (which video carries which degradation), scored here with
    the Scorer in fast mode; plus the run's own held-in evaluation for the other dimensions (printed).
    """
    import time

    from descore_sdk.training.cold_start import quick_train

    started = time.perf_counter()
    model_dir = quick_train(tmp_path / "quick")
    elapsed = time.perf_counter() - started
    records = [json.loads(line) for line in (tmp_path / "quick" / "run" / "metrics.jsonl").read_text().splitlines()]
    report = [r for r in records if "eval" in r][-1]["eval"]
    print(f"quick_train: {elapsed:.0f} s; test_id accuracy without ties:",
          {d: round(v["accuracy_without_ties"], 3) for d, v in report["dims"].items()})

    scorer = Scorer.from_pretrained(model_dir, backend="torch", mode="fast")
    wins = []
    for pair in read_pairs(tmp_path / "quick" / "data" / "test_id.jsonl"):
        factors_a, factors_b = pair.meta["meta_a"]["factors"], pair.meta["meta_b"]["factors"]
        if pair.meta["kind"] != "clean_vs_degraded" or not set(factors_a) | set(factors_b) <= {"blur", "noise"}:
            continue
        clean, degraded = (pair.video_a, pair.video_b) if not factors_a else (pair.video_b, pair.video_a)
        wins.append(scorer.score(clean, pair.prompt).reward > scorer.score(degraded, pair.prompt).reward)
    assert len(wins) >= 3
    assert np.mean(wins) >= 0.9, wins
    assert report["dims"]["VQ"]["accuracy_without_ties"] >= 0.9
    assert elapsed < 600  # ~2-3 min on 2 idle cores; generous for a loaded CI machine
