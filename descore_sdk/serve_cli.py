"""`descore serve` and `descore score-dataset`: the command lines of scoring at scale.

Both need the `serve` extra (Ray); without it they stop with a `MissingDependencyError` that names
`pip install 'descore-sdk[serve]'` (score-dataset without --ray needs only pyarrow for Parquet).
"""

from __future__ import annotations

import json
import sys

OPTION_FLAGS = ("mode", "max_new_tokens", "temperature", "seed", "adaptive_threshold", "adaptive_band")


def _score_options(args) -> dict:
    options = {name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name, None) is not None}
    if "adaptive_band" in options:
        options["adaptive_band"] = tuple(options["adaptive_band"])
    return options


def _add_scoring_flags(p) -> None:
    p.add_argument("--backend", default="auto", help="auto (onnxruntime for a bundle, torch for a checkpoint), torch, onnxruntime")
    p.add_argument("--device", default="cpu", help="cpu or cuda (replicas are pinned to one GPU each)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads per Scorer")
    p.add_argument("--mode", default=None, choices=["think", "fast", "adaptive"])
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--adaptive-threshold", type=float, default=None)
    p.add_argument("--adaptive-band", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))


def cmd_serve(args) -> int:
    from .serve import ServeConfig, run_server

    config = ServeConfig(
        model=args.model, replicas=args.replicas, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
        address=args.address, host=args.host, port=args.port, media_root=args.media_root, max_queue=args.max_queue,
        request_timeout_s=args.request_timeout_s, max_request_mb=args.max_request_mb, backend=args.backend,
        device=args.device, threads=args.threads, replica_cpus=args.replica_cpus, score_options=_score_options(args),
    )
    return run_server(config)


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a model as an HTTP reward service on Ray Serve (needs descore-sdk[serve])")
    p.add_argument("model", help="checkpoint folder or exported bundle (must exist on every Ray node)")
    p.add_argument("--replicas", type=int, default=1, help="Scorer replicas (one per GPU when --device cuda)")
    p.add_argument("--max-batch", type=int, default=8, help="most videos per Scorer.score_batch call")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a replica waits to fill a batch")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 to listen on every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--media-root", default=None, help="folder whose videos requests may name by path (default: uploads only)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a replica; past it the service answers 503")
    p.add_argument("--request-timeout-s", type=float, default=120.0, help="a request not scored by then gets 504")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body (and path-named video) accepted")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica")
    _add_scoring_flags(p)
    p.set_defaults(func=cmd_serve)


def cmd_score_dataset(args) -> int:
    from .dataset_scoring import DatasetJob, format_summary, run_job

    job = DatasetJob(
        data=args.data, model=args.model, out=args.out, prompt=args.prompt, use_ray=args.ray, address=args.address,
        workers=args.workers, worker_cpus=args.worker_cpus, batch_size=args.batch_size, backend=args.backend, device=args.device, threads=args.threads,
        score_options=_score_options(args), limit=args.limit, retry_errors=args.retry_errors,
        progress=not args.json and sys.stderr.isatty(),
    )
    summary = run_job(job)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    return 0 if summary["failed"] == 0 else 1


def add_score_dataset(sub) -> None:
    p = sub.add_parser("score-dataset", help="score every video of a dataset once, into Parquet/JSONL (resumable; --ray for a cluster)")
    p.add_argument("data", help="VideoAlign .csv, GenAI-Bench .json, DeScore .jsonl, or a folder of videos (with --prompt)")
    p.add_argument("--model", required=True, help="checkpoint folder or exported bundle")
    p.add_argument("--out", required=True, help="results file: .parquet or .jsonl; a rerun skips the rows already in it")
    p.add_argument("--prompt", default=None, help="the prompt of every video, when DATA is a folder")
    p.add_argument("--ray", action="store_true", help="run as a Ray Data pipeline (an actor pool of Scorers)")
    p.add_argument("--address", default=None, help="Ray cluster address with --ray (default: a local Ray instance)")
    p.add_argument("--workers", type=int, default=2, help="Scorer actors with --ray")
    p.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs Ray reserves per Scorer actor with --ray")
    p.add_argument("--batch-size", type=int, default=8, help="videos per score_batch call")
    p.add_argument("--limit", type=int, default=None, help="score at most this many new videos, then stop (resume later)")
    p.add_argument("--retry-errors", action="store_true", help="score again the rows a previous run wrote as errors")
    p.add_argument("--json", action="store_true", help="print the summary (and accuracy report) as one JSON object")
    _add_scoring_flags(p)
    p.set_defaults(func=cmd_score_dataset)


def add_subcommands(sub) -> None:
    add_serve(sub)
    add_score_dataset(sub)
