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

__all__ = [
    "__version__",
    "DescoreError",
    "InvalidInputError",
    "VideoDecodeError",
    "ModelLoadError",
    "BundleIntegrityError",
    "MissingDependencyError",
    "ContextLengthError",
    "DataError",
]
