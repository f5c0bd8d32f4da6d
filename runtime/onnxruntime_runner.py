"""ONNX Runtime runner: one `.onnx` graph in an `onnxruntime.InferenceSession`.

    runner = OnnxRuntimeRunner("bundle/decoder.onnx", device="cpu", threads=4)
    runner = OnnxRuntimeRunner("bundle/decoder.onnx", device="cuda:0")       # needs onnxruntime-gpu
    runner = OnnxRuntimeRunner("bundle/decoder.onnx", device="tensorrt:0")   # TensorRT provider, cached engines
    runner = OnnxRuntimeRunner(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])

CPU works with the base install (`onnxruntime`). The CUDA execution provider ships in the separate
`onnxruntime-gpu` wheel (`pip install 'descore-sdk[gpu]'`); asking for it without that wheel raises
MissingDependencyError instead of silently running on the CPU. `InferenceSession.run` is thread-safe,
so one runner serves concurrent scoring threads.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from descore_sdk.errors import InvalidInputError, MissingDependencyError, ModelLoadError

from .base import Runner, TensorMeta

# ONNX Runtime's type strings → numpy dtypes (the types our graphs and likely lower-precision builds use).
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


# ONNX element types (TensorProto codes) of the tensors the runtime binds by address; IOBinding takes
# either a numpy type or this code, and only the code can say bfloat16.
ONNX_ELEMENT_TYPES = {"float32": 1, "float16": 10, "bfloat16": 16, "int64": 7, "int32": 6}


@dataclass(frozen=True)
class DeviceView:
    """Part of a device tensor another OrtValue owns: `shape` elements of ONNX type `element_type` at byte
    `offset` of `owner`'s buffer (e.g. one row of a (B, heads, capacity, dim) KV buffer). Bound by address
    (`IOBinding.bind_input` / `bind_output` with `buffer_ptr`), as input and output alike, so an op that
    writes in place writes into the owner; the owner must outlive the run (this object holds it)."""

    owner: object  # onnxruntime.OrtValue
    offset: int
    shape: tuple
    element_type: int

    @property
    def address(self) -> int:
        return int(self.owner.data_ptr()) + int(self.offset)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a base dependency
        raise MissingDependencyError(
            "The onnxruntime backend needs the 'onnxruntime' package; install it with: pip install descore-sdk "
            "(or pip install 'descore-sdk[gpu]' for CUDA)."
        ) from exc
    return onnxruntime


def default_trt_cache_dir() -> Path:
    """Where onnxruntime's TensorRT provider keeps built engines and its timing cache
    ($DESCORE_CACHE/ort-tensorrt, default ~/.cache/descore/ort-tensorrt)."""
    root = os.environ.get("DESCORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "descore")
    return Path(root) / "ort-tensorrt"


def resolve_providers(device: str = "cpu", providers: list | None = None, *, cuda_graph: bool = False,
                      fp16: bool = False, cache_dir: str | Path | None = None) -> list:
    """Execution providers for `device`, or `providers` as given (checked to exist in this build).

    device: "cpu"; "cuda" / "cuda:N" (CUDA provider, CPU fallback); "tensorrt" / "tensorrt:N" (TensorRT
    provider with engine and timing caches under `cache_dir`, then CUDA, then CPU for what TensorRT
    does not take). Option names as in onnxruntime's provider documentation (CUDA EP, TensorRT EP;
    onnxruntime 1.17 – 1.22 docs):
    - cuda_graph: CUDA provider `enable_cuda_graph`. Off by default because it is valid only when every
      node runs on CUDA and every run has the same input shapes at the same (IOBinding) addresses; our
      decoder's past length grows each step, so it applies to fixed-shape graphs only.
    - fp16: TensorRT provider `trt_fp16_enable` (lets TensorRT pick fp16 kernels in an fp32 graph; an fp16
      bundle is already fp16 and needs no flag).
    - The TensorRT engines built by onnxruntime are cached (`trt_engine_cache_enable`, keyed by the graph and
      the profile shapes) with a timing cache (`trt_timing_cache_enable`), so only the first session pays
      the build.
    Raises MissingDependencyError when the provider is not in this onnxruntime build (CPU-only wheel)."""
    ort = _onnxruntime()
    available = ort.get_available_providers()
    if providers is not None:
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        unknown = [n for n in names if n not in available]
        if unknown:
            _raise_unavailable(unknown, available)
        return list(providers)
    kind, _, index = str(device).partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    try:
        device_id = int(index or 0)
    except ValueError:
        raise InvalidInputError(f"Device {device!r} has no valid index; use e.g. 'cuda:0'.") from None
    cuda = ("CUDAExecutionProvider", {"device_id": device_id, **({"enable_cuda_graph": True} if cuda_graph else {})})
    if kind == "cuda":
        if "CUDAExecutionProvider" not in available:
            _raise_unavailable(["CUDAExecutionProvider"], available)
        return [cuda, "CPUExecutionProvider"]
    if kind == "tensorrt":
        if "TensorrtExecutionProvider" not in available:
            _raise_unavailable(["TensorrtExecutionProvider"], available)
        cache = Path(cache_dir) if cache_dir is not None else default_trt_cache_dir()
        trt = ("TensorrtExecutionProvider", {
            "device_id": device_id,
            "trt_fp16_enable": bool(fp16),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache / "engines"),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache / "timing"),
        })
        fallback = [cuda] if "CUDAExecutionProvider" in available else []
        return [trt, *fallback, "CPUExecutionProvider"]
    raise InvalidInputError(f"Unknown device {device!r} for onnxruntime; use 'cpu', 'cuda[:N]' or 'tensorrt[:N]'.")


def _raise_unavailable(wanted: list[str], available: list[str]) -> None:
    hint = " Install the GPU build with: pip install 'descore-sdk[gpu]' (it provides onnxruntime-gpu)." if any(
        "CUDA" in name or "Tensorrt" in name for name in wanted
    ) else ""
    raise MissingDependencyError(
        f"onnxruntime execution provider(s) {wanted} are not available in this install (available: {available}).{hint}"
    )


def _meta(node) -> TensorMeta:
    dtype = _ORT_TYPES.get(node.type)
    if dtype is None:
        raise ModelLoadError(f"Graph value {node.name!r} has type {node.type}, which the SDK does not handle.")
    shape = tuple(d if isinstance(d, (int, str)) else None for d in node.shape)
    return TensorMeta(node.name, np.dtype(dtype), shape)


class OnnxRuntimeRunner(Runner):
    """One ONNX graph in onnxruntime.

    device: "cpu" (default), "cuda" or "cuda:N"; providers: an explicit provider list instead.
    threads: intra-op threads (None: onnxruntime's default, one per physical core).
    shrink_arena: give the CPU arena back after every run (default; see `_activate`). False keeps
        onnxruntime's defaults: ~10–20% faster on a tiny model whose prompt lengths vary, at the cost of
        holding the largest call's memory for the session's life.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, device: str = "cpu", providers: list | None = None, threads: int | None = None,
                 shrink_arena: bool = True):
        super().__init__()
        self.shrink_arena = bool(shrink_arena)
        self.path = Path(path)
        self.device = device
        self.providers = providers
        self.threads = threads
        self.session = None
        self.name = f"onnxruntime:{self.path.name}"
        self._bindings = threading.local()  # per thread: (session, IOBinding, bound in-place buffers)
        self._outputs: dict[str, TensorMeta] = {}

    def _activate(self) -> None:
        ort = _onnxruntime()
        providers = resolve_providers(self.device, self.providers)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings such as "some nodes run on CPU" are noise for users
        if self.threads is not None:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        # Prompt lengths differ from call to call. Memory patterns are planned per input shape, and the CPU
        # arena keeps its largest extent: a service that once saw a 3,000-token prompt held that memory
        # for good (measured: RSS 140 MB → 1.3 GB over a 10,000-input fuzz run). So: no per-shape
        # patterns, and the CPU arena shrinks back after every run (onnxruntime's
        # "memory.enable_memory_arena_shrinkage" run option; it needs the arena enabled).
        options.enable_mem_pattern = not self.shrink_arena
        self._run_options = ort.RunOptions()
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        if self.shrink_arena and "CPUExecutionProvider" in names:
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        if names == ["CPUExecutionProvider"]:
            # No graph capture on the CPU provider. Said explicitly because onnxruntime's Python
            # `run_with_iobinding` (1.32) looks this entry up on every call and an absent entry costs
            # a raised-and-caught C++ exception (~0.05 ms, measured, per generated token).
            self._run_options.add_run_config_entry("gpu_graph_id", "-1")
        if not self.path.is_file():
            raise ModelLoadError(f"ONNX graph {self.path} not found; re-export the bundle.")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
            raise ModelLoadError(f"onnxruntime could not load {self.path}: {exc}") from None
        self._outputs = {node.name: _meta(node) for node in self.session.get_outputs()}

    def _deactivate(self) -> None:
        self.session = None
        self._bindings = threading.local()

    def _metadata(self):
        inputs = {node.name: _meta(node) for node in self.session.get_inputs()}
        outputs = {node.name: _meta(node) for node in self.session.get_outputs()}
        return inputs, outputs

    @property
    def active_providers(self) -> list[str]:
        self._require_active()
        return self.session.get_providers()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [node.name for node in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed, self._run_options)))

    def _infer_inplace(self, feed: dict[str, np.ndarray], inplace: dict[str, str]) -> dict[str, np.ndarray]:
        """IOBinding: the in-place outputs are bound to the very OrtValues of their inputs, so a graph
        whose op writes into its past buffer (GroupQueryAttention with a shared buffer) copies nothing.
        Other outputs are written into fresh numpy arrays bound before the run when their shapes follow
        from the inputs' (`logits` is [batch_size, vocab]), else onnxruntime allocates them.

        This runs once per generated token, so the per-call Python work is kept small: each thread keeps
        one IOBinding for the session, and an in-place buffer is wrapped and bound again only when the
        caller passes a different array (after the cache grows or rows leave the batch). CPU memory only
        (numpy-backed buffers)."""
        ort = _onnxruntime()
        state = getattr(self._bindings, "state", None)
        if state is None or state[0] is not self.session:
            state = (self.session, self.session.io_binding(), {}, [])
            self._bindings.state = state
        _, binding, bound, order = state  # order: output names in the order first bound (get_outputs' order)

        def bind_output(name: str, value=None) -> None:
            if name not in order:
                order.append(name)
            if value is None:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_ortvalue_output(name, value)

        targets = {source: output for output, source in inplace.items()}
        sizes: dict[str, int] = {}
        inputs = self.input_metadata()
        for name, value in feed.items():
            for size, dim in zip(value.shape, inputs[name].shape):
                if isinstance(dim, str):
                    sizes[dim] = size
            output = targets.get(name)
            if output is None:
                binding.bind_cpu_input(name, value)
            elif bound.get(name, (None,))[0] is not value:
                wrapped = ort.OrtValue.ortvalue_from_numpy(value)
                bound[name] = (value, wrapped)
                binding.bind_ortvalue_input(name, wrapped)
                bind_output(output, wrapped)
        returned: dict[str, np.ndarray] = {}
        allocated = []
        for meta in self._outputs.values():
            if meta.name in inplace:
                continue
            shape = tuple(sizes.get(d) if isinstance(d, str) else d for d in meta.shape)
            if all(isinstance(d, int) for d in shape):
                returned[meta.name] = np.empty(shape, dtype=meta.dtype)
                bind_output(meta.name, ort.OrtValue.ortvalue_from_numpy(returned[meta.name]))
            else:
                bind_output(meta.name)
                allocated.append(meta.name)
        self.session.run_with_iobinding(binding, self._run_options)
        if allocated:
            values = dict(zip(order, binding.get_outputs()))
            returned.update({name: values[name].numpy() for name in allocated})
        return returned

    def run_bound(self, host_inputs: dict[str, np.ndarray], device_inputs: dict, device_outputs: dict, *,
                  device_type: str = "cpu", device_id: int = 0) -> tuple[dict[str, np.ndarray], dict]:
        """One run with every input and output bound (IOBinding), for callers that keep tensors on a device.

        host_inputs: numpy arrays (copied to wherever the consuming node runs: a few KB per decode step);
        device_inputs: {name: OrtValue or DeviceView} already on the device (a numpy array is bound as a
        host input, e.g. an empty cache); device_outputs: {name: OrtValue or DeviceView} to write into (the
        same object as an input for an op that updates its input in place), or None to let onnxruntime
        allocate the output on `device_type`:`device_id` and return it. Every other output is bound to
        "cpu", so onnxruntime copies just those (logits, hidden, reward of the last position) to the host
        at the end of the run; `copy_outputs_to_cpu` would copy the device outputs too.
        Returns ({host output: np.ndarray}, {device output: OrtValue}); the second holds the outputs bound
        with None. API as in onnxruntime's Python IOBinding documentation (`bind_cpu_input`,
        `bind_ortvalue_input`, `bind_input(name, device_type, device_id, element_type, shape, buffer_ptr)`,
        `bind_ortvalue_output`, `bind_output`, `synchronize_inputs/outputs`, `run_with_iobinding`, `get_outputs`;
        1.17 – 1.32). `InferenceSession::Run(IOBinding)` itself does not synchronize the bound inputs (a TODO in
        onnxruntime's inference_session.cc), so this does, before the run and after it, as the C++ examples do."""
        self._require_active()
        expected = set(self.input_metadata())
        given = set(host_inputs) | set(device_inputs)
        if given != expected:
            raise InvalidInputError(f"{self.name}: bound inputs {sorted(given)} differ from the graph's {sorted(expected)}.")
        binding = self.session.io_binding()
        for name, value in host_inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in device_inputs.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            elif isinstance(value, DeviceView):
                binding.bind_input(name, device_type, device_id, value.element_type, list(value.shape), value.address)
            else:
                binding.bind_ortvalue_input(name, value)
        names = [node.name for node in self.session.get_outputs()]
        for name in names:
            value = device_outputs.get(name, "host")
            if isinstance(value, str):
                binding.bind_output(name, "cpu")
            elif value is None:
                binding.bind_output(name, device_type, device_id)
            elif isinstance(value, DeviceView):
                binding.bind_output(name, device_type, device_id, value.element_type, list(value.shape), value.address)
            else:
                binding.bind_ortvalue_output(name, value)
        try:
            binding.synchronize_inputs()
            self.session.run_with_iobinding(binding, self._run_options)
            binding.synchronize_outputs()
        except Exception as exc:  # onnxruntime's own Fail / InvalidArgument classes
            raise ModelLoadError(f"onnxruntime could not run {self.path} with device-bound tensors: {exc}") from None
        values = dict(zip(names, binding.get_outputs()))
        host = {name: values[name].numpy() for name in names if name not in device_outputs}
        allocated = {name: values[name] for name, value in device_outputs.items() if value is None}
        return host, allocated
