"""Exported vision / decoder graphs against the transformers model they came from, per Qwen-VL family.

The reference is always transformers' own code: the vision tower's `forward(pixel_values, grid_thw)`
and the backbone's full, uncached forward over the whole (left-padded, batch-of-2) sequence with real
video patches. Our torch modules must match it to 1e-5, the ONNX graphs run by onnxruntime to 1e-4.
Weights are re-drawn at O(1) scale (fan-in scaled) so activations, logits and rewards are O(1) and an
absolute tolerance means something; each test also checks the reference is not trivially small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from descore_sdk.errors import InvalidInputError
from descore_sdk.export.decoder import decoder_for_export
from descore_sdk.export.families import backbone_parts, mrope_frequency_rows, vision_graph_spec
from descore_sdk.export.onnx_export import export_onnx
from descore_sdk.export.onnx_runner import cpu_session, run_vision, teacher_forced
from descore_sdk.export.vision import vision_encoder_for_export
from descore_sdk.preprocess import frames_to_patches, resize_frame
from descore_sdk.runtime.vision_inputs import vision_graph_inputs
from descore_sdk.training.tiny import build_tiny_model
from weights import spread_weights  # noqa: E402

torch.set_num_threads(1)

FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")
TORCH_TOL = 1e-5
ONNX_TOL = 1e-4
DECODE_STEPS = 4  # tokens fed one at a time after the prompt; the last one is <Reward>
# Two videos of different sizes (in merged patches, rows × cols): Qwen2.5-VL's 2×2-token windows
# then include cut-off edge windows, and the vision graph is exercised at two frame sizes.
VIDEO_MERGED_GRIDS = ((3, 4), (2, 3))
FRAMES_PER_VIDEO = 4


def _real_frames(path, count: int, height: int, width: int) -> np.ndarray:
    """The first `count` frames of a sample video, resized (uint8 RGB, (count, height, width, 3))."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(resize_frame(frame.to_ndarray(format="rgb24"), height, width))
            if len(frames) == count:
                break
    return np.stack(frames)


@dataclass
class Case:
    family: str
    model: torch.nn.Module  # DeScoreModel
    exported: object  # ExportedGraphs
    vision_session: object
    decoder_session: object
    videos: list  # [(patches (N, D) f32, grid (3,) i64)] in prompt order
    input_ids: torch.Tensor  # (2, L), row 1 left-padded
    attention_mask: torch.Tensor
    position_ids: torch.Tensor  # (3, 2, L) from transformers' get_rope_index
    prompt_length: int  # positions fed as prompt; the last DECODE_STEPS go one at a time
    ref_hidden: torch.Tensor  # (2, L, H) transformers' post-norm last hidden state
    ref_logits: torch.Tensor  # (2, L, V)
    ref_reward: torch.Tensor  # (2, L, K)

    @property
    def backbone(self):
        return self.model.backbone


def _prompt_rows(model, videos, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts (text, one video, text, then `steps` continuation tokens ending in <Reward>), left-padded.
    Qwen3-VL gets a timestamp (2 text tokens) and its own vision_start/end around every temporal group,
    as its processor writes them; Qwen2/2.5-VL one vision_start/end around the whole video."""
    config = model.backbone.config
    merge = config.vision_config.spatial_merge_size
    specials = [config.image_token_id, config.video_token_id, config.vision_start_token_id,
                config.vision_end_token_id, model.reward_token_id]
    gen = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(0, min(specials), (n,), generator=gen)  # noqa: E731
    start, end, video = [torch.tensor([i]) for i in specials[2:4]] + [config.video_token_id]

    def video_tokens(grid):
        t, h, w = (int(v) for v in grid)
        per_group = torch.full((h * w // merge**2,), video)
        if config.model_type == "qwen3_vl":
            return torch.cat([torch.cat([text(2), start, per_group, end]) for _ in range(t)])
        return torch.cat([start, per_group.repeat(t), end])

    rows = []
    for index, (_, grid) in enumerate(videos):
        before, after = (5, 6) if index == 0 else (3, 2)
        tail = torch.cat([text(steps - 1), torch.tensor([model.reward_token_id])])
        rows.append(torch.cat([text(before), video_tokens(grid), text(after), tail]))
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = row
        mask[i, length - len(row):] = 1
    return ids, mask


@pytest.fixture(scope="module", params=FAMILIES)
def case(request, tmp_path_factory, sample_data_dir) -> Case:
    family = request.param
    model = build_tiny_model(family, seed=0, dimension_names=("VQ", "MQ", "TA"), tie_word_embeddings=family == "qwen3_vl")
    spread_weights(model, seed=1)
    model.eval()
    backbone = model.backbone
    vision = model.descore_config.vision
    videos = []
    for name, (rows, cols) in zip(("example_1_A.mp4", "example_2_B.mp4"), VIDEO_MERGED_GRIDS):
        frames = _real_frames(sample_data_dir / "videos" / name, FRAMES_PER_VIDEO, rows * vision.factor, cols * vision.factor)
        videos.append(frames_to_patches(frames, vision))

    ids, mask = _prompt_rows(model, videos, DECODE_STEPS)
    grids = torch.from_numpy(np.stack([g for _, g in videos]))
    token_types = model.mm_token_type_ids(ids)
    position_ids, _ = backbone.model.get_rope_index(ids, mm_token_type_ids=token_types, video_grid_thw=grids, attention_mask=mask)
    pixels = torch.from_numpy(np.concatenate([p for p, _ in videos]))
    with torch.no_grad():
        out = backbone.model(
            input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, video_grid_thw=grids,
            mm_token_type_ids=token_types, position_ids=position_ids,
        )
        hidden = out.last_hidden_state
        logits, reward = backbone.lm_head(hidden), model.reward_head(hidden)

    # Real backbones exceed the 2 GB protobuf limit, so one family goes through the external-data path.
    exported = export_onnx(model, tmp_path_factory.mktemp(f"onnx_{family}"), external_data=family == "qwen2_vl")
    folder = exported.out_dir
    return Case(
        family=family, model=model, exported=exported,
        vision_session=cpu_session(f"{folder}/{exported.vision_file}"),
        decoder_session=cpu_session(f"{folder}/{exported.decoder_file}"),
        videos=videos, input_ids=ids, attention_mask=mask, position_ids=position_ids,
        prompt_length=ids.shape[1] - DECODE_STEPS, ref_hidden=hidden, ref_logits=logits, ref_reward=reward,
    )


def _report(what: str, family: str, diffs: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs diff per output (printed, so `pytest -s` records the measured parity)."""
    stats = {name: float(np.abs(d).max()) for name, d in diffs.items()}
    means = {name: float(np.abs(d).mean()) for name, d in diffs.items()}
    print(f"\n[{family}] {what}: " + ", ".join(f"{n} max {stats[n]:.2e} mean {means[n]:.2e}" for n in stats))
    return stats


# -- vision -------------------------------------------------------------------------------------------
def _hf_vision(case: Case, patches, grid):
    with torch.no_grad():
        out = case.backbone.model.visual(torch.from_numpy(patches), grid_thw=torch.from_numpy(grid)[None], return_dict=True)
    deepstack = torch.stack(out.deepstack_features).numpy() if case.family == "qwen3_vl" else None
    return out.pooler_output.numpy(), deepstack


def _torch_vision(encoder, spec, patches, grid):
    inputs = {k: torch.from_numpy(v) for k, v in vision_graph_inputs(spec, patches, grid).items()}
    with torch.no_grad():
        out = encoder(**inputs)
    return (out[0].numpy(), out[1].numpy()) if isinstance(out, tuple) else (out.numpy(), None)


def test_vision_module_matches_transformers(case):
    parts = backbone_parts(case.backbone)
    encoder, spec = vision_encoder_for_export(parts), vision_graph_spec(parts)
    for patches, grid in case.videos:
        ref_embeds, ref_deepstack = _hf_vision(case, patches, grid)
        embeds, deepstack = _torch_vision(encoder, spec, patches, grid)
        assert embeds.shape == ref_embeds.shape and np.abs(ref_embeds).mean() > 0.1
        diffs = {"visual_embeds": embeds - ref_embeds}
        if ref_deepstack is not None:
            assert deepstack.shape == ref_deepstack.shape == (2, *ref_embeds.shape)
            diffs["deepstack_embeds"] = deepstack - ref_deepstack
        stats = _report(f"torch vision, grid {tuple(grid.tolist())}", case.family, diffs)
        assert max(stats.values()) <= TORCH_TOL


def test_vision_graph_matches_transformers(case):
    spec = case.exported.vision
    for patches, grid in case.videos:
        ref_embeds, ref_deepstack = _hf_vision(case, patches, grid)
        out = run_vision(case.vision_session, spec, patches, grid)
        diffs = {"visual_embeds": out["visual_embeds"] - ref_embeds}
        if ref_deepstack is not None:
            diffs["deepstack_embeds"] = out["deepstack_embeds"] - ref_deepstack
        stats = _report(f"onnx vision, grid {tuple(grid.tolist())}", case.family, diffs)
        assert max(stats.values()) <= ONNX_TOL


def test_vision_graph_runs_one_temporal_step_at_a_time(case):
    """Temporal steps are independent, so the runtime may bound memory by feeding whole steps."""
    patches, grid = case.videos[0]
    t, h, w = (int(v) for v in grid)
    whole = run_vision(case.vision_session, case.exported.vision, patches, grid)
    steps = [run_vision(case.vision_session, case.exported.vision, patches[i * h * w:(i + 1) * h * w], (1, h, w)) for i in range(t)]
    for name, value in whole.items():
        axis = 0 if name == "visual_embeds" else 1
        np.testing.assert_allclose(np.concatenate([s[name] for s in steps], axis=axis), value, rtol=0, atol=1e-5)


def test_qwen2_5_window_mask_is_load_bearing(sample_data_dir):
    """If the window ids were ignored (one window = global attention) the output would be far off, so
    the Qwen2.5-VL parity above really exercises the windowed blocks."""
    model = build_tiny_model("qwen2_5_vl", seed=0)
    spread_weights(model, seed=1)
    parts = backbone_parts(model.backbone)
    encoder, spec = vision_encoder_for_export(parts), vision_graph_spec(parts)
    rows, cols = VIDEO_MERGED_GRIDS[0]
    factor = model.descore_config.vision.factor
    frames = _real_frames(sample_data_dir / "videos" / "example_1_A.mp4", 2, rows * factor, cols * factor)
    patches, grid = frames_to_patches(frames, model.descore_config.vision)
    inputs = {k: torch.from_numpy(v) for k, v in vision_graph_inputs(spec, patches, grid).items()}
    assert len(np.unique(inputs["window_ids"].numpy())) == 4  # 3×4 tokens in 2×2 windows: 2 full, 2 cut off
    with torch.no_grad():
        ref = model.backbone.model.visual(torch.from_numpy(patches), grid_thw=torch.from_numpy(grid)[None]).pooler_output
        windowed = encoder(**inputs)
        inputs["window_ids"] = torch.zeros_like(inputs["window_ids"])
        global_only = encoder(**inputs)
    assert (windowed - ref).abs().max() <= TORCH_TOL
    assert (global_only - ref).abs().max() > 1e-2


# -- decoder ------------------------------------------------------------------------------------------
def _decoder_inputs(case: Case, visual: list, deepstack: list | None, table: np.ndarray):
    """inputs_embeds (2, L, H) with the videos' embeddings at their placeholders, DeepStack features
    scattered the same way (zeros elsewhere), as the runtime will build them."""
    ids = case.input_ids.numpy()
    embeds = table[ids].astype(np.float32)
    is_video = ids == case.backbone.config.video_token_id
    levels = 0 if deepstack is None else deepstack[0].shape[0]
    dense = np.zeros((levels, *embeds.shape), dtype=np.float32) if levels else None
    for row in range(ids.shape[0]):
        embeds[row, is_video[row]] = visual[row]
        if levels:
            dense[:, row, is_video[row]] = deepstack[row]
    return embeds, dense


def _chunks(case: Case) -> list[int]:
    """Prefill in two chunks (P = 0, then P > 0 with S > 1, split inside the first video), then decode
    DECODE_STEPS tokens one at a time."""
    padding = int((case.attention_mask[1] == 0).sum())
    first = padding + 8
    return [first, case.prompt_length - first] + [1] * DECODE_STEPS


def _compare_steps(case: Case, steps, what: str) -> None:
    diffs = {"logits": [], "hidden": [], "reward": []}
    for position, out in steps:
        diffs["logits"].append(out["logits"] - case.ref_logits[:, position].numpy())
        diffs["hidden"].append(out["hidden"] - case.ref_hidden[:, position].numpy())
        diffs["reward"].append(out["reward"] - case.ref_reward[:, position].numpy())
    stats = _report(what, case.family, {k: np.stack(v) for k, v in diffs.items()})
    assert np.abs(case.ref_logits.numpy()).mean() > 0.1 and np.abs(case.ref_reward.numpy()).mean() > 0.1
    return stats


def test_decoder_module_matches_transformers(case):
    """Our torch decoder, fed transformers' own visual features, teacher-forced through its KV cache."""
    parts = backbone_parts(case.backbone)
    decoder = decoder_for_export(parts, case.model.reward_head)
    with torch.no_grad():
        visual, deepstack = zip(*(_hf_vision(case, p, g) for p, g in case.videos))
        table = parts.text_model.embed_tokens.weight.numpy()
    embeds, dense = _decoder_inputs(case, visual, deepstack if case.family == "qwen3_vl" else None, table)
    embeds, mask, pos = torch.from_numpy(embeds), case.attention_mask, case.position_ids
    cache = [(torch.zeros(2, decoder.num_kv_heads, 0, decoder.head_dim),) * 2 for _ in range(decoder.num_layers)]
    steps, start = [], 0
    with torch.no_grad():
        for length in _chunks(case):
            end = start + length
            extra = (torch.from_numpy(dense[:, :, start:end]),) if dense is not None else ()
            out = decoder(embeds[:, start:end], mask[:, :end], pos[:, :, start:end], *extra, cache)
            cache = [(out[3 + 2 * i], out[4 + 2 * i]) for i in range(decoder.num_layers)]
            steps.append((end - 1, {"logits": out[0].numpy(), "hidden": out[1].numpy(), "reward": out[2].numpy()}))
            start = end
    stats = _compare_steps(case, steps, "torch decoder, teacher-forced")
    assert max(stats.values()) <= TORCH_TOL


def _onnx_pipeline(case: Case, attention_mask=None, position_ids=None):
    """Vision graph → embedding table → decoder graph, prompt prefilled in chunks then decoded."""
    visual, deepstack = [], []
    for patches, grid in case.videos:
        out = run_vision(case.vision_session, case.exported.vision, patches, grid)
        visual.append(out["visual_embeds"])
        deepstack.append(out.get("deepstack_embeds"))
    table = np.load(f"{case.exported.out_dir}/{case.exported.embedding_file}", mmap_mode="r")
    embeds, dense = _decoder_inputs(case, visual, deepstack if case.family == "qwen3_vl" else None, table)
    mask = case.attention_mask.numpy() if attention_mask is None else attention_mask
    pos = case.position_ids.numpy() if position_ids is None else position_ids
    return teacher_forced(case.decoder_session, embeds, mask, pos, _chunks(case), dense)


def test_decoder_graph_teacher_forced_matches_transformers(case):
    """End to end in onnxruntime: batch of 2 with left padding; past length 0, then > 0 with a
    multi-token chunk, then single tokens; every chunk's last position against the full forward."""
    steps = _onnx_pipeline(case)
    stats = _compare_steps(case, steps, "onnx vision+decoder, teacher-forced")
    assert max(stats.values()) <= ONNX_TOL


def test_decoder_graph_masks_left_padding(case):
    """Attending to the padding (all-ones mask) changes the padded row only: the mask is load-bearing."""
    ones = np.ones_like(case.attention_mask.numpy())
    padded = _onnx_pipeline(case, attention_mask=ones)[-1][1]["logits"]
    masked = _onnx_pipeline(case)[-1][1]["logits"]
    np.testing.assert_allclose(padded[0], masked[0], rtol=0, atol=1e-5)
    assert np.abs(padded[1] - masked[1]).max() > 1e-3


def test_decoder_graph_accepts_four_position_rows(case):
    """A leading text-position row (4-row ids, as transformers' generate builds for Qwen3-VL) is ignored
    when an attention mask is given, in transformers and in the graph alike."""
    pos = case.position_ids.numpy()
    text_row = np.maximum(np.cumsum(case.attention_mask.numpy(), axis=1) - 1, 0)[None]
    four = np.concatenate([text_row, pos]).astype(np.int64)
    three_rows = _onnx_pipeline(case)
    four_rows = _onnx_pipeline(case, position_ids=four)
    for (_, a), (_, b) in zip(three_rows, four_rows):
        np.testing.assert_allclose(a["logits"], b["logits"], rtol=0, atol=1e-6)


# -- files and metadata -------------------------------------------------------------------------------
def test_exported_files_have_the_documented_interface(case):
    exported, backbone = case.exported, case.backbone
    layers = backbone.config.text_config.num_hidden_layers
    cache_in = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    cache_out = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    decoder_in = case.decoder_session.input_metadata()  # the runtime runner's TensorMeta
    decoder_out = case.decoder_session.output_metadata()
    expected_in = ["inputs_embeds", "attention_mask", "position_ids"] + (["deepstack_embeds"] if case.family == "qwen3_vl" else []) + cache_in
    assert list(decoder_in) == expected_in == exported.decoder_inputs
    assert list(decoder_out) == ["logits", "hidden", "reward"] + cache_out == exported.decoder_outputs
    hidden = backbone.config.text_config.hidden_size
    assert decoder_in["inputs_embeds"].shape == ("batch_size", "sequence_length", hidden)
    assert decoder_in["attention_mask"].shape == ("batch_size", "total_sequence_length")
    assert decoder_in["attention_mask"].dtype == decoder_in["position_ids"].dtype == np.int64
    assert decoder_in["past_key_values.0.key"].shape == ("batch_size", exported.num_key_value_heads, "past_sequence_length", exported.head_dim)
    assert decoder_out["present.0.key"].shape[2] == "past_sequence_length + sequence_length"
    assert decoder_out["reward"].shape == ("batch_size", 3)
    assert decoder_out["logits"].shape == ("batch_size", backbone.config.text_config.vocab_size)

    vision_in = list(case.vision_session.input_metadata())
    assert vision_in == list(exported.vision.input_names) == exported.vision_inputs
    assert next(iter(case.vision_session.output_metadata().values())).shape[0] == "num_visual_tokens"

    external = ["vision.onnx.data", "decoder.onnx.data"] if case.family == "qwen2_vl" else []
    assert sorted(exported.files) == sorted(["vision.onnx", "decoder.onnx", "embed_tokens.npy"] + external)
    table = np.load(f"{exported.out_dir}/{exported.embedding_file}")
    np.testing.assert_array_equal(table, backbone.model.language_model.embed_tokens.weight.detach().numpy())
    assert exported.to_dict()["vision"]["family"] == case.family
    assert exported.num_deepstack == (2 if case.family == "qwen3_vl" else 0)


# -- inputs the exporter refuses ------------------------------------------------------------------------
def test_export_refuses_non_float32_and_headless_models(tmp_path):
    model = build_tiny_model("qwen2_vl", seed=0)
    with pytest.raises(InvalidInputError, match="float32"):
        export_onnx(model.to(torch.bfloat16), tmp_path)
    with pytest.raises(InvalidInputError, match="reward head"):
        export_onnx(build_tiny_model("qwen2_vl", seed=0).backbone, tmp_path)
    with pytest.raises(InvalidInputError, match="supported Qwen-VL families"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path, reward_head=torch.nn.Linear(2, 1, bias=False))


def test_mrope_frequency_rows_follow_transformers():
    """Our per-frequency row table reproduces the text rotary embedding's own recomposition."""
    for family in FAMILIES:
        rotary = build_tiny_model(family, seed=0).backbone.model.language_model.rotary_emb
        freqs = rotary.inv_freq.numel()
        # Give row r the distinct position 10**r: the recomposed cos then reveals which row each frequency read.
        probe = torch.tensor([1.0, 10.0, 100.0])[:, None, None, None].expand(3, 1, 1, freqs).clone()
        chosen = rotary.recomposition_frequencies(probe)[0, 0, :freqs]
        expected = [int(round(np.log10(v))) for v in chosen.tolist()]
        assert mrope_frequency_rows(family, rotary.mrope_section, freqs) == expected
