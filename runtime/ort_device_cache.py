"""onnxruntime with the KV cache resident on a device: the decoder's cache never visits the host.

    backend = OnnxBackend("bundle/", device="cuda:0")                 # onnxruntime-gpu: picked by default
    backend = OnnxBackend("bundle/", device="cpu", device_cache=True)  # the same code on host memory (tests)

`DeviceCacheDecoderModel` is `OnnxDecoderModel` (the bundle's graphs, the shared decode loop) with the
cache held as onnxruntime `OrtValue`s on `device_type:device_id` and every decoder run bound through
IOBinding (`OnnxRuntimeRunner.run_bound`). Per step only the step's inputs go up (embeddings, mask,
positions, lengths: a few KB a token) and only the last position's `logits` / `hidden` / `reward` come
back. Two cache forms, as the bundle was exported:

- in place (`--kv-cache shared`, onnxruntime's GroupQueryAttention): one buffer per layer and key/value,
  (B, kv_heads, capacity, head_dim), bound as BOTH `past_key_values.*` and `present.*`; the kernel
  writes the new columns into it (it compares the two addresses to choose that mode). Prefill chunks go
  row by row as on the host (`OnnxDecoderModel._step_shared`), each row bound by address inside the
  batch buffer (`DeviceView`). `DeviceSharedCache` mirrors `kv_cache.SharedKVCache` (same lengths and
  width bookkeeping), with its copies done on the device.
- concatenating (`--kv-cache concat`): `present.*` is bound to the device with no buffer given, so
  onnxruntime allocates it there; the next step binds those OrtValues as `past_key_values.*`.

Row drops, column cuts and buffer growth run the small `Gather → Slice → Pad` graph shipped in
descore_sdk/assets/kv_ops (export/kv_ops.py) on the same execution provider, bound to the same device.

The device is a parameter: with device_type "cpu" the same code runs on the CPU provider, which is how
it is tested against the host-cache backend (tests/test_ort_device_cache.py). On "cuda" it was written
against onnxruntime's IOBinding / OrtValue documentation (Python API, 1.17 – 1.32) and has NOT run on a
GPU in this repository yet (docs/GPU.md says how to run its GPU test first).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from descore_sdk.errors import InvalidInputError, ModelLoadError

from .decode import StepOutput
from .kv_cache import kept_columns, refuse_growth
from .onnx_backend import DEFAULT_VISION_CHUNK_PATCHES, OnnxDecoderModel
from .onnxruntime_runner import ONNX_ELEMENT_TYPES, DeviceView, OnnxRuntimeRunner, _onnxruntime

KV_OPS_DIR = Path(str(resources.files("descore_sdk.assets") / "kv_ops"))  # package data (a plain folder in wheels)
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
_GRANULE = 64  # capacity grows in steps of this many columns, at least doubling (as kv_cache.SharedKVCache)
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# onnxruntime registers GroupQueryAttention's CUDA kernel for these cache types only (contrib_ops/cuda/bert/
# group_query_attention.cc: MLFloat16 and BFloat16, plus quantized caches; read at microsoft/onnxruntime
# main, Nov 2026). A float32 node falls back to the CPU provider, which cannot share a device buffer.
GQA_CUDA_CACHE_TYPES = ("float16", "bfloat16")


def cache_device(device: str = "cpu", providers: list | None = None) -> tuple[str, int]:
    """Where the cache lives for a session on `device` / `providers`: ("cuda", N) when a CUDA or TensorRT
    provider comes first in the list (TensorRT's provider works on CUDA memory), else ("cpu", 0)."""
    if providers is not None:
        for provider in providers:
            name, options = (provider[0], provider[1]) if isinstance(provider, tuple) else (provider, {})
            if name in _GPU_PROVIDERS:
                return "cuda", int((options or {}).get("device_id", 0))
            if name == "CPUExecutionProvider":
                return "cpu", 0
        return "cpu", 0
    kind, _, index = str(device).partition(":")
    if kind in ("cuda", "tensorrt"):
        try:
            return "cuda", int(index or 0)
        except ValueError:
            raise InvalidInputError(f"Device {device!r} has no valid index; use e.g. 'cuda:0'.") from None
    return "cpu", 0


def cache_element_type(decoder_inputs: list[dict]) -> str | None:
    """The element type of a decoder's `past_key_values.*` inputs ("float32", "float16", ...), None if mixed."""
    types = {str(io.get("dtype")) for io in decoder_inputs if str(io.get("name", "")).startswith("past_key_values.")}
    return types.pop() if len(types) == 1 else None


def cuda_cache_refusal(decoder_inputs: list[dict], opsets: dict | None = None) -> str | None:
    """None when a decoder with these inputs (manifest["graphs"]["decoder"]["inputs"]; `opsets`: its
    manifest["graphs"]["decoder"]["opsets"] when known) can keep its KV cache on a CUDA device; else why
    not, in one sentence."""
    if not any(io.get("name") == "seqlens_k" for io in decoder_inputs):
        return None  # concatenating cache: standard ONNX ops, any provider
    if opsets is not None and "com.microsoft" not in opsets:
        return None  # in place in standard ops (--kv-cache shared-standard): no GroupQueryAttention kernel to ask
    types = sorted({str(io.get("dtype")) for io in decoder_inputs if str(io.get("name", "")).startswith("past_key_values.")})
    if types and set(types) <= set(GQA_CUDA_CACHE_TYPES):
        return None
    return (f"the bundle's decoder updates a {'/'.join(types) or 'float32'} KV cache in place through onnxruntime's "
            "GroupQueryAttention (exported with --kv-cache shared, the CPU default), whose CUDA kernel takes float16/"
            "bfloat16 caches only, so that attention would run on the CPU; for onnxruntime CUDA export with "
            "--kv-cache concat --precision fp16, or convert this bundle's cache to fp16 with "
            "python -m descore_sdk.export.half_cache BUNDLE OUT")


class KVOps:
    """The kv_ops copy graph for one element type, on the cache's device: `copy(x, rows, start, stop, extra)` =
    x[rows][:, :, start:stop] followed by `extra` zero columns, as a new OrtValue on the device."""

    def __init__(self, element_type: str, device_type: str, device_id: int, threads: int | None = None):
        path = KV_OPS_DIR / f"kv_ops_{element_type}.onnx"
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing from this install; reinstall descore-sdk.")
        device = "cpu" if device_type == "cpu" else f"cuda:{device_id}"
        self.device_type, self.device_id = device_type, int(device_id)
        self.runner = OnnxRuntimeRunner(path, device=device, threads=1 if threads is None else threads, shrink_arena=False)
        self.runner.activate()

    def copy(self, x, rows, start: int = 0, stop: int | None = None, extra: int = 0):
        host = {
            "rows": np.asarray(rows, dtype=np.int64).reshape(-1),
            "starts": np.asarray([int(start)], dtype=np.int64),
            "ends": np.asarray([np.iinfo(np.int64).max if stop is None else int(stop)], dtype=np.int64),
            "pads": np.asarray([0, 0, 0, 0, 0, 0, int(extra), 0], dtype=np.int64),
        }
        _, out = self.runner.run_bound(host, {"x": x}, {"y": None}, device_type=self.device_type, device_id=self.device_id)
        return out["y"]

    def zeros(self, shape: tuple, element_type: str):
        """A zero-filled tensor of `shape` on the device (uploaded from the host once)."""
        ort = _onnxruntime()
        dtype = np.float16 if element_type == "float16" else np.float32
        if element_type == "bfloat16":
            raise ModelLoadError("A static-capacity bfloat16 cache has no host zeros to upload; export fp16 or fp32.")
        return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=dtype), self.device_type, self.device_id)

    def empty(self, shape: tuple, element_type: str):
        """A zero-size (or new) tensor of `shape` on the device."""
        ort = _onnxruntime()
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), ONNX_ELEMENT_TYPES[element_type],
                                                         self.device_type, self.device_id)


class DeviceConcatCache:
    """A concatenating decoder's cache: {past name: OrtValue (B, kv_heads, length, head_dim)} on the device."""

    def __init__(self, values: dict, batch: int, length: int):
        self.values = values
        self.batch = int(batch)
        self.length = int(length)


class DeviceSharedCache:
    """`kv_cache.SharedKVCache` on a device: per name a (B, kv_heads, capacity, head_dim) OrtValue, rows packed
    from column 0; `lengths` (tokens per row) and `width` (the loop's mask width) as there."""

    def __init__(self, ops: KVOps, buffers: dict, lengths, width: int, element_type: str):
        self.ops = ops
        self.buffers = buffers
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.width = int(width)
        self.element_type = element_type

    @classmethod
    def empty(cls, ops: KVOps, names_shapes: dict[str, tuple[int, int]], batch: int, element_type: str,
              capacity: int | None = None) -> "DeviceSharedCache":
        """No tokens yet; with `capacity` (a static graph dimension) the buffers are allocated once, zeroed."""
        if capacity is None:
            buffers = {name: ops.empty((batch, heads, 0, dim), element_type) for name, (heads, dim) in names_shapes.items()}
        else:
            buffers = {name: ops.zeros((batch, heads, capacity, dim), element_type) for name, (heads, dim) in names_shapes.items()}
        cache = cls(ops, buffers, np.zeros(batch, dtype=np.int64), 0, element_type)
        cache.fixed = capacity is not None
        return cache

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return int(next(iter(self.buffers.values())).shape()[2]) if self.buffers else 0

    fixed = False  # a static capacity (a graph prepared for TensorRT): never grown

    def reserve(self, columns: int) -> None:
        """Room for `columns` tokens per row: a new buffer (doubling, rounded up to 64 columns) holding the old
        one's columns and zeros after them, copied on the device."""
        if columns <= self.capacity:
            return
        if self.fixed:
            refuse_growth(columns, self.capacity)
        capacity = max(columns, 2 * self.capacity)
        capacity = -(-capacity // _GRANULE) * _GRANULE
        rows = np.arange(self.batch)
        self.buffers = {name: self.ops.copy(old, rows, 0, None, capacity - self.capacity) for name, old in self.buffers.items()}

    def select(self, rows, start: int, stop: int | None = None) -> "DeviceSharedCache":
        """The decode loop's `slice_cache` (see `SharedKVCache.select`). The rows are gathered whole on the
        device: columns past a row's length are never read (the kernel reads seqlens_k + 1 per row) and are
        overwritten as the row grows."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        lengths, width = kept_columns(self.lengths, self.width, rows, start, stop)
        buffers = {name: self.ops.copy(buffer, rows) for name, buffer in self.buffers.items()}
        selected = DeviceSharedCache(self.ops, buffers, lengths, width, self.element_type)
        selected.fixed = self.fixed
        return selected

    def row(self, b: int) -> dict[str, DeviceView]:
        """Row b of every buffer as a (1, kv_heads, capacity, head_dim) view by address: an in-place write
        through it lands in this cache."""
        views = {}
        for name, buffer in self.buffers.items():
            shape = tuple(int(d) for d in buffer.shape())
            row_bytes = int(np.prod(shape[1:])) * _ITEMSIZE[self.element_type]
            views[name] = DeviceView(buffer, b * row_bytes, (1,) + shape[1:], ONNX_ELEMENT_TYPES[self.element_type])
        return views


class DeviceCacheDecoderModel(OnnxDecoderModel):
    """`OnnxDecoderModel` with the KV cache on `cache_device(device, providers)` (see module docstring)."""

    keeps_cache_on_device = True

    def __init__(self, bundle, *, device: str = "cpu", providers: list | None = None, threads: int | None = None,
                 vision_chunk_patches: int = DEFAULT_VISION_CHUNK_PATCHES, shrink_arena: bool = True):
        self.device_type, self.device_id = cache_device(device, providers)
        decoder_inputs = bundle.graph("decoder")["inputs"]
        if self.device_type != "cpu":
            reason = cuda_cache_refusal(decoder_inputs, bundle.graph("decoder").get("opsets"))
            if reason is not None:
                raise ModelLoadError(f"The bundle at {bundle.path} cannot keep its KV cache on {self.device_type}: "
                                     f"{reason}. Or score it with device='cpu'.")
        types = {str(io["dtype"]) for io in decoder_inputs if io["name"].startswith("past_key_values.")}
        if len(types) != 1 or next(iter(types)) not in _ITEMSIZE:
            raise ModelLoadError(f"The bundle's decoder cache has element types {sorted(types)}; the device cache "
                                 f"handles one of {sorted(_ITEMSIZE)}. Re-export the bundle.")
        self.cache_type = types.pop()
        super().__init__(bundle, device=device, providers=providers, threads=threads,
                         vision_chunk_patches=vision_chunk_patches, shrink_arena=shrink_arena,
                         prefix_cache=False)  # the host PrefixStore copies numpy columns; not for device buffers
        self.ops = KVOps(self.cache_type, self.device_type, self.device_id, threads)

    # -- DecoderModel --------------------------------------------------------------------------------
    def new_cache(self, batch: int):
        if self.shared_cache:
            shapes = {meta["name"]: (int(meta["shape"][1]), int(meta["shape"][3])) for meta in self._cache_names}
            return DeviceSharedCache.empty(self.ops, shapes, batch, self.cache_type, capacity=self.static_capacity)
        values = {meta["name"]: self.ops.empty((batch, int(meta["shape"][1]), 0, int(meta["shape"][3])), self.cache_type)
                  for meta in self._cache_names}
        return DeviceConcatCache(values, batch, 0)

    def slice_cache(self, cache, rows: np.ndarray, start: int, stop: int | None = None):
        if isinstance(cache, DeviceSharedCache):
            return cache.select(rows, start, stop)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        stop = cache.length if stop is None else min(int(stop), cache.length)
        values = {name: self.ops.copy(value, rows, start, stop) for name, value in cache.values.items()}
        return DeviceConcatCache(values, len(rows), max(stop - int(start), 0))

    def step(self, inputs_embeds, attention_mask, position_ids, deepstack_embeds, cache):
        if isinstance(cache, DeviceSharedCache):
            return self._step_shared(inputs_embeds, attention_mask, position_ids, deepstack_embeds, cache)
        batch, seq = inputs_embeds.shape[:2]
        host = {
            "inputs_embeds": np.ascontiguousarray(inputs_embeds, dtype=np.float32),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
            **self._deepstack(deepstack_embeds, batch, seq, inputs_embeds.shape[-1]),
        }
        presents = {name: name.replace("past_key_values.", "present.", 1) for name in cache.values}
        out, allocated = self.decoder.run_bound(host, dict(cache.values), {p: None for p in presents.values()},
                                                device_type=self.device_type, device_id=self.device_id)
        self.counters["decoder_positions"] += int(batch * seq)
        values = {past: allocated[present] for past, present in presents.items()}
        return StepOutput(out["logits"], out["hidden"], out["reward"]), DeviceConcatCache(values, batch, cache.length + seq)

    def _deepstack(self, deepstack_embeds, batch: int, seq: int, hidden: int) -> dict:
        if not self.num_deepstack:
            return {}
        if deepstack_embeds is None:  # text-only columns: DeepStack adds zeros
            return {"deepstack_embeds": np.zeros((self.num_deepstack, batch, seq, hidden), dtype=np.float32)}
        return {"deepstack_embeds": np.ascontiguousarray(deepstack_embeds, dtype=np.float32)}

    def _run_shared(self, inputs_embeds, position_ids, deepstack_embeds, buffers: dict, lengths, width: int):
        """`OnnxDecoderModel._run_shared` on device buffers (its `_step_shared` drives both: decode steps batched,
        longer pieces row by row, each row bound inside the batch buffer by `DeviceSharedCache.row`)."""
        rows = inputs_embeds.shape[0]
        host = self._in_place_inputs(inputs_embeds, position_ids, deepstack_embeds, lengths, width)
        # past and present of a layer: the same device memory (the kernel's in-place mode)
        inplace = {name.replace("past_key_values.", "present.", 1): value for name, value in buffers.items()}
        out, _ = self.decoder.run_bound(host, dict(buffers), inplace, device_type=self.device_type, device_id=self.device_id)
        self.counters["decoder_positions"] += rows * width
        return out
