"""THE decode loop of every non-reference backend: prefill once, decode with the KV cache, read the reward.

For a batch of B videos (each its own prompt, patches and settings) one call to `decode`:

1. encodes each video with the backend's vision graph and splices the visual embeddings (and Qwen3-VL
   DeepStack features) into the prompt's token embeddings at the `<|video_pad|>` positions;
2. prefills all prompts together, left-padded to one length (so every row's last column is real), in
   chunks of at most `prefill_chunk` columns to bound attention memory;
3. decodes token by token, every row at its own M-RoPE position (`descore_sdk.rope`), reusing the cache;
4. when a row stops (a stop token is drawn, or `max_new_tokens` CoT tokens are written, or its
   teacher-forced CoT is used up) its next input is `<Reward>` — in place of the stop token, which
   the reward model never sees — and the reward head output of that step is the row's reward.
   The prompt is never encoded twice. A finished row leaves the batch (its cache rows are dropped,
   and columns that are padding in every remaining row are trimmed), so late rows do not pay for
   early ones.

Layouts: in the assistant-turn layout `<Reward>` follows the CoT in the cache, as above. In the
user-turn layout (DeScore's cold start and the authors' inference) the reward is read from
`user: {before}{video}{after}{CoT}<Reward>`: when a row's CoT ends, its scoring ids (the request's
`rescore`, tokenized whole as the authors do) are compared with the prompt ids, the row's cache is cut
to their longest common token prefix (which always covers the video) and only the rest — the CoT
text and `<Reward>` — is prefilled. Either way the video is encoded and prefilled once per row
(`counters` counts it). Rewards are read at every reward-token position (`DecodeSettings.read_ids`):
averaged ("all"), or dimension i from token i ("per_token", VideoReward).

Modes: "fast" prompts already end with `<Reward>`: the prefill output is the reward. "think" prompts
end with the assistant header: a CoT is written first. "adaptive" prompts are think prompts: after the
prefill every row feeds `<Reward>` once (the fast reward, exactly what fast mode computes); `think_if`
sees those rewards and picks the rows that should think; their `<Reward>` column is cut from the cache
and they continue from the prefill's logits as in think mode. A request's `prefix_length` sets where
the fast probe goes: the whole prompt (assistant layout) or the end of the user text (user layout; the
thinking rows then prefill the assistant header after dropping the probe).

The loop only needs a `DecoderModel` (below): each backend (ONNX Runtime, TensorRT, ...) implements
those few methods, and gets batching, sampling, stopping and reward reading from here. numpy only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from descore_sdk.errors import InvalidInputError
from descore_sdk.prompt import common_prefix_length
from descore_sdk.rope import decode_position_ids, mrope_position_ids

from .sampling import SamplingParams, next_tokens, row_generators

MODES = ("think", "fast", "adaptive")
DEFAULT_PREFILL_CHUNK = 2048


@dataclass(frozen=True)
class RopeSpec:
    """What M-RoPE positions need besides the ids (see `descore_sdk.rope.mrope_position_ids`)."""

    family: str
    video_token_id: int
    image_token_id: int
    spatial_merge_size: int
    tokens_per_second: float = 2.0

    @classmethod
    def from_bundle(cls, bundle) -> "RopeSpec":
        """From a bundle manifest's `model` section (any backend that runs the bundle)."""
        model = bundle.model
        return cls(
            family=bundle.family,
            video_token_id=int(model["video_token_id"]),
            image_token_id=int(model["image_token_id"]),
            spatial_merge_size=int(model["vision"]["merge_size"]),
            tokens_per_second=float(model.get("tokens_per_second") or 2.0),
        )


@dataclass
class StepOutput:
    """Last-position outputs of one decoder call: logits (B, V), hidden (B, H), reward (B, K)."""

    logits: np.ndarray
    hidden: np.ndarray
    reward: np.ndarray


class DecoderModel(Protocol):
    """The backend side of the loop. The cache is opaque to the loop; only the model slices it."""

    rope: RopeSpec
    num_deepstack: int  # DeepStack levels the decoder takes (0: no deepstack input)

    def encode_video(self, patches: np.ndarray, grid_thw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """patches (N, D), grid (3,) → visual (N/m², H) float32 [, deepstack (levels, N/m², H)]."""

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Token embeddings: ids (...) int64 → (..., H) float32."""

    def new_cache(self, batch: int):
        """An empty cache (past length 0) for `batch` rows."""

    def slice_cache(self, cache, rows: np.ndarray, start: int, stop: int | None = None):
        """The cache of `rows` (indices into the batch), sequence columns [start, stop)."""

    def step(self, inputs_embeds, attention_mask, position_ids, deepstack_embeds, cache) -> tuple[StepOutput, object]:
        """One decoder call. inputs_embeds (B, S, H) f32; attention_mask (B, P+S) i64; position_ids
        (3, B, S) i64; deepstack_embeds (levels, B, S, H) f32 or None (= zeros). Returns the outputs and
        the cache grown by S columns."""


@dataclass
class DecodeRequest:
    """One video to score.

    input_ids: (L,) prompt ids; patches (N, D) float32; grid_thw (3,) int64; second_per_grid: seconds
    per temporal patch (Qwen2.5-VL rope); max_new_tokens: CoT budget; forced_cot: teacher-forced CoT
    ids (fed instead of sampled ones; None: generate).
    """

    input_ids: np.ndarray
    patches: np.ndarray
    grid_thw: np.ndarray
    second_per_grid: float = 1.0
    max_new_tokens: int = 0
    forced_cot: np.ndarray | None = None
    prefix_length: int = -1  # adaptive: the fast probe follows input_ids[:prefix_length] (-1: all)
    rescore: Callable[[np.ndarray], np.ndarray] | None = None  # user-turn layout: CoT ids → scoring ids


@dataclass
class DecodeSettings:
    mode: str
    reward_token_id: int
    stop_ids: tuple[int, ...] = ()
    blocked_ids: tuple[int, ...] = ()  # never sampled into a CoT (vision placeholders, <Reward>)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    think_if: Callable[[np.ndarray], np.ndarray] | None = None  # adaptive: fast rewards (B, K) → (B,) bool
    record_logits: bool = False  # keep every row's logits before each CoT choice (parity checks)
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    read_ids: tuple[int, ...] = ()  # tokens whose outputs make the reward, in dimension order (): reward_token_id
    per_token: bool = False  # dimension i from read_ids[i] (head output i, or 0 for a one-output head)

    def __post_init__(self):
        if self.mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if self.prefill_chunk < 1:
            raise InvalidInputError(f"prefill_chunk must be ≥ 1, got {self.prefill_chunk}.")
        if not self.read_ids:
            self.read_ids = (self.reward_token_id,)


@dataclass
class DecodeResult:
    """rewards (K,) and hidden (H,) at `<Reward>`; cot_ids (C,) without the stop token; mode: the path
    taken ("think" or "fast"); fast_rewards (K,): adaptive mode's first, fast reward; step_logits
    (C+1, V) when recorded: the logits each CoT token was chosen from, then those after the last one."""

    rewards: np.ndarray
    hidden: np.ndarray
    cot_ids: np.ndarray
    mode: str
    fast_rewards: np.ndarray | None = None
    step_logits: np.ndarray | None = None
    timings_ms: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)  # see _Row.counters


# -- per-row state ----------------------------------------------------------------------------------
_COT, _REWARD, _PROBE, _DONE = "cot", "reward", "probe", "done"


class _Row:
    """Bookkeeping of one request while it decodes."""

    def __init__(self, request: DecodeRequest, positions: np.ndarray, delta: int, video: dict):
        self.request = request
        self.ids = np.asarray(request.input_ids, dtype=np.int64)
        self.positions = positions  # (3, L)
        self.delta = delta
        self.video = video  # {"at": (Nv,) video-token indices, "visual": (Nv, H), "deepstack": (levels, Nv, H) | None}
        self.cot: list[int] = []
        self.pending: int | None = None  # the token this row feeds next
        self.phase = _COT
        self.real_length = len(self.ids)  # real tokens in the cache
        self.rewards = self.hidden = self.fast_rewards = None
        self.logits: list[np.ndarray] = []
        self.mode = "think"
        self.reads: list[tuple[int, np.ndarray, np.ndarray]] = []  # (token id, hidden (H,), head output (K,))
        self.prefill_length = len(self.ids)  # ids prefilled before the first decode step
        # What this row cost: vision encodes, video tokens prefilled (each exactly once), prompt prefills,
        # and tokens prefilled again for the user layout's scoring pass (the CoT text and <Reward>).
        self.counters = {"vision_encodes": 1, "video_tokens_prefilled": 0, "prefills": 0, "rescore_tokens": 0}

    @property
    def forced(self) -> np.ndarray | None:
        return self.request.forced_cot


def decode(model: DecoderModel, requests: list[DecodeRequest], settings: DecodeSettings) -> list[DecodeResult]:
    """Score `requests` as one batch (see module docstring). Results are in request order."""
    if not requests:
        return []
    timings = {}
    start = time.perf_counter()
    rows = [_prepare_row(model, request, settings) for request in requests]
    timings["vision"] = (time.perf_counter() - start) * 1e3

    if settings.mode == "adaptive":
        for row in rows:
            prefix = row.request.prefix_length
            row.prefill_length = len(row.ids) if prefix < 0 else int(prefix)
            row.real_length = row.prefill_length
    start = time.perf_counter()
    reads = _read_positions(rows, settings) if settings.mode == "fast" else None
    output, cache, mask = _prefill(model, rows, settings.prefill_chunk, reads)
    timings["prefill"] = (time.perf_counter() - start) * 1e3

    start = time.perf_counter()
    generators = row_generators(settings.seed, len(rows)) if not settings.sampling.greedy else None
    seen = _seen_tokens(model, rows, output.logits.shape[1]) if settings.sampling.repetition_penalty != 1.0 else None
    active = np.arange(len(rows))  # batch row b of the cache is request active[b]

    if settings.mode == "fast":
        for row in rows:
            _finish_reads(row, settings)
            row.mode = "fast"
        active = active[:0]
    elif settings.mode == "adaptive":
        prefill_logits = output.logits
        for row in rows:
            row.pending, row.phase = settings.reward_token_id, _PROBE
        output, cache, mask = _decode_step(model, rows, active, cache, mask)
        fast = np.stack([output.reward[b] for b in range(len(rows))])
        think = np.asarray(settings.think_if(fast) if settings.think_if else np.zeros(len(rows), bool), dtype=bool).reshape(-1)
        if think.shape != (len(rows),):
            raise InvalidInputError(f"think_if must return one bool per row ({len(rows)}), got shape {think.shape}.")
        for b, row in enumerate(rows):
            row.fast_rewards = fast[b]
            row.mode = "think" if think[b] else "fast"
            if not think[b]:
                _finish(row, output, b)
            else:  # forget the probe: its <Reward> is the cache's last column
                row.real_length -= 1
                row.phase = _COT
        keep = np.flatnonzero(think)
        cache = model.slice_cache(cache, keep, 0, mask.shape[1] - 1)
        mask = mask[keep, :-1]
        active = active[keep]
        logits = prefill_logits[keep]
        if len(active):  # user layout: the assistant header follows the probe point
            logits, cache, mask = _prefill_rest(model, rows, active, cache, mask, logits)
        _choose(rows, active, logits, settings, generators, seen)
        _rescore_finished(model, rows, active, cache, mask, settings)
    else:
        _choose(rows, active, output.logits, settings, generators, seen)
        _rescore_finished(model, rows, active, cache, mask, settings)

    while len(active):
        cache, mask, active = _compact(model, rows, active, cache, mask)
        if not len(active):
            break
        output, cache, mask = _decode_step(model, rows, active, cache, mask)
        continuing = []
        for b, index in enumerate(active):
            row = rows[index]
            if row.phase == _COT:
                row.cot.append(row.pending)
                if seen is not None:
                    seen[index, row.pending] = True
                continuing.append(b)
            else:  # _REWARD
                _finish(row, output, b)
        if continuing:
            keep = np.asarray(continuing)
            _choose(rows, active[keep], output.logits[keep], settings, generators, seen)
            _rescore_finished(model, rows, active, cache, mask, settings)
    timings["generate"] = (time.perf_counter() - start) * 1e3  # CoT steps and <Reward>

    results = []
    for row in rows:
        results.append(
            DecodeResult(
                rewards=row.rewards,
                hidden=row.hidden,
                cot_ids=np.asarray(row.cot, dtype=np.int64),
                mode=row.mode,
                fast_rewards=row.fast_rewards,
                step_logits=np.stack(row.logits) if settings.record_logits and row.logits else None,
                timings_ms=dict(timings),
                counters=dict(row.counters),
            )
        )
    return results


# -- steps ------------------------------------------------------------------------------------------
def _prepare_row(model: DecoderModel, request: DecodeRequest, settings: DecodeSettings) -> _Row:
    ids = np.asarray(request.input_ids, dtype=np.int64).reshape(-1)
    rope = model.rope
    grid = np.asarray(request.grid_thw, dtype=np.int64).reshape(3)
    at = np.flatnonzero(ids == rope.video_token_id)
    visual, deepstack = model.encode_video(request.patches, grid)
    if len(at) != len(visual):
        raise InvalidInputError(
            f"The prompt has {len(at)} video placeholder tokens but the video gives {len(visual)} visual tokens "
            f"(grid {grid.tolist()}); build the ids with PromptBuilder from the same grid."
        )
    if settings.mode == "fast" and (len(ids) == 0 or ids[-1] not in settings.read_ids):
        raise InvalidInputError("Fast-mode prompt ids must end with the reward token (PromptBuilder.build(mode='fast')).")
    if settings.mode != "fast" and np.isin(ids, settings.read_ids).any():
        raise InvalidInputError(f"{settings.mode}-mode prompt ids must not contain a reward token (build them with mode='think').")
    if request.rescore is not None and settings.mode == "fast":
        raise InvalidInputError("A fast-mode request has no CoT to rescore; build it with mode='fast' and no rescore.")
    positions, deltas = mrope_position_ids(
        ids[None],
        family=rope.family,
        image_token_id=rope.image_token_id,
        video_token_id=rope.video_token_id,
        video_grid_thw=grid[None],
        second_per_grid_ts=[request.second_per_grid] if rope.family == "qwen2_5_vl" else None,
        spatial_merge_size=rope.spatial_merge_size,
        tokens_per_second=rope.tokens_per_second,
    )
    if request.max_new_tokens < 0:
        raise InvalidInputError(f"max_new_tokens must be ≥ 0, got {request.max_new_tokens}.")
    return _Row(request, positions[:, 0], int(deltas[0, 0]), {"at": at, "visual": visual, "deepstack": deepstack})


def _read_positions(rows: list[_Row], settings: DecodeSettings) -> list[np.ndarray]:
    """Per row, the prompt positions whose outputs make the reward (every reward token)."""
    return [np.flatnonzero(np.isin(row.ids[: row.prefill_length], settings.read_ids)) for row in rows]


def _prefill(model: DecoderModel, rows: list[_Row], chunk: int, reads: list[np.ndarray] | None = None):
    """Each row's first `prefill_length` prompt ids, left-padded to one length, through the decoder in
    column chunks. A chunk also ends at every read position (the decoder returns the outputs of a
    call's last column), whose outputs are kept in `row.reads`."""
    batch, length = len(rows), max(r.prefill_length for r in rows)
    pad = [length - r.prefill_length for r in rows]
    mask = np.zeros((batch, length), dtype=np.int64)
    for b, p in enumerate(pad):
        mask[b, p:] = 1
    ends = set(range(chunk, length, chunk)) | {length}
    wanted: dict[int, list[tuple[int, int]]] = {}  # chunk end column → [(row, prompt position)]
    for b, positions in enumerate(reads or []):
        for position in positions.tolist():
            wanted.setdefault(pad[b] + position + 1, []).append((b, position))
    ends |= set(wanted)
    cache = model.new_cache(batch)
    output, begin = None, 0
    for end in sorted(ends):
        embeds, positions, deepstack = _prefill_chunk(model, rows, pad, begin, end)
        output, cache = model.step(embeds, mask[:, :end], positions, deepstack, cache)
        for b, position in wanted.get(end, ()):
            rows[b].reads.append((int(rows[b].ids[position]), np.array(output.hidden[b]), np.array(output.reward[b])))
        begin = end
    for row in rows:
        row.counters["prefills"] += 1
    return output, cache, mask


def _prefill_chunk(model: DecoderModel, rows: list[_Row], pad: list[int], begin: int, end: int):
    """Padded columns [begin, end): embeddings (B, S, H), positions (3, B, S), DeepStack (levels, B, S, H) | None."""
    batch, width = len(rows), end - begin
    embeds = positions = deepstack = None
    for b, row in enumerate(rows):
        lo, hi = max(begin - pad[b], 0), max(end - pad[b], 0)  # the row's own token range in this chunk
        if hi <= lo:
            continue
        offset = pad[b] + lo - begin  # column of token `lo` inside the chunk
        row_embeds = model.embed(row.ids[lo:hi])
        if embeds is None:
            embeds = np.zeros((batch, width, row_embeds.shape[-1]), dtype=np.float32)
            positions = np.zeros((3, batch, width), dtype=np.int64)
        at = row.video["at"]
        inside = (at >= lo) & (at < hi)
        if inside.any():
            row.counters["video_tokens_prefilled"] += int(inside.sum())
            row_embeds[at[inside] - lo] = row.video["visual"][inside]
            if row.video["deepstack"] is not None:
                if deepstack is None:
                    deepstack = np.zeros((model.num_deepstack, batch, width, embeds.shape[-1]), dtype=np.float32)
                deepstack[:, b, at[inside] - lo + offset] = row.video["deepstack"][:, inside]
        embeds[b, offset : offset + hi - lo] = row_embeds
        positions[:, b, offset : offset + hi - lo] = row.positions[:, lo:hi]
    return embeds, positions, deepstack


def _prefill_rest(model: DecoderModel, rows: list[_Row], active: np.ndarray, cache, mask: np.ndarray, logits: np.ndarray):
    """Adaptive mode, rows that think: feed the prompt ids after the probe point (the user layout's
    assistant header; nothing in the assistant layout). Returns the logits to choose the CoT from."""
    rests = [rows[i].ids[rows[i].prefill_length :] for i in active]
    width = len(rests[0])
    if not width:
        return logits, cache, mask
    if any(len(r) != width or np.any(r != rests[0]) for r in rests):
        raise InvalidInputError("Adaptive rows must share the ids after their fast-probe point (the assistant header).")
    embeds = model.embed(np.stack(rests)).astype(np.float32, copy=False)
    positions = np.stack([rows[i].positions[:, rows[i].prefill_length :] for i in active], axis=1)
    mask = np.concatenate([mask, np.ones((len(active), width), dtype=np.int64)], axis=1)
    output, cache = model.step(embeds, mask, positions, None, cache)
    for i in active:
        rows[i].real_length += width
    return output.logits, cache, mask


def _rescore_finished(model: DecoderModel, rows: list[_Row], active: np.ndarray, cache, mask: np.ndarray,
                      settings: DecodeSettings) -> None:
    """User-turn layout: every active row whose CoT just ended is scored now from its cached prefix."""
    for b, index in enumerate(active):
        row = rows[index]
        if row.phase == _REWARD and row.request.rescore is not None:
            _rescore(model, row, b, cache, mask, settings)


def _rescore(model: DecoderModel, row: _Row, b: int, cache, mask: np.ndarray, settings: DecodeSettings) -> None:
    """Score row `b` in the user-turn layout: cut its cache to the longest common token prefix of its
    prompt and its scoring ids, then prefill only the rest (the CoT text and `<Reward>`)."""
    ids = np.asarray(row.request.rescore(np.asarray(row.cot, dtype=np.int64)), dtype=np.int64).reshape(-1)
    common = common_prefix_length(ids, row.ids)
    at = row.video["at"]
    if len(at) and common <= int(at.max()):
        raise InvalidInputError("The scoring ids differ from the prompt inside the video block; the prompt and its "
                                "rescore function must come from the same PromptBuilder.")
    if common == len(ids) or ids[-1] not in settings.read_ids:
        raise InvalidInputError("The scoring ids must extend the prompt and end with the reward token.")
    start = int(np.argmax(mask[b]))  # the row's first real column (left padding before it)
    sub = model.slice_cache(cache, np.asarray([b]), start, start + common)
    reads = [i for i in range(common, len(ids)) if ids[i] in settings.read_ids]
    begin = common
    for end in [r + 1 for r in reads]:
        segment = ids[begin:end]
        positions = np.broadcast_to(np.arange(begin, end, dtype=np.int64) + row.delta, (3, 1, len(segment))).copy()
        embeds = model.embed(segment)[None].astype(np.float32, copy=False)
        output, sub = model.step(embeds, np.ones((1, end), dtype=np.int64), positions, None, sub)
        row.reads.append((int(ids[end - 1]), np.array(output.hidden[0]), np.array(output.reward[0])))
        begin = end
    row.counters["rescore_tokens"] = len(ids) - common
    _finish_reads(row, settings)


def _finish_reads(row: _Row, settings: DecodeSettings) -> None:
    """The row's reward from its reads: their mean ("all"), or dimension i from the i-th read token."""
    if not row.reads:
        raise InvalidInputError("No reward token was read for this row; its prompt holds none.")
    hidden = np.mean([h for _, h, _ in row.reads], axis=0)
    if not settings.per_token:
        rewards = np.mean([r for _, _, r in row.reads], axis=0)
    else:
        rewards = []
        for dim, token in enumerate(settings.read_ids):
            values = [r[dim if len(r) > 1 else 0] for t, _, r in row.reads if t == token]
            if not values:
                raise InvalidInputError(f"The prompt lacks the reward token of dimension {dim} (id {token}).")
            rewards.append(np.mean(values))
        rewards = np.asarray(rewards)
    row.rewards = np.asarray(rewards, dtype=np.float32)
    row.hidden = np.asarray(hidden, dtype=np.float32)
    row.phase = _DONE


def _decode_step(model: DecoderModel, rows: list[_Row], active: np.ndarray, cache, mask: np.ndarray):
    """Feed every active row its pending token (all real, so the new mask column is all ones)."""
    ids = np.asarray([rows[i].pending for i in active], dtype=np.int64)
    embeds = model.embed(ids)[:, None, :]
    lengths = np.asarray([rows[i].real_length for i in active], dtype=np.int64)
    deltas = np.asarray([[rows[i].delta] for i in active], dtype=np.int64)
    positions = decode_position_ids(lengths, deltas, 1)
    mask = np.concatenate([mask, np.ones((len(active), 1), dtype=np.int64)], axis=1)
    output, cache = model.step(embeds.astype(np.float32, copy=False), mask, positions, None, cache)
    for i in active:
        rows[i].real_length += 1
    return output, cache, mask


def _choose(rows, indices, logits, settings: DecodeSettings, generators, seen) -> None:
    """Decide each row's next input from its last logits (B', V): a CoT token or `<Reward>`."""
    sample = []
    for b, index in enumerate(indices):
        row = rows[index]
        if settings.record_logits:
            row.logits.append(np.array(logits[b], dtype=np.float32))
        if row.forced is not None:
            if len(row.cot) < len(row.forced):
                row.pending, row.phase = int(row.forced[len(row.cot)]), _COT
            else:
                row.pending, row.phase = settings.reward_token_id, _REWARD
        elif len(row.cot) >= row.request.max_new_tokens:
            row.pending, row.phase = settings.reward_token_id, _REWARD
        else:
            sample.append(b)
    if not sample:
        return
    picked = np.asarray(sample)
    chosen = [indices[b] for b in sample]
    candidates = logits[picked]
    if settings.blocked_ids:
        candidates = candidates.copy()
        candidates[:, list(settings.blocked_ids)] = -np.inf
    tokens = next_tokens(
        candidates,
        settings.sampling,
        None if generators is None else [generators[i] for i in chosen],
        None if seen is None else seen[chosen],
    )
    stops = set(settings.stop_ids)
    for index, token in zip(chosen, tokens.tolist()):
        row = rows[index]
        if token in stops:
            row.pending, row.phase = settings.reward_token_id, _REWARD
        else:
            row.pending, row.phase = token, _COT


def _finish(row: _Row, output: StepOutput, b: int) -> None:
    row.rewards = np.array(output.reward[b], dtype=np.float32)
    row.hidden = np.array(output.hidden[b], dtype=np.float32)
    row.phase = _DONE


def _compact(model: DecoderModel, rows: list[_Row], active: np.ndarray, cache, mask: np.ndarray):
    """Drop finished rows from the batch, and leading columns that are padding in every remaining row."""
    keep = np.asarray([b for b, i in enumerate(active) if rows[i].phase != _DONE], dtype=np.int64)
    if len(keep) == len(active):
        return cache, mask, active
    if not len(keep):
        return cache, mask[:0], active[:0]
    mask = mask[keep]
    first = int(np.argmax(mask.any(axis=0)))  # leading all-padding columns
    return model.slice_cache(cache, keep, first), mask[:, first:], active[keep]


def _seen_tokens(model: DecoderModel, rows: list[_Row], vocab: int) -> np.ndarray:
    """(B, V) bool: tokens in each row's prompt, for the repetition penalty (as HF, padding excluded)."""
    seen = np.zeros((len(rows), vocab), dtype=bool)
    for b, row in enumerate(rows):
        seen[b, row.ids[row.ids < vocab]] = True
    return seen
