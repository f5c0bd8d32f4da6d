"""The memory-bandwidth roofline of a decode step, for `descore bench`.

One decode step of a batch-1 decoder reads every weight once plus the whole KV cache, and does ~2 FLOPs
per weight, far below what the cores can compute: it is bound by memory read bandwidth. So

    roofline ms/token = bytes read per step ÷ read bandwidth,    fraction = roofline ms ÷ measured ms

- read bandwidth: measured in the same run by `measure_bandwidth`: an array (1 GiB by default, much
  larger than the caches) split into one contiguous slice per thread, each thread taking the max of its
  slice as uint64 with numpy (a pure streaming read: integer compares, no floating-point dependency
  chain; numpy releases the GIL inside the reduction), all threads at once; best of `repeats`. A
  float32 `sum` under-reads: 22.8 vs 33.4 GB/s on one thread here, and onnxruntime-genai's fp32 decode
  step implied ~35 GB/s. The probe uses as many threads as the decoder.
- bytes per step: the decoder graph's initializers at their stored precision (MatMulNBits' packed
  int8/int4 weights + their scales and zero points, fp32 everything else), read from the ONNX file
  without loading the weights, plus the KV cache at the measured context (2 × layers × KV heads ×
  head_dim × context × bytes per element × batch). The embedding table lives on the host and one row
  per step is read from it (counted too, it is tiny).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

# ONNX TensorProto data types → bytes per element (int4/uint4: half a byte).
_ONNX_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2, 21: 0.5, 22: 0.5}


def measure_bandwidth(threads: int, *, size_bytes: int = 1 << 30, repeats: int = 5) -> dict:
    """Read bandwidth (GB/s, 1e9 bytes) of `threads` threads summing disjoint slices of one array."""
    threads = max(1, int(threads))
    count = size_bytes // 8
    data = np.ones(count, dtype=np.uint64)  # written once: every page is resident before timing
    bounds = np.linspace(0, count, threads + 1).astype(np.int64)
    slices = [data[bounds[i]:bounds[i + 1]] for i in range(threads)]
    sums = [0.0] * threads
    rates = []
    for _ in range(repeats):
        barrier = threading.Barrier(threads + 1)

        def work(i: int) -> None:
            barrier.wait()
            sums[i] = int(slices[i].max())

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        start = time.perf_counter()
        barrier.wait()
        for worker in workers:
            worker.join()
        rates.append(data.nbytes / (time.perf_counter() - start) / 1e9)
    del data, slices
    return {"gb_per_s": max(rates), "median_gb_per_s": float(np.median(rates)), "threads": threads,
            "bytes": int(count * 8), "repeats": repeats,
            "method": "numpy uint64 max over disjoint slices, one thread each, best of repeats"}


def graph_weight_bytes(path: str | Path) -> int | None:
    """Bytes of the initializers of an ONNX graph at their stored types (None without the onnx package).
    Reads the graph only, never the external weight file."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    total = 0.0
    for init in model.graph.initializer:
        total += int(np.prod(init.dims, dtype=np.int64)) * _ONNX_ITEMSIZE.get(init.data_type, 4)
    return int(total)


def kv_cache_bytes(*, layers: int, kv_heads: int, head_dim: int, context: int, batch: int = 1, itemsize: int = 4) -> int:
    """Keys and values of every layer at `context` positions."""
    return 2 * layers * kv_heads * head_dim * context * batch * itemsize


def decoder_kv_shape(manifest: dict) -> dict:
    """{"layers", "kv_heads", "head_dim", "hidden"} of a bundle's decoder, from its manifest's inputs."""
    inputs = manifest["graphs"]["decoder"]["inputs"]
    keys = [i for i in inputs if i["name"].startswith("past_key_values.") and i["name"].endswith(".key")]
    embeds = next(i for i in inputs if i["name"] == "inputs_embeds")
    return {"layers": len(keys), "kv_heads": int(keys[0]["shape"][1]), "head_dim": int(keys[0]["shape"][3]),
            "hidden": int(embeds["shape"][-1])}


def roofline(*, weight_bytes: float, kv_bytes: float, other_bytes: float, ms_per_token: float | None,
             bandwidth_gb_per_s: float) -> dict:
    """The roofline of one decode step and the fraction of it achieved at `ms_per_token`."""
    total = float(weight_bytes) + float(kv_bytes) + float(other_bytes)
    roof_ms = total / (bandwidth_gb_per_s * 1e9) * 1e3
    achieved = None if not ms_per_token else total / (ms_per_token / 1e3) / 1e9
    return {
        "bytes_per_step": total,
        "weight_bytes": float(weight_bytes),
        "kv_bytes": float(kv_bytes),
        "other_bytes": float(other_bytes),
        "bandwidth_gb_per_s": float(bandwidth_gb_per_s),
        "roofline_ms_per_token": roof_ms,
        "achieved_gb_per_s": achieved,
        "roofline_fraction": None if not ms_per_token else roof_ms / ms_per_token,
    }
