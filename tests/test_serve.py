"""`descore serve` on a real local Ray instance, driven over real HTTP.

The reference for every reward is a direct in-process `Scorer` on the same bundle and inputs (the
service must add batching and transport, never change a number). One Ray instance and one deployment
for the whole module (2 replicas of 0.5 CPU on `num_cpus=2`); the fault tests (flood past the queue
bound, a replica killed mid-run, graceful shutdown) are marked slow and run last.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("torch")

from descore_sdk import Scorer, VideoDecodeError  # noqa: E402
from descore_sdk.client import RewardClient  # noqa: E402
from descore_sdk.serve import MediaPathError, ServeConfig, ServiceError, resolve_media_path  # noqa: E402

PROMPTS = ["A girl in a pink dress sits on a chair.", "A red fox runs through fresh snow."]
MAX_NEW_TOKENS = 6
TOLERANCE = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body, *, raw: bytes | None = None, headers: dict | None = None, timeout: float = 120.0):
    """(status, parsed JSON or text, headers) of one POST, without any retry."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text), exc.headers
        except ValueError:
            return exc.code, text.decode("utf-8", "replace"), exc.headers


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def media_root(tmp_path_factory, sample_videos) -> Path:
    root = tmp_path_factory.mktemp("media")
    for video in sample_videos[:4]:
        (root / video.name).write_bytes(video.read_bytes())
    (root / "sub").mkdir()
    outside = tmp_path_factory.mktemp("outside") / "secret.mp4"
    outside.write_bytes(sample_videos[0].read_bytes())
    os.symlink(outside, root / "sub" / "link.mp4")  # a symlink inside the root that leads out of it
    return root


@pytest.fixture(scope="module")
def reference(scale_bundle, media_root):
    """{(video name, prompt): ScoreResult} from a direct Scorer on the same bundle."""
    scorer = Scorer.from_pretrained(scale_bundle, max_new_tokens=MAX_NEW_TOKENS, backend_options={"threads": 1})
    videos = sorted(p for p in media_root.glob("*.mp4"))
    return scorer, {(v.name, p): scorer.score(v, p) for v in videos for p in PROMPTS}


@pytest.fixture(scope="module")
def service(scale_bundle, media_root):
    import ray
    from ray import serve

    from descore_sdk import serve_ray

    config = ServeConfig(model=str(scale_bundle), replicas=2, max_batch=4, batch_wait_ms=20, port=_free_port(),
                         media_root=str(media_root), max_queue=8, request_timeout_s=60, max_request_mb=8.0,
                         threads=1, replica_cpus=0.5, score_options={"max_new_tokens": MAX_NEW_TOKENS})
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        url = serve_ray.start(config)
        RewardClient(url).wait_ready(120)
        yield url, config
    finally:
        serve.shutdown()
        ray.shutdown()


# -- paths: the media-root rule ----------------------------------------------------------------------------
def test_media_paths_resolve_inside_the_root_only(media_root):
    name = sorted(media_root.glob("*.mp4"))[0].name
    assert resolve_media_path(name, str(media_root)) == (media_root / name).resolve()
    assert resolve_media_path(str(media_root / name), str(media_root)) == (media_root / name).resolve()
    for bad in ("../secret.mp4", f"sub/../../{media_root.name}/../x.mp4", "/etc/passwd", "sub/link.mp4", ".", "", "missing.mp4"):
        with pytest.raises(MediaPathError):
            resolve_media_path(bad, str(media_root))
    with pytest.raises(MediaPathError, match="without --media-root"):
        resolve_media_path(name, None)


def test_a_replica_batch_groups_by_options_and_isolates_a_bad_video(scale_bundle, reference, media_root):
    """ReplicaCore (what each replica runs on a Ray Serve batch), without Ray: mixed options and one
    undecodable upload in the same batch; every other item equals its direct Scorer call."""
    from descore_sdk.serve import ReplicaCore

    scorer, _ = reference
    core = ReplicaCore(str(scale_bundle), {"backend_options": {"threads": 1}, "max_new_tokens": MAX_NEW_TOKENS}, max_batch=4)
    videos = sorted(media_root.glob("*.mp4"))[:2]
    items = [{"video": videos[0].read_bytes(), "prompt": PROMPTS[0], "options": {}},
             {"video": videos[1].read_bytes(), "prompt": PROMPTS[1], "options": {"mode": "fast"}},
             {"video": b"junk", "prompt": PROMPTS[0], "options": {}},
             {"video": videos[1].read_bytes(), "prompt": PROMPTS[0], "options": {}},
             {"video": videos[0].read_bytes(), "prompt": PROMPTS[0], "options": {"top_p": 7}}]
    out = core.score_items(items)
    for item, outcome in zip(items[:2] + items[3:4], out[:2] + out[3:4]):
        ref = scorer.score(item["video"], item["prompt"], **item["options"])
        assert outcome["result"]["rewards"] == pytest.approx(ref.rewards, abs=TOLERANCE)
        assert outcome["result"]["mode"] == ref.mode
    assert out[2]["error"]["type"] == "VideoDecodeError"
    assert out[4]["error"]["type"] == "InvalidInputError" and "top_p" in out[4]["error"]["message"]


# -- the API -------------------------------------------------------------------------------------------
def test_model_info_health_and_openapi(service):
    url, config = service
    assert _get(url + "/healthz")[0] == 200
    assert _get(url + "/readyz")[0] == 200
    status, info = _get(url + "/v1/model")
    assert status == 200
    assert (info["family"], info["dimensions"], info["backend"], info["precision"]) == ("qwen2_5_vl", ["VQ", "MQ", "TA"], "onnxruntime", "float32")
    assert info["layout"]["sampling"]["max_frames"] == 4 and info["server"]["replicas"] == 2
    status, spec = _get(url + "/openapi.json")
    assert status == 200 and {"/v1/score", "/v1/score_batch", "/v1/compare", "/v1/model"} <= set(spec["paths"])


def test_scores_over_http_equal_direct_scorer_calls(service, reference, media_root):
    url, _ = service
    _, expected = reference
    names = sorted({name for name, _ in expected})
    # by path, by upload, with a request id; every field of ScoreResult is there
    status, body, headers = _post(url + "/v1/score", {"prompt": PROMPTS[0], "video": {"path": names[0]}}, headers={"X-Request-Id": "rid-1"})
    assert status == 200 and body["request_id"] == "rid-1" and headers["X-Request-Id"] == "rid-1"
    ref = expected[(names[0], PROMPTS[0])]
    assert set(ref.to_dict()) <= set(body)
    assert body["video"] == names[0] and body["rationale"] == ref.rationale and body["num_cot_tokens"] == ref.num_cot_tokens
    assert body["rewards"] == pytest.approx(ref.rewards, abs=TOLERANCE)
    status, body, _ = _post(url + "/v1/score", {"prompt": PROMPTS[1], "video": {"data": _b64(media_root / names[1]), "name": "up.mp4"}})
    assert status == 200 and body["video"] == "up.mp4"
    assert body["rewards"] == pytest.approx(expected[(names[1], PROMPTS[1])].rewards, abs=TOLERANCE)
    # many videos in one request, one prompt each
    items = [(n, p) for n in names for p in PROMPTS]
    status, body, _ = _post(url + "/v1/score_batch", {"prompts": [p for _, p in items], "videos": [{"path": n} for n, _ in items]})
    assert status == 200
    for (name, prompt), result in zip(items, body["results"]):
        assert result["rewards"] == pytest.approx(expected[(name, prompt)].rewards, abs=TOLERANCE), (name, prompt)
        assert result["rationale"] == expected[(name, prompt)].rationale


def test_compare_and_per_request_options(service, reference, media_root):
    url, _ = service
    scorer, expected = reference
    a, b = sorted({name for name, _ in expected})[:2]
    pair = scorer.compare(media_root / a, media_root / b, PROMPTS[0])
    status, body, _ = _post(url + "/v1/compare", {"prompt": PROMPTS[0], "video_a": {"path": a}, "video_b": {"path": b}})
    assert status == 200
    assert body["prob_a_better"] == pytest.approx(pair.prob_a_better, abs=TOLERANCE) and body["preferred"] == pair.preferred
    fast = scorer.score(media_root / a, PROMPTS[0], mode="fast")
    status, body, _ = _post(url + "/v1/score", {"prompt": PROMPTS[0], "video": {"path": a}, "options": {"mode": "fast"}})
    assert status == 200 and body["mode"] == "fast" and body["rationale"] is None
    assert body["reward"] == pytest.approx(fast.reward, abs=TOLERANCE)
    status, body, _ = _post(url + "/v1/score", {"prompt": PROMPTS[0], "video": {"path": a}, "options": {"mode": "sideways"}})
    assert status == 400 and body["error"]["type"] == "InvalidInputError" and "mode must be one of" in body["error"]["message"]


def test_concurrent_clients_get_the_direct_rewards(service, reference, media_root):
    url, _ = service
    _, expected = reference
    items = [(name, prompt) for name, prompt in expected] * 2
    client = RewardClient(url, concurrency=6)

    def one(item):
        return client.score(media_root / item[0], item[1])

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, items))
    for (name, prompt), result in zip(items, results):
        assert result.rewards == pytest.approx(expected[(name, prompt)].rewards, abs=TOLERANCE)
    # the RL helper: concurrent chunks, one array of headline rewards
    rewards = client.rewards([media_root / n for n, _ in items], [p for _, p in items], chunk_size=3)
    np.testing.assert_allclose(rewards, [expected[i].reward for i in items], atol=TOLERANCE)


def test_bad_requests_get_4xx_with_the_descore_message(service, media_root):
    url, _ = service
    status, body, _ = _post(url + "/v1/score", {"prompt": "x", "video": {"data": base64.b64encode(b"not a video").decode()}})
    assert status == 422 and body["error"]["type"] == "VideoDecodeError" and "Could not open the video bytes" in body["error"]["message"]
    status, body, _ = _post(url + "/v1/score", {"prompt": "x", "video": {"data": "%%% not base64"}})
    assert status == 400 and "base64" in body["error"]["message"]
    status, body, _ = _post(url + "/v1/score", None, raw=b'{"prompt": "x", "vid')
    assert status == 400 and body["error"]["type"] == "InvalidInputError" and "Malformed request" in body["error"]["message"]
    status, body, _ = _post(url + "/v1/score", {"prompt": "x", "video": {"path": "../outside/secret.mp4"}})
    assert status == 403 and body["error"]["type"] == "MediaPathError"
    status, body, _ = _post(url + "/v1/score", {"prompt": "x", "video": {"path": "sub/link.mp4"}})
    assert status == 403 and "outside" in body["error"]["message"]
    status, body, _ = _post(url + "/v1/score", {"prompt": "", "video": {"path": "sub/../" + next(media_root.glob('*.mp4')).name}})
    assert status == 400 and body["error"]["type"] == "InvalidInputError"
    # an oversized body is refused from its Content-Length, before a byte of it is read
    import http.client
    from urllib.parse import urlsplit

    host = urlsplit(url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    conn.putrequest("POST", "/v1/score")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(9 * 1024 * 1024))
    conn.endheaders()
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 413 and "limit" in body["error"]["message"]
    # one bad video in a batch fails alone
    good = next(media_root.glob("*.mp4"))
    status, body, _ = _post(url + "/v1/score_batch", {"prompts": "x", "videos": [{"path": good.name}, {"data": base64.b64encode(b"junk").decode()}]})
    assert status == 200 and "reward" in body["results"][0] and body["results"][1]["error"]["type"] == "VideoDecodeError"
    assert "Traceback" not in json.dumps(body)
    # the client raises the server's error class, with its message
    with pytest.raises(VideoDecodeError, match="Could not open"):
        RewardClient(url).score(b"junk bytes", "x")


def test_request_timeout_is_a_retryable_504(service, media_root):
    url, _ = service
    name = next(media_root.glob("*.mp4")).name
    status, body, _ = _post(url + "/v1/score", {"prompt": "x", "video": {"path": name}, "timeout_s": 0.0005})
    assert status == 504 and body["error"]["type"] == "TimeoutError" and body["error"]["retryable"] is True


@pytest.mark.parametrize("command", ["serve", "score-dataset"])
def test_without_ray_the_commands_name_the_extra(tmp_path, scale_bundle, sample_data_dir, command):
    argv = ["serve", str(scale_bundle)] if command == "serve" else [
        "score-dataset", str(sample_data_dir / "example.csv"), "--model", str(scale_bundle), "--out", str(tmp_path / "o.jsonl"), "--ray"]
    code = (
        "import sys\n"
        "for name in ('ray', 'ray.serve', 'ray.data'): sys.modules[name] = None  # as if not installed\n"
        "from descore_sdk.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'descore-sdk[serve]'" in proc.stderr and "Traceback" not in proc.stderr


def test_the_scale_modules_import_no_torch():
    code = ("import sys\n"
            "import descore_sdk.serve, descore_sdk.serve_ray, descore_sdk.client, descore_sdk.dataset_scoring, descore_sdk.serve_cli\n"
            "print(','.join(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


# -- faults (slow) ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_flood_past_the_queue_bound_gets_503_and_the_rest_are_right(service, reference, media_root):
    url, config = service
    _, expected = reference
    name = sorted(media_root.glob("*.mp4"))[0].name
    body = {"prompt": PROMPTS[0], "video": {"path": name}}
    flood = 3 * (config.max_queue + config.replicas * config.replica_max_ongoing) + 20
    with ThreadPoolExecutor(flood) as pool:
        answers = list(pool.map(lambda _: _post(url + "/v1/score", body), range(flood)))
    statuses = [s for s, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) > 0 and statuses.count(200) > 0
    for status, answer, _ in answers:
        if status == 200:
            assert answer["rewards"] == pytest.approx(expected[(name, PROMPTS[0])].rewards, abs=TOLERANCE)
    # the service is still healthy afterwards
    assert _post(url + "/v1/score", body)[0] == 200


def _replicas() -> list[str]:
    """Names of the live ScorerReplica actors (Serve names them SERVE_REPLICA::<app>#<deployment>#<id>)."""
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#ScorerReplica#" in a["name"])


@pytest.mark.slow
def test_a_killed_replica_is_restarted_and_requests_complete_or_retry(service, reference, media_root):
    import ray

    url, config = service
    _, expected = reference
    items = [(name, prompt) for name, prompt in expected] * 3
    before = _replicas()
    assert len(before) == config.replicas
    raw_statuses = []

    def raw(item):
        status, body, _ = _post(url + "/v1/score", {"prompt": item[1], "video": {"path": item[0]}})
        raw_statuses.append((status, body))
        return status, body

    client = RewardClient(url, backoff_s=0.5, max_retries=8)
    with ThreadPoolExecutor(8) as pool:
        raw_futures = [pool.submit(raw, item) for item in items[:16]]
        client_futures = [pool.submit(client.score, media_root / n, p) for n, p in items]
        time.sleep(0.5)
        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        client_results = [f.result() for f in client_futures]
        [f.result() for f in raw_futures]
    print("raw statuses after the kill:", sorted(s for s, _ in raw_statuses))
    # through the retrying client every request ends with the right reward
    for (name, prompt), result in zip(items, client_results):
        assert result.rewards == pytest.approx(expected[(name, prompt)].rewards, abs=TOLERANCE)
    # without retries a request either completed right or failed with a retryable error
    for status, body in raw_statuses:
        assert status == 200 or (status in (500, 503) and (not isinstance(body, dict) or body["error"]["retryable"])), (status, body)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(_replicas()) < config.replicas:
        time.sleep(1)
    after = _replicas()
    assert len(after) == config.replicas and before[0] not in after


@pytest.mark.slow
def test_graceful_shutdown_drains_in_flight_requests(service, reference, media_root):
    """Last in the module: it deletes the application."""
    from descore_sdk import serve_ray

    url, config = service
    _, expected = reference
    items = [(name, prompt) for name, prompt in expected][:8]
    with ThreadPoolExecutor(len(items)) as pool:
        futures = [pool.submit(_post, url + "/v1/score", {"prompt": p, "video": {"path": n}}) for n, p in items]
        time.sleep(0.3)  # the requests are in the replicas' queues
        stopper = threading.Thread(target=serve_ray.stop, args=(config,))
        stopper.start()
        answers = [f.result() for f in futures]
        stopper.join(120)
    for (name, prompt), (status, body, _) in zip(items, answers):
        assert status == 200, (status, body)
        assert body["rewards"] == pytest.approx(expected[(name, prompt)].rewards, abs=TOLERANCE)
