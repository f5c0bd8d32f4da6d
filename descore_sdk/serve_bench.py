"""Measure `descore serve` against in-process scoring: requests/s and p50/p95 latency at 1, 4 and 16
concurrent clients, with Ray Serve batching on (--max-batch B) and off (max batch 1), on a local Ray.

    python -m descore_sdk.serve_bench --model BUNDLE [--videos a.mp4 b.mp4 ...] [--requests 48] [--json]

Every request scores one video (the videos are cycled; the same ones are scored in-process first).
In-process numbers: `Scorer.score` one at a time, and `Scorer.score_batch` over B videos. The
"batching gain" is the service's throughput with batching over without, at the highest concurrency.
Results go to stdout; SERVING.md records what they were on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(latencies: list[float]) -> dict:
    values = np.asarray(latencies) * 1e3
    return {"p50_ms": round(float(np.percentile(values, 50)), 1), "p95_ms": round(float(np.percentile(values, 95)), 1)}


def in_process(model: str, videos: list[Path], prompt: str, options: dict, threads: int, batch: int, requests: int) -> dict:
    from .scorer import Scorer

    scorer = Scorer.from_pretrained(model, backend_options={"threads": threads}, **options)
    scorer.score(videos[0], prompt)  # warm-up
    latencies = []
    start = time.perf_counter()
    for i in range(requests):
        t0 = time.perf_counter()
        scorer.score(videos[i % len(videos)], prompt)
        latencies.append(time.perf_counter() - t0)
    single = {"requests_per_s": round(requests / (time.perf_counter() - start), 2), **_percentiles(latencies)}
    groups = [[videos[(g * batch + j) % len(videos)] for j in range(batch)] for g in range(max(1, requests // batch))]
    start = time.perf_counter()
    for group in groups:
        scorer.score_batch(group, prompt, batch_size=batch)
    batched = {"videos_per_s": round(len(groups) * batch / (time.perf_counter() - start), 2), "batch_size": batch}
    return {"score": single, "score_batch": batched}


def against_service(url: str, videos: list[Path], prompt: str, clients: int, requests: int) -> dict:
    from .client import RewardClient

    client = RewardClient(url, concurrency=clients)
    payloads = [v.read_bytes() for v in videos]
    client.score(payloads[0], prompt)  # warm-up
    latencies = []

    def one(i: int) -> None:
        t0 = time.perf_counter()
        client.score(payloads[i % len(payloads)], prompt)
        latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    client.close()
    return {"clients": clients, "requests_per_s": round(requests / wall, 2), **_percentiles(latencies)}


def run(args) -> dict:
    import ray
    from ray import serve

    from . import serve_ray
    from .serve import ServeConfig

    videos = [Path(v) for v in args.videos]
    options = {"max_new_tokens": args.max_new_tokens, "mode": args.mode}
    report = {"model": args.model, "videos": [v.name for v in videos], "mode": args.mode, "max_new_tokens": args.max_new_tokens,
              "cpus": os.cpu_count(), "in_process": in_process(args.model, videos, args.prompt, options, args.threads, args.max_batch,
                                                               args.requests)}
    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        for label, max_batch in (("batched", args.max_batch), ("unbatched", 1)):
            config = ServeConfig(model=args.model, replicas=args.replicas, max_batch=max_batch, batch_wait_ms=args.batch_wait_ms,
                                 port=_free_port(), max_queue=256, threads=args.threads, replica_cpus=args.replica_cpus,
                                 score_options=options, app_name=f"bench-{label}",
                                 max_ongoing=2 * args.max_batch)  # the same for both: only batching differs
            url = serve_ray.start(config)
            from .client import RewardClient

            RewardClient(url).wait_ready(300)
            report[label] = {"max_batch": max_batch,
                             "runs": [against_service(url, videos, args.prompt, c, args.requests) for c in args.clients]}
            serve.delete(config.app_name)
            serve.shutdown()
    finally:
        ray.shutdown()
    top = max(args.clients)
    batched = next(r for r in report["batched"]["runs"] if r["clients"] == top)["requests_per_s"]
    unbatched = next(r for r in report["unbatched"]["runs"] if r["clients"] == top)["requests_per_s"]
    report["batching_gain_at_max_clients"] = round(batched / unbatched, 2) if unbatched else None
    return report


def format_report(report: dict) -> str:
    ip = report["in_process"]
    lines = [f"model {report['model']} ({report['mode']}, {report['max_new_tokens']} CoT tokens), {len(report['videos'])} videos, "
             f"{report['cpus']} CPUs",
             f"in-process Scorer.score: {ip['score']['requests_per_s']} req/s, p50 {ip['score']['p50_ms']} ms, p95 {ip['score']['p95_ms']} ms",
             f"in-process Scorer.score_batch({ip['score_batch']['batch_size']}): {ip['score_batch']['videos_per_s']} videos/s",
             f"{'service':<22} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}"]
    for label in ("batched", "unbatched"):
        for r in report[label]["runs"]:
            lines.append(f"{label + ' (max_batch ' + str(report[label]['max_batch']) + ')':<22} {r['clients']:>7} "
                         f"{r['requests_per_s']:>8} {r['p50_ms']:>8} {r['p95_ms']:>8}")
    lines.append(f"batching gain at {max(r['clients'] for r in report['batched']['runs'])} clients: {report['batching_gain_at_max_clients']}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m descore_sdk.serve_bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--videos", nargs="+", default=None, help="default: the packaged sample videos")
    p.add_argument("--prompt", default="A girl in a pink dress walks to a chair in a cozy bedroom and sits on it.")
    p.add_argument("--mode", default="think", choices=["think", "fast"])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--requests", type=int, default=48, help="requests per measurement")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--replica-cpus", type=float, default=1.0)
    p.add_argument("--ray-cpus", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.videos is None:
        from importlib import resources

        folder = resources.files("descore_sdk.assets") / "videos"
        args.videos = sorted(str(folder / name) for name in os.listdir(str(folder)) if name.endswith(".mp4"))
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
