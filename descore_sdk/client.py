"""`RewardClient`: the Python client of `descore serve`, for RL loops and evaluations.

    from descore_sdk.client import RewardClient

    client = RewardClient("http://127.0.0.1:8000")
    result = client.score("clip.mp4", "a red fox in the snow")          # a ScoreResult
    rewards = client.rewards(clips, prompts)                             # np.ndarray, one per clip
    rewards = await client.arewards(clips, prompts)                      # the same, from asyncio code

Videos are uploaded as bytes (paths are read here, bytes sent as they are); `send_paths=True` sends
paths instead, for a server whose --media-root holds the same files. Results are the SDK's own
`ScoreResult` / `PairResult`, with the service's `request_id` kept in `client.last_request_id`.

Retries: scoring is a pure function of (video, prompt, options), so a request that failed for a
retryable reason (503 overload or a lost replica, 504/408 timeout, a dropped connection) is sent again
with exponential backoff, `max_retries` times. Input errors (4xx) are raised at once as the same
`DescoreError` class the server reported (e.g. `VideoDecodeError`), with the server's message.

Standard library only (urllib + a thread pool for concurrency): the client needs neither Ray nor torch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from . import errors
from .errors import DescoreError, InvalidInputError
from .results import PairResult, ScoreResult
from .serve import ServiceError

RETRYABLE_STATUS = (408, 429, 500, 502, 503, 504)
_RESULT_FIELDS = ("reward", "rewards", "rationale", "mode", "backend", "num_prompt_tokens", "num_cot_tokens", "num_frames",
                  "timings_ms", "video")


def result_from_json(obj: dict) -> ScoreResult:
    """A service result (ScoreResult fields + request_id) → ScoreResult."""
    return ScoreResult(**{k: obj[k] for k in _RESULT_FIELDS if k in obj})


def _raise_for(error: dict, status: int, request_id: str | None) -> None:
    """Raise the DescoreError subclass the server named (ServiceError for service-level failures)."""
    kind = error.get("type", "ServiceError")
    message = error.get("message", "the reward service failed")
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, DescoreError) and not error.get("retryable"):
        raise cls(message)
    if kind == "MediaPathError":
        raise InvalidInputError(message)
    raise ServiceError(f"{message} (HTTP {status}, {kind}, request {request_id})", status=status, error_type=kind,
                       retryable=bool(error.get("retryable")), request_id=request_id)


class RewardClient:
    """A client of one reward service. Thread-safe; one instance can serve many concurrent calls."""

    def __init__(self, url: str, *, timeout_s: float = 300.0, max_retries: int = 5, backoff_s: float = 0.5,
                 send_paths: bool = False, concurrency: int = 8):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.send_paths = send_paths
        self.concurrency = concurrency
        self.last_request_id: str | None = None
        self._max_body: int | None = None
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="descore-client")

    # -- plain calls -----------------------------------------------------------------------------------
    def info(self) -> dict:
        return self._request("GET", "/v1/model")

    def ready(self) -> bool:
        try:
            self._request("GET", "/readyz", retries=0)
            return True
        except (ServiceError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServiceError(f"The reward service at {self.url} was not ready within {timeout_s:g} s.", retryable=True)
            time.sleep(0.5)

    def score(self, video, prompt: str, *, timeout_s: float | None = None, **options) -> ScoreResult:
        """One video; `options` are ScoreOptions overrides, `timeout_s` this request's server-side timeout."""
        body = {"prompt": prompt, "video": self._video(video), "options": options or None, "timeout_s": timeout_s}
        return result_from_json(self._request("POST", "/v1/score", body))

    def score_batch(self, videos: Sequence, prompts: str | Sequence[str], *, on_error: str = "raise", timeout_s: float | None = None,
                    **options) -> list:
        """Score `videos` in one request (the server batches them with other requests' videos).

        on_error: "raise" raises the first video's error; "none" puts None where a video failed.
        Videos that failed for a retryable reason (overload) are sent again, up to `max_retries` times."""
        if on_error not in ("raise", "none"):
            raise InvalidInputError(f"on_error must be 'raise' or 'none', got {on_error!r}.")
        videos = list(videos)
        prompts = [prompts] * len(videos) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(videos):
            raise InvalidInputError(f"{len(videos)} videos but {len(prompts)} prompts; pass one prompt or one per video.")
        encoded = [self._video(v) for v in videos]
        results: list = [None] * len(videos)
        pending = list(range(len(videos)))
        errors_by_index: dict[int, dict] = {}
        for attempt in range(self.max_retries + 1):
            body = {"prompts": [prompts[i] for i in pending], "videos": [encoded[i] for i in pending], "options": options or None,
                    "timeout_s": timeout_s}
            answer = self._request("POST", "/v1/score_batch", body)
            retry = []
            for i, item in zip(pending, answer["results"]):
                if "error" in item:
                    errors_by_index[i] = item["error"]
                    if item["error"].get("retryable"):
                        retry.append(i)
                else:
                    errors_by_index.pop(i, None)
                    results[i] = result_from_json(item)
            pending = retry
            if not pending:
                break
            self._sleep(attempt, None)
        if on_error == "raise":
            for i in sorted(errors_by_index):
                _raise_for(errors_by_index[i], 200, self.last_request_id)
        return results

    def compare(self, video_a, video_b, prompt: str, *, timeout_s: float | None = None, **options) -> PairResult:
        body = {"prompt": prompt, "video_a": self._video(video_a), "video_b": self._video(video_b), "options": options or None,
                "timeout_s": timeout_s}
        answer = self._request("POST", "/v1/compare", body)
        return PairResult(a=result_from_json(answer["a"]), b=result_from_json(answer["b"]))

    def rewards(self, videos: Sequence, prompts: str | Sequence[str], *, chunk_size: int = 8, **options):
        """Headline rewards of `videos` as a float array (NaN where a video could not be scored), sent
        as concurrent chunks of `chunk_size` videos. The reward function of an RL loop."""
        return _run_coroutine(self.arewards(videos, prompts, chunk_size=chunk_size, **options))

    # -- asyncio ---------------------------------------------------------------------------------------
    async def ascore(self, video, prompt: str, **options) -> ScoreResult:
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: self.score(video, prompt, **options))

    async def ascore_batch(self, videos: Sequence, prompts: str | Sequence[str], *, chunk_size: int = 8,
                           on_error: str = "none", **options) -> list:
        """`score_batch` over chunks of `chunk_size` videos sent concurrently (at most `concurrency`
        requests in flight): the server's batching then fills its replicas' batches from all chunks."""
        videos = list(videos)
        prompts = [prompts] * len(videos) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(videos):
            raise InvalidInputError(f"{len(videos)} videos but {len(prompts)} prompts; pass one prompt or one per video.")
        if chunk_size < 1:
            raise InvalidInputError(f"chunk_size must be ≥ 1, got {chunk_size}.")
        loop = asyncio.get_running_loop()
        chunks = self._chunks(videos, chunk_size)
        futures = [loop.run_in_executor(self._pool, lambda c=c: self.score_batch([videos[i] for i in c], [prompts[i] for i in c],
                                                                                 on_error=on_error, **options))
                   for c in chunks]
        parts = await asyncio.gather(*futures)
        return [r for part in parts for r in part]

    async def arewards(self, videos: Sequence, prompts: str | Sequence[str], *, chunk_size: int = 8, **options):
        import numpy as np

        results = await self.ascore_batch(videos, prompts, chunk_size=chunk_size, on_error="none", **options)
        return np.array([np.nan if r is None else r.reward for r in results], dtype=np.float64)

    def _chunks(self, videos: list, chunk_size: int) -> list[list[int]]:
        """Indices in chunks of ≤ chunk_size videos whose uploads fit the server's body limit."""
        if self._max_body is None:
            try:
                self._max_body = int(self.info()["server"]["max_request_mb"] * 1024 * 1024)
            except (DescoreError, KeyError, TypeError):
                self._max_body = 32 * 1024 * 1024
        budget = int(self._max_body * 0.9)  # room for the JSON around the base64
        chunks, current, size = [], [], 0
        for i, video in enumerate(videos):
            cost = 4 * _upload_size(video) // 3 + 1024 if not self.send_paths else 1024
            if current and (len(current) == chunk_size or size + cost > budget):
                chunks.append(current)
                current, size = [], 0
            current.append(i)
            size += cost
        return chunks + ([current] if current else [])

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transport -------------------------------------------------------------------------------------
    def _video(self, video) -> dict:
        if isinstance(video, (str, os.PathLike)):
            if self.send_paths:
                return {"path": os.fspath(video)}
            path = Path(video)
            if not path.is_file():
                raise InvalidInputError(f"Video {video} does not exist; check the path.")
            return {"data": base64.b64encode(path.read_bytes()).decode("ascii"), "name": str(video)}
        if isinstance(video, (bytes, bytearray, memoryview)):
            return {"data": base64.b64encode(bytes(video)).decode("ascii")}
        if hasattr(video, "read"):
            return {"data": base64.b64encode(video.read()).decode("ascii")}
        raise InvalidInputError(
            f"RewardClient sends video files: a path, bytes or a binary file object, not {type(video).__name__}. "
            "Encode decoded frames as a video file first (e.g. with PyAV)."
        )

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff_s * (2 ** attempt) * (0.5 + random.random())  # jitter: retries do not arrive in lockstep
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        time.sleep(min(delay, 30.0))

    def _request(self, method: str, route: str, body: dict | None = None, *, retries: int | None = None) -> dict:
        retries = self.max_retries if retries is None else retries
        data = None if body is None else json.dumps(body).encode("utf-8")
        for attempt in range(retries + 1):
            request = urllib.request.Request(self.url + route, data=data, method=method,
                                             headers={"Content-Type": "application/json"} if data is not None else {})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    answer = json.loads(response.read())
                    self.last_request_id = answer.get("request_id") if isinstance(answer, dict) else None
                    return answer
            except urllib.error.HTTPError as exc:
                raw = exc.read()
                try:
                    answer = json.loads(raw)
                    error = answer["error"]
                    request_id = answer.get("request_id")
                except (ValueError, KeyError, TypeError):
                    # Not our JSON: Ray's proxy itself answered (overload before the gateway, a lost replica).
                    error = {"type": "ServiceError", "message": raw.decode("utf-8", "replace")[:300] or exc.reason,
                             "retryable": exc.code in RETRYABLE_STATUS}
                    request_id = exc.headers.get("x-request-id")
                self.last_request_id = request_id
                if error.get("retryable") and attempt < retries:
                    self._sleep(attempt, exc.headers.get("retry-after"))
                    continue
                _raise_for(error, exc.code, request_id)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                if attempt < retries:
                    self._sleep(attempt, None)
                    continue
                raise ServiceError(f"Cannot reach the reward service at {self.url}: {exc}. Is `descore serve` running?",
                                   retryable=True) from None
        raise AssertionError("unreachable")  # pragma: no cover


def _upload_size(video) -> int:
    if isinstance(video, (str, os.PathLike)):
        try:
            return os.path.getsize(video)
        except OSError:
            return 0
    if isinstance(video, (bytes, bytearray, memoryview)):
        return len(video)
    return 0


def _run_coroutine(coroutine):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    raise InvalidInputError("rewards() was called inside a running event loop; use `await client.arewards(...)` there.")


__all__ = ["RewardClient", "ServiceError", "result_from_json"]
