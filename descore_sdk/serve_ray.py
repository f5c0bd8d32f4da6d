"""The Ray Serve application behind `descore serve` (see `descore_sdk.serve` for the design).

Imports Ray Serve and FastAPI at module level: import it only through `descore_sdk.serve.run_server`
(or after checking the extra is installed).

HTTP API (JSON; the OpenAPI description is served at /openapi.json, a browsable one at /docs):

    GET  /healthz             liveness of the gateway
    GET  /readyz              200 once a replica answers, else 503
    GET  /v1/model            family, dimensions, layout, backend, precision
    POST /v1/score            {"prompt", "video": {"data": base64} | {"path": p}, "options": {...}}
    POST /v1/score_batch      {"prompts": str | [str], "videos": [video, ...], "options": {...}}
    POST /v1/compare          {"prompt", "video_a", "video_b", "options": {...}}

Every answer carries "request_id" (the X-Request-Id header when given, else a new one, echoed in the
X-Request-Id response header). Errors are {"error": {"type", "message", "retryable"}, "request_id"}.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.
import asyncio
import base64
import binascii
import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Union

from .errors import InvalidInputError, require
from .serve import REQUEST_OPTIONS, MediaPathError, ReplicaCore, ServeConfig, error_body, resolve_media_path

ray = require("ray", "serve", "descore serve")
serve = require("ray.serve", "serve", "descore serve")
fastapi = require("fastapi", "serve", "descore serve")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402
from ray.exceptions import RayActorError  # noqa: E402
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError  # noqa: E402

log = logging.getLogger("descore.serve")


# -- request bodies (they are the OpenAPI schema) --------------------------------------------------------
class Video(BaseModel):
    """A video: its bytes, base64-encoded, or a path under the server's media root."""

    model_config = ConfigDict(extra="forbid")
    data: Optional[str] = Field(None, description="the video file's bytes, base64-encoded")
    path: Optional[str] = Field(None, description="a file under the server's --media-root (relative to it, or absolute)")
    name: Optional[str] = Field(None, description="echoed as the result's `video` (default: the path, or <N bytes>)")


class Options(BaseModel):
    """Per-request ScoreOptions overrides (see `descore_sdk.ScoreOptions`); unset fields keep the server's."""

    model_config = ConfigDict(extra="forbid")
    mode: Optional[str] = Field(None, description="think, fast or adaptive")
    max_new_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    seed: Optional[int] = None
    fps: Optional[float] = None
    min_frames: Optional[int] = None
    max_frames: Optional[int] = None
    max_pixels: Optional[int] = None
    adaptive_threshold: Optional[float] = None
    adaptive_band: Optional[tuple[float, float]] = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    video: Video
    options: Optional[Options] = None
    timeout_s: Optional[float] = Field(None, gt=0, description="this request's timeout (at most the server's --request-timeout-s)")


class ScoreBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: Union[str, list[str]] = Field(..., description="one prompt for all videos, or one per video")
    videos: list[Video]
    options: Optional[Options] = None
    timeout_s: Optional[float] = Field(None, gt=0, description="this request's timeout (at most the server's --request-timeout-s)")


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    video_a: Video
    video_b: Video
    options: Optional[Options] = None
    timeout_s: Optional[float] = Field(None, gt=0, description="this request's timeout (at most the server's --request-timeout-s)")


class RequestFailed(Exception):
    """Raised inside the gateway to answer with `status` and an error body."""

    def __init__(self, status: int, body: dict, headers: Optional[dict] = None):
        super().__init__(body.get("message"))
        self.status, self.body, self.headers = status, body, headers or {}


# -- replicas ------------------------------------------------------------------------------------------
@serve.deployment
class ScorerReplica:
    """One Scorer; requests are batched by Ray Serve into `ReplicaCore.score_items`."""

    def __init__(self, config: dict):
        settings = ServeConfig(**config)
        self.core = ReplicaCore(settings.model, settings.scorer_kwargs(), settings.max_batch)
        # One scoring thread: the Scorer is used by one batch at a time, and the replica's event loop
        # stays free to accept requests (and answer health checks) while a batch runs.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="descore-score")
        self.score.set_max_batch_size(settings.max_batch)
        self.score.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000.0)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def score(self, items: list[dict]) -> list[dict]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.core.score_items, items)

    async def compare(self, item: dict) -> dict:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.core.compare, item)

    def info(self) -> dict:
        return self.core.info()

    def check_health(self) -> None:
        if self.core.scorer is None:  # pragma: no cover - the Scorer is built in __init__ or the replica fails
            raise RuntimeError("no scorer loaded")


# -- gateway -------------------------------------------------------------------------------------------
app = FastAPI(
    title="DeScore reward service",
    description="Scores generated videos against their prompts with a DeScore reward model. "
                "Results carry the fields of descore_sdk.ScoreResult plus request_id.",
    version="1",
)


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given[:128] if given.strip() else uuid.uuid4().hex


def _error(status: int, body: dict, request_id: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": body, "request_id": request_id}, status_code=status,
                        headers={"X-Request-Id": request_id, **(headers or {})})


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError):
    # FastAPI's default is a 422 listing pydantic internals; answer like every other input error.
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                         for e in exc.errors()[:10])
    message = f"Malformed request ({problems}). See /openapi.json for the request schema."
    return _error(400, error_body(InvalidInputError(message)), _request_id(request))


@app.exception_handler(RequestFailed)
async def _failed(request: Request, exc: RequestFailed):
    return _error(exc.status, exc.body, _request_id(request), exc.headers)


@app.exception_handler(Exception)
async def _internal(request: Request, exc: Exception):  # pragma: no cover - a bug; logged, never a traceback to clients
    log.exception("request failed")
    return _error(500, error_body(exc), _request_id(request))


# The gateway actor's environment carries the limit (set in `build_app`): the middleware lives on the
# module-level app, which Serve ships to the actor separately from the Gateway instance.
BODY_LIMIT_ENV = "DESCORE_SERVE_MAX_BODY_BYTES"


@app.middleware("http")
async def _size_guard(request: Request, call_next):
    """Refuse an oversized body from its Content-Length, before any of it is parsed."""
    max_bytes = int(os.environ.get(BODY_LIMIT_ENV, 64 * 1024 * 1024))
    if request.method == "POST":
        length = request.headers.get("content-length")
        if length is None:
            return _error(411, error_body(InvalidInputError("Send a Content-Length header (chunked uploads are not accepted).")),
                          _request_id(request))
        if not length.isdigit() or int(length) > max_bytes:
            return _error(413, error_body(InvalidInputError(
                f"Request body of {length} bytes is over the server's limit of {max_bytes} bytes; send fewer or smaller videos.")),
                _request_id(request))
    return await call_next(request)


def _status_of(error: dict) -> int:
    """HTTP status of a replica's per-video error: input problems are 4xx, the rest 500."""
    if error.get("type") == "InternalError":
        return 500
    return 422 if error.get("type") in ("VideoDecodeError", "ContextLengthError") else 400


@serve.deployment
@serve.ingress(app)
class Gateway:
    def __init__(self, replica_handle, config: dict):
        self.config = ServeConfig(**config)
        self.replica = replica_handle
        self._info: Optional[dict] = None
        # Draining (see `stop`): new scoring requests get a retryable 503 while the ones already
        # here finish. Ray Serve deletes the gateway and the replicas together, so without this a
        # request still queued for a replica would wait on one that is gone.
        self._draining = False
        self._inflight = 0

    def begin_drain(self) -> int:
        self._draining = True
        return self._inflight

    def inflight(self) -> int:
        return self._inflight

    @contextlib.contextmanager
    def _tracked(self):
        if self._draining:
            raise RequestFailed(503, {"type": "ShuttingDown", "retryable": True,
                                      "message": "The service is shutting down; retry on another instance or later."},
                                {"Retry-After": "1"})
        self._inflight += 1
        try:
            yield
        finally:
            self._inflight -= 1

    # -- plumbing --
    def _options(self, options: Optional[Options]) -> dict:
        merged = {} if options is None else options.model_dump(exclude_none=True)
        if "adaptive_band" in merged:
            merged["adaptive_band"] = tuple(merged["adaptive_band"])
        return {k: v for k, v in merged.items() if k in REQUEST_OPTIONS}

    async def _video_bytes(self, video: Video) -> tuple[bytes, str]:
        if (video.data is None) == (video.path is None):
            raise RequestFailed(400, error_body(InvalidInputError("Give a video as exactly one of 'data' (base64 bytes) or 'path'.")))
        if video.data is not None:
            try:
                data = base64.b64decode(video.data, validate=True)
            except (binascii.Error, ValueError):
                raise RequestFailed(400, error_body(InvalidInputError("Video 'data' is not valid base64; encode the file's bytes with base64."))) from None
            if not data:
                raise RequestFailed(400, error_body(InvalidInputError("Video 'data' is empty.")))
            return data, video.name or f"<{len(data)} bytes>"
        try:
            path = resolve_media_path(video.path, self.config.media_root)
        except MediaPathError as exc:
            raise RequestFailed(403 if self.config.media_root is None or "outside" in str(exc) else 404, error_body(exc)) from None
        # Read here, once resolved: replicas get bytes, never a path a client chose.
        data = await asyncio.to_thread(path.read_bytes)
        if len(data) > self.config.max_request_bytes:
            raise RequestFailed(413, error_body(InvalidInputError(f"{video.path} is larger than the server's limit of {self.config.max_request_bytes} bytes.")))
        return data, video.name or video.path

    async def _call(self, method: str, payload: dict, deadline: float) -> dict:
        """One replica call with the request's deadline; overload, loss of a replica and timeouts
        become retryable error bodies."""
        response = getattr(self.replica, method).remote(payload)
        try:
            return await asyncio.wait_for(response, timeout=max(0.001, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            response.cancel()
            return {"status": 504, "error": {"type": "TimeoutError", "retryable": True,
                                             "message": "Not scored within the request's timeout; retry later, with a longer timeout_s, or with fewer videos."}}
        except BackPressureError:
            return {"status": 503, "error": {"type": "Overloaded", "retryable": True,
                                             "message": "The scoring queue is full; retry after a short wait."}}
        except (RayActorError, DeploymentUnavailableError) as exc:
            log.warning("replica lost mid-request: %s", type(exc).__name__)
            return {"status": 503, "error": {"type": "ReplicaUnavailable", "retryable": True,
                                             "message": "The replica scoring this request stopped; Ray is restarting it. Retry the request."}}

    @staticmethod
    def _answer(outcome: dict, name: str) -> dict:
        if "error" in outcome:
            return outcome
        result = outcome["result"]
        result["video"] = name
        return result

    def _deadline(self, requested: Optional[float]) -> float:
        timeout = self.config.request_timeout_s if requested is None else min(requested, self.config.request_timeout_s)
        return time.monotonic() + timeout

    # -- routes --
    @app.get("/healthz", summary="liveness")
    async def healthz(self, request: Request):
        return {"status": "ok", "request_id": _request_id(request)}

    @app.get("/readyz", summary="readiness: a replica answers")
    async def readyz(self, request: Request):
        rid = _request_id(request)
        try:
            info = await asyncio.wait_for(self.replica.info.remote(), timeout=5.0)
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return _error(503, {"type": "NotReady", "message": "No scorer replica is ready yet.", "retryable": True}, rid)
        self._info = self._info or info
        return {"status": "ready", "request_id": rid}

    @app.get("/v1/model", summary="the served model: family, dimensions, layout, backend, precision")
    async def model(self, request: Request):
        if self._info is None:
            try:
                self._info = await asyncio.wait_for(self.replica.info.remote(), timeout=30.0)
            except Exception:  # noqa: BLE001 - no replica up (yet): say so, retryably
                return _error(503, {"type": "NotReady", "message": "No scorer replica is ready yet.", "retryable": True},
                              _request_id(request), {"Retry-After": "1"})
        server = {k: getattr(self.config, k) for k in ("replicas", "max_batch", "batch_wait_ms", "max_queue", "request_timeout_s",
                                                        "max_request_mb")}
        return {**self._info, "server": {**server, "media_root": self.config.media_root is not None},
                "request_id": _request_id(request)}

    @app.post("/v1/score", summary="score one video")
    async def score(self, body: ScoreRequest, request: Request):
        rid = _request_id(request)
        with self._tracked():
            data, name = await self._video_bytes(body.video)
            outcome = await self._call("score", {"video": data, "prompt": body.prompt, "options": self._options(body.options)}, self._deadline(body.timeout_s))
            if "error" in outcome:
                status = outcome.pop("status", None) or _status_of(outcome["error"])
                return _error(status, outcome["error"], rid, {"Retry-After": "1"} if status == 503 else None)
            return JSONResponse({**self._answer(outcome, name), "request_id": rid}, headers={"X-Request-Id": rid})

    @app.post("/v1/score_batch", summary="score many videos (each is batched with other requests' videos)")
    async def score_batch(self, body: ScoreBatchRequest, request: Request):
        rid = _request_id(request)
        with self._tracked():
            prompts = [body.prompts] * len(body.videos) if isinstance(body.prompts, str) else body.prompts
            if len(prompts) != len(body.videos):
                raise RequestFailed(400, error_body(InvalidInputError(f"{len(body.videos)} videos but {len(prompts)} prompts; send one prompt or one per video.")))
            if not body.videos:
                raise RequestFailed(400, error_body(InvalidInputError("'videos' is empty.")))
            videos = [await self._video_bytes(v) for v in body.videos]
            options = self._options(body.options)
            deadline = self._deadline(body.timeout_s)
            outcomes = await asyncio.gather(*(self._call("score", {"video": data, "prompt": prompt, "options": options}, deadline)
                                              for (data, _), prompt in zip(videos, prompts)))
            results = []
            for (_, name), outcome in zip(videos, outcomes):
                outcome.pop("status", None)
                results.append(self._answer(outcome, name))
            return JSONResponse({"results": results, "request_id": rid}, headers={"X-Request-Id": rid})

    @app.post("/v1/compare", summary="compare two videos for one prompt")
    async def compare(self, body: CompareRequest, request: Request):
        rid = _request_id(request)
        with self._tracked():
            (a, name_a), (b, name_b) = await self._video_bytes(body.video_a), await self._video_bytes(body.video_b)
            outcome = await self._call("compare", {"video_a": a, "video_b": b, "prompt": body.prompt, "options": self._options(body.options)},
                                       self._deadline(body.timeout_s))
            if "error" in outcome:
                status = outcome.pop("status", None) or _status_of(outcome["error"])
                return _error(status, outcome["error"], rid, {"Retry-After": "1"} if status == 503 else None)
            pair = outcome["result"]
            pair["a"]["video"], pair["b"]["video"] = name_a, name_b
            return JSONResponse({**pair, "request_id": rid}, headers={"X-Request-Id": rid})


# -- deploy --------------------------------------------------------------------------------------------
def build_app(config: ServeConfig):
    """The bound Serve application: Gateway → ScorerReplica × config.replicas."""
    cfg = config.to_dict()
    use_gpu = config.device.startswith("cuda")
    replica = ScorerReplica.options(
        num_replicas=config.replicas,
        # Pinned to one device each: Ray gives each GPU replica its own CUDA_VISIBLE_DEVICES.
        ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": 1 if use_gpu else 0},
        max_ongoing_requests=config.replica_max_ongoing,
        max_queued_requests=config.max_queue,
        graceful_shutdown_timeout_s=config.request_timeout_s,
        graceful_shutdown_wait_loop_s=0.5,
        health_check_period_s=5.0,
        health_check_timeout_s=max(30.0, config.request_timeout_s),
    ).bind({**cfg, "media_root": None})  # replicas read no paths: the gateway sends them bytes
    # The gateway holds at most what the replicas can queue plus one batch each in flight, so its
    # memory is bounded too; past that Ray's proxy answers 503 itself.
    gateway_capacity = config.max_queue + config.replicas * config.replica_max_ongoing
    return Gateway.options(
        num_replicas=1,
        ray_actor_options={
            "num_cpus": 0,
            "runtime_env": {"env_vars": {BODY_LIMIT_ENV: str(config.max_request_bytes)}},
            # On the node where `descore serve` runs: --media-root names a folder of that machine.
            "resources": {f"node:{ray.util.get_node_ip_address()}": 0.001},
        },
        max_ongoing_requests=gateway_capacity,
        max_queued_requests=config.max_queue,
        graceful_shutdown_timeout_s=config.request_timeout_s,
        graceful_shutdown_wait_loop_s=0.5,
    ).bind(replica, cfg)


def connect(config: ServeConfig, *, num_cpus: Optional[float] = None) -> None:
    """Join the cluster at config.address, or start a local Ray instance."""
    from .cluster import join

    if not ray.is_initialized():
        kwargs = {} if config.address else {"num_cpus": num_cpus, "include_dashboard": False}
        join(ray, config.address, **{k: v for k, v in kwargs.items() if v is not None},
             logging_level=logging.WARNING, log_to_driver=False)


def deploy(config: ServeConfig) -> str:
    """Deploy the app on the connected cluster; returns the base URL once it is running."""
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name=config.app_name, route_prefix="/")
    return f"http://{config.host}:{config.port}"


def start(config: ServeConfig, *, num_cpus: Optional[float] = None) -> str:
    """`connect` + `deploy`."""
    connect(config, num_cpus=num_cpus)
    return deploy(config)


def stop(config: ServeConfig, timeout_s: Optional[float] = None) -> None:
    """Drain, then remove the app: the gateway stops taking new scoring requests (503, retryable),
    every request it already holds is answered (or `timeout_s`, default the request timeout, runs
    out), and only then are the deployments deleted."""
    gateway = serve.get_app_handle(config.app_name)
    gateway.begin_drain.remote().result()
    deadline = time.monotonic() + (config.request_timeout_s if timeout_s is None else timeout_s)
    while gateway.inflight.remote().result() > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    serve.delete(config.app_name)


def run(config: ServeConfig, *, block: bool = True):
    connect(config)
    if not block:
        return deploy(config)
    # After ray.init (which installs its own SIGTERM handler: exit at once) and before the app can
    # answer: a SIGTERM from then on drains, even one that arrives while the app is being deployed.
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    url = deploy(config)
    where = f"Ray cluster {config.address}" if config.address else "a local Ray instance"
    print(f"DeScore reward service on {url} (model {config.model}, {config.replicas} replica(s), on {where}); "
          f"OpenAPI at {url}/docs. Ctrl-C drains and stops.", flush=True)
    while not stopping.wait(1.0):
        pass
    print("Draining: waiting for in-flight requests ...", flush=True)
    stop(config)
    if not config.address:  # our own Ray instance; on a shared cluster only our app is removed (stop)
        serve.shutdown()
    return 0
