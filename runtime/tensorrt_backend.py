"""The TensorRT Scorer backend: a bundle's engines driven by the shared decode loop; torch-free.

    descore export BUNDLE BUNDLE_TRT --format tensorrt --precision fp16     # on the target GPU
    scorer = Scorer.from_pretrained("BUNDLE_TRT")          # backend "auto" picks the engines when they can run
    scorer = Scorer.from_pretrained("BUNDLE_TRT", backend="tensorrt", device="cuda:0")

`TensorRTDecoderModel` is `decode.DecoderModel` over `vision.plan` + `decoder.plan` (built by
`export/tensorrt.py` and listed in `manifest["engines"]`) and the bundle's embedding table. The KV cache
lives on the device for the whole decode: each cache value is a slab of preallocated device memory
(`tensorrt_runner.KVSlabPool`); a step binds the past cache's slab as `past_key_values.*` and another
slab as `present.*`, so nothing but the step's inputs (embeddings, mask, positions: a few KB per token)
goes up and only `logits`/`hidden`/`reward` of the last position come back. Row drops and the
user-layout rescore slice caches device-to-device (`slice_copies`).

Engines built from an in-place decoder (TensorRT ≥ 10.15, `--kv-cache shared-standard`: TensorScatter +
Attention, parsed into IKVCacheUpdateLayer + IAttention; export/standard_attention.py) keep ONE slab per
batch: a (B, kv_heads, max_seq, head_dim) tensor per layer and key/value, bound as both `past_key_values.*`
and `present.*` (the layer's output aliases its cache input: TensorRT 10.15's KVCacheUpdate operator docs),
so a step writes only its new columns and every decode step has the same shapes and addresses — one
captured CUDA graph replays them all. The step logic (decode steps batched, prefill row by row, each row
bound by address inside the slab) is `kv_cache.InPlaceSteps`, the onnxruntime backend's own.

Before anything is loaded, `check_engine_compat` refuses engines built for another TensorRT version
or GPU with an `EngineCompatibilityError` that says how to rebuild (tested on the CPU). The GPU paths
were written against the TensorRT 10.x and cuda-python 12.x documentation and have NOT run here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from descore_sdk.bundle import Bundle, load_bundle
from descore_sdk.errors import EngineCompatibilityError, InvalidInputError, ModelLoadError
from descore_sdk.prompt import blocked_generation_ids, load_tokenizer

from .decode import DEFAULT_PREFILL_CHUNK, RopeSpec, StepOutput
from .kv_cache import InPlaceSteps, kept_columns, refuse_growth
from .onnx_backend import OnnxBackend
from .tensorrt_runner import (
    KVSlabPool,
    Copy2D,
    ProfileShapes,
    TensorRTRunner,
    TrtEnvironment,
    cache_plan,
    slice_copies,
    tensorrt_environment,
)
from .vision_inputs import VisionGraphSpec, encode_in_chunks


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def check_engine_compat(engines: dict, env: TrtEnvironment, where: str | Path | None = None) -> None:
    """Raise EngineCompatibilityError unless engines recorded as `engines` (manifest["engines"]) run with
    `env`'s TensorRT and GPU.

    TensorRT's rule (Developer Guide 10.x, "Version Compatibility" / "Hardware Compatibility"): a plan
    runs only on the TensorRT version that built it (major.minor.patch here) and on GPUs of the same
    compute capability — unless it was built version-compatible (then any newer TensorRT of the same
    major) or with hardware compatibility "ampere_plus" (then any GPU of compute capability ≥ 8.0)."""
    built_version = str(engines.get("tensorrt_version", "?"))
    built_cc = str(engines.get("compute_capability", "?"))
    here = f"{env.gpu.name}, compute capability {env.compute_capability}"
    source = f" in {where}" if where else ""
    rebuild = (f"Rebuild them on this machine: descore export {where or 'BUNDLE'} NEW_FOLDER --format tensorrt "
               f"(or score with backend='onnxruntime', which runs the same bundle's ONNX graphs).")
    built, have = _version_tuple(built_version), _version_tuple(env.tensorrt_version)
    if engines.get("version_compatible"):
        version_ok = built[0] == have[0] and have >= built
    else:
        version_ok = built == have
    if not version_ok:
        raise EngineCompatibilityError(
            f"The TensorRT engines{source} were built with TensorRT {built_version}, but this machine has TensorRT "
            f"{env.tensorrt_version}; a TensorRT engine only runs on the version that built it. {rebuild}"
        )
    if engines.get("hardware_compatibility") == "ampere_plus":
        cc_ok = _version_tuple(env.compute_capability)[:2] >= (8, 0)
    else:
        cc_ok = _version_tuple(built_cc)[:2] == _version_tuple(env.compute_capability)[:2]
    if not cc_ok:
        raise EngineCompatibilityError(
            f"The TensorRT engines{source} were built for a GPU of compute capability {built_cc} "
            f"({engines.get('gpu_name', 'unknown GPU')}), but this GPU is {here}; engines are specific to the GPU "
            f"architecture they were built on. {rebuild}"
        )


def engine_profiles(record: dict) -> list[ProfileShapes]:
    """The `ProfileShapes` of one engine entry of the manifest (`{"profiles": [{"name", "shapes"}]}`)."""
    try:
        return [ProfileShapes(p["name"], {k: tuple(tuple(int(d) for d in s) for s in v) for k, v in p["shapes"].items()})
                for p in record["profiles"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"The manifest's engine entry has no valid profiles ({exc}); rebuild the engines.") from None


def config_within_limits(config, limits: dict):
    """The bundle's DescoreConfig with its context and frame-sampling defaults lowered to the engines' limits,
    so the Scorer fits prompts and CoT budgets into `max_seq` and samples videos the vision profile takes
    (a caller who asks for more frames than the engines were built for still gets a typed refusal)."""
    sampling = config.sampling
    max_frames = min(sampling.max_frames, int(limits["max_frames"]))
    max_pixels = min(sampling.max_pixels, int(limits["max_pixels"]))
    sampling = dataclasses.replace(sampling, max_frames=max_frames, max_pixels=max_pixels,
                                   min_frames=min(sampling.min_frames, max_frames), min_pixels=min(sampling.min_pixels, max_pixels))
    return dataclasses.replace(config, sampling=sampling, max_context=min(config.max_context, int(limits["max_seq"])))


def step_buffer_bytes(manifest: dict, profiles: list[ProfileShapes]) -> dict[str, int]:
    """Bytes of every decoder input and output buffer except the KV cache (which lives in slabs), at the
    largest shape any profile allows: float32 embeddings/outputs, int64 mask and positions."""
    sizes = {}
    for io in manifest["graphs"]["decoder"]["inputs"]:
        if io["name"].startswith("past_key_values."):
            continue
        itemsize = np.dtype(io["dtype"]).itemsize
        sizes[io["name"]] = max(int(np.prod(p.shapes[io["name"]][2])) * itemsize for p in profiles)
    batch = max(p.shapes["inputs_embeds"][2][0] for p in profiles)
    model = manifest["model"]
    for name, width in (("logits", model["vocab_size"]), ("hidden", model["hidden_size"]), ("reward", model["num_rewards"])):
        sizes[name] = int(batch) * int(width) * 4
    return sizes


def _device_index(device: str) -> int:
    kind, _, index = str(device).partition(":")
    if kind not in ("cuda", "auto"):
        raise InvalidInputError(f"The TensorRT backend runs on a GPU; device must be 'cuda' or 'cuda:N', got {device!r}.")
    return int(index or 0)


class TrtSharedCache:
    """`kv_cache.SharedKVCache` in a device slab, for an in-place engine: per `past_key_values.*` name a dense
    (B, kv_heads, capacity, head_dim) tensor (`CachePlan` layout; capacity = the engines' static max_seq), rows
    packed from column 0; `lengths` (tokens per row) and `width` (the loop's mask width) as SharedKVCache's."""

    def __init__(self, model: "TensorRTDecoderModel", slab, lengths, width: int):
        self.model, self.slab = model, slab
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.width = int(width)

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return self.slab.length

    @property
    def _row_bytes(self) -> int:
        plan = self.model.plan
        return plan.kv_heads * self.capacity * plan.head_dim * plan.itemsize

    def reserve(self, columns: int) -> None:
        if columns > self.capacity:
            refuse_growth(columns, self.capacity)

    @property
    def buffers(self) -> dict:
        """{past name: (device address, shape)} of the whole batch."""
        return {name: (self.slab.tensor_address(i), self.slab.shape()) for i, name in enumerate(self.model.plan.names)}

    def row(self, b: int) -> dict:
        """Row b of every tensor as (address, (1, kv_heads, capacity, head_dim)): an in-place write lands in this cache."""
        shape = (1,) + self.slab.shape()[1:]
        return {name: (self.slab.tensor_address(i) + b * self._row_bytes, shape) for i, name in enumerate(self.model.plan.names)}

    def select(self, rows, start: int, stop: int | None = None) -> "TrtSharedCache":
        """The decode loop's `slice_cache` (see `SharedKVCache.select`): the kept rows' filled columns copied
        device-to-device into a new slab (one 2-D copy per row and tensor: kv_heads runs of columns)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        lengths, width = kept_columns(self.lengths, self.width, rows, start, stop)
        new = self.model.pool.new_cache(len(rows), self.capacity)
        keep = int(lengths.max()) if len(rows) else 0
        plan, row_bytes = self.model.plan, self._row_bytes
        column_bytes = plan.head_dim * plan.itemsize
        if keep:
            copies = [Copy2D(src_offset=int(r) * row_bytes, src_pitch=self.capacity * column_bytes, dst_offset=j * row_bytes,
                             dst_pitch=self.capacity * column_bytes, width=keep * column_bytes, height=plan.kv_heads)
                      for j, r in enumerate(rows)]
            for i in range(len(plan.names)):
                for copy in copies:
                    self.model.decoder.stream.copy_2d(new.tensor_address(i), self.slab.tensor_address(i), copy)
        return TrtSharedCache(self.model, new, lengths, width)


class TensorRTDecoderModel(InPlaceSteps):
    """vision.plan + decoder.plan + embed_tokens.npy of one bundle, as the decode loop's `DecoderModel`."""

    def __init__(self, bundle: Bundle, *, device_index: int = 0, cuda_graphs: bool = True):
        self.bundle = bundle
        engines = bundle.manifest.get("engines") or {}
        if not engines.get("decoder"):
            raise ModelLoadError(f"The bundle at {bundle.path} has no TensorRT engines; build them with: "
                                 f"descore export {bundle.path} NEW_FOLDER --format tensorrt")
        self.env = tensorrt_environment(device_index)  # MissingDependencyError / DeviceUnavailableError
        check_engine_compat(engines, self.env, bundle.path)
        model = bundle.model
        self.rope = RopeSpec.from_bundle(bundle)
        self.num_deepstack = int(model["num_deepstack"])
        self.vision_spec = VisionGraphSpec.from_dict(model["vision"])
        self.limits = engines["limits"]
        self.cuda_graphs = bool(cuda_graphs)
        self.vision = TensorRTRunner(bundle.path / engines["vision"]["file"], profiles=engine_profiles(engines["vision"]),
                                     device_index=device_index)
        self.decoder = TensorRTRunner(bundle.path / engines["decoder"]["file"], profiles=engine_profiles(engines["decoder"]),
                                      device_index=device_index)
        self.table = np.load(bundle.embedding_path, mmap_mode="r")
        self.plan = cache_plan(bundle.manifest, self.limits["max_batch"], self.limits["max_seq"])
        self.counters = {"vision_encodes": 0, "decoder_positions": 0, "prefix_positions_reused": 0}
        # An in-place decoder (`seqlens_k`; TensorRT's KV-cache layers) keeps one slab per batch (TrtSharedCache).
        self.shared_cache = any(io["name"] == "seqlens_k" for io in bundle.graph("decoder")["inputs"])
        self.prefix_store = None  # the host PrefixStore copies numpy columns; not for device slabs
        self.vision.activate()
        self.decoder.activate()
        # export/tensorrt.static_cache_graph drops total_sequence_length (nothing reads it); older engines may have it
        self.takes_total_length = "total_sequence_length" in self.decoder.input_metadata()
        stream = self.decoder.stream

        def allocate(nbytes: int) -> int:
            # zeroed once: the in-place attention reads the whole capacity (masked), and masked garbage that
            # happens to be NaN would still poison the weighted sum
            address = stream.malloc(nbytes)
            if self.shared_cache:
                stream.memset(address, nbytes)
            return address

        self.pool = KVSlabPool(self.plan, allocate, stream.free)
        # Step inputs and outputs get fixed device buffers at the profiles' largest shapes now, so decode
        # steps allocate nothing and keep the same addresses (what a captured CUDA graph replays with).
        for name, nbytes in step_buffer_bytes(bundle.manifest, self.decoder.profiles).items():
            self.decoder.buffer(name, nbytes)

    def deactivate(self) -> None:
        self.pool.release_all()
        self.vision.deactivate()
        self.decoder.deactivate()

    # -- DecoderModel --------------------------------------------------------------------------------
    def encode_video(self, patches: np.ndarray, grid_thw):
        self.counters["vision_encodes"] += 1
        return encode_in_chunks(self.vision.infer, self.vision_spec, patches, grid_thw, int(self.limits["max_vision_patches"]))

    def embed(self, ids: np.ndarray) -> np.ndarray:
        return np.array(self.table[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def new_cache(self, batch: int):
        if self.shared_cache:
            return TrtSharedCache(self, self.pool.new_cache(batch, self.plan.max_seq), np.zeros(batch, np.int64), 0)
        return self.pool.new_cache(batch, 0)

    def slice_cache(self, cache, rows: np.ndarray, start: int, stop: int | None = None):
        if isinstance(cache, TrtSharedCache):
            return cache.select(rows, start, stop)
        plan = self.plan
        copies, length = slice_copies(cache.batch, cache.length, plan.kv_heads, plan.head_dim, plan.itemsize, rows, start, stop)
        out = self.pool.new_cache(len(np.asarray(rows).reshape(-1)), length)
        for i in range(len(plan.names)):
            for copy in copies:
                self.decoder.stream.copy_2d(out.tensor_address(i), cache.tensor_address(i), copy)
        return out

    def step(self, inputs_embeds, attention_mask, position_ids, deepstack_embeds, cache):
        if isinstance(cache, TrtSharedCache):
            return self._step_shared(inputs_embeds, attention_mask, position_ids, deepstack_embeds, cache)
        batch, seq = inputs_embeds.shape[:2]
        feed = {
            "inputs_embeds": np.ascontiguousarray(inputs_embeds, dtype=np.float32),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
        }
        if self.num_deepstack:
            if deepstack_embeds is None:
                deepstack_embeds = np.zeros((self.num_deepstack, batch, seq, feed["inputs_embeds"].shape[-1]), np.float32)
            feed["deepstack_embeds"] = np.ascontiguousarray(deepstack_embeds, dtype=np.float32)
        runner, stream = self.decoder, self.decoder.stream
        present = self.pool.new_cache(batch, cache.length + seq)
        shapes, addresses = {}, {}
        for name, value in feed.items():
            addresses[name] = runner.buffer(name, value.nbytes)
            stream.upload(addresses[name], value)
            shapes[name] = value.shape
        for i, name in enumerate(self.plan.names):
            shapes[name] = cache.shape()
            addresses[name] = cache.tensor_address(i)
            addresses[name.replace("past_key_values.", "present.", 1)] = present.tensor_address(i)
        hidden_size, vocab, rewards = (int(self.bundle.model[k]) for k in ("hidden_size", "vocab_size", "num_rewards"))
        out_shapes = {"logits": (batch, vocab), "hidden": (batch, hidden_size), "reward": (batch, rewards)}
        for name, shape in out_shapes.items():
            addresses[name] = runner.buffer(name, int(np.prod(shape)) * 4)
        runner.execute(shapes, addresses, graph=self.cuda_graphs and seq == 1)
        host = {name: stream.download(addresses[name], shape, np.float32) for name, shape in out_shapes.items()}
        stream.synchronize()  # the uploads' host arrays (feed) stay alive until here
        self.counters["decoder_positions"] += int(batch * seq)
        return StepOutput(host["logits"], host["hidden"], host["reward"]), present

    def _run_shared(self, inputs_embeds, position_ids, deepstack_embeds, buffers: dict, lengths, width: int):
        """One in-place engine call (`InPlaceSteps`): `buffers` {past name: (address, shape)} — the batch's
        slab or one row inside it — bound as past AND present; only the last position's outputs come back."""
        rows = inputs_embeds.shape[0]
        feed = self._in_place_inputs(inputs_embeds, position_ids, deepstack_embeds, lengths, width)
        runner, stream = self.decoder, self.decoder.stream
        shapes, addresses = {}, {}
        for name, value in feed.items():
            addresses[name] = runner.buffer(name, value.nbytes)
            stream.upload(addresses[name], value)
            shapes[name] = value.shape
        for name, (address, shape) in buffers.items():
            shapes[name] = shape
            addresses[name] = addresses[name.replace("past_key_values.", "present.", 1)] = address
        hidden_size, vocab, rewards = (int(self.bundle.model[k]) for k in ("hidden_size", "vocab_size", "num_rewards"))
        out_shapes = {"logits": (rows, vocab), "hidden": (rows, hidden_size), "reward": (rows, rewards)}
        for name, shape in out_shapes.items():
            addresses[name] = runner.buffer(name, int(np.prod(shape)) * 4)
        # every decode step of a batch: the same shapes and addresses (the slab does not move), one graph
        runner.execute(shapes, addresses, graph=self.cuda_graphs and width == 1)
        host = {name: stream.download(addresses[name], shape, np.float32) for name, shape in out_shapes.items()}
        stream.synchronize()
        self.counters["decoder_positions"] += rows * width
        return host


class TensorRTBackend(OnnxBackend):
    """Scorer backend over a bundle's TensorRT engines. The scoring (`score`, `score_batch`) is
    OnnxBackend's — the same shared decode loop — over a `TensorRTDecoderModel`."""

    name = "tensorrt"

    def __init__(self, path: str | Path, *, device: str = "cuda:0", family: str | None = None, verify: bool = True,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, cuda_graphs: bool = True, threads: int | None = None):
        # threads: accepted so `descore score --threads` works with any backend; TensorRT runs on the GPU.
        # Deliberately not OnnxBackend.__init__: that builds onnxruntime sessions.
        index = _device_index(device)
        self.bundle = load_bundle(path, family=family, verify=verify)
        self.model = TensorRTDecoderModel(self.bundle, device_index=index, cuda_graphs=cuda_graphs)
        self.descore_config = config_within_limits(self.bundle.descore_config, self.model.limits)
        self.reward_token_id = int(self.bundle.manifest["reward_token_id"])
        tokenizer = load_tokenizer(self.bundle.path)
        self.blocked_ids = blocked_generation_ids(tokenizer, self.descore_config)
        self.read_ids = tuple(int(tokenizer.token_to_id(t)) for t in self.descore_config.reward_tokens)
        # A prefill chunk may not exceed the prefill profile's sequence range.
        self.prefill_chunk = min(int(prefill_chunk), int(self.model.limits["prefill_chunk"]))
        self.max_batch = int(self.model.limits["max_batch"])

    def score_batch(self, inputs_list, options, stop_ids, max_new_tokens, **kwargs):
        """OnnxBackend.score_batch in groups of at most the engines' max batch (their profiles' limit)."""
        groups = batch_groups(len(inputs_list), self.max_batch)
        if len(groups) == 1:
            return super().score_batch(inputs_list, options, stop_ids, max_new_tokens, **kwargs)
        results = []
        for group in groups:
            part = {k: ([v[i] for i in group] if k == "forced_cots" and v is not None else v) for k, v in kwargs.items()}
            results += super().score_batch([inputs_list[i] for i in group], options, stop_ids,
                                           [max_new_tokens[i] for i in group], **part)
        return results


def batch_groups(count: int, max_batch: int) -> list[range]:
    """Consecutive index groups of at most `max_batch` (results stay in input order)."""
    return [range(first, min(first + max_batch, count)) for first in range(0, count, max_batch)] or [range(0)]
