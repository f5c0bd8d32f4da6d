"""Fuzzing and load checks of a Scorer: odd and broken inputs, and many threads on one Scorer.

Fuzz (`run_fuzz`): every case is a `score` or `compare` call with a mutated input — a container made
from the shipped sample videos and then truncated, bit-flipped, spliced, padded or zeroed; a random
array passed as decoded frames (wrong dtype, shape, range, layout); or an odd prompt (very long,
control characters, lone surrogates, the reward token's text, chat special tokens, not a string).
A case passes when the call returns a result with finite rewards or raises a `DescoreError`; it fails
when it raises anything else, returns a non-finite reward, takes longer than the per-call limit, or
kills the process. Calls run in a worker process, so that a hang or a crash is caught and counted
(the worker is then restarted) rather than stopping the run. Each case is made from its number
alone (`make_case(i, seed)`), so a failing case is reproduced with `--only I`.

Load (`run_threads`): T threads each make N `score`/`compare` calls on one shared Scorer; every result
must equal the same call made serially, and the process memory (RSS) after each round is recorded.

Short runs are part of the test suite (tests/test_fuzz.py). The long runs:

    OMP_NUM_THREADS=1 python tests/fuzz_harness.py fuzz --model BUNDLE_OR_CHECKPOINT --cases 10000
    OMP_NUM_THREADS=1 python tests/fuzz_harness.py threads --model BUNDLE_OR_CHECKPOINT --threads 8 --calls 50

(`descore quickstart` leaves a bundle in ~/.cache/descore/quickstart/onnx and the checkpoint beside it.)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import threading
import time
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np

DEFAULT_CALL_LIMIT_S = 20.0
REWARD_TEXT = "<Reward>"
SPECIAL_TEXTS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|video_pad|>", "<|vision_end|>",
                 "<think>", "</think>", REWARD_TEXT]


def sample_video_bytes() -> list[bytes]:
    videos = resources.files("descore_sdk.assets").joinpath("videos")
    return [videos.joinpath(name).read_bytes() for name in sorted(p.name for p in videos.iterdir() if p.name.endswith(".mp4"))]


# -- cases ---------------------------------------------------------------------------------------------
def _mutated_container(rng: np.random.Generator, samples: list[bytes]) -> tuple[str, bytes]:
    data = bytearray(samples[rng.integers(len(samples))])
    kind = rng.choice(["truncate", "bitflip", "splice", "zero", "duplicate", "insert", "header_only", "random", "empty"])
    if kind == "truncate":
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == "bitflip":
        for position in rng.integers(0, len(data), size=int(rng.integers(1, 64))):
            data[position] ^= 1 << int(rng.integers(8))
    elif kind == "splice":
        other = samples[rng.integers(len(samples))]
        data = data[: int(rng.integers(0, len(data)))] + other[int(rng.integers(0, len(other))):]
    elif kind == "zero":
        start = int(rng.integers(0, len(data)))
        length = min(int(rng.integers(1, 4096)), len(data) - start)
        data[start:start + length] = bytes(length)
    elif kind == "duplicate":
        start = int(rng.integers(0, len(data)))
        chunk = data[start:start + int(rng.integers(1, 8192))]
        at = int(rng.integers(0, len(data)))
        data = data[:at] + chunk + data[at:]
    elif kind == "insert":
        at = int(rng.integers(0, len(data)))
        data = data[:at] + rng.integers(0, 256, size=int(rng.integers(1, 2048)), dtype=np.uint8).tobytes() + data[at:]
    elif kind == "header_only":
        data = data[:64]
    elif kind == "random":
        data = bytearray(rng.integers(0, 256, size=int(rng.integers(1, 50_000)), dtype=np.uint8).tobytes())
    else:
        data = bytearray()
    return f"container:{kind}", bytes(data)


def _odd_array(rng: np.random.Generator):
    kind = rng.choice(["dtype", "shape", "range", "layout", "good", "tiny", "extreme_aspect", "zero_size"])
    t, h, w = int(rng.integers(1, 9)), int(rng.integers(1, 80)), int(rng.integers(1, 80))
    if kind == "dtype":
        dtype = rng.choice(["float32", "float64", "int16", "int64", "bool", "uint16", "complex64"])
        return "array:dtype", (rng.random((t, h, w, 3)) * 300 - 20).astype(dtype)
    if kind == "shape":
        shape = tuple(int(s) for s in rng.integers(0, 6, size=int(rng.integers(0, 6))))
        channels = int(rng.choice([1, 2, 4, 3]))
        return "array:shape", rng.integers(0, 256, size=shape + (channels,), dtype=np.uint8)
    if kind == "range":
        values = rng.choice([np.nan, np.inf, -np.inf, -1e9, 1e9])
        return "array:range", np.full((t, h, w, 3), values, dtype=np.float32)
    if kind == "layout":
        frames = rng.integers(0, 256, size=(t, 3, h, w), dtype=np.uint8)  # channels first
        return "array:layout", frames if rng.random() < 0.5 else np.moveaxis(frames, 1, -1)[:, ::-1, ::2]  # a view
    if kind == "tiny":
        return "array:tiny", rng.integers(0, 256, size=(1, 1, 1, 3), dtype=np.uint8)
    if kind == "extreme_aspect":
        return "array:aspect", rng.integers(0, 256, size=(2, 1, int(rng.integers(200, 2000)), 3), dtype=np.uint8)
    if kind == "zero_size":
        return "array:empty", np.zeros((0, h, w, 3), dtype=np.uint8)
    return "array:good", rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def _odd_prompt(rng: np.random.Generator):
    kind = rng.choice(["normal", "long", "control", "surrogate", "special", "reward", "empty", "not_str", "unicode"])
    base = "a red fox running through fresh snow"
    if kind == "long":
        return "prompt:long", base * int(rng.integers(100, 3000))
    if kind == "control":
        return "prompt:control", "".join(chr(int(c)) for c in rng.integers(0, 32, size=40)) + base
    if kind == "surrogate":
        return "prompt:surrogate", base + chr(int(rng.integers(0xD800, 0xE000))) + base
    if kind == "special":
        return "prompt:special", "".join(rng.choice(SPECIAL_TEXTS) + base for _ in range(int(rng.integers(1, 6))))
    if kind == "reward":
        return "prompt:reward", f"{base} {REWARD_TEXT}" * int(rng.integers(1, 4))
    if kind == "empty":
        return "prompt:empty", rng.choice(["", "   ", "\n\t"])
    if kind == "not_str":
        return "prompt:not_str", [None, b"bytes prompt", 42, ["a list"]][int(rng.integers(4))]
    if kind == "unicode":
        return "prompt:unicode", "".join(chr(int(c)) for c in rng.integers(0x80, 0x2FFFF, size=200) if not 0xD800 <= c < 0xE000)
    return "prompt:normal", base


def make_case(index: int, seed: int, samples: list[bytes]) -> dict:
    """Case `index` of a run: {call, videos, prompt, mode, kinds}, the same for the same (index, seed)."""
    rng = np.random.default_rng([seed, index])
    videos, kinds = [], []
    for _ in range(2 if rng.random() < 0.25 else 1):
        pick = rng.random()
        if pick < 0.45:
            kind, video = _mutated_container(rng, samples)
        elif pick < 0.75:
            kind, video = _odd_array(rng)
        else:
            kind, video = "container:intact", samples[rng.integers(len(samples))]
        videos.append(video)
        kinds.append(kind)
    prompt_kind, prompt = _odd_prompt(rng) if rng.random() < 0.5 else ("prompt:normal", "a red fox running through fresh snow")
    kinds.append(prompt_kind)
    mode = "think" if rng.random() < 0.3 else "fast"
    return {"call": "compare" if len(videos) == 2 else "score", "videos": videos, "prompt": prompt, "mode": mode, "kinds": kinds}


def run_case(scorer, case: dict, max_new_tokens: int = 16) -> str:
    """'score' or 'error:<DescoreError subclass>'; anything else is a failure ('crash:...', 'nonfinite')."""
    from descore_sdk.errors import DescoreError

    try:
        if case["call"] == "compare":
            pair = scorer.compare(*case["videos"], case["prompt"], mode=case["mode"], max_new_tokens=max_new_tokens)
            rewards = list(pair.a.rewards.values()) + list(pair.b.rewards.values()) + [pair.prob_a_better]
        else:
            result = scorer.score(case["videos"][0], case["prompt"], mode=case["mode"], max_new_tokens=max_new_tokens)
            rewards = list(result.rewards.values())
    except DescoreError as exc:
        return f"error:{type(exc).__name__}"
    except Exception as exc:  # noqa: BLE001 - the point is to catch what should not happen
        return f"crash:{type(exc).__name__}: {str(exc)[:200]}"
    return "score" if all(math.isfinite(r) for r in rewards) else "nonfinite"


# -- worker process ------------------------------------------------------------------------------------
def _rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _worker(model: str, backend: str, seed: int, requests, replies) -> None:
    from descore_sdk import Scorer

    scorer = Scorer.from_pretrained(model, backend=backend, backend_options={"threads": 1} if backend == "onnxruntime" else None)
    samples = sample_video_bytes()
    canary = {"call": "score", "videos": [samples[0]], "prompt": "a girl sits on a chair", "mode": "fast", "kinds": []}
    scorer.score(samples[0], "warm-up", mode="think", max_new_tokens=4)
    replies.put(("ready", scorer.score(canary["videos"][0], canary["prompt"], mode="fast").rewards, _rss_mb()))
    while True:
        index = requests.get()
        if index is None:
            replies.put(("done", scorer.score(canary["videos"][0], canary["prompt"], mode="fast").rewards, _rss_mb()))
            return
        start = time.perf_counter()
        outcome = run_case(scorer, make_case(index, seed, samples))
        replies.put((index, outcome, time.perf_counter() - start))


class _Worker:
    def __init__(self, model: str, backend: str, seed: int):
        context = mp.get_context("spawn")  # a clean interpreter: no inherited threads or locks
        self.requests, self.replies = context.Queue(), context.Queue()
        self.process = context.Process(target=_worker, args=(model, backend, seed, self.requests, self.replies), daemon=True)
        self.process.start()
        deadline = time.monotonic() + 300
        while True:  # wait for the model to load, or for the worker to fail doing so
            try:
                tag, self.canary, self.rss_start = self.replies.get(timeout=1)
                break
            except Exception:  # queue.Empty
                if not self.process.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the fuzz worker could not load {model} (exit code {self.process.exitcode}); see its traceback above")
        assert tag == "ready"

    def call(self, index: int, limit_s: float):
        self.requests.put(index)
        try:
            return self.replies.get(timeout=limit_s)
        except Exception:  # queue.Empty: the call hangs, or the worker died
            return None

    def finish(self):
        self.requests.put(None)
        tag, canary, rss = self.replies.get(timeout=120)
        self.process.join(timeout=30)
        return canary, rss

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=30)


def run_fuzz(model: str, *, cases: int, seed: int = 0, backend: str = "auto", limit_s: float = DEFAULT_CALL_LIMIT_S,
             only: int | None = None, log=None) -> dict:
    """Run `cases` fuzz cases (or case `only`) in a worker process; return the figures."""
    worker = _Worker(model, backend, seed)
    first_canary, rss_start = worker.canary, worker.rss_start
    outcomes, failures, durations, restarts = Counter(), [], [], 0
    by_kind: dict[str, Counter] = {}
    samples = sample_video_bytes()
    start = time.perf_counter()
    indices = [only] if only is not None else range(cases)
    for index in indices:
        reply = worker.call(index, limit_s)
        if reply is None:
            alive = worker.process.is_alive()
            outcome = f"hang>{limit_s:.0f}s" if alive else f"worker died (exit {worker.process.exitcode})"
            worker.kill()
            worker = _Worker(model, backend, seed)
            restarts += 1
            duration = limit_s
        else:
            _, outcome, duration = reply
        durations.append(duration)
        key = outcome if outcome.startswith(("score", "error:")) else "FAIL"
        outcomes[key] += 1
        for kind in make_case(index, seed, samples)["kinds"]:
            by_kind.setdefault(kind, Counter())[key] += 1
        if key == "FAIL":
            failures.append({"case": index, "outcome": outcome, "kinds": make_case(index, seed, samples)["kinds"]})
        if log and (index + 1) % 500 == 0:
            log(f"{index + 1} cases, {dict(outcomes)}, {time.perf_counter() - start:.0f} s")
    last_canary, rss_end = worker.finish()
    durations = np.asarray(durations)
    return {
        "cases": len(durations), "seed": seed, "backend": backend, "per_call_limit_s": limit_s,
        "outcomes": dict(outcomes), "failures": failures[:50], "n_failures": len(failures), "worker_restarts": restarts,
        "seconds": round(time.perf_counter() - start, 1),
        "call_s": {"mean": round(float(durations.mean()), 4), "p99": round(float(np.percentile(durations, 99)), 4),
                   "max": round(float(durations.max()), 4)},
        "rss_mb": {"start": round(rss_start, 1), "end": round(rss_end, 1)},
        "canary_unchanged": first_canary == last_canary,
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
    }


# -- threads -------------------------------------------------------------------------------------------
def _thread_calls(samples: list[bytes], calls: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    prompts = ["a girl sits on a chair", "an astronaut runs on the moon", "a red fox in the snow"]
    out = []
    for _ in range(calls):
        a, b = (int(i) for i in rng.integers(len(samples), size=2))
        prompt, mode = prompts[int(rng.integers(3))], ("think" if rng.random() < 0.5 else "fast")
        out.append(("compare", a, b, prompt, mode) if rng.random() < 0.4 else ("score", a, None, prompt, mode))
    return out


def _call(scorer, samples, spec, max_new_tokens):
    kind, a, b, prompt, mode = spec
    if kind == "compare":
        pair = scorer.compare(samples[a], samples[b], prompt, mode=mode, max_new_tokens=max_new_tokens)
        return (pair.a.rewards, pair.a.rationale, pair.b.rewards, pair.b.rationale)
    result = scorer.score(samples[a], prompt, mode=mode, max_new_tokens=max_new_tokens)
    return (result.rewards, result.rationale)


def run_threads(model: str, *, threads: int = 8, calls: int = 50, rounds: int = 3, backend: str = "auto",
                max_new_tokens: int = 16, timeout_s: float = 1800, log=None) -> dict:
    """`threads` threads × `calls` calls on one Scorer, `rounds` times; results vs serial, and RSS."""
    from descore_sdk import Scorer

    options = {"threads": 1} if backend == "onnxruntime" or (backend == "auto" and (Path(model) / "manifest.json").is_file()) else None
    scorer = Scorer.from_pretrained(model, backend=backend, backend_options=options)
    samples = sample_video_bytes()
    plans = [_thread_calls(samples, calls, seed) for seed in range(threads)]
    start = time.perf_counter()
    serial = [[_call(scorer, samples, spec, max_new_tokens) for spec in plan] for plan in plans]
    serial_s = time.perf_counter() - start
    rss = [_rss_mb()]
    mismatches, errors, deadlock = 0, [], False
    round_s = []
    for _ in range(rounds):
        results: list[list | None] = [None] * threads

        def work(w):
            try:
                results[w] = [_call(scorer, samples, spec, max_new_tokens) for spec in plans[w]]
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{type(exc).__name__}: {exc}")

        t0 = time.perf_counter()
        pool = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=max(1.0, timeout_s - (time.perf_counter() - t0)))
        deadlock |= any(thread.is_alive() for thread in pool)
        round_s.append(round(time.perf_counter() - t0, 1))
        mismatches += sum(r != s for w in range(threads) if results[w] is not None for r, s in zip(results[w], serial[w]))
        rss.append(_rss_mb())
        if log:
            log(f"round {len(round_s)}: {round_s[-1]} s, mismatches so far {mismatches}, RSS {rss[-1]:.0f} MB")
    return {"backend": scorer.backend.name, "threads": threads, "calls_per_thread": calls, "rounds": rounds,
            "calls_total": threads * calls * rounds, "mismatches": mismatches, "errors": errors[:10], "deadlock": deadlock,
            "serial_s": round(serial_s, 1), "round_s": round_s, "rss_mb_after_serial_then_each_round": [round(r, 1) for r in rss]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/fuzz_harness.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fuzz = sub.add_parser("fuzz", help="odd and broken inputs, each call in a time-limited worker")
    fuzz.add_argument("--model", required=True)
    fuzz.add_argument("--backend", default="auto")
    fuzz.add_argument("--cases", type=int, default=10_000)
    fuzz.add_argument("--seed", type=int, default=0)
    fuzz.add_argument("--limit-s", type=float, default=DEFAULT_CALL_LIMIT_S, help="per-call time limit")
    fuzz.add_argument("--only", type=int, default=None, help="run this one case (to reproduce a failure)")
    load = sub.add_parser("threads", help="many threads on one Scorer vs serial results, and memory")
    load.add_argument("--model", required=True)
    load.add_argument("--backend", default="auto")
    load.add_argument("--threads", type=int, default=8)
    load.add_argument("--calls", type=int, default=50)
    load.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    if args.command == "fuzz":
        report = run_fuzz(args.model, cases=args.cases, seed=args.seed, backend=args.backend, limit_s=args.limit_s,
                          only=args.only, log=log)
        ok = report["n_failures"] == 0 and report["canary_unchanged"]
    else:
        report = run_threads(args.model, threads=args.threads, calls=args.calls, rounds=args.rounds, backend=args.backend, log=log)
        ok = report["mismatches"] == 0 and not report["errors"] and not report["deadlock"]
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
