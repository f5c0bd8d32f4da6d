"""The device-side KV-cache copy graph the onnxruntime runtime ships (descore_sdk/assets/kv_ops/*.onnx).

    python -m descore_sdk.export.kv_ops          # rewrites the assets (tests/test_ort_device_cache.py checks them)

When the decode loop keeps its KV cache on a device (`runtime/ort_device_cache.py`), dropping finished
rows, cutting columns and growing a shared buffer must happen there too: onnxruntime's Python API has
no device-to-device slice copy, and the runtime does not depend on a CUDA array library. So the copy is
itself a tiny ONNX graph run by onnxruntime on the same execution provider as the decoder, with its
input and output bound to device memory (IOBinding):

    Y = Pad(Slice(Gather(X, rows, axis=0), starts, ends, axes=[2]), pads)      # X: (B, heads, seq, dim)

One graph per cache element type (graph inputs are typed). The runtime imports no `onnx`, so the graphs
are built here (export extra) and committed as package data.
"""

from __future__ import annotations

from pathlib import Path

KV_OPS_TYPES = ("float32", "float16", "bfloat16")
KV_OPS_OPSET = 18  # Pad-18 / Slice-13 / Gather-13 (all three element types); onnxruntime ≥ 1.14 runs opset 18


def kv_ops_dir() -> Path:
    """descore_sdk/assets/kv_ops of this source tree (the generator runs from a checkout)."""
    from importlib import resources

    return Path(str(resources.files("descore_sdk.assets") / "kv_ops"))


def kv_ops_model(element_type: str):
    """The copy graph for caches of `element_type` ("float32", "float16" or "bfloat16") as an onnx ModelProto."""
    import onnx
    from onnx import TensorProto, helper

    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}[element_type]
    dims = ["batch", "heads", "seq", "dim"]
    nodes = [
        helper.make_node("Gather", ["x", "rows"], ["gathered"], axis=0),
        helper.make_node("Slice", ["gathered", "starts", "ends", "axes"], ["sliced"]),
        helper.make_node("Pad", ["sliced", "pads"], ["y"], mode="constant"),  # zeros: new columns start clean
    ]
    graph = helper.make_graph(
        nodes,
        f"kv_ops_{element_type}",
        inputs=[
            helper.make_tensor_value_info("x", elem, dims),
            helper.make_tensor_value_info("rows", TensorProto.INT64, ["out_batch"]),
            helper.make_tensor_value_info("starts", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("ends", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("pads", TensorProto.INT64, [8]),
        ],
        outputs=[helper.make_tensor_value_info("y", elem, ["out_batch", "heads", "out_seq", "dim"])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", KV_OPS_OPSET)], producer_name="descore-sdk")
    model.ir_version = 8  # readable by onnxruntime ≥ 1.14 (the SDK needs ≥ 1.17)
    onnx.checker.check_model(model, full_check=True)
    return model


def write_kv_ops(folder: str | Path | None = None) -> list[Path]:
    folder = Path(folder) if folder is not None else kv_ops_dir()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for element_type in KV_OPS_TYPES:
        path = folder / f"kv_ops_{element_type}.onnx"
        path.write_bytes(kv_ops_model(element_type).SerializeToString())
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_kv_ops():
        print(path)
