"""The runner contract every inference backend implements (after Polygraphy's runners).

A runner wraps ONE graph (an ONNX file, a TensorRT engine, ...):

    runner = OnnxRuntimeRunner("decoder.onnx")
    with runner:                                  # activate() ... deactivate()
        runner.input_metadata()                   # {name: TensorMeta(dtype, shape)}
        outputs = runner.infer({"inputs_embeds": x, ...})    # {output name: np.ndarray}

`infer` checks the feed against `input_metadata()` before running — every input present, no extra
ones, dtype and rank as declared, fixed sizes equal, and one symbolic size (`batch_size`) the same in
every input that names it — and raises `InvalidInputError` saying which input is wrong. A backend
then never sees a malformed feed, and its own (often cryptic) shape errors never reach users.

numpy only: the runtime never imports torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from descore_sdk.errors import InvalidInputError

Dim = int | str | None  # a fixed size, a symbolic size name, or unknown


@dataclass(frozen=True)
class TensorMeta:
    """One graph input/output: numpy dtype and shape (`int` fixed, `str` named dynamic, None unknown)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name}[{dims}]"


def check_feed(metadata: dict[str, TensorMeta], feed: dict[str, np.ndarray], graph: str = "graph") -> None:
    """Raise InvalidInputError unless `feed` matches `metadata` (see module docstring)."""
    missing = [name for name in metadata if name not in feed]
    if missing:
        raise InvalidInputError(f"The {graph} feed lacks input(s) {missing}; it needs {list(metadata)}.")
    extra = [name for name in feed if name not in metadata]
    if extra:
        raise InvalidInputError(f"The {graph} feed has unknown input(s) {extra}; the graph takes {list(metadata)}.")
    named: dict[str, tuple[int, str]] = {}
    for name, meta in metadata.items():
        value = feed[name]
        if not isinstance(value, np.ndarray):
            raise InvalidInputError(f"{graph} input {name!r} must be a numpy array, got {type(value).__name__}.")
        if value.dtype != meta.dtype:
            raise InvalidInputError(
                f"{graph} input {name!r} has dtype {value.dtype}, but the graph declares {meta.describe()}; "
                f"convert it with .astype(np.{np.dtype(meta.dtype).name})."
            )
        if value.ndim != len(meta.shape):
            raise InvalidInputError(
                f"{graph} input {name!r} has shape {value.shape} (rank {value.ndim}), but the graph declares {meta.describe()}."
            )
        for axis, (size, dim) in enumerate(zip(value.shape, meta.shape)):
            if isinstance(dim, int) and size != dim:
                raise InvalidInputError(
                    f"{graph} input {name!r} has size {size} on axis {axis}, but the graph declares {meta.describe()}."
                )
            if isinstance(dim, str) and dim.isidentifier():  # a plain symbol, not an expression like "a + b"
                seen = named.setdefault(dim, (size, name))
                if seen[0] != size:
                    raise InvalidInputError(
                        f"{graph} inputs disagree on {dim!r}: {seen[1]!r} has {seen[0]} but {name!r} has {size}."
                    )


def _feed_plan(metadata: dict[str, TensorMeta]) -> tuple:
    """`check_feed`'s checks as flat tuples, built once per graph: the decode loop feeds a graph once per
    generated token, and the per-call Python cost is part of every token's latency."""
    plan = []
    for name, meta in metadata.items():
        fixed = tuple((axis, dim) for axis, dim in enumerate(meta.shape) if isinstance(dim, int))
        named = tuple((axis, dim) for axis, dim in enumerate(meta.shape) if isinstance(dim, str) and dim.isidentifier())
        plan.append((name, meta.dtype, len(meta.shape), fixed, named))
    return len(metadata), tuple(plan)


def _feed_ok(plan: tuple, feed: dict[str, np.ndarray]) -> bool:
    """True when `feed` passes every check of `check_feed` (which then need not run to raise)."""
    count, checks = plan
    if len(feed) != count:
        return False
    sizes: dict[str, int] = {}
    for name, dtype, ndim, fixed, named in checks:
        value = feed.get(name)
        if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != ndim:
            return False
        shape = value.shape
        for axis, dim in fixed:
            if shape[axis] != dim:
                return False
        for axis, dim in named:
            if sizes.setdefault(dim, shape[axis]) != shape[axis]:
                return False
    return True


class Runner(ABC):
    """One graph, run on one backend. Subclasses implement `_activate`, `_deactivate`, `_metadata`,
    `_infer`; callers use `activate`/`deactivate` (or `with runner:`), `input_metadata` and `infer`."""

    name: str = "runner"

    def __init__(self):
        self._active = False
        self._inputs: dict[str, TensorMeta] | None = None
        self._plan: tuple | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> "Runner":
        """Load the graph (build the session/engine). Idempotent."""
        if not self._active:
            self._activate()
            self._inputs = None
            self._plan = None
            self._active = True
        return self

    def deactivate(self) -> None:
        """Release the session/engine and its memory. Idempotent."""
        if self._active:
            self._deactivate()
            self._active = False
            self._inputs = None
            self._plan = None

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- I/O -----------------------------------------------------------------------------------------
    def input_metadata(self) -> dict[str, TensorMeta]:
        """Inputs in graph order, `{name: TensorMeta}`."""
        self._require_active()
        if self._inputs is None:
            self._inputs = self._metadata()[0]
        return self._inputs

    def output_metadata(self) -> dict[str, TensorMeta]:
        """Outputs in graph order, `{name: TensorMeta}`."""
        self._require_active()
        return self._metadata()[1]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on `feed` (checked first) and return every output by name."""
        self._check(feed)
        return self._infer(feed)

    def infer_inplace(self, feed: dict[str, np.ndarray], inplace: dict[str, str]) -> dict[str, np.ndarray]:
        """`infer`, but each output named in `inplace` ({output: input}) is written into that input's
        array instead of being returned (a KV cache updated in place). Runners that can bind outputs to
        caller memory (onnxruntime's IOBinding) copy nothing; the fallback copies the output back."""
        self._check(feed)
        for target in inplace.values():
            if not feed[target].flags.c_contiguous or not feed[target].flags.writeable:
                raise InvalidInputError(f"{self.name}: in-place input {target!r} must be a writeable C-contiguous array.")
        return self._infer_inplace(feed, inplace)

    def _infer_inplace(self, feed: dict[str, np.ndarray], inplace: dict[str, str]) -> dict[str, np.ndarray]:
        outputs = self._infer(feed)
        for output, target in inplace.items():
            np.copyto(feed[target], outputs.pop(output))
        return outputs

    def _check(self, feed: dict[str, np.ndarray]) -> None:
        self._require_active()
        if self._plan is None:
            self._plan = _feed_plan(self.input_metadata())
        if not _feed_ok(self._plan, feed):
            check_feed(self.input_metadata(), feed, self.name)  # raises, saying what is wrong

    def _require_active(self) -> None:
        if not self._active:
            raise InvalidInputError(f"{self.name} is not active; call activate() (or use `with runner:`) first.")

    # -- backend hooks -------------------------------------------------------------------------------
    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _metadata(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        """(inputs, outputs) metadata, read from the loaded graph."""

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
