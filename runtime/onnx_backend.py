"""The onnxruntime Scorer backend: an exported bundle driven by the shared decode loop.

    scorer = Scorer.from_pretrained("bundle/")                        # backend "auto" → onnxruntime
    scorer = Scorer.from_pretrained("bundle/", device="cuda")         # with onnxruntime-gpu
    scorer = Scorer.from_pretrained("bundle/", backend_options={"threads": 4})

`OnnxDecoderModel` adapts the bundle's two graphs and its embedding table to `decode.DecoderModel`;
`OnnxBackend` is what the Scorer talks to. The bundle is verified when loaded (`descore_sdk.bundle`),
and each graph's I/O is checked against the manifest once its session is up. No torch anywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from descore_sdk.bundle import Bundle, load_bundle
from descore_sdk.errors import BundleIntegrityError, ModelLoadError
from descore_sdk.prompt import blocked_generation_ids, load_tokenizer

from .decode import DEFAULT_PREFILL_CHUNK, DecodeRequest, DecodeSettings, RopeSpec, StepOutput, decode
from .kv_cache import InPlaceSteps, PrefixStore, SharedKVCache
from .onnxruntime_runner import OnnxRuntimeRunner
from .sampling import SamplingParams
from .vision_inputs import VisionGraphSpec, encode_in_chunks

# Patches per vision call: whole temporal steps up to this many patches (attention there is per frame,
# so this bounds activations, not correctness). A frame larger than this still goes in one call.
DEFAULT_VISION_CHUNK_PATCHES = 16384


class OnnxDecoderModel(InPlaceSteps):
    """vision.onnx + decoder.onnx + embed_tokens.npy of one bundle, as the decode loop's `DecoderModel`.
    The KV cache lives in host numpy arrays; `ort_device_cache.DeviceCacheDecoderModel` keeps it on a device."""

    keeps_cache_on_device = False

    def __init__(self, bundle: Bundle, *, device: str = "cpu", providers: list | None = None, threads: int | None = None,
                 vision_chunk_patches: int = DEFAULT_VISION_CHUNK_PATCHES, shrink_arena: bool = True,
                 prefix_cache: bool = True):
        self.bundle = bundle
        model = bundle.model
        self.rope = RopeSpec.from_bundle(bundle)
        self.num_deepstack = int(model["num_deepstack"])
        self.vision_spec = VisionGraphSpec.from_dict(model["vision"])
        self.vision_chunk_patches = int(vision_chunk_patches)
        _check_precision_runs(bundle, device, providers)
        runner = dict(device=device, providers=providers, threads=threads, shrink_arena=shrink_arena)
        self.vision = OnnxRuntimeRunner(bundle.graph_path("vision"), **runner)
        self.decoder = OnnxRuntimeRunner(bundle.graph_path("decoder"), **runner)
        self.table = np.load(bundle.embedding_path, mmap_mode="r")  # pages in only the rows used
        decoder_inputs = bundle.graph("decoder")["inputs"]
        self._cache_names = [n for n in decoder_inputs if n["name"].startswith("past_key_values.")]
        # A graph exported with --kv-cache shared updates one buffer per layer in place (runtime/kv_cache.py).
        self.shared_cache = any(n["name"] == "seqlens_k" for n in decoder_inputs)
        # a static cache capacity (an in-place graph prepared for TensorRT, export/tensorrt.py): allocated once
        capacity = self._cache_names[0]["shape"][2] if self._cache_names else None
        self.static_capacity = int(capacity) if self.shared_cache and isinstance(capacity, int) else None
        # (which export/tensorrt.static_cache_graph also drops: the standard-ops graph does not read it)
        self.takes_total_length = any(n["name"] == "total_sequence_length" for n in decoder_inputs)
        names = [p[0] if isinstance(p, tuple) else p for p in (providers or ["CPUExecutionProvider"])]
        on_cpu = str(device).split(":")[0] == "cpu" and set(names) == {"CPUExecutionProvider"}
        if self.shared_cache and not on_cpu and not self.keeps_cache_on_device:
            raise ModelLoadError(
                f"The bundle at {bundle.path} updates its decoder's KV cache in place (--kv-cache shared); this model "
                "binds host buffers, which only onnxruntime's CPU provider can update. Load it through OnnxBackend "
                "(device_cache=True keeps the cache on the device: runtime/ort_device_cache.py), or use device='cpu'."
            )
        # Work done, for checking the one-encode/one-prefill promise: encode_video calls and decoder
        # positions fed (prompt prefill, CoT steps and scoring-pass prefills all count).
        self.counters = {"vision_encodes": 0, "decoder_positions": 0, "prefix_positions_reused": 0}
        # Prompt heads shared between rows and calls are prefilled once (runtime/kv_cache.PrefixStore);
        # the in-place cache only: its rows are packed from column 0, so a head lands at the same columns
        # in every row.
        self.prefix_store = PrefixStore() if (prefix_cache and self.shared_cache) else None
        self.activate()

    # -- lifecycle -----------------------------------------------------------------------------------
    def activate(self) -> None:
        for kind, runner in (("vision", self.vision), ("decoder", self.decoder)):
            runner.activate()
            _check_io(self.bundle, kind, runner)

    def deactivate(self) -> None:
        self.vision.deactivate()
        self.decoder.deactivate()

    # -- DecoderModel --------------------------------------------------------------------------------
    def encode_video(self, patches: np.ndarray, grid_thw) -> tuple[np.ndarray, np.ndarray | None]:
        self.counters["vision_encodes"] += 1
        return encode_in_chunks(self.vision.infer, self.vision_spec, patches, grid_thw, self.vision_chunk_patches)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        return np.array(self.table[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def new_cache(self, batch: int):
        if self.shared_cache:
            shapes = {meta["name"]: (int(meta["shape"][1]), int(meta["shape"][3])) for meta in self._cache_names}
            return SharedKVCache.empty(shapes, batch, capacity=self.static_capacity)
        cache = {}
        for meta in self._cache_names:
            _, kv_heads, _, head_dim = meta["shape"]
            cache[meta["name"]] = np.zeros((batch, int(kv_heads), 0, int(head_dim)), dtype=np.float32)
        return cache

    def slice_cache(self, cache, rows: np.ndarray, start: int, stop: int | None = None):
        if isinstance(cache, SharedKVCache):
            return cache.select(rows, start, stop)
        rows = np.asarray(rows, dtype=np.int64)
        return {name: np.ascontiguousarray(value[rows][:, :, start:stop]) for name, value in cache.items()}

    def step(self, inputs_embeds, attention_mask, position_ids, deepstack_embeds, cache):
        if isinstance(cache, SharedKVCache):
            return self._step_shared(inputs_embeds, attention_mask, position_ids, deepstack_embeds, cache)
        feed = {
            "inputs_embeds": np.ascontiguousarray(inputs_embeds, dtype=np.float32),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
            **cache,
        }
        if self.num_deepstack:
            if deepstack_embeds is None:  # text-only columns: DeepStack adds zeros
                deepstack_embeds = np.zeros((self.num_deepstack, *feed["inputs_embeds"].shape), dtype=np.float32)
            feed["deepstack_embeds"] = np.ascontiguousarray(deepstack_embeds, dtype=np.float32)
        out = self.decoder.infer(feed)
        self.counters["decoder_positions"] += int(np.prod(feed["inputs_embeds"].shape[:2]))
        new_cache = {name.replace("present.", "past_key_values.", 1): value for name, value in out.items() if name.startswith("present.")}
        return StepOutput(out["logits"], out["hidden"], out["reward"]), new_cache

    def _run_shared(self, inputs_embeds, position_ids, deepstack_embeds, buffers: dict, lengths: np.ndarray, width: int):
        feed = {**self._in_place_inputs(inputs_embeds, position_ids, deepstack_embeds, lengths, width), **buffers}
        inplace = {name.replace("past_key_values.", "present.", 1): name for name in buffers}
        out = self.decoder.infer_inplace(feed, inplace)
        self.counters["decoder_positions"] += inputs_embeds.shape[0] * width
        return out


def _check_precision_runs(bundle: Bundle, device: str, providers: list | None) -> None:
    """A bf16 bundle on onnxruntime's CPU provider would fail deep inside session creation ("Could not find
    an implementation for Add(14)"): CPU has no bfloat16 kernels for the graphs' basic ops (ORT 1.32)."""
    bf16 = [kind for kind in ("vision", "decoder") if bundle.precision(kind) == "bf16"]
    if bf16 and providers is None and str(device).split(":")[0] == "cpu":
        raise ModelLoadError(
            f"The bundle at {bundle.path} has bf16 graphs ({', '.join(bf16)}), which onnxruntime's CPU provider "
            "cannot run. Score it on a GPU (device='cuda'), or export a CPU bundle with --precision fp32, fp16, "
            "int8 or int4."
        )


def _check_io(bundle: Bundle, kind: str, runner: OnnxRuntimeRunner) -> None:
    """The loaded graph's I/O names and dtypes must be the manifest's (a swapped file of the same size
    and a re-hashed manifest would otherwise fail later with an obscure shape error)."""
    declared = bundle.graph(kind)
    for direction, actual in (("inputs", runner.input_metadata()), ("outputs", runner.output_metadata())):
        expected = [(io["name"], io["dtype"]) for io in declared[direction]]
        got = [(name, np.dtype(meta.dtype).name) for name, meta in actual.items()]
        if expected != got:
            raise BundleIntegrityError(
                f"{bundle.graph_path(kind)} has {direction} {got}, but the manifest declares {expected}; "
                "the graph does not belong to this bundle. Re-export it."
            )


class OnnxBackend:
    """Scorer backend over an exported bundle (see module docstring)."""

    name = "onnxruntime"
    supports_batch = True
    supports_adaptive = True

    def __init__(self, path: str | Path, *, device: str = "cpu", family: str | None = None, verify: bool = True,
                 providers: list | None = None, threads: int | None = None, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
                 vision_chunk_patches: int = DEFAULT_VISION_CHUNK_PATCHES, shrink_arena: bool = True,
                 prefix_cache: bool = True, device_cache: bool | None = None):
        """prefix_cache: prefill a prompt head seen before once (runtime/kv_cache.PrefixStore; the host
        in-place cache only). device_cache: keep the decoder's KV cache on the device with IOBinding
        (`ort_device_cache`). None (default): on for a CUDA / TensorRT provider or a cache that is not
        float32 (export/half_cache.py), off on the CPU otherwise, where the host path is the measured one
        (True there runs the device code on host memory; the tests compare the two)."""
        from .ort_device_cache import DeviceCacheDecoderModel, cache_device, cache_element_type

        self.bundle = load_bundle(path, family=family, verify=verify)
        self.descore_config = self.bundle.descore_config
        if device_cache is None:  # the host path keeps float32 numpy caches; an fp16-cache bundle takes the other
            device_cache = (cache_device(device, providers)[0] != "cpu"
                            or cache_element_type(self.bundle.graph("decoder")["inputs"]) != "float32")
        runner = dict(device=device, providers=providers, threads=threads, vision_chunk_patches=vision_chunk_patches,
                      shrink_arena=shrink_arena)
        if device_cache:
            self.model = DeviceCacheDecoderModel(self.bundle, **runner)
        else:
            self.model = OnnxDecoderModel(self.bundle, **runner, prefix_cache=prefix_cache)
        self.reward_token_id = int(self.bundle.manifest["reward_token_id"])
        tokenizer = load_tokenizer(self.bundle.path)
        self.blocked_ids = blocked_generation_ids(tokenizer, self.bundle.descore_config)
        self.read_ids = tuple(int(tokenizer.token_to_id(t)) for t in self.descore_config.reward_tokens)
        self.prefill_chunk = int(prefill_chunk)

    def score(self, inputs, options, stop_ids, max_new_tokens: int):
        """One video (the Scorer backend contract)."""
        return self.score_batch([inputs], options, stop_ids, [max_new_tokens])[0]

    def score_batch(self, inputs_list, options, stop_ids, max_new_tokens, *, think_if=None, forced_cots=None,
                    record_logits: bool = False):
        """Several videos in one decode loop. All inputs share one mode ("think", "fast" or "adaptive").

        max_new_tokens: one budget per video; think_if (adaptive): fast rewards (B, K) → (B,) bool;
        forced_cots: teacher-forced CoT ids per video (parity checks); record_logits: keep the logits of
        every CoT step in `BackendOutput.step_logits`.
        """
        from descore_sdk.scorer import BackendOutput

        modes = {inputs.mode for inputs in inputs_list}
        if len(modes) != 1:
            raise ValueError(f"score_batch needs one mode per call, got {sorted(modes)}")  # an SDK bug, not user input
        forced_cots = forced_cots or [None] * len(inputs_list)
        requests = [
            DecodeRequest(
                input_ids=inputs.input_ids,
                patches=inputs.patches,
                grid_thw=inputs.grid_thw,
                second_per_grid=inputs.second_per_grid,
                max_new_tokens=int(budget),
                forced_cot=None if forced is None else np.asarray(forced, dtype=np.int64),
                prefix_length=inputs.prefix_length,
                rescore=inputs.rescore,
            )
            for inputs, budget, forced in zip(inputs_list, max_new_tokens, forced_cots)
        ]
        settings = DecodeSettings(
            mode=modes.pop(),
            reward_token_id=self.reward_token_id,
            stop_ids=tuple(stop_ids),
            blocked_ids=self.blocked_ids,
            sampling=SamplingParams.from_options(options),
            seed=options.seed,
            think_if=think_if,
            record_logits=record_logits,
            prefill_chunk=self.prefill_chunk,
            read_ids=self.read_ids,
            per_token=self.descore_config.layout.dimension_map == "per_token",
        )
        return [
            BackendOutput(
                rewards=result.rewards,
                cot_ids=result.cot_ids,
                timings_ms=result.timings_ms,
                mode=result.mode,
                fast_rewards=result.fast_rewards,
                hidden=result.hidden,
                step_logits=result.step_logits,
                counters=result.counters,
            )
            for result in decode(self.model, requests, settings)
        ]
