"""`descore score-dataset`: score every video of a dataset once, resumably, locally or on Ray Data.

    descore score-dataset DATA --model M --out results.parquet [--ray [--address A] [--workers N]]

DATA is what training reads (VideoAlign CSV, GenAI-Bench JSON, DeScore JSONL; `training/data.py`) or a
folder of videos with one `--prompt`. The unit of work is a distinct (video, prompt): the two videos of
many pairs are shared, and each is scored once. Every unit becomes one row:

    video, prompt, reward, rewards{dim: value}, rationale, mode, backend, num_frames,
    num_prompt_tokens, num_cot_tokens, timings_ms (JSON text in Parquet), error_type, error

`video` is the path as the data file resolves it, relative to the data folder. A video that cannot be
scored gets a row with `error_type`/`error` (the `DescoreError` class and message) and no reward.

Resuming. Rows are written as they are scored: JSONL is appended line by line (a line cut by a crash is
dropped on the next run); Parquet goes to numbered part files in `OUT.parts/`, merged into OUT when the
run ends. A rerun reads OUT (and any parts), skips every (video, prompt) already there and scores the
rest; `--retry-errors` scores the error rows again (the new row replaces the old one).

With --ray the rows come from a Ray Data pipeline: `map_batches` over an actor pool (`ActorPoolStrategy`)
of `workers` Scorers, on a local Ray instance or the cluster at --address; the driver writes the rows as
they stream back, so resuming works the same. When the data has labels, the run ends with the
accuracy report of `descore eval` (`training.metrics.evaluate`) over the pairs whose videos all scored.

numpy + pyarrow (+ Ray with --ray); no torch unless the model is a torch checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError, InvalidInputError, require

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
FORMATS = (".parquet", ".jsonl")


@dataclass
class DatasetJob:
    data: str
    model: str
    out: str
    prompt: str | None = None
    use_ray: bool = False
    address: str | None = None
    workers: int = 2
    worker_cpus: float = 1.0
    batch_size: int = 8
    backend: str = "auto"
    device: str = "cpu"
    threads: int | None = None
    score_options: dict = field(default_factory=dict)
    limit: int | None = None  # score at most this many new units, then stop
    retry_errors: bool = False
    progress: bool = True

    def __post_init__(self):
        if Path(self.out).suffix.lower() not in FORMATS:
            raise InvalidInputError(f"--out must end in .parquet or .jsonl, got {self.out}.")
        for name in ("workers", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be ≥ 1, got {getattr(self, name)}.")
        if self.limit is not None and self.limit < 0:
            raise InvalidInputError(f"limit must be ≥ 0, got {self.limit}.")

    def scorer_kwargs(self) -> dict:
        threads = self.threads if self.threads is not None else max(1, int(self.worker_cpus))
        from .serve import scorer_kwargs

        return scorer_kwargs(self.model, self.backend, self.device, threads, self.score_options)


@dataclass(frozen=True)
class Unit:
    """One (video, prompt) to score. `video` is absolute; `name` is what the row records."""

    video: str
    name: str
    prompt: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.prompt)


# -- reading the dataset ---------------------------------------------------------------------------------
def read_units(data: str | os.PathLike, prompt: str | None = None) -> tuple[list[Unit], list]:
    """(distinct units in data order, preference pairs — empty for a folder of videos)."""
    path = Path(data)
    if path.is_dir():
        if not prompt or not prompt.strip():
            raise InvalidInputError(f"{path} is a folder of videos: give the prompt they were generated for with --prompt.")
        videos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise DataError(f"{path} holds no videos ({', '.join(VIDEO_SUFFIXES)}).")
        return [Unit(str(v.resolve()), v.relative_to(path).as_posix(), prompt) for v in videos], []
    if prompt is not None:
        raise InvalidInputError("--prompt is only for a folder of videos; a data file gives each pair's prompt.")
    from .training.data import read_pairs  # torch-free reader

    pairs = read_pairs(path, on_missing="keep")
    root = Path(os.path.abspath(path.parent))
    units, seen = [], set()
    for pair in pairs:
        for video in (pair.video_a, pair.video_b):
            unit = Unit(str(video), Path(video).relative_to(root).as_posix(), pair.prompt)
            if unit.key not in seen:
                seen.add(unit.key)
                units.append(unit)
    return units, pairs


# -- scoring -----------------------------------------------------------------------------------------------
def rows_of(units: list[Unit], outcomes: list[dict]) -> list[dict]:
    """`ReplicaCore.score_items` outcomes → output rows."""
    rows = []
    for unit, outcome in zip(units, outcomes):
        row = {"video": unit.name, "prompt": unit.prompt, "reward": None, "rewards": None, "rationale": None, "mode": None,
               "backend": None, "num_frames": None, "num_prompt_tokens": None, "num_cot_tokens": None, "timings_ms": None,
               "error_type": None, "error": None}
        if "error" in outcome:
            row["error_type"], row["error"] = outcome["error"]["type"], outcome["error"]["message"]
        else:
            result = outcome["result"]
            for key in ("reward", "rewards", "rationale", "mode", "backend", "num_frames", "num_prompt_tokens", "num_cot_tokens",
                        "timings_ms"):
                row[key] = result[key]
        rows.append(row)
    return rows


def _score_local(job: DatasetJob, units: list[Unit]):
    """Yield row lists, one per `batch_size` units, from one in-process Scorer."""
    from .serve import ReplicaCore

    core = ReplicaCore(job.model, job.scorer_kwargs(), job.batch_size)
    for first in range(0, len(units), job.batch_size):
        chunk = units[first:first + job.batch_size]
        yield rows_of(chunk, core.score_items([{"video": u.video, "prompt": u.prompt, "options": {}} for u in chunk]))


class _ScorerActor:
    """The Ray Data map_batches callable: one Scorer per actor, reused for every batch it gets."""

    def __init__(self, model: str, scorer_kwargs: dict, batch_size: int):
        from descore_sdk.serve import ReplicaCore

        self.core = ReplicaCore(model, scorer_kwargs, batch_size)

    def __call__(self, batch: dict) -> dict:
        units = [Unit(str(v), str(n), str(p)) for v, n, p in zip(batch["video"], batch["name"], batch["prompt"])]
        outcomes = self.core.score_items([{"video": u.video, "prompt": u.prompt, "options": {}} for u in units])
        return {"row": [json.dumps(row) for row in rows_of(units, outcomes)]}


def _score_ray(job: DatasetJob, units: list[Unit]):
    """Yield row lists as Ray Data streams them back from the actor pool."""
    ray = require("ray", "serve", "descore score-dataset --ray")
    data = require("ray.data", "serve", "descore score-dataset --ray")
    started_here = False
    if not ray.is_initialized():
        from .cluster import join

        join(ray, job.address, **({} if job.address else {"include_dashboard": False}), log_to_driver=False,
             logging_level="ERROR")
        started_here = True
    try:
        context = data.DataContext.get_current()
        context.enable_progress_bars = False  # ours (rate, ETA) counts rows as they are written
        items = [{"video": u.video, "name": u.name, "prompt": u.prompt} for u in units]
        dataset = data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * job.workers)))
        scored = dataset.map_batches(
            _ScorerActor,
            fn_constructor_kwargs={"model": str(Path(job.model).resolve()), "scorer_kwargs": job.scorer_kwargs(),
                                   "batch_size": job.batch_size},
            batch_size=job.batch_size,
            compute=data.ActorPoolStrategy(size=job.workers),
            num_cpus=job.worker_cpus,
            num_gpus=1 if job.device.startswith("cuda") else 0,
        )
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            yield [json.loads(text) for text in batch["row"]]
    finally:
        if started_here:
            ray.shutdown()


# -- output: JSONL or Parquet, resumable --------------------------------------------------------------------
class RowStore:
    """The results file. `done()` reads what is there; `write(rows)` makes rows durable at once;
    `finish()` leaves one file (Parquet: parts merged; both: one row per unit, the latest)."""

    def __init__(self, out: str | os.PathLike, dimensions: list[str]):
        self.out = Path(out)
        self.kind = self.out.suffix.lower()
        self.dimensions = list(dimensions)
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == ".parquet":
            self.pa = require("pyarrow", "serve", "writing Parquet results")
            self.pq = require("pyarrow.parquet", "serve", "writing Parquet results")
        self._next_part = 0

    # reading
    def rows(self) -> list[dict]:
        if self.kind == ".jsonl":
            return self._jsonl_rows()
        rows = []
        files = [self.out] if self.out.is_file() else []
        if self.parts.is_dir():
            files += sorted(self.parts.glob("part-*.parquet"))  # written after OUT: later rows win
        for file in files:
            rows += [self._from_parquet(row) for row in self.pq.read_table(file).to_pylist()]
        return rows

    def _jsonl_rows(self) -> list[dict]:
        if not self.out.is_file():
            return []
        raw = self.out.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):  # a line cut by an interrupted run: drop it, keep the rest
            with open(self.out, "r+b") as handle:
                handle.truncate(len(complete))
        rows = []
        for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{self.out}, line {number}: not a results row ({exc.msg}); move the file away to start over.") from exc
        return rows

    def done(self, retry_errors: bool) -> dict[tuple[str, str], dict]:
        latest = {}
        for row in self.rows():
            latest[(row["video"], row["prompt"])] = row
        return {k: r for k, r in latest.items() if not (retry_errors and r.get("error_type"))}

    # writing
    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self.kind == ".jsonl":
            with open(self.out, "a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
                handle.flush()
                os.fsync(handle.fileno())
            return
        self.parts.mkdir(exist_ok=True)
        existing = sorted(self.parts.glob("part-*.parquet"))
        self._next_part = max(self._next_part, int(existing[-1].stem.split("-")[1]) + 1 if existing else 0)
        final = self.parts / f"part-{self._next_part:06d}.parquet"
        temporary = final.with_suffix(".tmp")
        self.pq.write_table(self._table(rows), temporary)
        os.replace(temporary, final)  # a part is there whole or not at all
        self._next_part += 1

    def finish(self) -> list[dict]:
        """One row per unit (the latest), in one file; returns the rows."""
        latest: dict = {}
        for row in self.rows():
            latest[(row["video"], row["prompt"])] = row
        rows = list(latest.values())
        temporary = self.out.with_name(self.out.name + ".tmp")
        if self.kind == ".jsonl":
            temporary.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        else:
            self.pq.write_table(self._table(rows), temporary)
        os.replace(temporary, self.out)
        if self.parts.is_dir():
            shutil.rmtree(self.parts)
        return rows

    # Parquet schema: rewards as a struct of the model's dimensions, timings as JSON text (their keys
    # depend on the backend).
    def _schema(self):
        pa = self.pa
        return pa.schema([
            ("video", pa.string()), ("prompt", pa.string()), ("reward", pa.float64()),
            ("rewards", pa.struct([(d, pa.float64()) for d in self.dimensions])), ("rationale", pa.string()),
            ("mode", pa.string()), ("backend", pa.string()), ("num_frames", pa.int64()), ("num_prompt_tokens", pa.int64()),
            ("num_cot_tokens", pa.int64()), ("timings_ms", pa.string()), ("error_type", pa.string()), ("error", pa.string()),
        ])

    def _table(self, rows: list[dict]):
        prepared = [{**row, "timings_ms": None if row.get("timings_ms") is None else json.dumps(row["timings_ms"])} for row in rows]
        return self.pa.Table.from_pylist(prepared, schema=self._schema())

    @staticmethod
    def _from_parquet(row: dict) -> dict:
        if row.get("timings_ms") is not None:
            row["timings_ms"] = json.loads(row["timings_ms"])
        return row


# -- the job -------------------------------------------------------------------------------------------------
class _RowResult:
    """What `training.evaluation.pair_rewards` reads from a scored video."""

    def __init__(self, row: dict):
        self.reward = row["reward"]
        self.rewards = row["rewards"]


def accuracy_report(pairs, rows: list[dict], dimensions: list[str], data_root: Path) -> dict | None:
    """`descore eval`'s report over the pairs whose two videos both scored (None without labels)."""
    if not pairs or not any(p.labels for p in pairs):
        return None
    from .training.evaluation import pair_rewards
    from .training.metrics import evaluate

    scored = {}
    for row in rows:
        if row.get("error_type") is None and row.get("reward") is not None:
            scored[(str(data_root / row["video"]), row["prompt"])] = _RowResult(row)
    usable = [p for p in pairs if (str(p.video_a), p.prompt) in scored and (str(p.video_b), p.prompt) in scored]
    if not usable:
        return {"n_pairs_evaluated": 0, "n_pairs_skipped": len(pairs)}
    pred_a, pred_b, labels, scored_with = pair_rewards(usable, scored, dimensions)
    report = evaluate(pred_a, pred_b, labels)
    report["scored_with"] = scored_with
    report["n_pairs_evaluated"] = len(usable)
    report["n_pairs_skipped"] = len(pairs) - len(usable)
    return report


def run_job(job: DatasetJob) -> dict:
    """Score what is not yet in `job.out`; returns the summary (and the accuracy report when labelled)."""
    from .config import DescoreConfig

    model = Path(job.model)
    if not model.is_dir():
        raise InvalidInputError(f"--model {job.model} is not a folder; pass a checkpoint or exported bundle.")
    dimensions = list(DescoreConfig.load(model).dimension_names)
    units, pairs = read_units(job.data, job.prompt)
    store = RowStore(job.out, dimensions)
    done = store.done(job.retry_errors)
    todo = [u for u in units if u.key not in done]
    pending = todo if job.limit is None else todo[: job.limit]

    bar = _progress(len(pending), job.progress)
    start = time.perf_counter()
    scored = failed = 0
    reasons: Counter = Counter()
    examples: dict[str, str] = {}
    if pending:
        batches = _score_ray(job, pending) if job.use_ray else _score_local(job, pending)
        for rows in batches:
            store.write(rows)
            for row in rows:
                if row["error_type"]:
                    failed += 1
                    reasons[row["error_type"]] += 1
                    examples.setdefault(row["error_type"], f"{row['video']}: {row['error']}")
                else:
                    scored += 1
            if bar is not None:
                bar.update(len(rows))
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - start
    rows = store.finish()
    summary = {
        "data": str(job.data), "out": str(job.out), "model": str(job.model), "engine": "ray" if job.use_ray else "local",
        "units": len(units), "already_done": len(units) - len(todo),
        "scored": scored, "failed": failed, "failure_reasons": dict(reasons), "failure_examples": examples,
        "remaining": len(todo) - len(pending),
        "rows_in_output": len(rows), "errors_in_output": sum(1 for r in rows if r.get("error_type")),
        "wall_s": round(wall, 3), "videos_per_s": round((scored + failed) / wall, 3) if wall > 0 and pending else None,
    }
    data_root = Path(os.path.abspath(Path(job.data).parent)) if not Path(job.data).is_dir() else Path(job.data).resolve()
    summary["report"] = accuracy_report(pairs, rows, dimensions, data_root)
    return summary


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="scoring", unit="video", file=sys.stderr, smoothing=0.1)


def format_summary(summary: dict) -> str:
    lines = [
        f"{summary['data']} → {summary['out']} ({summary['engine']}): {summary['units']} videos, "
        f"{summary['already_done']} already done, {summary['scored']} scored, {summary['failed']} failed"
        + (f", {summary['remaining']} left for a later run" if summary["remaining"] else ""),
    ]
    if summary["videos_per_s"]:
        lines.append(f"throughput: {summary['videos_per_s']:.2f} videos/s over {summary['wall_s']:.1f} s")
    for kind, count in summary["failure_reasons"].items():
        lines.append(f"failed ({kind}): {count}, e.g. {summary['failure_examples'][kind]}")
    if summary["errors_in_output"]:
        lines.append(f"{summary['errors_in_output']} error row(s) in the output; rerun with --retry-errors to score them again")
    report = summary.get("report")
    if report and "dims" in report:
        from .training.evaluation import format_report

        header = (f"accuracy on {report['n_pairs_evaluated']} pairs"
                  + (f" ({report['n_pairs_skipped']} skipped: a video not scored)" if report["n_pairs_skipped"] else ""))
        lines.append(format_report(report, header))
    return "\n".join(lines)


__all__ = ["DatasetJob", "Unit", "RowStore", "read_units", "run_job", "format_summary", "accuracy_report"]
