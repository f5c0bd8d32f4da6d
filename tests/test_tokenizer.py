"""The offline Qwen-style tokenizer: same ids through transformers' Qwen2Tokenizer and through
`tokenizers`, Qwen's special-token layout, hand-checked chat-template output, determinism."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

from descore_sdk.errors import InvalidInputError
from descore_sdk.training.tokenizer import (
    SPECIAL_TOKENS,
    THINK_TOKENS,
    build_tokenizer,
    chat_template,
    save_tokenizer_files,
)

FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")

TEXTS = [
    "A cat jumping on a beach at sunset, cinematic.",
    "The motion is smooth; the video matches the prompt. Score: 7/10",
    "At 2.5 seconds the red car turns left — it's clear, isn't it? We'll see.",
    "  leading spaces,\ttabs\nnewlines\n\n\nand   runs   of spaces  ",
    "Unicode: café naïve Zürich 日本語 😀 and a combining e\u0301 (NFC makes it é)",
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Rate it.<|im_end|>\n<|im_start|>assistant\n",
    "<think>The colors are vivid.</think> Final: good<|im_end|><|endoftext|>",
    "mixed<|image_pad|>specials<|box_start|>(1,2)<|box_end|>inside words",
    "numbers 2024 and 3.14159 and 1,000,000",
]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    dirs = {}
    for family in FAMILIES:
        dirs[family] = tmp_path_factory.mktemp(family)
        build_tokenizer(dirs[family], family)
    return dirs


@pytest.fixture(scope="module")
def hf_tokenizers(tokenizer_dirs):
    from transformers import AutoTokenizer

    return {family: AutoTokenizer.from_pretrained(str(path)) for family, path in tokenizer_dirs.items()}


def test_files_and_config(tokenizer_dirs):
    for family, path in tokenizer_dirs.items():
        assert {p.name for p in path.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
        config = json.loads((path / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "Qwen2Tokenizer"
        assert config["eos_token"] == "<|im_end|>"
        assert config["pad_token"] == "<|endoftext|>"
        assert config["chat_template"] == (path / "chat_template.jinja").read_text() == chat_template(family)


def test_special_token_layout():
    tok = build_tokenizer()
    added = tok.get_added_tokens_decoder()
    bpe_size = tok.get_vocab_size(with_added_tokens=False)
    assert 2000 <= bpe_size <= 4000
    # Specials directly follow the BPE vocabulary, in Qwen's order; then the non-special think tokens.
    for offset, token in enumerate(SPECIAL_TOKENS + THINK_TOKENS):
        assert tok.token_to_id(token) == bpe_size + offset
        assert added[bpe_size + offset].content == token
        assert added[bpe_size + offset].special == (token in SPECIAL_TOKENS)
    assert tok.get_vocab_size(with_added_tokens=True) == bpe_size + 16
    assert tok.token_to_id("<Reward>") is None  # DeScoreModel adds it, as for a real checkpoint
    # All 256 byte symbols are in the vocabulary, so any text encodes without unknown tokens.
    from tokenizers.pre_tokenizers import ByteLevel

    assert all(tok.token_to_id(symbol) is not None for symbol in ByteLevel.alphabet())


def test_qwen_pre_tokenizer_facts():
    """Facts of Qwen2's split pattern: digits are single tokens, contractions split off,
    a special token stays one piece, a space attaches to the following word."""
    tok = build_tokenizer()
    assert tok.encode("2024").tokens == ["2", "0", "2", "4"]
    assert tok.encode("<|video_pad|>").ids == [tok.token_to_id("<|video_pad|>")]
    pieces = [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str("it's the video, isn't it?")]
    assert pieces == ["it", "'s", "Ġthe", "Ġvideo", ",", "Ġisn", "'t", "Ġit", "?"]
    assert tok.encode("it's the video").tokens == ["it", "'s", "Ġthe", "Ġvideo"]
    # Common domain words are whole tokens.
    assert tok.encode(" seconds").tokens == ["Ġseconds"]


def test_hf_qwen2_tokenizer_gives_same_ids(tokenizer_dirs, hf_tokenizers):
    for family, path in tokenizer_dirs.items():
        hf = hf_tokenizers[family]
        assert type(hf).__name__ == "Qwen2Tokenizer"
        reference = Tokenizer.from_file(str(path / "tokenizer.json"))
        assert len(hf) == reference.get_vocab_size(with_added_tokens=True)
        assert hf.eos_token_id == reference.token_to_id("<|im_end|>")
        assert hf.pad_token_id == reference.token_to_id("<|endoftext|>")
        for text in TEXTS:
            ids = reference.encode(text).ids
            assert hf(text)["input_ids"] == ids, text
            assert hf.decode(ids) == reference.decode(ids, skip_special_tokens=False)
        # Byte-level BPE round-trips any text (after NFC).
        import unicodedata

        for text in TEXTS:
            assert reference.decode(reference.encode(text).ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)


def test_skip_special_tokens_keeps_think(hf_tokenizers):
    hf = hf_tokenizers["qwen3_vl"]
    ids = hf("<|im_start|>assistant\n<think>ok</think> fine<|im_end|>")["input_ids"]
    assert hf.decode(ids, skip_special_tokens=True) == "assistant\n<think>ok</think> fine"


VIDEO_TURN = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Rate this video."}]}]
QWEN2_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_layout(family, hf_tokenizers):
    hf = hf_tokenizers[family]
    default_system = QWEN2_SYSTEM if family in ("qwen2_vl", "qwen2_5_vl") else ""

    rendered = hf.apply_chat_template(VIDEO_TURN, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        default_system
        + "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Rate this video.<|im_end|>\n"
        + "<|im_start|>assistant\n"
    )

    no_prompt = hf.apply_chat_template(VIDEO_TURN, tokenize=False, add_generation_prompt=False)
    assert no_prompt == rendered[: -len("<|im_start|>assistant\n")]

    # An explicit system turn replaces the default one; string contents, images and multi-turn.
    conversation = [
        {"role": "system", "content": "Judge videos."},
        {"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image"}, {"type": "text", "text": " ok?"}]},
        {"role": "assistant", "content": "<think>fine</think> Yes."},
        {"role": "user", "content": "Thanks"},
    ]
    assert hf.apply_chat_template(conversation, tokenize=False) == (
        "<|im_start|>system\nJudge videos.<|im_end|>\n"
        "<|im_start|>user\nLook: <|vision_start|><|image_pad|><|vision_end|> ok?<|im_end|>\n"
        "<|im_start|>assistant\n<think>fine</think> Yes.<|im_end|>\n"
        "<|im_start|>user\nThanks<|im_end|>\n"
    )


def test_chat_template_tokens_are_single_specials(hf_tokenizers):
    hf = hf_tokenizers["qwen2_5_vl"]
    ids = hf.apply_chat_template(VIDEO_TURN, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    for token in ("<|vision_start|>", "<|video_pad|>", "<|vision_end|>"):
        assert ids.count(hf.convert_tokens_to_ids(token)) == 1


def test_unknown_family_is_rejected(tmp_path):
    with pytest.raises(InvalidInputError):
        build_tokenizer(family="llama")
    with pytest.raises(InvalidInputError):
        save_tokenizer_files(tmp_path, "qwen4_vl")


def test_build_is_deterministic(tmp_path):
    """Two fresh processes build byte-identical files (build time is not asserted: timings belong in
    benchmarks, and CI machines are shared)."""
    script = (
        "import sys;"
        "from descore_sdk.training.tokenizer import build_tokenizer;"
        "build_tokenizer(sys.argv[1], 'qwen3_vl')"
    )
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], capture_output=True, text=True, check=True)
    for filename in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (tmp_path / "a" / filename).read_bytes() == (tmp_path / "b" / filename).read_bytes()
    # And the same as this process's build.
    assert Tokenizer.from_file(str(tmp_path / "a" / "tokenizer.json")).to_str() == build_tokenizer().to_str()
