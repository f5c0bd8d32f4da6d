"""DeScoreModel against transformers' own Qwen-VL forward, checkpoint round-trips, and loading plain
Hugging Face folders. Tiny random models (2 text layers, width 64), one or two frames of patches."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from descore_sdk.config import DescoreConfig
from descore_sdk.errors import InvalidInputError, ModelLoadError
from descore_sdk.training.model import REWARD_HEAD_KEY, DeScoreModel
from descore_sdk.training.tiny import build_tiny_backbone, build_tiny_model, tiny_backbone_config
from descore_sdk.training.tokenizer import build_tokenizer, save_tokenizer_files

FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")
MERGE = 2


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_models():
    return {family: build_tiny_model(family, seed=1, dimension_names=("visual", "motion", "alignment")) for family in FAMILIES}


def video_inputs(model, grids, reward_counts, seed=0):
    """A right-padded batch: row i shows video i (patch grid grids[i] = (t, h, w)) then text, then
    reward_counts[i] `<Reward>` tokens. Returns (input_ids, attention_mask, pixel_values_videos,
    video_grid_thw, second_per_grid_ts) with random patches of the family's patch size."""
    config = model.backbone.config.vision_config
    patch_dim = 3 * config.temporal_patch_size * config.patch_size**2
    tok = model.tokenizer
    rows = []
    for (t, h, w), rewards in zip(grids, reward_counts):
        per_frame = h * w // MERGE**2
        if model.family == "qwen3_vl":
            # Qwen3-VL gives each temporal patch its own timestamped vision segment.
            video = "".join(
                f"<{i * 1.0:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_frame + "<|vision_end|>" for i in range(t)
            )
        else:
            video = "<|vision_start|>" + "<|video_pad|>" * (t * per_frame) + "<|vision_end|>"
        text = (
            "<|im_start|>user\n" + video + "A cat jumping on a beach.<|im_end|>\n"
            "<|im_start|>assistant\nThe motion is smooth." + "<Reward>" * rewards
        )
        rows.append(tok.encode(text).ids)
    length = max(map(len, rows))
    pad = tok.token_to_id("<|endoftext|>")
    input_ids = torch.tensor([row + [pad] * (length - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows])
    generator = torch.Generator().manual_seed(seed)
    n_patches = sum(t * h * w for t, h, w in grids)
    pixel_values_videos = torch.randn(n_patches, patch_dim, generator=generator)
    video_grid_thw = torch.tensor(grids)
    second_per_grid_ts = torch.full((len(grids),), 0.5)  # 2 frames per temporal patch at 4 fps
    return input_ids, attention_mask, pixel_values_videos, video_grid_thw, second_per_grid_ts


def hf_reference(model, input_ids, attention_mask, pixel_values_videos, video_grid_thw, second_per_grid_ts, labels=None):
    """transformers' own forward of the backbone; modality types built here from the config ids."""
    config = model.backbone.config
    mm_token_type_ids = torch.zeros_like(input_ids)
    mm_token_type_ids[input_ids == config.video_token_id] = 2
    extra = {"second_per_grid_ts": second_per_grid_ts} if model.family == "qwen2_5_vl" else {}
    captured = {}
    final_norm = model.backbone.model.language_model.norm
    hook = final_norm.register_forward_hook(lambda module, args, output: captured.setdefault("norm", output))
    try:
        out = model.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            output_hidden_states=True,
            labels=labels,
            use_cache=False,
            **extra,
        )
    finally:
        hook.remove()
    return out, captured["norm"]


@pytest.mark.parametrize("family", FAMILIES)
def test_rewards_match_head_on_transformers_hidden_states(family, tiny_models):
    model = tiny_models[family]
    grids = [(2, 4, 8), (1, 4, 4)]  # 4 frames → 16 video tokens, 2 frames → 4; row 1 ends in two <Reward>
    inputs = video_inputs(model, grids, reward_counts=[1, 2])
    input_ids = inputs[0]
    with torch.no_grad():
        ours = model(*inputs[:4], second_per_grid_ts=inputs[4])
        out, norm_output = hf_reference(model, *inputs)

    last = out.hidden_states[-1]
    # Fact check: transformers' last hidden state is the output of the final RMSNorm, and the LM
    # head reads it.
    assert torch.equal(last, norm_output)
    assert torch.allclose(model.backbone.lm_head(last), out.logits, atol=1e-6, rtol=0)

    weight = model.reward_head.weight  # (K, H)
    reward_id = model.tokenizer.token_to_id("<Reward>")
    positions = [torch.nonzero(row == reward_id).flatten() for row in input_ids]
    assert [len(p) for p in positions] == [1, 2]
    expected = torch.stack([last[b, positions[b]].mean(dim=0) @ weight.T for b in range(len(positions))])
    assert ours.rewards.shape == (2, 3)
    assert torch.allclose(ours.rewards, expected, atol=1e-6, rtol=0), (ours.rewards - expected).abs().max()
    assert torch.allclose(ours.reward_hidden[1], last[1, positions[1]].mean(dim=0), atol=1e-6, rtol=0)
    assert ours.logits is None and ours.loss is None

    # The video really flows into the score: other pixels, other rewards.
    with torch.no_grad():
        other = model(inputs[0], inputs[1], inputs[2] + 1.0, inputs[3], second_per_grid_ts=inputs[4])
    assert (other.rewards - ours.rewards).abs().max() > 1e-4
    if family == "qwen2_5_vl":  # and Qwen2.5-VL's time scale reaches M-RoPE
        with torch.no_grad():
            slower = model(*inputs[:4], second_per_grid_ts=inputs[4] * 4)
        assert (slower.rewards[0] - ours.rewards[0]).abs().max() > 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_loss_match_transformers(family, tiny_models):
    model = tiny_models[family]
    inputs = video_inputs(model, [(1, 4, 4), (1, 4, 4)], reward_counts=[1, 1], seed=1)
    input_ids, attention_mask = inputs[0], inputs[1]
    # Train only on the assistant's answer (everything after "assistant\n"), not padding.
    labels = input_ids.clone()
    labels[:, : input_ids.shape[1] // 2] = -100
    labels[attention_mask == 0] = -100
    with torch.no_grad():
        ours = model(*inputs[:4], second_per_grid_ts=inputs[4], labels=labels)
        out, _ = hf_reference(model, *inputs, labels=labels)
    assert torch.allclose(ours.logits, out.logits, atol=1e-5, rtol=0)
    assert torch.allclose(ours.loss, out.loss, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert model(*inputs[:4], return_logits=True).logits.shape == (*input_ids.shape, model.backbone.config.get_text_config().vocab_size)


def test_text_only_rows_score():
    model = build_tiny_model("qwen3_vl")
    ids = torch.tensor([model.tokenizer.encode("A prompt and a rationale.<Reward>").ids])
    with torch.no_grad():
        ours = model(ids)
        last = model.backbone(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(ours.rewards, last[:, -1] @ model.reward_head.weight.T, atol=1e-6, rtol=0)


def test_row_without_reward_token_is_an_error(tiny_models):
    model = tiny_models["qwen2_vl"]
    inputs = video_inputs(model, [(1, 4, 4), (1, 4, 4)], reward_counts=[1, 0])
    with pytest.raises(InvalidInputError, match=r"Rows \[1\]"):
        model(*inputs[:4])


def test_tiny_configs_are_tiny_and_match_the_tokenizer():
    tok = build_tokenizer()
    for family in FAMILIES:
        config = tiny_backbone_config(family)
        text, vision = config.get_text_config(), config.vision_config
        assert text.num_hidden_layers == 2 and text.hidden_size == 64 and text.num_attention_heads == 4
        assert text.num_key_value_heads == 2
        assert sum(text.rope_parameters["mrope_section"]) == 16 // 2
        assert vision.depth == 2 and vision.spatial_merge_size == 2 and vision.temporal_patch_size == 2
        assert vision.patch_size == (16 if family == "qwen3_vl" else 14)
        assert config.video_token_id == tok.token_to_id("<|video_pad|>")
        assert config.image_token_id == tok.token_to_id("<|image_pad|>")
        assert config.vision_start_token_id == tok.token_to_id("<|vision_start|>")
        assert config.vision_end_token_id == tok.token_to_id("<|vision_end|>")
        assert text.vocab_size == tok.get_vocab_size()


def test_tiny_model_is_seeded():
    a, b, c = build_tiny_model("qwen2_5_vl", seed=5), build_tiny_model("qwen2_5_vl", seed=5), build_tiny_model("qwen2_5_vl", seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["reward_head.weight"], sc["reward_head.weight"])
    assert not torch.equal(sa["backbone.lm_head.weight"], sc["backbone.lm_head.weight"])


# -- checkpoints ------------------------------------------------------------------------------------
def _config_dict(config):
    d = config.to_dict()
    d.pop("_name_or_path", None)
    return d


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_is_exact(family, tiny_models, tmp_path):
    model = tiny_models[family]
    model.save_pretrained(tmp_path / "a")
    loaded = DeScoreModel.from_pretrained(tmp_path / "a")

    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    assert _config_dict(loaded.backbone.config) == _config_dict(model.backbone.config)
    assert loaded.descore_config.to_dict() == model.descore_config.to_dict()
    assert loaded.descore_config.dimension_names == ["visual", "motion", "alignment"]
    assert loaded.reward_token_id == model.reward_token_id
    assert loaded.tokenizer.to_str() == model.tokenizer.to_str()
    assert loaded.tokenizer_dir == tmp_path / "a"

    inputs = video_inputs(model, [(1, 4, 8)], reward_counts=[1])
    with torch.no_grad():
        assert torch.equal(model(*inputs[:4], second_per_grid_ts=inputs[4]).rewards, loaded(*inputs[:4], second_per_grid_ts=inputs[4]).rewards)

    # Saving the loaded model again writes the same bytes.
    loaded.save_pretrained(tmp_path / "b")
    for name in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_checkpoint_layout_is_readable_by_hf_tools(tiny_models, tmp_path):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    model = tiny_models["qwen3_vl"]
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names >= {
        "config.json", "descore_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja", "preprocessor_config.json", "video_preprocessor_config.json",
    }
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor(REWARD_HEAD_KEY).shape == (3, 64)
    assert "model.language_model.embed_tokens.weight" in keys and "lm_head.weight" in keys
    assert REWARD_HEAD_KEY in keys and not any(k.startswith("backbone.") for k in keys)

    assert AutoConfig.from_pretrained(str(tmp_path)).model_type == "qwen3_vl"
    assert DescoreConfig.load(tmp_path).dimension_names == ["visual", "motion", "alignment"]
    image_processor = AutoImageProcessor.from_pretrained(str(tmp_path))
    assert image_processor.patch_size == 16 and image_processor.merge_size == 2
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf_tok.convert_tokens_to_ids("<Reward>") == model.reward_token_id
    text = "Good video.<Reward>"
    assert hf_tok(text)["input_ids"] == model.tokenizer.encode(text).ids
    # The whole folder also loads as a plain transformers backbone.
    import transformers

    plain = transformers.Qwen3VLForConditionalGeneration.from_pretrained(str(tmp_path))
    assert torch.equal(plain.lm_head.weight, model.backbone.lm_head.weight)


def test_tied_embeddings_round_trip(tmp_path):
    model = build_tiny_model("qwen2_vl", tie_word_embeddings=True)
    assert model.backbone.lm_head.weight.data_ptr() == model.backbone.get_input_embeddings().weight.data_ptr()
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # stored once, as transformers does
    loaded = DeScoreModel.from_pretrained(tmp_path)
    assert loaded.backbone.lm_head.weight.data_ptr() == loaded.backbone.get_input_embeddings().weight.data_ptr()
    before, after = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _plain_hf_folder(path, family, **backbone_kwargs):
    backbone = build_tiny_backbone(family, seed=3, **backbone_kwargs)
    backbone.save_pretrained(str(path))  # transformers' own writer
    save_tokenizer_files(path, family)
    return backbone


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_vl"])
def test_load_plain_hf_folder_adds_one_row_and_a_head(family, tmp_path, caplog):
    original = _plain_hf_folder(tmp_path / "plain", family)
    old_in = original.get_input_embeddings().weight.detach().clone()
    old_out = original.get_output_embeddings().weight.detach().clone()
    vocab = old_in.shape[0]

    with caplog.at_level(logging.INFO, logger="descore_sdk"):
        model = DeScoreModel.from_pretrained(tmp_path / "plain", dimension_names=["a", "b"])
    assert "plain Hugging Face" in caplog.text and "NEW, untrained reward head" in caplog.text
    assert "embeddings grown by one row" in caplog.text

    assert model.reward_token_id == vocab == model.tokenizer.token_to_id("<Reward>")
    new_in = model.backbone.get_input_embeddings().weight
    new_out = model.backbone.get_output_embeddings().weight
    assert new_in.shape == (vocab + 1, 64) and new_out.shape == (vocab + 1, 64)
    assert torch.equal(new_in[:vocab], old_in) and torch.equal(new_out[:vocab], old_out)
    assert torch.allclose(new_in[vocab], old_in.mean(dim=0), atol=1e-7, rtol=0)
    assert torch.allclose(new_out[vocab], old_out.mean(dim=0), atol=1e-7, rtol=0)
    assert model.backbone.config.get_text_config().vocab_size == vocab + 1
    assert model.reward_head.weight.shape == (2, 64)
    assert 0 < model.reward_head.weight.std() < 0.05  # small normal init
    assert model.descore_config.family == family and model.tokenizer_dir is None
    # Every other weight is exactly the file's.
    original_state = original.state_dict()
    for key, value in model.backbone.state_dict().items():
        if "embed_tokens" not in key and "lm_head" not in key:
            assert torch.equal(value, original_state[key]), key

    # Saved, it becomes a DeScore checkpoint whose tokenizer files know <Reward>.
    model.save_pretrained(tmp_path / "descore")
    again = DeScoreModel.from_pretrained(tmp_path / "descore")
    assert torch.equal(again.reward_head.weight, model.reward_head.weight)
    assert json.loads((tmp_path / "descore" / "tokenizer_config.json").read_text())["added_tokens_decoder"][str(vocab)]["content"] == "<Reward>"


def test_load_plain_folder_with_spare_embedding_rows(tmp_path):
    """Real Qwen checkpoints have more embedding rows than tokens: the spare row right after the
    tokenizer is used for <Reward>, no growth."""
    tokens = build_tokenizer().get_vocab_size()
    original = _plain_hf_folder(tmp_path, "qwen2_5_vl", vocab_size=tokens + 8)
    old = original.get_input_embeddings().weight.detach().clone()
    model = DeScoreModel.from_pretrained(tmp_path)
    new = model.backbone.get_input_embeddings().weight
    assert model.reward_token_id == tokens
    assert new.shape == old.shape == (tokens + 8, 64)
    assert torch.equal(new[:tokens], old[:tokens]) and torch.equal(new[tokens + 1 :], old[tokens + 1 :])
    assert torch.allclose(new[tokens], old[:tokens].mean(dim=0), atol=1e-7, rtol=0)


def test_changing_dimension_names_starts_a_new_head(tiny_models, tmp_path, caplog):
    model = tiny_models["qwen2_vl"]
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="descore_sdk"):
        loaded = DeScoreModel.from_pretrained(tmp_path, dimension_names=["overall"], method="jrm")
    assert "NEW, untrained reward head" in caplog.text
    assert loaded.reward_head.weight.shape == (1, 64)
    assert loaded.descore_config.method == "jrm"


def test_dtype_argument(tiny_models, tmp_path):
    tiny_models["qwen2_vl"].save_pretrained(tmp_path)
    loaded = DeScoreModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.reward_head.weight.dtype == torch.bfloat16
    assert loaded.backbone.get_input_embeddings().weight.dtype == torch.bfloat16


# -- broken checkpoints -----------------------------------------------------------------------------
def test_broken_checkpoints_raise_model_load_error(tiny_models, tmp_path):
    model = tiny_models["qwen2_5_vl"]
    with pytest.raises(ModelLoadError, match="does not exist"):
        DeScoreModel.from_pretrained(tmp_path / "nowhere")

    def fresh(name):
        folder = tmp_path / name
        model.save_pretrained(folder)
        return folder

    folder = fresh("no_config")
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json"):
        DeScoreModel.from_pretrained(folder)

    folder = fresh("bad_config")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        DeScoreModel.from_pretrained(folder)

    folder = fresh("no_weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        DeScoreModel.from_pretrained(folder)

    folder = fresh("truncated_weights")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        DeScoreModel.from_pretrained(folder)

    folder = fresh("no_tokenizer")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer"):
        DeScoreModel.from_pretrained(folder)

    folder = fresh("no_head")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    del tensors[REWARD_HEAD_KEY]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="reward head is missing"):
        DeScoreModel.from_pretrained(folder)

    folder = fresh("missing_layer")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.language_model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="do not fit"):
        DeScoreModel.from_pretrained(folder)

    folder = fresh("wrong_family")
    config = json.loads((folder / "descore_config.json").read_text())
    config["family"] = "qwen3_vl"
    (folder / "descore_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="mixes two checkpoints"):
        DeScoreModel.from_pretrained(folder)


# -- training helpers -------------------------------------------------------------------------------
def test_only_the_reward_embedding_row_trains():
    model = build_tiny_model("qwen3_vl")
    ids = torch.tensor([model.tokenizer.encode("The motion is smooth.<Reward>").ids])
    embeddings = model.backbone.get_input_embeddings().weight

    model(ids).rewards.sum().backward()
    rows_with_grad = set(torch.nonzero(embeddings.grad.abs().sum(dim=1)).flatten().tolist())
    assert len(rows_with_grad) > 1 and model.reward_token_id in rows_with_grad  # without the hook

    embeddings.grad = None
    handle = model.train_only_reward_embedding_row()
    model(ids).rewards.sum().backward()
    assert set(torch.nonzero(embeddings.grad.abs().sum(dim=1)).flatten().tolist()) == {model.reward_token_id}
    mask = model.reward_embedding_row_mask()
    assert mask.shape == (embeddings.shape[0],) and mask.sum() == 1 and mask[model.reward_token_id]
    handle.remove()
