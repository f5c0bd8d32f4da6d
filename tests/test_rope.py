"""descore_sdk.rope against transformers' own M-RoPE code (tiny random Qwen-VL models, CPU).

References, all independent of descore_sdk.rope:
* `Qwen{2,2_5,3}VLModel.get_rope_index` of transformers on the same token layouts, with
  `mm_token_type_ids` built here from the ids;
* the position ids HF `generate()` feeds the language model at each cached decode step;
* HF `get_rope_index` on the prompt with text appended (what a full-sequence forward, e.g. training,
  gives the generated tokens);
* a hand-worked example.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from descore_sdk import rope  # noqa: E402
from descore_sdk.errors import InvalidInputError  # noqa: E402
from descore_sdk.rope import decode_position_ids, mm_token_types, mrope_position_ids  # noqa: E402

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
PAD, IMG, VID, VSTART, VEND = 0, 90, 91, 92, 93
MERGE = 2
PATCH_DIM = 3 * 2 * 2 * 2  # channels × temporal_patch × patch² of the tiny vision towers


# -- tiny HF models ------------------------------------------------------------------------------

_TEXT = dict(
    vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=1e4),
)
_IDS = dict(image_token_id=IMG, video_token_id=VID, vision_start_token_id=VSTART)
_MODELS: dict = {}


def hf_model(family: str, tokens_per_second: int = 2):
    """A tiny random `...ForConditionalGeneration` of the family (cached)."""
    key = (family, tokens_per_second)
    if key not in _MODELS:
        t = transformers
        if family == "qwen2_vl":
            config = t.Qwen2VLConfig(
                text_config=_TEXT,
                vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=1, patch_size=2),
                **_IDS,
            )
            cls = t.Qwen2VLForConditionalGeneration
        elif family == "qwen2_5_vl":
            config = t.Qwen2_5_VLConfig(
                text_config=_TEXT,
                vision_config=dict(
                    depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32, patch_size=2,
                    tokens_per_second=tokens_per_second, fullatt_block_indexes=[0], window_size=8,
                ),
                **_IDS,
            )
            cls = t.Qwen2_5_VLForConditionalGeneration
        else:
            text = dict(_TEXT, head_dim=16, rope_parameters=dict(_TEXT["rope_parameters"], mrope_interleaved=True))
            config = t.Qwen3VLConfig(
                text_config=text,
                vision_config=dict(
                    depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32, patch_size=2,
                    num_position_embeddings=16, deepstack_visual_indexes=[0],
                ),
                **_IDS,
            )
            cls = t.Qwen3VLForConditionalGeneration
        torch.manual_seed(0)
        _MODELS[key] = cls(config).eval()
    return _MODELS[key]


def hf_rope_index(family, ids, *, images=(), videos=(), attention_mask=None, seconds=None, tokens_per_second=2):
    """transformers' get_rope_index → (positions (3, B, L), rope_deltas (B, 1)) as numpy."""
    ids = np.asarray(ids)
    mm_types = np.zeros_like(ids)
    mm_types[ids == IMG] = 1
    mm_types[ids == VID] = 2
    kwargs = dict(
        image_grid_thw=torch.tensor(np.array(images).reshape(-1, 3)) if len(images) else None,
        video_grid_thw=torch.tensor(np.array(videos).reshape(-1, 3)) if len(videos) else None,
        attention_mask=torch.tensor(attention_mask) if attention_mask is not None else None,
    )
    if seconds is not None:
        kwargs["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)
    model = hf_model(family, tokens_per_second).model
    pos, deltas = model.get_rope_index(torch.tensor(ids), torch.tensor(mm_types), **kwargs)
    return pos.numpy(), deltas.numpy()


# -- token layouts as the Qwen-VL processors write them ----------------------------------------------


def tokens_for(family, segment, rng):
    """Token ids of one segment: ("text", n) | ("image", (t, h, w)) | ("video", (t, h, w))."""
    kind, value = segment
    if kind == "text":
        return rng.integers(1, 80, size=value).tolist()
    t, h, w = value
    per_group = h * w // MERGE**2
    if kind == "image":
        return [VSTART] + [IMG] * (t * per_group) + [VEND]
    if family == "qwen3_vl":
        # Qwen3-VL: "<{seconds:.1f} seconds>" then its own vision_start … vision_end per temporal group.
        out = []
        for _ in range(t):
            out += rng.integers(1, 80, size=int(rng.integers(3, 6))).tolist()
            out += [VSTART] + [VID] * per_group + [VEND]
        return out
    return [VSTART] + [VID] * (t * per_group) + [VEND]


def build_row(family, segments, rng):
    ids, images, videos = [], [], []
    for seg in segments:
        ids += tokens_for(family, seg, rng)
        if seg[0] == "image":
            images.append(seg[1])
        elif seg[0] == "video":
            videos.append(seg[1])
    return ids, images, videos


def build_batch(family, rows_segments, rng, padding="left"):
    """Several prompts padded to one length. Grids are listed in prompt order over the batch."""
    rows = [build_row(family, segs, rng) for segs in rows_segments]
    length = max(len(r[0]) for r in rows)
    ids = np.full((len(rows), length), PAD, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for b, (row, _, _) in enumerate(rows):
        where = slice(length - len(row), length) if padding == "left" else slice(0, len(row))
        ids[b, where] = row
        mask[b, where] = 1
    images = [g for r in rows for g in r[1]]
    videos = [g for r in rows for g in r[2]]
    return ids, mask, images, videos


def random_segments(rng, max_videos=3, max_images=2):
    vision = [("video", (int(rng.integers(1, 5)), int(rng.choice([2, 4, 6, 10])), int(rng.choice([2, 4, 6, 10]))))
              for _ in range(int(rng.integers(1, max_videos + 1)))]
    vision += [("image", (1, int(rng.choice([2, 6, 8])), int(rng.choice([2, 4, 10]))))
               for _ in range(int(rng.integers(0, max_images + 1)))]
    order = rng.permutation(len(vision))
    segments = [("text", int(rng.integers(0, 4)))]
    for i in order:
        segments += [vision[i], ("text", int(rng.integers(0, 4)))]
    segments.append(("text", int(rng.integers(1, 4))))  # prompts end in text (the chat template's header)
    return segments


def ours(family, ids, mask, images, videos, seconds=None, tokens_per_second=2.0):
    return mrope_position_ids(
        ids, family=family, image_token_id=IMG, video_token_id=VID,
        image_grid_thw=np.array(images).reshape(-1, 3) if images else None,
        video_grid_thw=np.array(videos).reshape(-1, 3) if videos else None,
        attention_mask=mask, second_per_grid_ts=seconds, spatial_merge_size=MERGE,
        tokens_per_second=tokens_per_second,
    )


def assert_matches_hf(family, ids, mask, images, videos, seconds=None, tokens_per_second=2):
    pos, deltas = ours(family, ids, mask, images, videos, seconds, tokens_per_second)
    ref_pos, ref_deltas = hf_rope_index(
        family, ids, images=images, videos=videos, attention_mask=mask, seconds=seconds,
        tokens_per_second=tokens_per_second,
    )
    assert pos.dtype == np.int64 and pos.shape == (3, *ids.shape) and deltas.shape == (ids.shape[0], 1)
    np.testing.assert_array_equal(pos, ref_pos)
    for b in range(ids.shape[0]):
        valid = np.flatnonzero(mask[b]) if mask is not None else np.arange(ids.shape[1])
        last = ref_pos[:, b, valid[-1]]
        assert (last == last[0]).all(), "layouts end in text"
        # Our delta continues after the last prompt token; HF's rope_deltas continue after the maximum.
        assert deltas[b, 0] == last[0] + 1 - len(valid)
        if ref_pos[:, b, valid].max() == last[0]:
            assert deltas[b, 0] == ref_deltas[b, 0]
    return pos, deltas


# -- position ids vs transformers' get_rope_index ------------------------------------------------------


def test_mm_token_types_hand_computed():
    ids = np.array([[5, IMG, IMG, 7, VID], [VID, 1, 2, IMG, 0]])
    expected = np.array([[0, 1, 1, 0, 2], [2, 0, 0, 1, 0]])
    np.testing.assert_array_equal(mm_token_types(ids, image_token_id=IMG, video_token_id=VID), expected)


def test_docstring_worked_example():
    result = doctest.testmod(rope, verbose=False)
    assert result.attempted >= 3 and result.failed == 0


def test_hand_worked_qwen2_5_layout():
    # text ×2, video grid (3, 2, 2) → 3 tokens, interval = 2 tokens/s × 0.5 s = 1 → temporal 2, 3, 4;
    # text resumes at 2 + max(1, 1) = 3.
    ids = np.array([[1, 2, VID, VID, VID, 3]])
    pos, deltas = mrope_position_ids(ids, family="qwen2_5_vl", image_token_id=IMG, video_token_id=VID,
                                     video_grid_thw=[[3, 2, 2]], second_per_grid_ts=[0.5], tokens_per_second=2)
    np.testing.assert_array_equal(pos[:, 0], [[0, 1, 2, 3, 4, 3], [0, 1, 2, 2, 2, 3], [0, 1, 2, 2, 2, 3]])
    assert deltas.tolist() == [[4 - 6]]


@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_layouts_match_hf(family):
    rng = np.random.default_rng(1)
    layouts = [
        [("text", 4), ("video", (2, 4, 4)), ("text", 3)],
        # three videos, odd merged sizes (6/2 = 3, 10/2 = 5), text between
        [("text", 2), ("video", (1, 6, 10)), ("text", 1), ("video", (3, 10, 6)), ("video", (5, 2, 4)), ("text", 2)],
        # images mixed in, a long thin video whose temporal extent outruns its spatial one
        [("image", (1, 8, 4)), ("text", 2), ("video", (4, 2, 2)), ("image", (1, 2, 10)),
         ("video", (2, 6, 6)), ("text", 3)],
    ]
    for segments in layouts:
        ids, mask, images, videos = build_batch(family, [segments], rng)
        assert_matches_hf(family, ids, None, images, videos)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding", ["left", "right"])
def test_padded_batches_match_hf(family, padding):
    rng = np.random.default_rng(2)
    rows = [
        [("text", 3), ("video", (2, 6, 4)), ("image", (1, 2, 2)), ("text", 2)],
        [("text", 1), ("image", (1, 4, 6)), ("text", 2), ("video", (3, 2, 10)), ("video", (1, 4, 4)), ("text", 4)],
    ]
    ids, mask, images, videos = build_batch(family, rows, rng, padding=padding)
    assert (mask == 0).any()
    pos, _ = assert_matches_hf(family, ids, mask, images, videos)
    assert (pos[:, mask == 0] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_random_layouts_match_hf(family):
    rng = np.random.default_rng(3)
    for _ in range(6):
        rows = [random_segments(rng) for _ in range(2)]
        ids, mask, images, videos = build_batch(family, rows, rng, padding="left")
        assert_matches_hf(family, ids, mask, images, videos)


@pytest.mark.parametrize("tokens_per_second", [2, 4])
def test_qwen2_5_second_per_grid_ts_match_hf(tokens_per_second):
    rng = np.random.default_rng(4)
    rows = [
        [("text", 2), ("video", (6, 4, 2)), ("text", 1), ("video", (4, 2, 2)), ("text", 2)],
        [("video", (6, 2, 6)), ("image", (1, 2, 2)), ("video", (3, 4, 4)), ("text", 3)],
    ]
    ids, mask, images, videos = build_batch("qwen2_5_vl", rows, rng, padding="left")
    # Fractional steps where float32 matters: 5 × float32(2 × 0.7) = 7.0 but 5 × 1.4 in float64 is
    # 6.99…, likewise 4 × 0.35; torch computes in float32, so must we.
    for seconds in ([0.7, 1 / 3, 0.35, 1.25], [0.5, 1.0, 2.0, 0.1], None):
        assert_matches_hf("qwen2_5_vl", ids, mask, images, videos, seconds=seconds, tokens_per_second=tokens_per_second)


# -- decode positions vs what HF does after the prompt -------------------------------------------------


def _generate_and_capture(family, ids, mask, videos, seconds, steps):
    """Run HF generate() and record the position_ids handed to the language model at every forward."""
    model = hf_model(family)
    grid = torch.tensor(np.array(videos).reshape(-1, 3))
    torch.manual_seed(0)
    pixels = torch.randn(int(grid.prod(-1).sum()), PATCH_DIM)
    mm_types = torch.tensor(ids == VID, dtype=torch.int32) * 2
    extra = {"second_per_grid_ts": torch.tensor(seconds, dtype=torch.float32)} if seconds is not None else {}
    captured = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model.generate(
                input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values_videos=pixels,
                video_grid_thw=grid, mm_token_type_ids=mm_types, max_new_tokens=steps + 1, min_new_tokens=steps + 1,
                do_sample=False, pad_token_id=PAD, eos_token_id=None, **extra,
            )
    finally:
        hook.remove()
    return [c.numpy() for c in captured]


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_positions_match_hf_generate(family):
    rng = np.random.default_rng(5)
    # Row 0: a short video; row 1 (longer, so row 0 is left-padded): a video with 6 temporal steps
    # on a 1×2 merged grid, so for Qwen2/2.5 its temporal row outruns the text that follows it.
    rows = [
        [("text", 2), ("video", (2, 4, 4)), ("text", 2)],
        [("text", 3), ("video", (6, 2, 4)), ("text", 1), ("video", (1, 2, 2)), ("text", 2)],
    ]
    ids, mask, _, videos = build_batch(family, rows, rng, padding="left")
    seconds = [1.0, 0.5, 1.5] if family == "qwen2_5_vl" else None
    steps = 3
    captured = _generate_and_capture(family, ids, mask, videos, seconds, steps)
    assert len(captured) == steps + 1

    pos, deltas = ours(family, ids, mask, [], videos, seconds)
    # Generate passes [text row, t, h, w]; the last three are the M-RoPE rows.
    assert captured[0].shape == (4, *ids.shape)
    np.testing.assert_array_equal(pos, captured[0][1:])
    real_tokens = mask.sum(-1)
    for step, hf_positions in enumerate(captured[1:]):
        np.testing.assert_array_equal(decode_position_ids(real_tokens + step, deltas), hf_positions[1:])


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_positions_match_full_sequence_recompute(family):
    """Positions of generated tokens equal what get_rope_index gives them in the whole sequence
    (prompt + generated text), as a training forward computes them — padded batch, several layouts."""
    rng = np.random.default_rng(6)
    new = 4
    for _ in range(3):
        rows = [random_segments(rng) for _ in range(2)]
        ids, mask, images, videos = build_batch(family, rows, rng, padding="left")
        _, deltas = ours(family, ids, mask, images, videos)
        full_ids = np.concatenate([ids, rng.integers(1, 80, size=(2, new))], axis=1)
        full_mask = np.concatenate([mask, np.ones((2, new), dtype=mask.dtype)], axis=1)
        ref_pos, _ = hf_rope_index(family, full_ids, images=images, videos=videos, attention_mask=full_mask)
        got = decode_position_ids(mask.sum(-1), deltas, num_new=new)
        np.testing.assert_array_equal(got, ref_pos[:, :, -new:])
        # one token at a time gives the same
        for k in range(new):
            one_step = decode_position_ids(mask.sum(-1) + k, deltas)[..., 0]
            np.testing.assert_array_equal(one_step, ref_pos[:, :, -new + k])


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_matches_hf_forward_cache_rule_without_padding(family):
    """HF's model.forward with a cache and no position_ids uses cache length + rope_deltas."""
    rng = np.random.default_rng(7)
    ids, _, _, videos = build_batch(family, [[("text", 3), ("video", (2, 4, 6)), ("text", 2)]], rng)
    model = hf_model(family)
    grid = torch.tensor(np.array(videos))
    pixels = torch.randn(int(grid.prod(-1).sum()), PATCH_DIM)
    captured = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            out = model.model(input_ids=torch.tensor(ids), pixel_values_videos=pixels, video_grid_thw=grid,
                              mm_token_type_ids=torch.tensor(ids == VID, dtype=torch.int32) * 2, use_cache=True)
            cache = out.past_key_values
            for _ in range(2):
                out = model.model(input_ids=torch.tensor([[7]]), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
    finally:
        hook.remove()
    _, deltas = ours(family, ids, None, [], videos)
    for k, hf_positions in enumerate(captured[1:]):
        np.testing.assert_array_equal(decode_position_ids(ids.shape[1] + k, deltas), hf_positions.numpy())


def test_decode_position_ids_shapes():
    deltas = np.array([[-3], [5]])
    out = decode_position_ids(np.array([10, 8]), deltas, num_new=2)
    assert out.shape == (3, 2, 2) and out.dtype == np.int64
    np.testing.assert_array_equal(out[1], [[7, 8], [13, 14]])
    np.testing.assert_array_equal(decode_position_ids(4, deltas)[:, :, 0], [[1, 9]] * 3)
    with pytest.raises(InvalidInputError):
        decode_position_ids(np.array([1, 2, 3]), deltas)


# -- how the HF text models consume position ids --------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_text_models_need_only_three_rows(family):
    """With an attention mask, a 4th (text) row changes nothing: 3 M-RoPE rows are all an exporter feeds."""
    rng = np.random.default_rng(8)
    rows = [[("text", 2), ("video", (2, 4, 4)), ("text", 2)], [("text", 5), ("video", (1, 2, 2)), ("text", 1)]]
    ids, mask, _, videos = build_batch(family, rows, rng, padding="left")
    pos, _ = ours(family, ids, mask, [], videos)
    text_row = np.where(mask == 1, np.cumsum(mask, -1) - 1, 0)[None]
    lm = hf_model(family).model.language_model
    with torch.no_grad():
        three = lm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos))
        four = lm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(np.concatenate([text_row, pos])))
    valid = torch.tensor(mask, dtype=torch.bool)
    torch.testing.assert_close(three.last_hidden_state[valid], four.last_hidden_state[valid], rtol=0, atol=0)


# -- user errors -----------------------------------------------------------------------------------


def _call(ids, **kwargs):
    args = dict(family="qwen2_vl", image_token_id=IMG, video_token_id=VID)
    args.update(kwargs)
    return mrope_position_ids(np.array(ids), **args)


def test_errors_are_typed_and_explain():
    video = [1, VID, VID, VID, VID, 2]
    with pytest.raises(InvalidInputError, match="family"):
        _call([video], family="llama", video_grid_thw=[[1, 4, 4]])
    with pytest.raises(InvalidInputError, match="does not match its grid"):
        _call([video], video_grid_thw=[[1, 2, 2]])
    # the Qwen2 layout (all frames in one run) is wrong for Qwen3, which wants one run per frame group
    with pytest.raises(InvalidInputError, match=r"one run of h\*w/merge² video tokens per frame group"):
        _call([video], family="qwen3_vl", video_grid_thw=[[4, 2, 2]])
    with pytest.raises(InvalidInputError, match="more video placeholder runs"):
        _call([video])
    with pytest.raises(InvalidInputError, match="grid\\(s\\) were given"):
        _call([video], video_grid_thw=[[1, 4, 4], [1, 4, 4]])
    with pytest.raises(InvalidInputError, match="multiples of the spatial merge size"):
        _call([video], video_grid_thw=[[1, 3, 4]])
    with pytest.raises(InvalidInputError, match="one value"):
        _call([video], family="qwen2_5_vl", video_grid_thw=[[1, 4, 4]], second_per_grid_ts=[1.0, 2.0])
    with pytest.raises(InvalidInputError, match="no attended tokens"):
        _call([video], video_grid_thw=[[1, 4, 4]], attention_mask=[[0] * 6])
    with pytest.raises(InvalidInputError, match="batch, length"):
        _call(video, video_grid_thw=[[1, 4, 4]])
