"""`Scorer`: the one class users meet. Video in, reward out.

    scorer = Scorer.from_pretrained("ckpt_or_bundle", mode="think")
    result = scorer.score("clip.mp4", "a red fox running through snow")
    result.reward, result.rewards, result.rationale, result.timings_ms

The Scorer owns everything that is the same for every backend — frame sampling, patching, the prompt —
and hands the backend token ids and patches. Backends only run the model: "torch" (the reference, a
checkpoint folder), "onnxruntime" (an exported bundle, no torch; `runtime/onnx_backend.py`, CPU or CUDA)
or "tensorrt" (a bundle's TensorRT engines; `runtime/tensorrt_backend.py`). `backend="auto"` picks the
fastest that can run here and says why (`choose_backend`, `scorer.backend_choice`; docs/GPU.md).

A backend that can batch (onnxruntime) gets several videos per call: `score_batch` groups up to
`batch_size` videos and `compare` sends A and B together; results equal scoring each video alone.
Timings of the backend stages (vision, prefill, generate) and "total" are then those of the whole
group. Adaptive mode (see `ScoreOptions`) runs in one pass on such a backend; on others it is a fast
pass followed by a think pass where needed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import CONFIG_NAME, DescoreConfig
from .cot import cot_stop_reason, is_repeating
from .errors import DescoreError, InvalidInputError, MissingDependencyError, ModelLoadError
from .frame_budget import context_fit_for, sampling_report
from .inputs import ModelInputs, clip_features, load_clip, model_inputs
from .options import ScoreOptions
from .paths import resolve_model_dir
from .prompt import PromptBuilder
from .results import PairResult, ScoreResult, headline_reward
from .video import VideoClip


@dataclass
class BackendOutput:
    rewards: np.ndarray  # (K,) float
    cot_ids: np.ndarray  # (C,) int64 generated CoT ids, stop token excluded
    timings_ms: dict
    mode: str | None = None  # path taken ("think"/"fast"); None: the inputs' mode
    fast_rewards: np.ndarray | None = None  # (K,) adaptive mode's first, fast reward
    hidden: np.ndarray | None = None  # (H,) final hidden state at <Reward>, when the backend has it
    step_logits: np.ndarray | None = None  # (C+1, V) logits of each CoT step, when asked for
    counters: dict | None = None  # work done for this video (decode loop backends; see runtime.decode)


# Backend name → class. "auto" picks by what the folder holds and what this machine can run; see
# `choose_backend`. A backend has `name`, `descore_config` and `score(inputs, options, stop_ids,
# max_new_tokens)`; one that also has `score_batch(inputs_list, options, stop_ids, budgets, think_if=...)`
# and `supports_batch = True` runs several videos per decoder call and adaptive mode in one pass.
BACKENDS = {
    "torch": "descore_sdk.runtime.torch_backend:TorchBackend",
    "onnxruntime": "descore_sdk.runtime.onnx_backend:OnnxBackend",
    "tensorrt": "descore_sdk.runtime.tensorrt_backend:TensorRTBackend",
}
DEFAULT_BATCH_SIZE = 8
log = logging.getLogger("descore_sdk")


def _load_backend_class(name: str):
    import importlib

    try:
        target = BACKENDS[name]
    except KeyError:
        raise InvalidInputError(f"Unknown backend {name!r}; available: {', '.join(BACKENDS)} (or 'auto').") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class BackendChoice:
    """What `Scorer.from_pretrained` runs on, and why (`scorer.backend_choice`; logged at INFO).

    backend: a `BACKENDS` name; device: what the backend is given ("cpu", "cuda:N", "tensorrt:N");
    reason: one sentence a user can act on (why this one, and why not the faster ones)."""

    backend: str
    device: str
    reason: str

    def __str__(self) -> str:
        return f"{self.backend} on {self.device}: {self.reason}"


def probe_tensorrt(manifest: dict, device_index: int = 0) -> str | None:
    """None when the bundle's TensorRT engines can run here, else why not (one sentence).

    Checks, in order: the bundle has engines, the tensorrt and cuda-python packages import, a CUDA GPU
    is visible, and the engines were built for this TensorRT version and GPU (`runtime.tensorrt_backend`)."""
    if not (manifest.get("engines") or {}).get("decoder"):
        return "the bundle has no TensorRT engines (build them with: descore export BUNDLE OUT --format tensorrt)"
    from .errors import DescoreError
    from .runtime.tensorrt_backend import check_engine_compat
    from .runtime.tensorrt_runner import tensorrt_environment

    try:
        check_engine_compat(manifest["engines"], tensorrt_environment(device_index))
    except DescoreError as exc:
        return str(exc)
    return None


def probe_ort_cuda() -> str | None:
    """None when onnxruntime's CUDA execution provider is available, else why not."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return None
    return (f"this onnxruntime build has no CUDA execution provider (it has {', '.join(available)}; "
            "install the GPU build with: pip install 'descore-sdk[gpu]')")


def cuda_kv_cache_refusal(manifest: dict) -> str | None:
    """None when onnxruntime CUDA can keep the bundle's decoder KV cache on the GPU (a concat cache, or an
    in-place one in fp16/bf16: `runtime.ort_device_cache`), else why not."""
    from .runtime.ort_device_cache import cuda_cache_refusal

    decoder = (manifest.get("graphs") or {}).get("decoder") or {}
    return cuda_cache_refusal(list(decoder.get("inputs", ())), decoder.get("opsets"))


def choose_backend(path: Path, backend: str = "auto", device: str = "auto") -> BackendChoice:
    """The backend and device to load `path` with (see `BackendChoice`).

    backend "auto": a checkpoint folder (config.json) → torch on the CPU. A bundle (manifest.json) →
    TensorRT engines when the bundle has them and TensorRT + a GPU they were built for are here, else
    onnxruntime's CUDA provider when installed, else onnxruntime on the CPU. device "cpu" keeps a bundle
    on onnxruntime's CPU provider; "cuda"/"cuda:N" needs one of the GPU paths (MissingDependencyError
    naming both when neither is there); "tensorrt"/"tensorrt:N" is onnxruntime's TensorRT provider.
    A named backend is used as asked; device "auto" then means its default device."""
    kind, _, index = str(device).partition(":")
    if kind not in ("auto", "cpu", "cuda", "tensorrt"):
        raise InvalidInputError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'tensorrt[:N]'.")
    if kind == "auto" and index:
        raise InvalidInputError(f"device {device!r}: 'auto' takes no index; use 'cuda:{index}'.")
    gpu = f"cuda:{int(index or 0)}"
    is_bundle = (path / "manifest.json").is_file()
    if backend != "auto":
        if backend not in BACKENDS:
            _load_backend_class(backend)  # raises the unknown-backend error
        if kind != "auto":
            return BackendChoice(backend, device, f"backend={backend!r} and device={device!r} were asked for")
        default = gpu if backend == "tensorrt" else "cpu"
        return BackendChoice(backend, default, f"backend={backend!r} was asked for (its default device)")
    if not is_bundle:
        if (path / "config.json").is_file():
            return BackendChoice("torch", "cpu" if kind == "auto" else device,
                                 "a checkpoint folder (config.json, no manifest.json): the torch reference backend")
        raise ModelLoadError(f"{path} holds neither a bundle (manifest.json) nor a checkpoint (config.json).")
    if kind == "cpu":
        return BackendChoice("onnxruntime", "cpu", "device='cpu' was asked for: onnxruntime's CPU provider")
    if kind == "tensorrt":
        return BackendChoice("onnxruntime", f"tensorrt:{int(index or 0)}",
                             f"device={device!r} was asked for: onnxruntime's TensorRT execution provider")
    from .bundle import read_manifest

    why_not_trt = probe_tensorrt(read_manifest(path), int(index or 0))
    if why_not_trt is None:
        engines = read_manifest(path)["engines"]
        return BackendChoice("tensorrt", gpu, f"the bundle has TensorRT engines (TensorRT {engines.get('tensorrt_version')}, "
                                              f"compute capability {engines.get('compute_capability')}) that run on this GPU")
    why_not_cuda = probe_ort_cuda()
    if why_not_cuda is None:
        why_not_cuda = cuda_kv_cache_refusal(read_manifest(path))
    if why_not_cuda is None:
        return BackendChoice("onnxruntime", gpu, f"onnxruntime's CUDA provider; TensorRT not used: {why_not_trt}")
    if kind == "cuda":
        raise MissingDependencyError(
            f"device={device!r} was asked for, but no GPU path can run here. TensorRT: {why_not_trt}. "
            f"onnxruntime CUDA: {why_not_cuda}. Use device='cpu', or install a GPU path."
        )
    return BackendChoice("onnxruntime", "cpu", f"onnxruntime on the CPU; no GPU path: TensorRT: {why_not_trt}; "
                                               f"onnxruntime CUDA: {why_not_cuda}")


def _describe(video) -> str:
    if isinstance(video, (str, os.PathLike)):
        return str(video)
    if isinstance(video, (bytes, bytearray)):
        return f"<{len(video)} bytes>"
    if isinstance(video, np.ndarray):
        return f"<array {tuple(video.shape)}>"
    return f"<{type(video).__name__}>"


class Scorer:
    """Scores videos with a DeScore checkpoint (torch backend) or exported bundle (onnxruntime)."""

    def __init__(self, backend, config: DescoreConfig, prompts: PromptBuilder, options: ScoreOptions,
                 backend_choice: BackendChoice | None = None):
        self.backend = backend
        self.backend_choice = backend_choice  # what from_pretrained chose and why
        self.config = config
        self.prompts = prompts
        self.options = options
        self.stop_ids = self._stop_ids(options.stop_tokens)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        backend: str = "auto",
        device: str = "auto",
        family: str | None = None,
        backend_options: dict | None = None,
        **options,
    ) -> "Scorer":
        """Load a checkpoint folder (torch) or exported bundle (onnxruntime).

        backend: "auto" (a checkpoint → torch; a bundle → its TensorRT engines where they can run, else
            onnxruntime on CUDA, else on the CPU: `choose_backend`), or a name from `BACKENDS`. device: "auto"
            (default), "cpu", "cuda[:N]", "tensorrt[:N]" (onnxruntime's TensorRT provider). What was chosen
            and why is `scorer.backend_choice` (logged at INFO on the "descore_sdk" logger). family: refuse a model of any other family. backend_options:
            keyword arguments of the backend class (onnxruntime: threads, providers, verify, ...).
        `options` are `ScoreOptions` fields (mode, max_new_tokens, temperature, top_p, top_k,
        repetition_penalty, seed, stop_tokens, fps, min_frames, max_frames, max_pixels,
        adaptive_threshold, adaptive_band)."""
        options = {k: v for k, v in options.items() if v is not None}  # None: the default
        opts = ScoreOptions.from_kwargs(**options)
        path = resolve_model_dir(path)  # `~` expanded; a training run folder → its model/
        if not path.exists():
            raise ModelLoadError(f"Model path {path} does not exist; pass a DeScore checkpoint or bundle folder.")
        if not path.is_dir():
            raise ModelLoadError(f"Model path {path} is a file; pass the folder that holds {CONFIG_NAME}.")
        choice = choose_backend(path, backend, device)
        log.info("descore backend: %s", choice)
        name = choice.backend
        kwargs = dict(backend_options or {})
        if family is not None and name in ("onnxruntime", "tensorrt"):
            kwargs["family"] = family  # the bundle loader refuses a foreign family with BundleIntegrityError
        runner = _load_backend_class(name)(path, device=choice.device, **kwargs)
        if family is not None and runner.descore_config.family != family:
            raise ModelLoadError(f"{path} holds a {runner.descore_config.family} model, but a {family} model was requested.")
        config = runner.descore_config
        if "mode" not in options and not config.thinks:
            opts = opts.replace(mode="fast")  # JRM and VideoReward score without writing a CoT
        # The generation settings the model was released with, unless the caller chose their own.
        released = {"temperature": config.layout.temperature, "repetition_penalty": config.layout.repetition_penalty}
        opts = dataclasses.replace(opts, **{k: v for k, v in released.items() if k not in options})
        opts.validate()
        return cls(runner, config, PromptBuilder.from_dir(path, config), opts, backend_choice=choice)

    # -- public API ----------------------------------------------------------------------------------
    def score(self, video, prompt: str, **overrides) -> ScoreResult:
        """Score one video (path, bytes, binary file object or (T,H,W,3) uint8 array) for `prompt`."""
        options = self._options(overrides)
        return self._score_group([video], [prompt], options, self._band_rule(options))[0]

    def score_batch(self, videos: Sequence, prompts: str | Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                    **overrides) -> list[ScoreResult]:
        """Score several videos; `prompts` is one prompt for all or one per video.

        A backend that supports batching (onnxruntime) runs up to `batch_size` videos per decoder call,
        left-padded and masked, with results equal to scoring each alone; others score one by one."""
        if isinstance(prompts, str):
            prompts = [prompts] * len(videos)
        if len(prompts) != len(videos):
            raise InvalidInputError(f"{len(videos)} videos but {len(prompts)} prompts; pass one prompt or one per video.")
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be ≥ 1, got {batch_size}.")
        options = self._options(overrides)
        step = batch_size if getattr(self.backend, "supports_batch", False) else 1
        results = []
        for first in range(0, len(videos), step):
            group = slice(first, first + step)
            results += self._score_group(list(videos[group]), list(prompts[group]), options, self._band_rule(options))
        return results

    def compare(self, video_a, video_b, prompt: str, **overrides) -> PairResult:
        """Score two videos for the same prompt; `PairResult.prob_a_better` = sigmoid(r_A − r_B).

        In adaptive mode both are scored fast first, and both write a CoT only when
        |r_A − r_B| < `adaptive_threshold`."""
        options = self._options(overrides)
        threshold = options.adaptive_threshold

        def close_call(fast: np.ndarray) -> np.ndarray:
            heads = [self._headline(r) for r in fast]
            return np.full(2, abs(heads[0] - heads[1]) < threshold)

        # A and B go through the backend together (one decoder batch when it can batch).
        a, b = self._score_group([video_a, video_b], [prompt, prompt], options, close_call)
        return PairResult(a=a, b=b)

    def prepare(self, video, prompt: str, **overrides) -> ModelInputs:
        """The backend inputs of one video (decoded, sampled, patched, prompt ids), e.g. for parity checks."""
        options = self._options(overrides)
        self.prompts.instruction(prompt)
        return self._prepare(self._load(video, options, prompt), prompt, options)

    # -- scoring -------------------------------------------------------------------------------------
    def _options(self, overrides: dict) -> ScoreOptions:
        return self.options.replace(**overrides) if overrides else self.options

    def _band_rule(self, options: ScoreOptions):
        """Adaptive `score`: think where the fast headline reward lies inside `adaptive_band`."""
        band = options.adaptive_band

        def in_band(fast: np.ndarray) -> np.ndarray:
            if band is None:
                return np.zeros(len(fast), dtype=bool)
            return np.array([band[0] <= self._headline(r) <= band[1] for r in fast], dtype=bool)

        return in_band

    def _rewards(self, raw) -> dict[str, float]:
        """Backend output (K,) → {dimension: reward}, normalised as the checkpoint says."""
        values = np.asarray(raw, dtype=np.float64).reshape(-1)
        rewards = {name: float(v) for name, v in zip(self.config.dimension_names, values)}
        for name, (mean, std) in (self.config.layout.normalization or {}).items():
            rewards[name] = (rewards[name] - float(mean)) / float(std)
        return rewards

    def _headline(self, raw) -> float:
        rewards = self._rewards(raw)
        rule = self.config.layout.headline
        if rule == "sum":
            return float(sum(rewards.values()))
        if rule == "mean":
            return float(sum(rewards.values()) / len(rewards))
        return headline_reward(rewards)

    def _score_group(self, videos: list, prompts: list[str], options: ScoreOptions, think_if) -> list[ScoreResult]:
        """Score videos together: one backend batch when the backend supports it, else one by one."""
        start = time.perf_counter()
        prepared = []
        for video, prompt in zip(videos, prompts):
            t0 = time.perf_counter()
            self.prompts.instruction(prompt)  # reject an empty prompt before decoding anything
            clip = self._load(video, options, prompt)
            t1 = time.perf_counter()
            inputs = self._prepare(clip, prompt, options)
            t2 = time.perf_counter()
            prepared.append((clip, inputs, {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3}))
        inputs_list = [inputs for _, inputs, _ in prepared]
        outputs = self._run_backend(inputs_list, options, think_if)
        if self.config.layout.score_max_pixels and self.config.layout.cot_position == "user":
            outputs = self._score_at_scoring_resolution(videos, prompts, options, outputs)
        total = (time.perf_counter() - start) * 1e3
        results = []
        for video, (clip, inputs, timings), out in zip(videos, prepared, outputs):
            mode = out.mode or inputs.mode
            rewards = self._rewards(out.rewards)
            timings = {**timings, **out.timings_ms, "total": total}
            results.append(
                ScoreResult(
                    reward=self._headline(out.rewards),
                    rewards=rewards,
                    rationale=self.prompts.decode(out.cot_ids) if mode == "think" else None,
                    mode=mode,
                    backend=self.backend.name,
                    # An adaptive row that stayed fast was scored on its prefix + <Reward>.
                    num_prompt_tokens=int(inputs.prefix_length + 1 if inputs.mode == "adaptive" and mode == "fast"
                                          else len(inputs.input_ids)),
                    num_cot_tokens=int(len(out.cot_ids)),
                    num_frames=int(len(clip.frames)),
                    timings_ms={k: round(float(v), 3) for k, v in timings.items()},
                    video=_describe(video),
                    sampling=sampling_report(clip),
                    **self._cot_report(out.cot_ids, inputs, options, mode),
                )
            )
        return results

    def _run_backend(self, inputs_list: list[ModelInputs], options: ScoreOptions, think_if) -> list[BackendOutput]:
        budgets = [self._max_new_tokens(inputs, options) for inputs in inputs_list]
        if getattr(self.backend, "supports_batch", False):
            extra = {"think_if": think_if} if options.mode == "adaptive" else {}
            return self.backend.score_batch(inputs_list, options, self.stop_ids, budgets, **extra)
        if options.mode != "adaptive":
            return [self.backend.score(i, options, self.stop_ids, b) for i, b in zip(inputs_list, budgets)]
        # Adaptive on a one-video-at-a-time backend: fast pass, then a think pass where the rule says so.
        # The fast prompt is the think prompt cut at its prefix (the user text in the user-turn layout,
        # all of it in the assistant layout) + <Reward>: exactly what fast mode scores.
        fast_inputs = [replace(i, input_ids=np.append(i.input_ids[: i.prefix_length], self.prompts.ids.reward), mode="fast",
                               prefix_length=-1, rescore=None) for i in inputs_list]
        fast = [self.backend.score(i, options, self.stop_ids, 0) for i in fast_inputs]
        think = np.asarray(think_if(np.stack([np.asarray(o.rewards).reshape(-1) for o in fast])), dtype=bool)
        outputs = []
        for inputs, budget, first, again in zip(inputs_list, budgets, fast, think):
            if again:
                out = self.backend.score(replace(inputs, mode="think"), options, self.stop_ids, budget)
                outputs.append(replace(out, mode="think", fast_rewards=first.rewards))
            else:
                outputs.append(replace(first, mode="fast", fast_rewards=first.rewards))
        return outputs

    def _score_at_scoring_resolution(self, videos, prompts, options: ScoreOptions, outputs: list[BackendOutput]):
        """The authors' two resolutions: the CoT was written on the CoT-pass frames; the reward is read
        from the scoring frames (`layout.score_max_pixels`) with that CoT in the user turn — a second
        decode, vision encode and full prefill of each video that thought (opt-in; see PromptLayout)."""
        layout = self.config.layout
        redo = [i for i, out in enumerate(outputs) if (out.mode or options.mode) == "think"]
        if not redo:
            return outputs
        scoring_inputs = []
        for i in redo:
            clip = load_clip(videos[i], self.config, fps=options.fps, min_frames=options.min_frames,
                             max_frames=options.max_frames, max_pixels=layout.score_max_pixels,
                             min_pixels=layout.score_min_pixels, resize=options.resize)
            features = clip_features(clip, self.config, max_pixels=layout.score_max_pixels, min_pixels=layout.score_min_pixels)
            ids = self.prompts.scoring_ids(prompts[i], features.grid_thw, self.prompts.cot_text(outputs[i].cot_ids),
                                           timestamps=features.timestamps)
            scoring_inputs.append(ModelInputs(ids, features.patches, features.grid_thw, features.second_per_grid, "fast"))
        fast = options.replace(mode="fast")
        if getattr(self.backend, "supports_batch", False):
            scored = self.backend.score_batch(scoring_inputs, fast, self.stop_ids, [0] * len(redo))
        else:
            scored = [self.backend.score(inputs, fast, self.stop_ids, 0) for inputs in scoring_inputs]
        outputs = list(outputs)
        for i, out in zip(redo, scored):
            outputs[i] = replace(outputs[i], rewards=out.rewards, hidden=out.hidden)
        return outputs

    # -- steps ---------------------------------------------------------------------------------------
    # Decoding, patching and prompt ids go through descore_sdk.inputs, the path training uses too.
    def _load(self, video, options: ScoreOptions, prompt: str | None = None) -> VideoClip:
        """Decode and sample; with `prompt`, a video too long for the context is fitted into it."""
        return load_clip(video, self.config, fps=options.fps, min_frames=options.min_frames,
                         max_frames=options.max_frames, max_pixels=options.max_pixels, resize=options.resize,
                         plan=None if prompt is None else self._context_fit(prompt, options))

    def _context_fit(self, prompt: str, options: ScoreOptions):
        """Lowers frame count and size of a video that would not fit the context (frame_budget.py)."""
        if options.mode == "fast":
            return context_fit_for(self.prompts, self.config, prompt, options, reserved_tokens=0)
        empty = ModelInputs(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros(3, np.int64), 1.0, "think")
        return context_fit_for(self.prompts, self.config, prompt, options,
                               reserved_tokens=self._max_new_tokens(empty, options) + 1)  # CoT budget + <Reward>

    def _prepare(self, clip: VideoClip, prompt: str, options: ScoreOptions) -> ModelInputs:
        features = clip_features(clip, self.config, max_pixels=options.max_pixels)
        # Adaptive prompts use the think layout: the fast score is read by appending <Reward> to it.
        layout = "fast" if options.mode == "fast" else "think"
        return replace(model_inputs(self.prompts, features, prompt, layout), mode=options.mode)

    def _cot_report(self, cot_ids, inputs: ModelInputs, options: ScoreOptions, mode: str) -> dict:
        """ScoreResult's cot_stop / cot_repeating (descore_sdk.cot): a runaway CoT is never silent."""
        if mode != "think":
            return {}
        wanted = self.config.max_new_tokens if options.max_new_tokens is None else options.max_new_tokens
        budget = self._max_new_tokens(replace(inputs, mode="think"), options)
        return {"cot_stop": cot_stop_reason(len(cot_ids), budget, wanted), "cot_repeating": is_repeating(cot_ids)}

    def _max_new_tokens(self, inputs: ModelInputs, options: ScoreOptions) -> int:
        if inputs.mode == "fast":
            return 0
        wanted = self.config.max_new_tokens if options.max_new_tokens is None else options.max_new_tokens
        room = self.config.max_context - len(inputs.input_ids) - 1  # keep one slot for <Reward>
        return max(0, min(wanted, room))

    def _stop_ids(self, stop_tokens) -> tuple[int, ...]:
        ids = []
        for token in stop_tokens:
            token_id = self.prompts.tokenizer.token_to_id(token)
            if token_id is None:
                raise InvalidInputError(f"Stop token {token!r} is not in the tokenizer; use single special tokens like '<|im_end|>'.")
            ids.append(token_id)
        return tuple(ids)


__all__ = ["Scorer", "ModelInputs", "BackendOutput", "BackendChoice", "choose_backend", "DescoreError"]
