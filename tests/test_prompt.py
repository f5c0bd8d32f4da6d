"""Prompt ids must equal what transformers' own processor + the checkpoint's chat template produce.

The reference runs the real `Qwen2VLProcessor` / `Qwen2_5_VLProcessor` / `Qwen3VLProcessor.__call__`
(placeholder expansion, Qwen3-VL timestamps, tokenization, mm_token_type_ids) with only the video
processor stubbed to return a known grid: transformers 5's video processors need torchvision, which
does not load here, and the grid itself is tested against the reference processor in test_preprocess.
"""

from __future__ import annotations

import numpy as np
import pytest

from descore_sdk.config import DescoreConfig
from descore_sdk.errors import ContextLengthError, InvalidInputError
from descore_sdk.prompt import PromptBuilder, load_tokenizer

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer  # noqa: E402
from transformers.video_utils import VideoMetadata  # noqa: E402

from hf_reference import PROCESSORS, processor_with_grid as _processor  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """Tokenizer files as a DeScore checkpoint holds them: base Qwen-style tokenizer + <Reward>."""
    from descore_sdk.training.tiny import build_tiny_model

    dirs = {}
    for family in PROCESSORS:
        out = tmp_path_factory.mktemp(family)
        build_tiny_model(family, seed=0, out_dir=out)
        dirs[family] = out
    return dirs


CASES = [
    # grid (t, h, w), frame indices, source fps, user prompt
    ((1, 4, 4), [0, 1], 8.0, "a red circle"),
    ((5, 4, 6), [0, 14, 28, 42, 56, 69, 83, 97, 111, 125], 24.0, "A girl in a pink dress sits on a chair."),
    ((3, 8, 2), [0, 7, 15, 22, 30, 37], 16.0, "braces {prompt} and ünïcode ✓ stay literal"),
]


@pytest.mark.parametrize("family", list(PROCESSORS))
@pytest.mark.parametrize("mode", ["think", "fast"])
@pytest.mark.parametrize("grid,indices,fps,user_prompt", CASES)
def test_prompt_ids_match_transformers_processor(tokenizer_dirs, family, mode, grid, indices, fps, user_prompt):
    folder = tokenizer_dirs[family]
    config = DescoreConfig.load(folder)
    builder = PromptBuilder.from_dir(folder, config)
    ours = builder.build(user_prompt, grid, timestamps=np.asarray(indices) / fps, mode=mode)

    hf_tok = AutoTokenizer.from_pretrained(folder)
    instruction = config.prompt_template.replace("{prompt}", user_prompt)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": instruction}]}]
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if mode == "fast":
        text += config.reward_token
    metadata = VideoMetadata(total_num_frames=indices[-1] + 1, fps=fps, frames_indices=list(indices))
    ref = _processor(family, hf_tok, list(grid), metadata)(text=[text], videos=[np.zeros((len(indices), 4, 4, 3), np.uint8)])

    ref_ids = np.asarray(ref["input_ids"][0])
    np.testing.assert_array_equal(ours.input_ids, ref_ids)
    assert ours.num_video_tokens == int(np.prod(grid)) // 4
    # The processor's own modality map agrees with where our video tokens are.
    types = np.asarray(ref["mm_token_type_ids"][0])
    np.testing.assert_array_equal(types == 2, ours.input_ids == builder.ids.video_pad)


def test_fast_prompt_ends_with_reward_and_think_prompt_with_assistant_header(tokenizer_dirs):
    folder = tokenizer_dirs["qwen3_vl"]
    builder = PromptBuilder.from_dir(folder, DescoreConfig.load(folder))
    fast = builder.build("a cat", (1, 2, 2), timestamps=np.array([0.0, 0.5]), mode="fast").input_ids
    think = builder.build("a cat", (1, 2, 2), timestamps=np.array([0.0, 0.5]), mode="think").input_ids
    assert fast[-1] == builder.ids.reward and (fast == builder.ids.reward).sum() == 1
    np.testing.assert_array_equal(fast[:-1], think)
    assert builder.decode(think).endswith("assistant\n")


def test_prompt_errors_are_typed(tokenizer_dirs):
    folder = tokenizer_dirs["qwen2_vl"]
    config = DescoreConfig.load(folder)
    builder = PromptBuilder.from_dir(folder, config)
    for bad in ("", "   ", None):
        with pytest.raises(InvalidInputError, match="prompt is empty"):
            builder.build(bad, (1, 2, 2))
    config.max_context = 64
    with pytest.raises(ContextLengthError, match="over the model's context"):
        builder.build("word " * 200, (1, 2, 2))


def test_tokenizer_without_reward_token_is_rejected(tmp_path):
    from descore_sdk.errors import ModelLoadError
    from descore_sdk.training.tokenizer import save_tokenizer_files

    save_tokenizer_files(tmp_path, "qwen3_vl")  # a plain Qwen tokenizer: no <Reward>
    with pytest.raises(ModelLoadError, match="<Reward>"):
        PromptBuilder(load_tokenizer(tmp_path), DescoreConfig.for_family("qwen3_vl"))
