"""The DeScore prompt layout, tokenized with the checkpoint's own `tokenizer.json` (no transformers).

Layout (ChatML, as the Qwen-VL chat templates render it; `N = t·h·w / merge²` video tokens):

    [<|im_start|>system\\n{system}<|im_end|>\\n]            only if the family/config has a system prompt
    <|im_start|>user\\n{video}{instruction}<|im_end|>\\n
    <|im_start|>assistant\\n{CoT}<Reward>                   think mode: the model writes the CoT first
    <|im_start|>assistant\\n<Reward>                        fast mode: no CoT

That is the assistant-turn layout (the SDK's own and DeScore's RL stage). `PromptLayout` (config.py)
also covers the authors' user-turn layout — think: `user\\n{before}{video}{after}<|im_end|>\\n` +
assistant header; scoring pass: `user\\n{before}{video}{after}{CoT}<Reward>`; fast (CoT dropped):
`user\\n{before}{video}{after}<Reward>` — and VideoReward's, whose template holds one reward token per
dimension (`{before}`/`{after}`: the template split at its video marker, the prompt filled in).

`{video}` is `<|vision_start|><|video_pad|>×N<|vision_end|>` for Qwen2-VL / Qwen2.5-VL. Qwen3-VL splits it
per temporal patch group and puts the group's timestamp before each, inside the template's outer pair:
`<|vision_start|><0.2 seconds><|vision_start|><|video_pad|>×(h·w/merge²)<|vision_end|><1.2 seconds>…
<|vision_end|>`, the timestamp being the mean time of the first and last frame of the group (one
decimal). This is what transformers 5's Qwen3-VL processor produces from the chat template's
`<|vision_start|><|video_pad|><|vision_end|>`; transformers 4.57 replaced the whole triple instead. `{instruction}` is `DescoreConfig.prompt_template` with `{prompt}` replaced by the user's
prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DescoreConfig
from .errors import ContextLengthError, InvalidInputError, ModelLoadError
from .user_text import encode_plain

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
    ids = {tokenizer.token_to_id(t) for t in (*_NEVER_GENERATED, config.reward_token, *config.reward_tokens)}
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
    """Token ids of one scoring prompt. `input_ids` ends right before the CoT (think: with the assistant
    header) or with the last reward token (fast). `prefix_length`: in the user-turn layout, how many
    leading ids the CoT pass shares with the scoring pass (`ids[:prefix_length]` ends with the
    template text after the video); elsewhere the whole prompt."""

    input_ids: np.ndarray  # (L,) int64
    num_video_tokens: int
    prefix_length: int = -1

    def __post_init__(self):
        if self.prefix_length < 0:
            self.prefix_length = len(self.input_ids)


class PromptBuilder:
    """Builds DeScore prompts as token ids for one checkpoint (tokenizer + DescoreConfig).

    Text the user controls (the prompt, a generated CoT) is data: it is tokenized with added-token
    matching turned off, so a prompt containing "<Reward>" or "<|im_start|>" stays those characters.
    The structure (chat markers, video block, reward tokens, special tokens written in the template)
    is inserted as ids. Text between two structural tokens is tokenized as one run, exactly as
    tokenizing the whole rendered chat would (added tokens split the text before BPE), so ids equal
    the processor's whenever the user text holds no special-token strings.
    """

    def __init__(self, tokenizer, config: DescoreConfig):
        self.tokenizer = tokenizer
        self.config = config
        ids = {}
        for name, text in {**SPECIAL_TOKENS, "reward": config.reward_token}.items():
            token_id = tokenizer.token_to_id(text)
            if token_id is None:
                raise ModelLoadError(
                    f"The tokenizer has no {text!r} token; this is not a DeScore checkpoint tokenizer "
                    "(load the folder with DeScoreModel.from_pretrained once to add the reward token, or "
                    "convert an authors' checkpoint with `descore convert`)."
                )
            ids[name] = token_id
        self.ids = TokenIds(**ids)
        self.reward_ids = []
        for token in config.reward_tokens:
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise ModelLoadError(
                    f"The tokenizer has no reward token {token!r} (layout reward_tokens {config.reward_tokens}); "
                    "the tokenizer files do not belong to this checkpoint. Re-convert it with `descore convert`."
                )
            self.reward_ids.append(int(token_id))
        self.reward_ids = tuple(self.reward_ids)
        # Added tokens a template may contain on purpose (VideoReward's <|VQ_reward|> ...) go in as ids,
        # as whole-text tokenization would match them; longest first so none shadows another. User
        # text never matches any (see `encode`).
        specials = sorted((t.content for t in tokenizer.get_added_tokens_decoder().values()), key=len, reverse=True)
        self._special_ids = {text: tokenizer.token_to_id(text) for text in specials}
        self._special_pattern = re.compile("|".join(re.escape(t) for t in specials)) if specials else None
        self._template = self._split_template(config)

    @classmethod
    def from_dir(cls, directory: str | Path, config: DescoreConfig) -> "PromptBuilder":
        return cls(load_tokenizer(directory), config)

    # -- text ----------------------------------------------------------------------------------------
    def _check_prompt(self, prompt) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError("The prompt is empty; pass the text prompt the video was generated from.")

    def instruction(self, prompt: str) -> str:
        """The template text with the prompt filled in (the video marker, if any, left in place)."""
        self._check_prompt(prompt)
        return self.config.prompt_template.replace(self.config.layout.prompt_marker, prompt)

    def _split_template(self, config: DescoreConfig):
        """(before, after): template pieces around the video, each a list of str | ("id", int) with the
        prompt marker kept as the sentinel `_PROMPT`."""
        layout = config.layout
        template = config.prompt_template
        if layout.prompt_marker not in template:
            raise ModelLoadError(
                f"The prompt template has no prompt marker {layout.prompt_marker!r}; fix descore_config.json or "
                "re-convert with a template that marks where the prompt goes."
            )
        if layout.video_marker is not None:
            if template.count(layout.video_marker) != 1:
                raise ModelLoadError(f"The prompt template must hold the video marker {layout.video_marker!r} exactly once.")
            before, after = template.split(layout.video_marker)
        else:
            before, after = "", template
        return self._template_pieces(before, layout.prompt_marker), self._template_pieces(after, layout.prompt_marker)

    def _template_pieces(self, text: str, marker: str) -> list:
        pieces = []
        for index, part in enumerate(text.split(marker)):
            if index:
                pieces.append(_PROMPT)
            last = 0
            for match in self._special_pattern.finditer(part) if self._special_pattern else ():
                pieces.append(part[last : match.start()])
                pieces.append(("id", self._special_ids[match.group()]))
                last = match.end()
            pieces.append(part[last:])
        return pieces

    def _video_pieces(self, num_groups: int, timestamps: np.ndarray | None) -> list:
        """The video block with ONE `<|video_pad|>` per group; expanded to the real count on ids."""
        i = self.ids
        block = [("id", i.vision_start), ("id", i.video_pad), ("id", i.vision_end)]
        if self.config.family != "qwen3_vl":
            return block
        if timestamps is None:
            raise InvalidInputError("Qwen3-VL prompts need frame timestamps; pass the VideoClip's timestamps.")
        group_ts = group_timestamps(timestamps, self.config.vision.temporal_patch_size)
        if len(group_ts) != num_groups:
            raise InvalidInputError(f"{len(timestamps)} frame timestamps do not match {num_groups} temporal groups.")
        # transformers 5 replaces only the template's <|video_pad|>, so the per-group blocks sit inside
        # the template's own vision_start/vision_end pair (4.57 replaced the whole triple instead).
        pieces = [("id", i.vision_start)]
        for t in group_ts:
            pieces += [f"<{t:.1f} seconds>", *block]
        return pieces + [("id", i.vision_end)]

    def _user_pieces(self, prompt: str, num_groups: int, timestamps) -> tuple[list, list]:
        """(head, user): the system turn + user header, and the user content (video and template)."""
        self._check_prompt(prompt)
        i = self.ids
        head = []
        if self.config.system_prompt:
            head += [("id", i.im_start), f"system\n{self.config.system_prompt}", ("id", i.im_end), "\n"]
        head += [("id", i.im_start), "user\n"]
        before, after = self._template
        fill = lambda pieces: [prompt if p is _PROMPT else p for p in pieces]  # noqa: E731
        return head, fill(before) + self._video_pieces(num_groups, timestamps) + fill(after)

    def _assistant_header(self) -> list:
        i = self.ids
        return [("id", i.im_end), "\n", ("id", i.im_start), "assistant\n"]

    def render(self, prompt: str, num_groups: int, timestamps: np.ndarray | None = None) -> str:
        """The think prompt as text (one video_pad per group), for display and debugging."""
        head, user = self._user_pieces(prompt, num_groups, timestamps)
        return "".join(p if isinstance(p, str) else self.tokenizer.id_to_token(p[1]) for p in head + user + self._assistant_header())

    # -- ids -----------------------------------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        """Ids of user text: added-token strings in it stay plain text (descore_sdk.user_text)."""
        return encode_plain(self.tokenizer, text)

    def _ids(self, pieces: list) -> np.ndarray:
        """Concatenate pieces: adjacent text is joined and tokenized as one run; ("id", n) goes in as is."""
        out, run = [], []
        for piece in pieces + [None]:
            if isinstance(piece, str):
                run.append(piece)
                continue
            if run:
                text = "".join(run)
                if text:
                    out.append(self.encode(text))
                run = []
            if piece is not None:
                out.append(np.asarray([piece[1]], dtype=np.int64))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _expand(self, ids: np.ndarray, video_grid_thw) -> tuple[np.ndarray, int]:
        """Expand each `<|video_pad|>` to its real token count: one per group (Qwen3-VL) or per video."""
        t, h, w = (int(x) for x in np.asarray(video_grid_thw).reshape(3))
        per_group = h * w // self.config.vision.merge_size ** 2
        repeats = np.ones(len(ids), dtype=np.int64)
        repeats[ids == self.ids.video_pad] = per_group if self.config.family == "qwen3_vl" else per_group * t
        return np.repeat(ids, repeats), t * per_group

    def _check_length(self, ids: np.ndarray, num_video: int, reserve: int = 1) -> None:
        limit = self.config.max_context
        if len(ids) + reserve > limit:
            raise ContextLengthError(
                f"The prompt with its {num_video} video tokens is {len(ids)} tokens, over the model's "
                f"context of {limit}. Shorten the prompt, or lower max_frames / max_pixels."
            )

    def encode_text(self, text: str) -> np.ndarray:
        """Ids of user text (a prompt, a rationale) as plain text: never special tokens."""
        return self.encode(text)

    def build(self, prompt: str, video_grid_thw, *, timestamps: np.ndarray | None = None, mode: str = "think") -> PromptIds:
        """Token ids for scoring `prompt` against a video with patch grid `video_grid_thw` (t, h, w).

        think: ids end with the assistant header (the CoT is generated next); fast: ids end with the
        last reward token (tokens after it cannot change its hidden state, so they are left out).
        Layouts (see `PromptLayout`): assistant: fast = think + `<Reward>`; user: fast =
        `user: {before}{video}{after}<Reward>` (the cold start's CoT-dropped layout) and
        `prefix_length` marks `{after}`'s end; none: fast only, the template holds the reward tokens.
        """
        if mode not in ("think", "fast"):
            raise InvalidInputError(f"mode must be 'think' or 'fast', got {mode!r}.")
        layout = self.config.layout
        t = int(np.asarray(video_grid_thw).reshape(3)[0])
        head, user = self._user_pieces(prompt, t, timestamps)
        if mode == "think" and layout.cot_position == "none":
            raise InvalidInputError("This model scores without a chain of thought (layout cot_position 'none'); use mode='fast'.")
        prefix_length = -1
        if mode == "think":
            pieces = head + user + self._assistant_header()
        elif layout.cot_position == "assistant":
            pieces = head + user + self._assistant_header() + [("id", self.ids.reward)]
        elif layout.cot_position == "user":
            pieces = head + user + [("id", self.ids.reward)]
        else:  # none: the reward tokens are in the template; VideoReward's prompt is a full user turn
            pieces = head + user + self._assistant_header()
        ids, num_video = self._expand(self._ids(pieces), video_grid_thw)
        if mode == "think" and layout.cot_position == "user":
            # `<|im_end|>` is structural, so the header is its own runs: the prefix is all before it.
            prefix_length = len(ids) - len(self._ids(self._assistant_header()))
        if mode == "fast":
            where = np.flatnonzero(np.isin(ids, self.reward_ids))
            if not len(where):
                raise ModelLoadError(
                    f"The prompt template holds none of the reward tokens {self.config.reward_tokens}; fix the "
                    "template in descore_config.json (VideoReward's template must contain its reward tokens)."
                )
            ids = ids[: where[-1] + 1]
            self._check_reward_tokens(ids)
        self._check_length(ids, num_video)
        return PromptIds(input_ids=ids, num_video_tokens=num_video, prefix_length=prefix_length)

    def _check_reward_tokens(self, ids: np.ndarray) -> None:
        if self.config.layout.dimension_map == "per_token":
            missing = [tok for tok, i in zip(self.config.reward_tokens, self.reward_ids) if not (ids == i).any()]
            if missing:
                raise ModelLoadError(f"The prompt template lacks the reward token(s) {missing}; each dimension needs its own.")

    def scoring_ids(self, prompt: str, video_grid_thw, cot_text: str, *, timestamps: np.ndarray | None = None) -> np.ndarray:
        """The user-turn layout's scoring pass: `user: {before}{video}{after}{CoT}<Reward>`, tokenized
        as the authors tokenize it (the CoT joins the template's last text run), ending at `<Reward>`."""
        if self.config.layout.cot_position != "user":
            raise InvalidInputError("scoring_ids is the user-turn layout's second pass; this model uses another layout.")
        t = int(np.asarray(video_grid_thw).reshape(3)[0])
        head, user = self._user_pieces(prompt, t, timestamps)
        ids, num_video = self._expand(self._ids(head + user + [cot_text, ("id", self.ids.reward)]), video_grid_thw)
        self._check_length(ids, num_video, reserve=0)
        return ids

    def cot_text(self, cot_ids) -> str:
        """The CoT as the scoring pass sees it: decoded with special tokens skipped (as vLLM returns
        text), and for a "Thinking" backbone only what follows the layout's `cot_after` marker."""
        text = self.decode(cot_ids)
        marker = self.config.layout.cot_after
        if marker:
            # The authors keep nothing when the marker is missing (an unfinished thought).
            text = text.rsplit(marker, 1)[1] if marker in text else ""
        return text

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


_PROMPT = object()  # where the user's prompt goes in a template's pieces


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading ids `a` and `b` share (where the scoring pass branches from the prompt)."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n
