"""The DeScore prompt layout, tokenized with the checkpoint's own `tokenizer.json` (no transformers).

Layout (ChatML, as the Qwen-VL chat templates render it; `N = t·h·w / merge²` video tokens):

    [<|im_start|>system\\n{system}<|im_end|>\\n]            only if the family/config has a system prompt
    <|im_start|>user\\n{video}{instruction}<|im_end|>\\n
    <|im_start|>assistant\\n{CoT}<Reward>                   think mode: the model writes the CoT first
    <|im_start|>assistant\\n<Reward>                        fast mode: no CoT

`{video}` is `<|vision_start|><|video_pad|>×N<|vision_end|>` for Qwen2-VL / Qwen2.5-VL. Qwen3-VL splits it
per temporal patch group and puts the group's timestamp before each, inside the template's outer pair:
`<|vision_start|><0.2 seconds><|vision_start|><|video_pad|>×(h·w/merge²)<|vision_end|><1.2 seconds>…
<|vision_end|>`, the timestamp being the mean time of the first and last frame of the group (one
decimal). This is what transformers 5's Qwen3-VL processor produces from the chat template's
`<|vision_start|><|video_pad|><|vision_end|>`; transformers 4.57 replaced the whole triple instead. `{instruction}` is `DescoreConfig.prompt_template` with `{prompt}` replaced by the user's
prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DescoreConfig
from .errors import ContextLengthError, InvalidInputError, ModelLoadError
from .user_text import encode_pieces, encode_plain

# Stands in for the user's prompt while the template is rendered (private-use characters, which no
# template contains), so that the prompt can be tokenized apart from the template around it.
_PROMPT_SLOT = "\ue000descore-prompt\ue000"

SPECIAL_TOKENS = {
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "endoftext": "<|endoftext|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "video_pad": "<|video_pad|>",
    "image_pad": "<|image_pad|>",
}


@dataclass(frozen=True)
class TokenIds:
    im_start: int
    im_end: int
    endoftext: int
    vision_start: int
    vision_end: int
    video_pad: int
    image_pad: int
    reward: int


def load_tokenizer(directory: str | Path):
    """Load `tokenizer.json` from a checkpoint or bundle folder with the `tokenizers` library."""
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} not found; a DeScore checkpoint or bundle must contain tokenizer.json.")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses with Rust messages
        raise ModelLoadError(f"{path} could not be read as a tokenizers file ({exc}); re-export the checkpoint.") from None


# Tokens a generated CoT must never contain: vision placeholders would need pixels the scoring pass does
# not have, and a sampled <Reward> would be read as a score. Random or undertrained models do emit them.
_NEVER_GENERATED = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def blocked_generation_ids(tokenizer, config: DescoreConfig) -> tuple[int, ...]:
    """Ids every backend masks out while sampling a CoT (vision placeholders and the reward token)."""
    ids = {tokenizer.token_to_id(t) for t in (*_NEVER_GENERATED, config.reward_token)}
    return tuple(sorted(i for i in ids if i is not None))


def group_timestamps(timestamps: np.ndarray, temporal_patch_size: int) -> np.ndarray:
    """Mean timestamp (seconds) of each temporal patch group; the last group repeats its final frame
    when the frame count is not a multiple of the patch size, as Qwen3-VL's processor does."""
    ts = np.asarray(timestamps, dtype=np.float64)
    pad = (-len(ts)) % temporal_patch_size
    if pad:
        ts = np.concatenate([ts, np.repeat(ts[-1:], pad)])
    groups = ts.reshape(-1, temporal_patch_size)
    return (groups[:, 0] + groups[:, -1]) / 2


@dataclass
class PromptIds:
    """Token ids of one scoring prompt. `input_ids` ends right before the CoT (think) or with the reward
    token (fast)."""

    input_ids: np.ndarray  # (L,) int64
    num_video_tokens: int


class PromptBuilder:
    """Builds DeScore prompts as token ids for one checkpoint (tokenizer + DescoreConfig)."""

    def __init__(self, tokenizer, config: DescoreConfig):
        self.tokenizer = tokenizer
        self.config = config
        ids = {}
        for name, text in {**SPECIAL_TOKENS, "reward": config.reward_token}.items():
            token_id = tokenizer.token_to_id(text)
            if token_id is None:
                raise ModelLoadError(
                    f"The tokenizer has no {text!r} token; this is not a DeScore checkpoint tokenizer "
                    "(load the folder with DeScoreModel.from_pretrained once to add the reward token)."
                )
            ids[name] = token_id
        self.ids = TokenIds(**ids)

    @classmethod
    def from_dir(cls, directory: str | Path, config: DescoreConfig) -> "PromptBuilder":
        return cls(load_tokenizer(directory), config)

    # -- text ----------------------------------------------------------------------------------------
    def instruction(self, prompt: str) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError("The prompt is empty; pass the text prompt the video was generated from.")
        return self.config.prompt_template.replace("{prompt}", prompt)

    def _video_text(self, num_groups: int, timestamps: np.ndarray | None) -> str:
        """The video block with ONE `<|video_pad|>` per group; expanded to the real count on ids."""
        block = "<|vision_start|><|video_pad|><|vision_end|>"
        if self.config.family != "qwen3_vl":
            return block
        if timestamps is None:
            raise InvalidInputError("Qwen3-VL prompts need frame timestamps; pass the VideoClip's timestamps.")
        group_ts = group_timestamps(timestamps, self.config.vision.temporal_patch_size)
        if len(group_ts) != num_groups:
            raise InvalidInputError(f"{len(timestamps)} frame timestamps do not match {num_groups} temporal groups.")
        # transformers 5 replaces only the template's <|video_pad|>, so the per-group blocks sit inside
        # the template's own vision_start/vision_end pair (4.57 replaced the whole triple instead).
        return "<|vision_start|>" + "".join(f"<{t:.1f} seconds>{block}" for t in group_ts) + "<|vision_end|>"

    def render(self, prompt: str, num_groups: int, timestamps: np.ndarray | None = None) -> str:
        """The prompt text up to and including the assistant header, one video_pad per group."""
        parts = []
        if self.config.system_prompt:
            parts.append(f"<|im_start|>system\n{self.config.system_prompt}<|im_end|>\n")
        parts.append(f"<|im_start|>user\n{self._video_text(num_groups, timestamps)}{self.instruction(prompt)}<|im_end|>\n")
        parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    # -- ids -----------------------------------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_text(self, text: str) -> np.ndarray:
        """Ids of user text (a prompt, a rationale) as plain text: never special tokens."""
        return encode_plain(self.tokenizer, text)

    def _encode_rendered(self, prompt: str, num_groups: int, timestamps) -> np.ndarray:
        """`encode(render(...))`, except that the user's prompt is tokenized as plain text
        (descore_sdk.user_text): the same ids for any prompt free of special-token text."""
        self.instruction(prompt)  # the type / emptiness checks
        rendered = self.render(_PROMPT_SLOT, num_groups, timestamps)
        template_parts = rendered.split(_PROMPT_SLOT)
        pieces = [(template_parts[0], False)]
        for part in template_parts[1:]:
            pieces += [(prompt, True), (part, False)]
        return encode_pieces(self.tokenizer, pieces)

    def build(self, prompt: str, video_grid_thw, *, timestamps: np.ndarray | None = None, mode: str = "think") -> PromptIds:
        """Token ids for scoring `prompt` against a video with patch grid `video_grid_thw` (t, h, w).

        think: ids end with the assistant header (the CoT is generated next, then `<Reward>`);
        fast: ids end with `<Reward>` right after the assistant header.
        """
        if mode not in ("think", "fast"):
            raise InvalidInputError(f"mode must be 'think' or 'fast', got {mode!r}.")
        t, h, w = (int(x) for x in np.asarray(video_grid_thw).reshape(3))
        merge2 = self.config.vision.merge_size ** 2
        per_group = h * w // merge2
        qwen3 = self.config.family == "qwen3_vl"
        ids = self._encode_rendered(prompt, t, timestamps)
        # Expand each placeholder to its real token count: one per group (Qwen3-VL) or one per video.
        repeats = np.ones(len(ids), dtype=np.int64)
        repeats[ids == self.ids.video_pad] = per_group if qwen3 else per_group * t
        ids = np.repeat(ids, repeats)
        if mode == "fast":
            ids = np.append(ids, self.ids.reward)
        limit = self.config.max_context
        if len(ids) + 1 > limit:
            raise ContextLengthError(
                f"The prompt with its {t * per_group} video tokens is {len(ids)} tokens, over the model's "
                f"context of {limit}. Shorten the prompt, or lower max_frames / max_pixels."
            )
        return PromptIds(input_ids=ids, num_video_tokens=t * per_group)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
