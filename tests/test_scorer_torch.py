"""The Scorer on the torch reference backend, checked against transformers' own forward and generate.

References: the model side is recomputed here straight from the HF backbone (`backbone.model(...)`
last hidden state → head weight), prompt ids come from transformers' processor (see test_prompt.py),
and greedy decoding is checked token by token against the argmax of a teacher-forced HF forward.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from descore_sdk import Scorer  # noqa: E402
from descore_sdk.errors import InvalidInputError, ModelLoadError, VideoDecodeError  # noqa: E402
from descore_sdk.preprocess import preprocess_frames  # noqa: E402
from descore_sdk.video import load_video  # noqa: E402

FAMILIES = ["qwen3_vl", "qwen2_5_vl", "qwen2_vl"]
PROMPT = "A girl in a pink dress walks to a chair and sits on it."


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from descore_sdk.training.tiny import build_tiny_model

    out = {}
    for i, family in enumerate(FAMILIES):
        path = tmp_path_factory.mktemp(family)
        dims = ("VQ", "MQ", "TA") if family == "qwen2_5_vl" else ("overall",)
        build_tiny_model(family, seed=i, dimension_names=dims, out_dir=path)
        out[family] = path
    return out


def _reference_reward(scorer, video, prompt, cot_ids=()):
    """Reward recomputed from the HF backbone's own forward for prompt [+ CoT] + <Reward>."""
    model = scorer.backend.model
    cfg = scorer.config
    clip = load_video(video, fps=cfg.sampling.fps, max_pixels=cfg.sampling.max_pixels,
                      min_pixels=cfg.sampling.min_pixels, factor=cfg.vision.factor)
    patches, grid = preprocess_frames(clip.frames, cfg.vision, cfg.sampling)
    ids = scorer.prompts.build(prompt, grid, timestamps=clip.timestamps, mode="think").input_ids
    ids = np.concatenate([ids, np.asarray(cot_ids, dtype=np.int64), [model.reward_token_id]])
    input_ids = torch.from_numpy(ids)[None]
    kwargs = dict(
        pixel_values_videos=torch.from_numpy(patches),
        video_grid_thw=torch.from_numpy(np.asarray(grid))[None],
        mm_token_type_ids=(input_ids == model.backbone.config.video_token_id).int() * 2,
    )
    if cfg.family == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = torch.tensor([2 * clip.duration_s / len(clip.frames)])
    with torch.no_grad():
        out = model.backbone.model(input_ids=input_ids, **kwargs)
        hidden = out.last_hidden_state[0, -1]
        logits = model.backbone.lm_head(out.last_hidden_state[0])
        reward = model.reward_head.weight @ hidden
    return reward.numpy(), logits.numpy(), len(ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_reward_equals_head_on_transformers_forward(checkpoints, sample_videos, family):
    scorer = Scorer.from_pretrained(checkpoints[family], mode="fast")
    result = scorer.score(sample_videos[0], PROMPT)
    expected, _, n = _reference_reward(scorer, sample_videos[0], PROMPT)
    got = np.array([result.rewards[d] for d in scorer.config.dimension_names])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert result.mode == "fast" and result.rationale is None and result.num_cot_tokens == 0
    assert result.num_prompt_tokens == n
    assert result.reward == pytest.approx(float(np.mean(got)) if len(got) > 1 else float(got[0]))
    assert {"decode", "preprocess", "score", "total"} <= set(result.timings_ms)


@pytest.mark.parametrize("family", FAMILIES)
def test_think_mode_greedy_cot_and_reward(checkpoints, sample_videos, family):
    scorer = Scorer.from_pretrained(checkpoints[family], mode="think", max_new_tokens=12)
    result = scorer.score(sample_videos[1], PROMPT)
    cot = np.asarray(scorer.prompts.tokenizer.encode(result.rationale, add_special_tokens=False).ids) if result.rationale else None
    assert 0 < result.num_cot_tokens <= 12
    # Recover the CoT ids from the backend directly and check them against teacher-forced argmax.
    inputs = scorer._prepare(scorer._load(sample_videos[1], scorer.options), PROMPT, scorer.options)
    out = scorer.backend.score(inputs, scorer.options, scorer.stop_ids, 12)
    cot_ids = out.cot_ids
    assert len(cot_ids) == result.num_cot_tokens
    expected, logits, n = _reference_reward(scorer, sample_videos[1], PROMPT, cot_ids)
    prompt_len = n - len(cot_ids) - 1
    greedy = logits[prompt_len - 1 : prompt_len - 1 + len(cot_ids)].argmax(-1)
    np.testing.assert_array_equal(cot_ids, greedy)
    got = np.array([result.rewards[d] for d in scorer.config.dimension_names])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert result.rationale == scorer.prompts.decode(cot_ids)
    assert cot is None or len(cot) > 0


def test_sampling_is_reproducible_with_a_seed(checkpoints, sample_videos):
    path = checkpoints["qwen3_vl"]
    kwargs = dict(mode="think", max_new_tokens=10, temperature=1.5, top_p=0.9, top_k=50, seed=7)
    a = Scorer.from_pretrained(path, **kwargs).score(sample_videos[2], PROMPT)
    b = Scorer.from_pretrained(path, **kwargs).score(sample_videos[2], PROMPT)
    assert a.rationale == b.rationale and a.reward == b.reward
    greedy = Scorer.from_pretrained(path, mode="think", max_new_tokens=10).score(sample_videos[2], PROMPT)
    assert greedy.rationale != a.rationale  # a hot temperature leaves the greedy path on a random model


def test_video_inputs_path_bytes_fileobj_and_array_agree(checkpoints, sample_videos):
    scorer = Scorer.from_pretrained(checkpoints["qwen2_vl"], mode="fast")
    path = sample_videos[3]
    data = path.read_bytes()
    r_path = scorer.score(path, PROMPT).reward
    assert scorer.score(str(path), PROMPT).reward == r_path
    assert scorer.score(data, PROMPT).reward == pytest.approx(r_path, abs=1e-6)
    assert scorer.score(io.BytesIO(data), PROMPT).reward == pytest.approx(r_path, abs=1e-6)
    clip = load_video(path, fps=2.0)
    arr = scorer.score(clip.frames, PROMPT)
    assert arr.num_frames == len(clip.frames) and math.isfinite(arr.reward)


def test_compare_and_batch(checkpoints, sample_videos):
    scorer = Scorer.from_pretrained(checkpoints["qwen3_vl"], mode="fast")
    a, b = sample_videos[0], sample_videos[1]
    pair = scorer.compare(a, b, PROMPT)
    ra, rb = scorer.score(a, PROMPT).reward, scorer.score(b, PROMPT).reward
    assert pair.a.reward == ra and pair.b.reward == rb
    assert pair.prob_a_better == pytest.approx(1 / (1 + math.exp(-(ra - rb))), rel=1e-12)
    assert pair.preferred == ("A" if ra > rb else "B")
    batch = scorer.score_batch([a, b], PROMPT)
    assert [r.reward for r in batch] == [ra, rb]
    with pytest.raises(InvalidInputError, match="2 videos but 3 prompts"):
        scorer.score_batch([a, b], ["x", "y", "z"])


def test_errors_are_typed_and_say_what_to_do(checkpoints, tmp_path, sample_videos):
    scorer = Scorer.from_pretrained(checkpoints["qwen3_vl"], mode="fast")
    with pytest.raises(InvalidInputError, match="prompt is empty"):
        scorer.score(sample_videos[0], "")
    with pytest.raises(VideoDecodeError):
        scorer.score(tmp_path / "missing.mp4", PROMPT)
    with pytest.raises(ModelLoadError, match="does not exist"):
        Scorer.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither a bundle"):
        Scorer.from_pretrained(tmp_path / "empty")
    with pytest.raises(InvalidInputError, match="Unknown scoring option"):
        Scorer.from_pretrained(checkpoints["qwen3_vl"], temprature=0.5)
    with pytest.raises(InvalidInputError, match="mode must be"):
        Scorer.from_pretrained(checkpoints["qwen3_vl"], mode="slow")
    with pytest.raises(InvalidInputError, match="Unknown backend"):
        Scorer.from_pretrained(checkpoints["qwen3_vl"], backend="tensorflow")


def test_prompt_longer_than_context_is_a_typed_error(checkpoints, sample_videos):
    from descore_sdk.errors import ContextLengthError

    scorer = Scorer.from_pretrained(checkpoints["qwen2_vl"], mode="fast")
    assert scorer.config.max_context == scorer.backend.model.backbone.config.text_config.max_position_embeddings
    with pytest.raises(ContextLengthError, match="lower max_frames / max_pixels"):
        scorer.score(sample_videos[0], "word " * scorer.config.max_context)


def test_cot_never_contains_vision_placeholders_or_reward(checkpoints, sample_videos):
    """Make the random model love <|video_pad|> and <Reward>: generation must still avoid them."""
    scorer = Scorer.from_pretrained(checkpoints["qwen2_vl"], mode="think", max_new_tokens=8)
    model = scorer.backend.model
    banned = [model.backbone.config.video_token_id, model.reward_token_id]
    with torch.no_grad():
        model.backbone.lm_head.weight[banned] *= 0
        model.backbone.lm_head.bias = None
        model.backbone.lm_head.weight[banned] += 50 * model.backbone.lm_head.weight.abs().max()
    inputs = scorer._prepare(scorer._load(sample_videos[0], scorer.options), PROMPT, scorer.options)
    out = scorer.backend.score(inputs, scorer.options, scorer.stop_ids, 8)
    assert len(out.cot_ids) > 0 and not np.isin(out.cot_ids, banned).any()


def test_jrm_checkpoint_defaults_to_fast_mode(tmp_path, sample_videos):
    from descore_sdk.training.tiny import build_tiny_model

    model = build_tiny_model("qwen2_vl", seed=3)
    model.descore_config.method = "jrm"
    model.save_pretrained(tmp_path)
    assert Scorer.from_pretrained(tmp_path).options.mode == "fast"
    assert Scorer.from_pretrained(tmp_path, mode=None).options.mode == "fast"
    assert Scorer.from_pretrained(tmp_path, mode="think").options.mode == "think"  # an explicit choice wins
