"""`RewardClient`'s retry and error rules, against a scripted HTTP server (stdlib, no Ray): which
answers are retried, which raise at once and as what, and that a batch resends only its failed videos.
test_serve.py drives the client against the real service."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from descore_sdk import InvalidInputError, ScoreResult, VideoDecodeError
from descore_sdk.client import RewardClient
from descore_sdk.serve import ServiceError

RESULT = {"reward": 1.5, "rewards": {"overall": 1.5}, "rationale": "fine", "mode": "think", "backend": "onnxruntime",
          "num_prompt_tokens": 10, "num_cot_tokens": 3, "num_frames": 4, "timings_ms": {"total": 1.0}, "video": "v", "request_id": "r"}


class Script:
    """Answers (status, body, headers) in order; records every request body."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[dict] = []


@pytest.fixture
def server():
    holder = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self):
            script = holder["script"]
            length = int(self.headers.get("content-length") or 0)
            script.requests.append(json.loads(self.rfile.read(length)) if length else {})
            status, body, headers = script.answers.pop(0)
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def run(answers, **client_kwargs):
        holder["script"] = Script(answers)
        client = RewardClient(f"http://127.0.0.1:{httpd.server_address[1]}", backoff_s=0.01, **client_kwargs)
        return client, holder["script"]

    yield run
    httpd.shutdown()


def test_overload_is_retried_then_the_result_is_a_score_result(server):
    client, script = server([(503, "Request dropped due to backpressure", {"Retry-After": "0"}),
                             (503, {"error": {"type": "ReplicaUnavailable", "message": "gone", "retryable": True}}, None),
                             (200, RESULT, None)])
    result = client.score(b"video bytes", "a prompt", mode="fast", timeout_s=5)
    assert isinstance(result, ScoreResult) and (result.reward, result.rationale, result.num_frames) == (1.5, "fine", 4)
    assert len(script.requests) == 3 and client.last_request_id == "r"
    sent = script.requests[0]
    assert sent["options"] == {"mode": "fast"} and sent["timeout_s"] == 5 and sent["video"]["data"] == "dmlkZW8gYnl0ZXM="


def test_input_errors_raise_the_servers_class_at_once(server):
    client, script = server([(422, {"error": {"type": "VideoDecodeError", "message": "Could not open the video", "retryable": False}}, None)])
    with pytest.raises(VideoDecodeError, match="Could not open the video"):
        client.score(b"junk", "a prompt")
    assert len(script.requests) == 1
    client, script = server([(403, {"error": {"type": "MediaPathError", "message": "outside the root", "retryable": False}}, None)])
    with pytest.raises(InvalidInputError, match="outside the root"):
        client.score(b"x", "p")
    client, script = server([(504, {"error": {"type": "TimeoutError", "message": "late", "retryable": True}}, None)] * 3, max_retries=2)
    with pytest.raises(ServiceError) as info:
        client.score(b"x", "p")
    assert info.value.retryable and info.value.status == 504 and len(script.requests) == 3


def test_a_batch_resends_only_its_retryable_failures(server):
    overloaded = {"error": {"type": "Overloaded", "message": "full", "retryable": True}}
    broken = {"error": {"type": "VideoDecodeError", "message": "bad clip", "retryable": False}}
    second = {**RESULT, "reward": 2.5}
    client, script = server([(200, {"results": [RESULT, overloaded, broken], "request_id": "a"}, None),
                             (200, {"results": [second], "request_id": "b"}, None)])
    results = client.score_batch([b"one", b"two", b"three"], ["p1", "p2", "p3"], on_error="none")
    assert [r.reward if r else None for r in results] == [1.5, 2.5, None]
    assert script.requests[1]["prompts"] == ["p2"] and len(script.requests[1]["videos"]) == 1
    client, _ = server([(200, {"results": [RESULT, broken], "request_id": "c"}, None)])
    with pytest.raises(VideoDecodeError, match="bad clip"):
        client.score_batch([b"one", b"two"], "p")
    # the RL helper: NaN where a clip could not be scored
    client, _ = server([(200, {"server": {"max_request_mb": 1}}, None), (200, {"results": [RESULT, broken], "request_id": "d"}, None)])
    np.testing.assert_array_equal(client.rewards([b"one", b"two"], "p"), [1.5, np.nan])


def test_unreachable_service_and_unsendable_videos(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = RewardClient(f"http://127.0.0.1:{port}", max_retries=1, backoff_s=0.01)
    with pytest.raises(ServiceError, match="Cannot reach the reward service"):
        client.score(b"x", "p")
    with pytest.raises(InvalidInputError, match="Encode decoded frames"):
        client.score(np.zeros((2, 8, 8, 3), np.uint8), "p")
    with pytest.raises(InvalidInputError, match="does not exist"):
        client.score("/no/such/clip.mp4", "p")
