"""`descore serve` as a user runs it: a separate process that starts its own local Ray instance,
answers HTTP, and on SIGTERM drains and exits 0. (test_serve.py tests the service itself.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("torch")

from descore_sdk import Scorer  # noqa: E402
from descore_sdk.client import RewardClient  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_descore_serve_command_serves_and_drains_on_sigterm(scale_bundle, tmp_path):
    from importlib import resources

    assets = Path(str(resources.files("descore_sdk.assets") / "videos"))  # small clips: decoding stays cheap
    sample_videos = sorted(assets.glob("*.mp4"))
    port = _free_port()
    argv = [sys.executable, "-m", "descore_sdk.cli", "serve", str(scale_bundle), "--port", str(port), "--replica-cpus", "0.5",
            "--threads", "1", "--max-new-tokens", "4", "--media-root", str(sample_videos[0].parent)]
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        client = RewardClient(f"http://127.0.0.1:{port}", max_retries=0)
        deadline = time.monotonic() + 180
        while not client.ready():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        result = RewardClient(f"http://127.0.0.1:{port}", send_paths=True).score(sample_videos[0].name, "a girl sits down")
        expected = Scorer.from_pretrained(scale_bundle, max_new_tokens=4, backend_options={"threads": 1}).score(sample_videos[0], "a girl sits down")
        assert result.rewards == pytest.approx(expected.rewards, abs=1e-4) and result.video == sample_videos[0].name
        # SIGTERM while requests are queued and in flight: every one of them is still answered.
        busy = RewardClient(f"http://127.0.0.1:{port}", send_paths=True, max_retries=0, concurrency=16)
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(busy.score, sample_videos[0].name, "a girl sits down") for _ in range(16)]
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            drained = [f.result(timeout=120) for f in futures]
        assert all(r.rewards == pytest.approx(expected.rewards, abs=1e-4) for r in drained)
        assert proc.wait(120) == 0
        output = (tmp_path / "serve.log").read_text()
        assert "Draining" in output and "Traceback" not in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()


@pytest.mark.slow
def test_descore_serve_deploys_onto_an_existing_cluster(scale_bundle, tmp_path):
    """`--address`: the service joins a Ray cluster started apart from it (`ray start --head`, here a
    one-node cluster on this machine) instead of starting its own, and answers as the direct Scorer."""
    from importlib import resources

    video = sorted(Path(str(resources.files("descore_sdk.assets") / "videos")).glob("*.mp4"))[0]
    ray_cli = Path(sys.executable).with_name("ray")
    gcs_port, http_port = _free_port(), _free_port()
    # One authentication mode for the head and the service (Ray 2.5x+ may turn token auth on for `ray start`).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    head_log = open(tmp_path / "head.log", "w+")
    # --block keeps the head in the foreground, so stopping this process stops exactly this cluster.
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats", "--block"],
                            stdout=head_log, stderr=subprocess.STDOUT, env=env)
    log = open(tmp_path / "serve.log", "w+")
    serve = None
    try:
        argv = [sys.executable, "-m", "descore_sdk.cli", "serve", str(scale_bundle), "--address", f"127.0.0.1:{gcs_port}",
                "--port", str(http_port), "--replica-cpus", "0.5", "--threads", "1", "--max-new-tokens", "4",
                "--media-root", str(video.parent)]
        deadline = time.monotonic() + 180
        while True:  # the head's GCS port must be open before the service looks for it
            try:
                socket.create_connection(("127.0.0.1", gcs_port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()[-2000:]
                time.sleep(0.5)
        serve = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        client = RewardClient(f"http://127.0.0.1:{http_port}", max_retries=0, send_paths=True)
        while not client.ready():
            assert serve.poll() is None and head.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "serve.log").read_text()[-3000:] + (tmp_path / "head.log").read_text()[-2000:])
            time.sleep(1)
        result = client.score(video.name, "a girl sits down")
        expected = Scorer.from_pretrained(scale_bundle, max_new_tokens=4, backend_options={"threads": 1}).score(video, "a girl sits down")
        assert result.rewards == pytest.approx(expected.rewards, abs=1e-4)
        # The banner is printed right after deploy returns, which can be after the app already answers.
        banner = f"on Ray cluster 127.0.0.1:{gcs_port}"
        while banner not in (output := (tmp_path / "serve.log").read_text()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert banner in output, output[-2000:]
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(120) == 0
    finally:
        for proc in (serve, head):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
        log.close()
        head_log.close()


def test_a_wrong_cluster_address_is_a_quick_typed_error(scale_bundle, tmp_path):
    """Nothing listens at the address: one error line within seconds (ray.init alone waits for
    minutes), for `serve` and for `score-dataset --ray`."""
    address = f"127.0.0.1:{_free_port()}"
    (tmp_path / "clips").mkdir()
    commands = [
        ["serve", str(scale_bundle), "--address", address, "--port", str(_free_port())],
        ["score-dataset", str(tmp_path / "clips"), "--model", str(scale_bundle), "--prompt", "a cat", "--out",
         str(tmp_path / "out.jsonl"), "--ray", "--address", address],
    ]
    from importlib import resources
    import shutil

    shutil.copy(sorted(Path(str(resources.files("descore_sdk.assets") / "videos")).glob("*.mp4"))[0], tmp_path / "clips")
    for argv in commands:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "descore_sdk.cli", *argv], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode != 0 and time.monotonic() - started < 60, argv
        assert f"descore: error: No Ray cluster answers at {address}" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
