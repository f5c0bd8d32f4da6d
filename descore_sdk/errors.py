"""One exception hierarchy for everything the SDK reports to users.

Every message says what was wrong and what to do about it. Callers catch `DescoreError` to handle any
SDK failure; the CLI prints the message without a traceback.
"""

from __future__ import annotations


class DescoreError(Exception):
    """Base class of every error the SDK raises on purpose."""


class InvalidInputError(DescoreError, ValueError):
    """An argument or input (prompt, option, array) is not acceptable."""


class VideoDecodeError(DescoreError):
    """A video could not be opened or decoded into frames."""


class ModelLoadError(DescoreError):
    """A checkpoint or bundle could not be loaded."""


class BundleIntegrityError(ModelLoadError):
    """An exported bundle is tampered, incomplete, or from an incompatible SDK version or family."""


class MissingDependencyError(DescoreError, ImportError):
    """An optional package needed for the requested feature is not installed."""


class DeviceUnavailableError(DescoreError):
    """The requested accelerator (a CUDA GPU) is not present or not usable on this machine."""


class EngineCompatibilityError(ModelLoadError):
    """A TensorRT engine was built for another TensorRT version or GPU; it must be rebuilt on this one."""


class ContextLengthError(InvalidInputError):
    """The prompt (with the video tokens) does not fit in the model's context."""


class DataError(DescoreError):
    """A training or evaluation data file is malformed or references unusable videos."""


def require(module: str, extra: str, feature: str):
    """Import `module` or raise a MissingDependencyError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError(
            f"{feature} needs the '{module}' package, which is not installed. "
            f"Install it with: pip install 'descore-sdk[{extra}]'"
        ) from exc


class ClusterError(DescoreError):
    """A Ray cluster could not be reached or joined (wrong address, not running, refused the client)."""
