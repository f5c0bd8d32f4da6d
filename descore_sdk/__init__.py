"""descore-sdk: score generated videos with DeScore reward models ("think, then score").

    from descore_sdk import Scorer
    scorer = Scorer.from_pretrained("path/to/checkpoint_or_bundle")
    result = scorer.score("video.mp4", "a cat surfing a wave")

This package imports no torch; the torch reference backend and the training/export stages import it
lazily when used.
"""

from ._version import __version__
from .errors import (
    BundleIntegrityError,
    ContextLengthError,
    DataError,
    DescoreError,
    InvalidInputError,
    MissingDependencyError,
    ModelLoadError,
    VideoDecodeError,
)

_LAZY = {
    "Scorer": "scorer",
    "ScoreResult": "results",
    "PairResult": "results",
    "ScoreOptions": "options",
    "DescoreConfig": "config",
}


def __getattr__(name):
    # Lazy so that `import descore_sdk` stays cheap (PyAV and onnxruntime load on first use).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'descore_sdk' has no attribute {name!r}")


__all__ = [
    "__version__",
    "Scorer",
    "ScoreResult",
    "PairResult",
    "ScoreOptions",
    "DescoreConfig",
    "DescoreError",
    "InvalidInputError",
    "VideoDecodeError",
    "ModelLoadError",
    "BundleIntegrityError",
    "MissingDependencyError",
    "ContextLengthError",
    "DataError",
]
