"""descore_sdk.export: torch → ONNX graphs → bundles (needs the 'export' extra).

Imports are lazy so `import descore_sdk.export` does not pull in torch until an exporter is used.
"""

__all__ = ["export_onnx", "ExportedGraphs"]


def __getattr__(name):
    if name in __all__:
        from . import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module 'descore_sdk.export' has no attribute {name!r}")
