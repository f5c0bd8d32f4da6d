"""`descore serve`: DeScore as an HTTP reward service, on Ray Serve.

    descore serve MODEL [--replicas N] [--max-batch B] [--batch-wait-ms T] [--address RAY_ADDRESS]
                        [--port P] [--media-root DIR] [--max-queue Q] [--request-timeout-s S]

Two Ray Serve deployments (see `descore_sdk.serve_ray`):

    HTTP → Gateway (FastAPI: parse, check sizes and paths, time out)
             → ScorerReplica × N (one `Scorer` each; Ray Serve batching into `Scorer.score_batch`)

The gateway does the cheap, untrusted work: it reads the JSON, decodes base64 uploads, resolves a
requested path inside the media root (and nowhere else), bounds the body size, and turns every failure
into a JSON error with the `DescoreError` type and message. The replicas only score bytes. Keeping the
two apart is what lets the gateway answer 503 (retryable) when a replica dies mid-request, and 504
when a request outlives its timeout, instead of a bare 500 from Ray's proxy.

This module is the part that needs neither Ray nor torch: the settings, the path rule, the replica's
scoring core (grouping a batch by options, isolating a bad video), the model description and the error
body. `serve_ray` imports Ray Serve and FastAPI; `run_server` imports it lazily, so that without the
extra the user gets a `MissingDependencyError` naming `pip install 'descore-sdk[serve]'`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DescoreError, InvalidInputError

log = logging.getLogger("descore.serve")

# ScoreOptions fields a request may set per call. stop_tokens stay the server's (they are token
# strings checked against the tokenizer at load time).
REQUEST_OPTIONS = (
    "mode", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "fps",
    "min_frames", "max_frames", "max_pixels", "adaptive_threshold", "adaptive_band",
)


class ServiceError(DescoreError):
    """The reward service answered with an error (status, type and message from its JSON body).

    `retryable` is true for overload (503), timeouts (504, 408) and a replica lost mid-request: the
    same request may succeed later. Input errors (4xx) are not retryable."""

    def __init__(self, message: str, *, status: int = 0, error_type: str = "ServiceError", retryable: bool = False,
                 request_id: str | None = None):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.retryable = retryable
        self.request_id = request_id


@dataclass
class ServeConfig:
    """Settings of one `descore serve` deployment (the CLI flags)."""

    model: str
    replicas: int = 1
    max_batch: int = 8
    batch_wait_ms: float = 10.0
    address: str | None = None  # Ray cluster address; None starts a local Ray instance
    host: str = "127.0.0.1"
    port: int = 8000
    media_root: str | None = None  # folder whose files requests may name by path; None: uploads only
    max_queue: int = 64  # requests waiting for a replica, beyond those being batched; more → 503
    request_timeout_s: float = 120.0
    max_request_mb: float = 64.0
    backend: str = "auto"
    device: str = "cpu"
    threads: int | None = None  # onnxruntime intra-op threads per replica (default: replica_cpus)
    replica_cpus: float = 1.0
    score_options: dict = field(default_factory=dict)  # server-wide ScoreOptions defaults
    app_name: str = "descore"
    max_ongoing: int | None = None  # requests one replica holds (batching + waiting); default 2 × max_batch

    def __post_init__(self):
        for name in ("replicas", "max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be ≥ 1, got {getattr(self, name)}.")
        for name in ("batch_wait_ms", "replica_cpus"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be ≥ 0, got {getattr(self, name)}.")
        for name in ("request_timeout_s", "max_request_mb"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be > 0, got {getattr(self, name)}.")
        if self.media_root is not None:
            root = Path(self.media_root).expanduser()
            if not root.is_dir():
                raise InvalidInputError(f"--media-root {self.media_root} is not a folder; pass the folder whose videos requests may name.")
            self.media_root = os.path.realpath(root)
        unknown = set(self.score_options) - set(REQUEST_OPTIONS) - {"stop_tokens"}
        if unknown:
            raise InvalidInputError(f"Unknown score option(s) {sorted(unknown)}; known: {', '.join(REQUEST_OPTIONS)}.")

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    @property
    def replica_max_ongoing(self) -> int:
        # Default: one batch being scored and one forming, so a replica holds no more than it can batch next.
        return self.max_ongoing if self.max_ongoing is not None else 2 * self.max_batch

    def scorer_kwargs(self) -> dict:
        threads = self.threads if self.threads is not None else max(1, int(self.replica_cpus))
        return scorer_kwargs(self.model, self.backend, self.device, threads, self.score_options)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def scorer_kwargs(model: str, backend: str, device: str, threads: int, options: dict) -> dict:
    """`Scorer.from_pretrained` keywords; the thread count goes to onnxruntime only (a bundle)."""
    onnx = backend == "onnxruntime" or (backend == "auto" and (Path(model) / "manifest.json").is_file())
    return dict(backend=backend, device=device, backend_options={"threads": threads} if onnx else None, **options)


# -- paths ----------------------------------------------------------------------------------------------
class MediaPathError(InvalidInputError):
    """A requested path is not allowed (outside the media root, or no media root configured)."""


def resolve_media_path(requested: str, media_root: str | None) -> Path:
    """The real path of `requested` (relative to `media_root`, or absolute) if it is a file inside the
    real `media_root`; else `MediaPathError`.

    Both sides are resolved with `os.path.realpath`, so `..` components and symlinks (in the root or
    in the request) are followed before the check: a symlink inside the root that points outside it is
    refused, like `../x.mp4`."""
    if media_root is None:
        raise MediaPathError("This server reads no paths (it was started without --media-root); upload the video bytes instead.")
    if not isinstance(requested, str) or not requested.strip() or "\x00" in requested:
        raise MediaPathError(f"Invalid video path {requested!r}.")
    root = os.path.realpath(media_root)
    real = os.path.realpath(os.path.join(root, requested))  # join keeps an absolute `requested` as is
    if os.path.commonpath([real, root]) != root or real == root:
        raise MediaPathError(f"Video path {requested!r} is outside the server's media root; name a file under it.")
    if not os.path.isfile(real):
        raise MediaPathError(f"Video path {requested!r} does not exist under the server's media root.")
    return Path(real)


# -- the replica's scoring core ------------------------------------------------------------------------
def error_body(exc: BaseException, *, retryable: bool = False) -> dict:
    """The JSON error of a failed video or request: the DescoreError's class name and message."""
    if isinstance(exc, DescoreError):
        return {"type": type(exc).__name__, "message": str(exc), "retryable": retryable}
    return {"type": "InternalError", "message": f"{type(exc).__name__} while scoring; see the server log.", "retryable": retryable}


def _options_key(options: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))


class ReplicaCore:
    """One Scorer and the logic a replica runs on a batch of requests (no Ray here).

    An item is {"video": bytes, "prompt": str, "options": {ScoreOptions overrides}}. Items with the
    same options go to `Scorer.score_batch` together; when that raises (one undecodable upload fails
    the whole call), the items are scored one by one so only the bad one gets the error."""

    def __init__(self, model: str, scorer_kwargs: dict, max_batch: int):
        from .scorer import Scorer

        self.scorer = Scorer.from_pretrained(model, **scorer_kwargs)
        self.max_batch = max_batch

    def check_options(self, options: dict) -> None:
        unknown = set(options) - set(REQUEST_OPTIONS)
        if unknown:
            raise InvalidInputError(f"Unknown option(s) {sorted(unknown)}; a request may set: {', '.join(REQUEST_OPTIONS)}.")
        self.scorer.options.replace(**options)  # ScoreOptions.validate raises InvalidInputError

    def score_items(self, items: list[dict]) -> list[dict]:
        """One result per item: {"result": ScoreResult dict} or {"error": error_body}."""
        out: list[dict | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            try:
                self.check_options(item["options"])
            except DescoreError as exc:
                out[i] = {"error": error_body(exc)}
                continue
            groups.setdefault(_options_key(item["options"]), []).append(i)
        for indices in groups.values():
            options = items[indices[0]]["options"]
            try:
                results = self.scorer.score_batch([items[i]["video"] for i in indices], [items[i]["prompt"] for i in indices],
                                                  batch_size=self.max_batch, **options)
                for i, result in zip(indices, results):
                    out[i] = {"result": result.to_dict()}
            except Exception:  # noqa: BLE001 - isolate the failing item below
                for i in indices:
                    out[i] = self._score_alone(items[i])
        return out

    def _score_alone(self, item: dict) -> dict:
        try:
            return {"result": self.scorer.score(item["video"], item["prompt"], **item["options"]).to_dict()}
        except DescoreError as exc:
            return {"error": error_body(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug must not take the replica down; it is logged
            log.exception("scoring failed")
            return {"error": error_body(exc)}

    def compare(self, item: dict) -> dict:
        try:
            self.check_options(item["options"])
            pair = self.scorer.compare(item["video_a"], item["video_b"], item["prompt"], **item["options"])
            return {"result": pair.to_dict()}
        except DescoreError as exc:
            return {"error": error_body(exc)}
        except Exception as exc:  # noqa: BLE001
            log.exception("compare failed")
            return {"error": error_body(exc)}

    def info(self) -> dict:
        return model_info(self.scorer)


def model_info(scorer) -> dict:
    """What a client needs to know about the served model."""
    config = scorer.config
    backend = scorer.backend
    return {
        "family": config.family,
        "method": config.method,
        "dimensions": list(config.dimension_names),
        "layout": {
            "modes": ["think", "fast", "adaptive"] if config.method != "jrm" else ["fast"],
            "default_mode": scorer.options.mode,
            "reward_token": config.reward_token,
            "max_context": config.max_context,
            "max_new_tokens": config.max_new_tokens,
            "sampling": dataclasses.asdict(config.sampling),
        },
        "backend": backend.name,
        "precision": _precision(backend),
        "supports_batch": bool(getattr(backend, "supports_batch", False)),
        "sdk_version": _sdk_version(),
    }


def _precision(backend) -> str:
    bundle = getattr(backend, "bundle", None)
    if bundle is not None:
        return str(bundle.manifest.get("embedding", {}).get("dtype", "float32"))
    model = getattr(backend, "model", None)
    dtype = getattr(model, "dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else "unknown"


def _sdk_version() -> str:
    from ._version import __version__

    return __version__


# -- entry point ----------------------------------------------------------------------------------------
def run_server(config: ServeConfig, *, block: bool = True):
    """Start (or join) Ray, deploy the service and, with `block`, serve until SIGINT/SIGTERM, then
    drain: Ray Serve lets each replica finish the requests it holds (graceful shutdown) before exit.
    Returns the base URL when `block` is False."""
    from . import serve_ray  # noqa: F401 - raises MissingDependencyError without the extra

    return serve_ray.run(config, block=block)


__all__ = ["ServeConfig", "ServiceError", "MediaPathError", "resolve_media_path", "ReplicaCore", "model_info", "run_server",
           "REQUEST_OPTIONS", "error_body"]
