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
