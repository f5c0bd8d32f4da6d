"""Preference pairs → padded torch batches for `DeScoreModel.forward`.

Inputs are built by `descore_sdk.inputs` — the same functions the Scorer uses at inference — so the
frames, patches, prompt ids and rope scale a model is trained on are exactly what it is served with.

Sequence layouts (one row per video; `prompt` = the think-layout prompt ids, ending with the
assistant header `<|im_start|>assistant\\n`):

    "fast"     prompt <Reward>                       score without a rationale (Scorer mode="fast")
    "think"    prompt CoT <Reward>                   DeScore: score after the rationale (mode="think")
    "explain"  prompt <Reward> CoT <|im_end|>        JRM: score first, then the rationale

These are the assistant-turn layout's rows. A model whose `PromptLayout.cot_position` is "user" (the
authors' DeScore) trains where it is scored: "think" is `user: {before}{video}{after}{CoT}<Reward>`
(`PromptBuilder.scoring_ids`), "fast" is the same without the CoT, and "explain" does not apply.

LM labels (`IGNORE_INDEX` elsewhere): "think" labels every CoT token and, at the `<Reward>` position,
`<|im_end|>` — the model learns to end its rationale with the stop token the Scorer stops on, while
the input at that position stays `<Reward>` (the prediction made from the last CoT token sees only
the tokens before it). "explain" labels the CoT tokens and the closing `<|im_end|>`. In "explain"
the reward is read at `<Reward>`, which by causal attention sees exactly the "fast" row: a JRM model
is trained on its inference layout and learns the rationale in the same forward pass.

Batches are right-padded with the tokenizer's pad token (`<|endoftext|>`); the reward is read at the
`<Reward>` token wherever it sits, so padding never moves it. A pair batch holds the A videos of
all pairs first, then the B videos: rows `[:B]` and `[B:]` of the rewards.

Random choices (the DeScore CoT drop) are drawn from `np.random.default_rng([seed, key])` with one
key per pair — the pair's position in the training stream — so they do not depend on how a batch
is split across processes or on when a run was resumed.

Public API (also used by the RL stage): `FeatureCache`, `Row`, `build_row`, `collate_rows`,
`PairCollator`, `PairBatch`, `preference_codes`.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from descore_sdk.config import DescoreConfig
from descore_sdk.errors import DataError, InvalidInputError
from descore_sdk.inputs import VideoFeatures, clip_features, load_clip, model_inputs
from descore_sdk.prompt import PromptBuilder, common_prefix_length
from descore_sdk.video import VideoClip

from .data import PreferencePair
from .losses import IGNORE_INDEX, IGNORE_LABEL

logger = logging.getLogger(__name__)

LAYOUTS = ("fast", "think", "explain")
STOP_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
PREFERENCE_CODES = {"A": 1, "B": -1, "same": 0}


# -- per-video preprocessing cache ------------------------------------------------------------------
class FeatureCache:
    """`VideoFeatures` per video file, with the decoded clips kept in memory.

    Decoding dominates a tiny model's training step, and a run sees each video many times, so the
    decoded frames (uint8, the output of `inputs.load_clip`) are kept and the patches are recomputed
    from them on every call (`inputs.clip_features`, the Scorer's code): exactly what decoding again
    would give, at a quarter of the memory float32 patches would take. Clips are kept up to
    `max_bytes` of frames (default 2 GiB; 0 keeps none), least recently used dropped first. Entries
    are keyed by path, size and modification time, so an edited file is read again.
    """

    def __init__(self, config: DescoreConfig, *, max_bytes: int | None = 2 << 30):
        if max_bytes is not None and max_bytes < 0:
            raise InvalidInputError(f"max_bytes must be >= 0 or None (no limit), got {max_bytes}.")
        self.config = config
        self.max_bytes = max_bytes
        self._clips: OrderedDict[tuple, VideoClip] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def __call__(self, video: str | os.PathLike) -> VideoFeatures:
        path = Path(video)
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(f"Video {path} cannot be read ({exc}); fix the data file or restore the video.") from None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        clip = self._clips.get(key)
        if clip is not None:
            self.hits += 1
            self._clips.move_to_end(key)
        else:
            self.misses += 1
            clip = load_clip(path, self.config)
            self._keep(key, clip)
        return clip_features(clip, self.config)

    def warm(self, video: str | os.PathLike) -> bool:
        """Decode `video` into the cache ahead of use; False when the cache has no room left for it
        (then nothing more is worth warming: later clips would push earlier ones out)."""
        path = Path(video)
        try:
            stat = path.stat()
        except OSError:
            return True  # a missing file is reported when a batch needs it
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in self._clips:
            return True
        clip = load_clip(path, self.config)
        if self.max_bytes is not None and self.bytes + clip.frames.nbytes > self.max_bytes:
            return False
        self._keep(key, clip)
        return True

    def _keep(self, key: tuple, clip: VideoClip) -> None:
        size = clip.frames.nbytes
        if self.max_bytes is not None and size > self.max_bytes:
            return
        self._clips[key] = clip
        self.bytes += size
        while self.max_bytes is not None and self.bytes > self.max_bytes:
            _, dropped = self._clips.popitem(last=False)
            self.bytes -= dropped.frames.nbytes

    def __len__(self) -> int:
        return len(self._clips)


# -- one row ----------------------------------------------------------------------------------------
@dataclass
class Row:
    """One model row: input_ids (L,) int64, labels (L,) int64 or None, and its video."""

    input_ids: np.ndarray
    labels: np.ndarray | None
    features: VideoFeatures


def _token_id(prompts: PromptBuilder, token: str) -> int:
    token_id = prompts.tokenizer.token_to_id(token)
    if token_id is None:
        raise InvalidInputError(f"The tokenizer has no {token!r} token; it is not a Qwen-VL tokenizer.")
    return int(token_id)


def build_row(
    prompts: PromptBuilder,
    features: VideoFeatures,
    prompt: str,
    layout: str,
    rationale: str | None = None,
    *,
    with_labels: bool = True,
) -> Row:
    """The ids (and LM labels) of one video in `layout` (see the module docstring).

    A rationale that would push the row past `config.max_context` is cut to fit (logged): dropping a
    training example mid-run because one rationale is long would be worse.
    """
    if layout not in LAYOUTS:
        raise InvalidInputError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    reward_id = prompts.ids.reward
    if layout == "fast":
        ids = model_inputs(prompts, features, prompt, "fast").input_ids
        return Row(ids, None, features)
    if rationale is None or not rationale.strip():
        raise InvalidInputError(f"layout {layout!r} needs a rationale; use layout 'fast' for videos without one.")

    if prompts.config.layout.cot_position == "user":
        return _user_turn_row(prompts, features, prompt, layout, rationale, with_labels)
    head = model_inputs(prompts, features, prompt, "think").input_ids
    cot = prompts.encode_text(rationale)  # user data: never special tokens
    stop_id = _token_id(prompts, STOP_TOKEN)
    room = prompts.config.max_context - len(head) - 2  # <Reward> and, for "explain", the stop token
    if len(cot) > room:
        logger.warning("A rationale of %d tokens was cut to %d to fit max_context=%d.", len(cot), max(room, 0), prompts.config.max_context)
        cot = cot[: max(room, 0)]
    ignore_head = np.full(len(head), IGNORE_INDEX, dtype=np.int64)
    if layout == "think":
        ids = np.concatenate([head, cot, [reward_id]]).astype(np.int64)
        labels = np.concatenate([ignore_head, cot, [stop_id]]).astype(np.int64)
    else:  # explain
        ids = np.concatenate([head, [reward_id], cot, [stop_id]]).astype(np.int64)
        labels = np.concatenate([ignore_head, [IGNORE_INDEX], cot, [stop_id]]).astype(np.int64)
    return Row(ids, labels if with_labels else None, features)


def _user_turn_row(prompts: PromptBuilder, features: VideoFeatures, prompt: str, layout: str, rationale: str,
                   with_labels: bool) -> Row:
    """A think row of a user-turn-layout model (the authors' DeScore cold start): the scoring pass
    `user: {before}{video}{after}{rationale}<Reward>`, exactly the ids the runtime reads the reward
    from. LM labels cover the rationale's tokens (those past the prompt's common token prefix)."""
    if layout != "think":
        raise InvalidInputError(
            f"layout {layout!r} is defined for the assistant-turn layout; this model reads its reward inside the "
            "user turn (layout cot_position 'user'): train it with the 'think' or 'fast' layout."
        )
    ids = prompts.scoring_ids(prompt, features.grid_thw, rationale, timestamps=features.timestamps)
    labels = None
    if with_labels:
        prompt_ids = prompts.scoring_ids(prompt, features.grid_thw, "", timestamps=features.timestamps)[:-1]
        start = common_prefix_length(ids, prompt_ids)
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        labels[start:-1] = ids[start:-1]
    return Row(ids.astype(np.int64), labels, features)


def collate_rows(rows: Sequence[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows into one batch for `DeScoreModel.forward(**batch)`.

    Returns input_ids (N, L) int64, attention_mask (N, L) int64, pixel_values_videos (ΣP, D) float32
    (videos in row order), video_grid_thw (N, 3) int64, second_per_grid_ts (N,) float32, and labels
    (N, L) int64 when any row has labels (IGNORE_INDEX on padding and unlabelled rows).
    """
    if not rows:
        raise InvalidInputError("Cannot collate an empty list of rows.")
    length = max(len(r.input_ids) for r in rows)
    n = len(rows)
    input_ids = np.full((n, length), pad_id, dtype=np.int64)
    attention = np.zeros((n, length), dtype=np.int64)
    any_labels = any(r.labels is not None for r in rows)
    labels = np.full((n, length), IGNORE_INDEX, dtype=np.int64) if any_labels else None
    for i, row in enumerate(rows):
        input_ids[i, : len(row.input_ids)] = row.input_ids
        attention[i, : len(row.input_ids)] = 1
        if row.labels is not None:
            labels[i, : len(row.labels)] = row.labels
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "pixel_values_videos": torch.from_numpy(np.concatenate([r.features.patches for r in rows])),
        "video_grid_thw": torch.from_numpy(np.stack([r.features.grid_thw for r in rows])),
        "second_per_grid_ts": torch.tensor([r.features.second_per_grid for r in rows], dtype=torch.float32),
    }
    if labels is not None:
        batch["labels"] = torch.from_numpy(labels)
    return batch


# -- pairs ------------------------------------------------------------------------------------------
def preference_codes(pairs: Sequence[PreferencePair], dimension_names: Sequence[str]) -> np.ndarray:
    """(B, K) int64: +1 A preferred, −1 B preferred, 0 tie, IGNORE_LABEL when a pair has no label for
    that dimension."""
    codes = np.full((len(pairs), len(dimension_names)), IGNORE_LABEL, dtype=np.int64)
    for i, pair in enumerate(pairs):
        for k, dim in enumerate(dimension_names):
            if dim in pair.labels:
                codes[i, k] = PREFERENCE_CODES[pair.labels[dim]]
    return codes


@dataclass
class PairBatch:
    """A batch of B preference pairs.

    inputs:     `collate_rows` output for the 2B rows: A videos of all pairs, then B videos
                (`labels` inside when the layout trains the LM).
    preference: (B, K) int64 codes, columns in the model's dimension order.
    use_cot:    (B,) bool, whether the pair's rows carry the rationale.
    rows:       the pairs' line numbers in the data file (for error messages).
    """

    inputs: dict[str, torch.Tensor]
    preference: torch.Tensor
    use_cot: torch.Tensor
    rows: list[int]

    @property
    def num_pairs(self) -> int:
        return int(self.preference.shape[0])

    @property
    def labels(self) -> torch.Tensor | None:
        return self.inputs.get("labels")

    def to(self, device) -> "PairBatch":
        return PairBatch({k: v.to(device) for k, v in self.inputs.items()}, self.preference.to(device), self.use_cot.to(device), self.rows)


class PairCollator:
    """Builds `PairBatch`es for one training recipe.

    recipe:
        "fast"     BT on the fast layout only (no rationale, no LM loss): the plain reward model.
        "descore"  DeScore cold start: per pair, with probability `cot_drop` both videos use the fast
                   layout; otherwise both use "think" with their rationales. The drop is shared by the
                   two videos so both rewards are read in the same situation.
        "jrm"      "explain" layout for every pair with rationales (reward at the fast position, LM on
                   the rationale in the same row).
    Pairs lacking a rationale for either video fall back to the fast layout.
    with_labels: produce LM labels (only meaningful for "descore"/"jrm").
    """

    RECIPES = ("fast", "descore", "jrm")

    def __init__(
        self,
        prompts: PromptBuilder,
        cache: FeatureCache,
        dimension_names: Sequence[str],
        *,
        recipe: str = "descore",
        cot_drop: float = 0.5,
        with_labels: bool = True,
        seed: int = 0,
    ):
        if recipe not in self.RECIPES:
            raise InvalidInputError(f"recipe must be one of {self.RECIPES}, got {recipe!r}.")
        if not 0.0 <= cot_drop <= 1.0:
            raise InvalidInputError(f"cot_drop must be a probability in [0, 1], got {cot_drop}.")
        self.prompts = prompts
        self.cache = cache
        self.dimension_names = list(dimension_names)
        self.recipe = recipe
        self.cot_drop = float(cot_drop)
        self.with_labels = with_labels and recipe != "fast"
        self.seed = int(seed)
        self.pad_id = _token_id(prompts, PAD_TOKEN)

    def uses_cot(self, pair: PreferencePair, key: int) -> bool:
        """Whether `pair` (at stream position `key`) is laid out with its rationales."""
        has_rationales = bool(pair.rationale_a and pair.rationale_a.strip() and pair.rationale_b and pair.rationale_b.strip())
        if self.recipe == "fast" or not has_rationales:
            return False
        if self.recipe == "jrm":
            return True
        draw = np.random.default_rng([self.seed, int(key)]).random()
        return bool(draw >= self.cot_drop)

    def __call__(self, pairs: Sequence[PreferencePair], keys: Sequence[int]) -> PairBatch:
        if len(pairs) != len(keys) or not pairs:
            raise InvalidInputError(f"Need one key per pair and at least one pair; got {len(pairs)} pairs, {len(keys)} keys.")
        cot_layout = "explain" if self.recipe == "jrm" else "think"
        use_cot = [self.uses_cot(p, k) for p, k in zip(pairs, keys)]
        rows_a, rows_b = [], []
        for pair, cot in zip(pairs, use_cot):
            layout = cot_layout if cot else "fast"
            for video, rationale, out in ((pair.video_a, pair.rationale_a, rows_a), (pair.video_b, pair.rationale_b, rows_b)):
                features = self.cache(video)
                out.append(build_row(self.prompts, features, pair.prompt, layout, rationale if cot else None, with_labels=self.with_labels))
        return PairBatch(
            inputs=collate_rows(rows_a + rows_b, self.pad_id),
            preference=torch.from_numpy(preference_codes(pairs, self.dimension_names)),
            use_cot=torch.tensor(use_cot, dtype=torch.bool),
            rows=[p.row for p in pairs],
        )
