"""Checkpoints: a run killed with SIGKILL and resumed ends with the same weights, bit for bit, as an
uninterrupted run; LoRA runs resume exactly too; saving is atomic; nothing is pickled.

References: an uninterrupted run of the same command (bitwise weights, optimizer state and per-step
losses), and optimizer/RNG states compared with the originals they were captured from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from descore_sdk.errors import InvalidInputError  # noqa: E402
from descore_sdk.training.checkpoint import (  # noqa: E402
    CheckpointManager,
    capture_rng_state,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    restore_rng_state,
)
from descore_sdk.training.cold_start import train_cold_start  # noqa: E402
from descore_sdk.training.synth import generate_benchmark  # noqa: E402
from descore_sdk.training.tiny import build_tiny_model  # noqa: E402
from descore_sdk.training.trainer import TrainConfig  # noqa: E402


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return generate_benchmark(tmp_path_factory.mktemp("bench"), n_train=12, n_test=4, n_heldout=0, seed=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    build_tiny_model("qwen2_5_vl", seed=4, dimension_names=("VQ", "MQ", "TA"), out_dir=path)
    return path


def _assert_same_tensors(file_a: Path, file_b: Path) -> None:
    a, b = load_file(str(file_a)), load_file(str(file_b))
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _losses(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def _command(base, bench, out, *extra):
    return [
        sys.executable, "-m", "descore_sdk.training.cold_start",
        "--model", str(base), "--data", str(bench["train"]), "--out", str(out),
        "--steps", "12", "--batch-size", "4", "--save-every", "2", "--lr", "2e-3", "--weight-decay", "0.01",
        "--lm-weight", "0.5", "--cot-drop", "0.5", "--seed", "5", "--no-progress", "--keep-checkpoints", "3", *extra,
    ]


def test_sigkill_mid_training_then_resume_equals_an_uninterrupted_run(base, bench, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_command(base, bench, straight), env=env, check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_command(base, bench, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not pointer.exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    resumed_from = pointer.read_text().strip()
    assert not (killed / "model").exists(), f"the run finished before the kill (latest {resumed_from})"
    assert resumed_from != "step-000012"

    subprocess.run(_command(base, bench, killed, "--resume"), env=env, check=True, capture_output=True, timeout=300)

    _assert_same_tensors(straight / "model" / "model.safetensors", killed / "model" / "model.safetensors")
    final = Path("checkpoints") / "step-000012"
    _assert_same_tensors(straight / final / "optimizer.safetensors", killed / final / "optimizer.safetensors")
    # The killed run's log was cut back to its checkpoint, so every step is logged once, with the
    # same loss as in the uninterrupted run.
    assert _losses(killed) == _losses(straight)
    assert [s for s, _ in _losses(killed)] == list(range(1, 13))


def test_lora_run_resumes_exactly(base, bench, tmp_path):
    config = TrainConfig(steps=4, batch_size=4, lr=3e-3, save_every=2, lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.1, seed=2, progress=False)
    train_cold_start(base, bench["train"], tmp_path / "straight", config, lm_weight=0.3)
    train_cold_start(base, bench["train"], tmp_path / "resumed", dataclasses.replace(config, steps=2), lm_weight=0.3)
    torch.manual_seed(999)  # a resumed run must not depend on the caller's RNG either
    train_cold_start(base, bench["train"], tmp_path / "resumed", config, lm_weight=0.3, resume=True)
    for name in ("trainable.safetensors", "optimizer.safetensors", "model/model.safetensors"):
        _assert_same_tensors(tmp_path / "straight/checkpoints/step-000004" / name, tmp_path / "resumed/checkpoints/step-000004" / name)


def test_the_video_cache_changes_speed_not_the_run(base, bench, tmp_path):
    """12 pairs, 4 per step: in the cached run every clip of steps 4-6 comes from the cache. A run
    resumed at step 3 with the cache off (0 MB: every clip decoded afresh) ends bitwise where the
    cached run ends, and the cache size may change on resume."""
    config = TrainConfig(steps=6, batch_size=4, lr=3e-3, save_every=3, seed=3, progress=False)
    train_cold_start(base, bench["train"], tmp_path / "cached", config, lm_weight=0.3)
    train_cold_start(base, bench["train"], tmp_path / "mixed", dataclasses.replace(config, steps=3), lm_weight=0.3)
    train_cold_start(base, bench["train"], tmp_path / "mixed", dataclasses.replace(config, video_cache_mb=0), lm_weight=0.3, resume=True)
    _assert_same_tensors(tmp_path / "cached/model/model.safetensors", tmp_path / "mixed/model/model.safetensors")
    assert _losses(tmp_path / "cached") == _losses(tmp_path / "mixed")


def test_resume_refuses_changed_settings_and_fresh_runs_refuse_used_folders(base, bench, tmp_path):
    config = TrainConfig(steps=2, batch_size=4, lr=1e-3, progress=False)
    train_cold_start(base, bench["train"], tmp_path / "run", config)
    with pytest.raises(InvalidInputError, match="already holds a run"):
        train_cold_start(base, bench["train"], tmp_path / "run", config)
    with pytest.raises(InvalidInputError, match="train.lr"):
        train_cold_start(base, bench["train"], tmp_path / "run", dataclasses.replace(config, lr=5e-4, steps=3), resume=True)
    with pytest.raises(InvalidInputError, match="recipe"):
        train_cold_start(base, bench["train"], tmp_path / "run", dataclasses.replace(config, steps=3), cot_drop=0.2, resume=True)


def test_checkpoint_files_are_json_and_safetensors_only(base, bench, tmp_path):
    config = TrainConfig(steps=2, batch_size=4, lr=1e-3, save_every=1, keep_checkpoints=1, progress=False)
    train_cold_start(base, bench["train"], tmp_path / "run", config)
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002"]  # keep=1 pruned step 1
    suffixes = {p.suffix for p in root.rglob("*") if p.is_file() and p.name != "latest"}
    assert suffixes <= {".json", ".safetensors", ".jinja"}, suffixes


def test_partial_checkpoints_are_ignored_and_cleaned(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in (("step-000002", True), ("step-000004", False), (".tmp-step-000006", True)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "trainer_state.json").write_text("{}")
    manager = CheckpointManager(tmp_path)
    assert manager.latest() == root / "step-000002"  # no `latest` pointer: highest complete step
    (root / "latest").write_text("step-000004\n")  # a pointer to an incomplete folder is not trusted
    assert manager.latest() == root / "step-000002"
    manager.remove_partial()
    assert not (root / ".tmp-step-000006").exists()


def test_optimizer_state_round_trip_continues_bitwise(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1, betas=(0.8, 0.95))
    data = torch.randn(8, 4)

    def step(m, opt):
        opt.zero_grad()
        m(data).pow(2).mean().backward()
        opt.step()

    for _ in range(3):
        step(model, optimizer)
    tensors, meta = optimizer_state_to_tensors(optimizer)
    save_file(tensors, str(tmp_path / "optimizer.safetensors"))
    tensors = load_file(str(tmp_path / "optimizer.safetensors"))
    meta = json.loads(json.dumps(meta))  # it must survive JSON
    twin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    twin.load_state_dict(model.state_dict())
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1.0)
    twin_opt.load_state_dict(optimizer_state_from_tensors(tensors, meta))
    assert twin_opt.param_groups[0]["betas"] == (0.8, 0.95) and twin_opt.param_groups[0]["lr"] == 0.01
    for _ in range(2):
        step(model, optimizer)
        step(twin, twin_opt)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_rng_state_round_trip():
    import random

    import numpy as np

    tensors, meta = capture_rng_state()
    meta = json.loads(json.dumps(meta))
    first = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    restore_rng_state(tensors, meta)
    second = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    assert torch.equal(first[0], second[0])
    assert (first[1] == second[1]).all() and first[2] == second[2] and first[3] == second[3]
