"""TensorRT runner: one serialized engine (`*.plan`) run with TensorRT's named-tensor API; torch-free.

    runner = TensorRTRunner("bundle/decoder.plan", profile="decode")
    with runner:
        outputs = runner.infer({"inputs_embeds": x, ...})     # numpy in, numpy out (the Runner contract)

Device memory, streams, events and CUDA graphs come from cuda-python (`cuda.bindings.runtime`, the
`cudart` module of older cuda-python), not torch or CuPy. `infer` copies numpy inputs into device buffers
that are allocated once at the profile's max shapes and reused, runs `execute_async_v3` on the runner's
stream, and copies the outputs back. The decoder backend (`tensorrt_backend.py`) uses the lower-level
`bind`/`execute` instead so the KV cache never leaves the device (see `KVSlabPool`).

Written against the TensorRT 10.x Python API documentation (10.3 – 10.16: `IExecutionContext.
set_input_shape / set_tensor_address / execute_async_v3 / set_optimization_profile_async`,
`ICudaEngine.get_tensor_*`, `Runtime.deserialize_cuda_engine`) and cuda-python 12.x's runtime bindings
(every call returns `(cudaError_t, *results)`). No machine in this project had TensorRT: the GPU code
paths here have NOT run; everything that does not need a GPU (probes, buffer plans, the slab pool, the
copy plans) is tested on the CPU in tests/test_tensorrt.py.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from descore_sdk.errors import DeviceUnavailableError, InvalidInputError, MissingDependencyError, ModelLoadError

from .base import Runner, TensorMeta

INSTALL_HINT = "pip install 'descore-sdk[tensorrt]'"


# -- what is installed ------------------------------------------------------------------------------
def import_tensorrt():
    """The `tensorrt` module, or MissingDependencyError naming the extra."""
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError(
            f"TensorRT is not installed (the 'tensorrt' Python package could not be imported: {exc}). "
            f"Install it with: {INSTALL_HINT} (x86-64 / SBSA), or use the TensorRT that JetPack ships on a Jetson."
        ) from exc
    return tensorrt


def import_cudart():
    """cuda-python's runtime API module (`cuda.bindings.runtime`; `cuda.cudart` before cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise MissingDependencyError(
                f"cuda-python is not installed (needed for device memory and streams of the TensorRT backend). "
                f"Install it with: {INSTALL_HINT}"
            ) from exc
    return cudart


def check_cuda(result, what: str = "CUDA call"):
    """Unwrap a cuda-python `(err, *values)` result: the values, or DeviceUnavailableError with the error name."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if int(err) != 0:
        name = getattr(err, "name", str(err))
        raise DeviceUnavailableError(f"{what} failed with {name}.")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "8.9"
    total_memory: int  # bytes


@dataclass(frozen=True)
class TrtEnvironment:
    """The installed TensorRT and the GPU engines would run on (what engine compatibility is checked against)."""

    tensorrt_version: str
    gpu: GpuInfo

    @property
    def compute_capability(self) -> str:
        return self.gpu.compute_capability


def gpu_info(index: int = 0) -> GpuInfo:
    """Name, compute capability and memory of CUDA device `index`, or DeviceUnavailableError."""
    cudart = import_cudart()
    try:
        count = check_cuda(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except DeviceUnavailableError as exc:
        raise DeviceUnavailableError(
            f"No usable CUDA GPU: {exc} (no NVIDIA driver, or no GPU visible to this process). TensorRT engines "
            "need an NVIDIA GPU; score the bundle with onnxruntime on the CPU instead (device='cpu')."
        ) from None
    if not count:
        raise DeviceUnavailableError("No CUDA GPU is visible to this process (cudaGetDeviceCount = 0); "
                                     "TensorRT engines need an NVIDIA GPU.")
    if not 0 <= index < count:
        raise DeviceUnavailableError(f"CUDA device {index} does not exist; this machine has {count} (0–{count - 1}).")
    props = check_cuda(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(index, name, f"{props.major}.{props.minor}", int(props.totalGlobalMem))


def tensorrt_environment(index: int = 0) -> TrtEnvironment:
    """TensorRT version + GPU, raising MissingDependencyError / DeviceUnavailableError naming what is missing."""
    trt = import_tensorrt()
    return TrtEnvironment(str(trt.__version__), gpu_info(index))


# -- pure planning (tested on the CPU) ----------------------------------------------------------------
@dataclass(frozen=True)
class CachePlan:
    """Device layout of one KV-cache slab: every `past_key_values.*` tensor at its max shape, back to back.

    A cache of batch B and length P stores tensor i densely as (B, kv_heads, P, head_dim) from
    `offsets[i]` — the layout the engine reads (`past_*`) and writes (`present_*`, P + S columns)."""

    names: tuple[str, ...]
    kv_heads: int
    head_dim: int
    max_batch: int
    max_seq: int
    itemsize: int = 4  # float32 (a concatenating graph's cache I/O at every precision); 2 for an fp16/bf16 in-place cache
    alignment: int = 256  # cudaMalloc's alignment; TensorRT wants 256-byte aligned tensor addresses

    @property
    def tensor_bytes(self) -> int:
        raw = self.max_batch * self.kv_heads * self.max_seq * self.head_dim * self.itemsize
        return -(-raw // self.alignment) * self.alignment

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(i * self.tensor_bytes for i in range(len(self.names)))

    @property
    def slab_bytes(self) -> int:
        return self.tensor_bytes * len(self.names)

    def check_fits(self, batch: int, length: int) -> None:
        if batch > self.max_batch or length > self.max_seq:
            raise InvalidInputError(
                f"A KV cache of batch {batch} and length {length} exceeds the engine's limits (batch ≤ {self.max_batch}, "
                f"length ≤ {self.max_seq}); rebuild the engines with larger --max-batch / --max-seq, or score fewer "
                "videos per call."
            )


CACHE_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def cache_plan(manifest: dict, max_batch: int, max_seq: int) -> CachePlan:
    """The slab layout of a bundle's decoder (names, sizes and the cache's element type from the manifest:
    float32 for the concatenating graphs; an in-place graph's cache may be fp16/bf16)."""
    caches = [io for io in manifest["graphs"]["decoder"]["inputs"] if io["name"].startswith("past_key_values.")]
    names = tuple(io["name"] for io in caches)
    types = {str(io.get("dtype", "float32")) for io in caches}
    if len(types) > 1 or not types <= set(CACHE_ITEMSIZE):
        raise ModelLoadError(f"The decoder's KV cache has element types {sorted(types)}; re-export the bundle.")
    model = manifest["model"]
    return CachePlan(names, int(model["num_key_value_heads"]), int(model["head_dim"]), int(max_batch), int(max_seq),
                     itemsize=CACHE_ITEMSIZE[types.pop() if types else "float32"])


@dataclass(frozen=True)
class Copy2D:
    """One `cudaMemcpy2DAsync`: `height` rows of `width` bytes, from src (+pitch) to dst (+pitch), offsets in bytes."""

    src_offset: int
    src_pitch: int
    dst_offset: int
    dst_pitch: int
    width: int
    height: int


def slice_copies(batch: int, length: int, kv_heads: int, head_dim: int, itemsize: int, rows, start: int,
                 stop: int | None) -> tuple[list[Copy2D], int]:
    """Copies that turn one dense (batch, kv_heads, length, head_dim) tensor into the dense
    (len(rows), kv_heads, stop - start, head_dim) tensor of `rows` and columns [start, stop).
    Returns (copies, new length). Per kept row: kv_heads rows of (stop-start)·head_dim elements, one 2-D copy."""
    stop = length if stop is None else min(int(stop), length)
    start = max(0, int(start))
    if stop < start:
        raise InvalidInputError(f"Cache slice [{start}, {stop}) is empty-reversed.")
    new_length = stop - start
    row_bytes = head_dim * itemsize
    copies = []
    for out_b, b in enumerate(np.asarray(rows, dtype=np.int64).reshape(-1)):
        if not 0 <= b < batch:
            raise InvalidInputError(f"Cache row {b} is outside the batch of {batch}.")
        if new_length == 0:
            continue
        copies.append(Copy2D(
            src_offset=(int(b) * kv_heads * length + start) * row_bytes,
            src_pitch=length * row_bytes,
            dst_offset=out_b * kv_heads * new_length * row_bytes,
            dst_pitch=new_length * row_bytes,
            width=new_length * row_bytes,
            height=kv_heads,
        ))
    return copies, new_length


class KVSlabPool:
    """Slabs of device memory for KV caches, each sized by a `CachePlan`, leased and returned for reuse.

    The decode loop treats caches as values: a step turns cache A into cache B, a slice makes a new
    cache, and a rescore keeps the batch's cache alive while it decodes a one-row copy. Each cache
    (`DeviceKVCache`) leases one slab; when the Python object is dropped its slab goes back to the pool
    (weakref.finalize), so steady-state decoding cycles through two or three slabs and allocates nothing.
    `allocate(nbytes) -> address` / `free(address)` are injected: cudaMalloc/cudaFree on a GPU, a fake
    in the CPU tests."""

    def __init__(self, plan: CachePlan, allocate, free, *, max_slabs: int = 8):
        self.plan = plan
        self._allocate, self._free = allocate, free
        self.max_slabs = int(max_slabs)
        self._idle: list[int] = []
        self._all: list[int] = []

    @property
    def allocated(self) -> int:
        return len(self._all)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def lease(self) -> int:
        if self._idle:
            return self._idle.pop()
        if len(self._all) >= self.max_slabs:
            raise InvalidInputError(
                f"More than {self.max_slabs} KV caches are alive at once ({self.plan.slab_bytes / 2**20:.0f} MiB each); "
                "this is a decode-loop bug, not an input error."
            )
        address = self._allocate(self.plan.slab_bytes)
        self._all.append(address)
        return address

    def give_back(self, address: int) -> None:
        if address in self._all and address not in self._idle:
            self._idle.append(address)

    def new_cache(self, batch: int, length: int = 0) -> "DeviceKVCache":
        self.plan.check_fits(batch, length)
        return DeviceKVCache(self, self.lease(), batch, length)

    def release_all(self) -> None:
        for address in self._all:
            self._free(address)
        self._all, self._idle = [], []


class DeviceKVCache:
    """One cache value: a leased slab holding every layer's K/V densely as (batch, kv_heads, length, head_dim)."""

    def __init__(self, pool: KVSlabPool, address: int, batch: int, length: int):
        self.pool, self.address, self.batch, self.length = pool, address, int(batch), int(length)
        self._finalizer = weakref.finalize(self, pool.give_back, address)

    def tensor_address(self, i: int) -> int:
        return self.address + self.pool.plan.offsets[i]

    def shape(self) -> tuple[int, int, int, int]:
        plan = self.pool.plan
        return (self.batch, plan.kv_heads, self.length, plan.head_dim)

    def release(self) -> None:
        self._finalizer()


@dataclass(frozen=True)
class ProfileShapes:
    """One optimization profile: {input name: (min, opt, max) shapes}."""

    name: str
    shapes: dict = field(default_factory=dict)

    def contains(self, feed_shapes: dict) -> bool:
        for name, shape in feed_shapes.items():
            lo, _, hi = self.shapes[name]
            if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
                return False
        return True


def pick_profile(profiles: list[ProfileShapes], feed_shapes: dict) -> int:
    """Index of the first profile whose ranges hold every input shape (decode is listed first, so a
    single-token step with a cache uses it), or InvalidInputError naming the shapes and the limits."""
    for i, profile in enumerate(profiles):
        if profile.contains(feed_shapes):
            return i
    limits = "; ".join(f"{p.name}: " + ", ".join(f"{k} {v[0]}..{v[2]}" for k, v in p.shapes.items()) for p in profiles)
    raise InvalidInputError(
        f"Input shapes {feed_shapes} are outside every optimization profile of the engine ({limits}). Rebuild the "
        "engines with larger --max-batch / --max-seq / --max-frames / --max-pixels."
    )


# -- device memory (cuda-python; NOT run in this project) ---------------------------------------------
class CudaStream:
    """A non-default stream plus the host↔device copies the runners need."""

    def __init__(self):
        self.cudart = import_cudart()
        self.handle = check_cuda(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.ptr = int(self.handle)  # TensorRT takes the cudaStream_t as an integer
        self._in_flight: list[np.ndarray] = []

    def malloc(self, nbytes: int) -> int:
        return int(check_cuda(self.cudart.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, address: int) -> None:
        check_cuda(self.cudart.cudaFree(address), "cudaFree")

    def upload(self, address: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check_cuda(self.cudart.cudaMemcpyAsync(address, array.ctypes.data, array.nbytes, kind, self.handle), "cudaMemcpyAsync H2D")
        self._in_flight.append(array)  # the host array must outlive the async copy; released by synchronize()

    def download(self, address: int, shape, dtype) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check_cuda(self.cudart.cudaMemcpyAsync(out.ctypes.data, address, out.nbytes, kind, self.handle), "cudaMemcpyAsync D2H")
        return out

    def memset(self, address: int, nbytes: int) -> None:
        """Zero `nbytes` at `address` (cudaMemsetAsync; cuda-python 12.x runtime API)."""
        check_cuda(self.cudart.cudaMemsetAsync(address, 0, int(nbytes), self.handle), "cudaMemsetAsync")

    def copy_2d(self, dst: int, src: int, copy: Copy2D) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        check_cuda(self.cudart.cudaMemcpy2DAsync(dst + copy.dst_offset, copy.dst_pitch, src + copy.src_offset, copy.src_pitch,
                                                 copy.width, copy.height, kind, self.handle), "cudaMemcpy2DAsync")

    def synchronize(self) -> None:
        check_cuda(self.cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")
        self._in_flight = []

    def destroy(self) -> None:
        if self.handle is not None:
            self.cudart.cudaStreamDestroy(self.handle)
            self.handle = None


class CudaGraphCache:
    """Captured CUDA graphs of one execution context, keyed by everything a replay depends on: every
    input shape and every tensor address. A step whose key recurs is replayed with one `cudaGraphLaunch`
    instead of TensorRT's per-kernel launches.

    Policy: the first time a key is seen the step just runs; the second time it runs and is captured
    (TensorRT's guide: run enqueueV3 once after a shape change before capturing); from the third time it
    is replayed. Capturing costs more than one launch, so keys that never recur are never captured.

    When shapes allow: our decoder's past length P grows by one each step, so within one CoT no key
    repeats; keys recur across requests of equal prompt length (a benchmark, a fixed prompt template on
    same-sized videos, the KV slabs alternating in a fixed order). A static-shape decode (cache at max
    length, in-place update: TensorRT ≥ 10.15's IKVCacheUpdateLayer) would make every step one key; see
    export/DESIGN.md, "TensorRT"."""

    def __init__(self, stream, max_graphs: int = 256, max_seen: int = 4096):
        self.stream, self.max_graphs, self.max_seen = stream, int(max_graphs), int(max_seen)
        self._graphs: dict = {}
        self._seen: dict = {}
        self.replays = self.captures = self.plain = 0

    def run(self, key, execute) -> None:
        cudart = self.stream.cudart
        graph_exec = self._graphs.get(key)
        if graph_exec is not None:
            check_cuda(cudart.cudaGraphLaunch(graph_exec, self.stream.handle), "cudaGraphLaunch")
            self.replays += 1
            return
        execute()  # this step's work (and, before a capture, the warm-up launch TensorRT asks for)
        self.plain += 1
        if key not in self._seen:
            if len(self._seen) < self.max_seen:
                self._seen[key] = 1
            return
        if len(self._graphs) >= self.max_graphs:
            return
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check_cuda(cudart.cudaStreamBeginCapture(self.stream.handle, mode), "cudaStreamBeginCapture")
        try:
            execute()  # recorded, not run
        finally:
            graph = check_cuda(cudart.cudaStreamEndCapture(self.stream.handle), "cudaStreamEndCapture")
        self._graphs[key] = check_cuda(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        cudart.cudaGraphDestroy(graph)
        self.captures += 1

    def clear(self) -> None:
        for graph_exec in self._graphs.values():
            self.stream.cudart.cudaGraphExecDestroy(graph_exec)
        self._graphs, self._seen = {}, {}


# -- the runner -------------------------------------------------------------------------------------
def numpy_dtype(trt, dtype) -> np.dtype:
    """TensorRT DataType → numpy dtype (bf16 has no numpy type: graph I/O never uses it)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise ModelLoadError(f"An engine tensor has type {dtype}, which has no numpy equivalent; re-export the bundle "
                             "(graph I/O must be float32/int64).") from None


class TensorRTRunner(Runner):
    """One serialized TensorRT engine. `profiles`: the engine's optimization profiles in build order
    (`ProfileShapes`, from the bundle manifest); each gets its own execution context, and `infer` uses
    the first whose ranges hold the feed. Device input/output buffers are allocated at each tensor's
    largest shape once, on the first call, and reused."""

    name = "tensorrt"

    def __init__(self, path: str | Path, *, profiles: list[ProfileShapes], device_index: int = 0):
        super().__init__()
        self.path = Path(path)
        self.profiles = list(profiles)
        self.device_index = int(device_index)
        self.name = f"tensorrt:{self.path.name}"
        self.engine = self.contexts = self.stream = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name → (address, bytes)

    def _activate(self) -> None:
        trt = import_tensorrt()
        cudart = import_cudart()
        check_cuda(cudart.cudaSetDevice(self.device_index), "cudaSetDevice")
        if not self.path.is_file():
            raise ModelLoadError(f"TensorRT engine {self.path} not found; rebuild with: descore export BUNDLE OUT --format tensorrt")
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelLoadError(f"TensorRT could not deserialize {self.path} (built by another TensorRT version or for "
                                 "another GPU?); rebuild it on this machine with: descore export BUNDLE OUT --format tensorrt")
        if self.engine.num_optimization_profiles != len(self.profiles):
            raise ModelLoadError(f"{self.path} has {self.engine.num_optimization_profiles} optimization profiles but the "
                                 f"manifest lists {len(self.profiles)}; the engine does not belong to this bundle.")
        self.stream = CudaStream()
        self.contexts = []
        for index in range(len(self.profiles)):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, self.stream.ptr)
            self.contexts.append(context)
        self.stream.synchronize()
        self.graphs = [CudaGraphCache(self.stream) for _ in self.contexts]

    def _deactivate(self) -> None:
        for graphs in getattr(self, "graphs", []):
            graphs.clear()
        for address, _ in self._buffers.values():
            self.stream.free(address)
        self._buffers = {}
        self.contexts = self.engine = None
        if self.stream is not None:
            self.stream.destroy()
            self.stream = None

    def _io_names(self, mode) -> list[str]:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        return [n for n in names if self.engine.get_tensor_mode(n) == mode]

    def _metadata(self):
        trt = self.trt

        def meta(name):
            shape = tuple(int(d) if int(d) >= 0 else None for d in self.engine.get_tensor_shape(name))
            return TensorMeta(name, numpy_dtype(trt, self.engine.get_tensor_dtype(name)), shape)

        return ({n: meta(n) for n in self._io_names(trt.TensorIOMode.INPUT)},
                {n: meta(n) for n in self._io_names(trt.TensorIOMode.OUTPUT)})

    def buffer(self, name: str, nbytes: int) -> int:
        """A device buffer for tensor `name` of at least `nbytes`, allocated once at the largest size asked for."""
        address, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if address:
                self.stream.synchronize()
                self.stream.free(address)
            address, size = self.stream.malloc(nbytes), int(nbytes)
            self._buffers[name] = (address, size)
        return address

    def execute(self, shapes: dict, addresses: dict, *, graph: bool = False) -> int:
        """Set input shapes and every tensor address, run on the stream; returns the context index used.
        With `graph`, the step goes through the context's CudaGraphCache (key: shapes + addresses)."""
        index = pick_profile(self.profiles, shapes)
        context = self.contexts[index]
        for name, shape in shapes.items():
            if not context.set_input_shape(name, tuple(int(s) for s in shape)):
                raise InvalidInputError(f"TensorRT refused shape {tuple(shape)} for {name!r} (profile {self.profiles[index].name}).")
        for name, address in addresses.items():
            context.set_tensor_address(name, int(address))

        def run():
            if not context.execute_async_v3(self.stream.ptr):
                raise ModelLoadError(f"TensorRT execute_async_v3 failed on {self.path.name}; see the TensorRT log above.")

        if graph:
            key = (tuple(sorted((k, tuple(v)) for k, v in shapes.items())), tuple(sorted(addresses.items())))
            self.graphs[index].run(key, run)
        else:
            run()
        return index

    def output_shape(self, index: int, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.contexts[index].get_tensor_shape(name))

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        addresses = {}
        for name, value in feed.items():
            addresses[name] = self.buffer(name, value.nbytes)
            self.stream.upload(addresses[name], value)
        shapes = {name: value.shape for name, value in feed.items()}
        index = pick_profile(self.profiles, shapes)
        context = self.contexts[index]
        for name, shape in shapes.items():
            context.set_input_shape(name, tuple(int(s) for s in shape))
        outputs = {}
        for name, meta in self.output_metadata().items():
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * np.dtype(meta.dtype).itemsize
            addresses[name] = self.buffer(name, nbytes)
            outputs[name] = (shape, meta.dtype)
        self.execute(shapes, addresses)
        result = {name: self.stream.download(addresses[name], shape, dtype) for name, (shape, dtype) in outputs.items()}
        self.stream.synchronize()
        return result
