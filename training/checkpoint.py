"""Training checkpoints that resume exactly, written atomically, with no pickle anywhere.

Layout of a run folder (`--out DIR`)::

    DIR/checkpoints/step-000040/
        model/                     DeScoreModel.save_pretrained: a complete, servable checkpoint
                                   (LoRA runs: the adapter MERGED into the weights)
        trainable.safetensors      LoRA runs only: every trainable tensor UNmerged (LoRA A/B, the
                                   embedding matrix, the head, a trainable vision tower), by parameter
                                   name; resume loads these onto the base model
        optimizer.safetensors      optimizer tensors, key "state.<param index>.<name>"
        rng-rank<r>.safetensors    torch (+ CUDA) and numpy RNG state of process r
        trainer_state.json         step and data position, optimizer param groups, scheduler state,
                                   python RNG, numpy RNG scalars, run settings, last metrics
    DIR/checkpoints/latest         name of the newest complete checkpoint

Why not merge LoRA for resuming: merging (W + s·BA) is not invertible bit for bit, and training must go
on from the unmerged factors. The merged `model/` is for scoring/exporting the checkpoint as is.
Full fine-tuning resumes from `model/` itself (safetensors round-trips float tensors exactly).

Atomic: everything is written into `checkpoints/.tmp-step-000040/`, `trainer_state.json` last, then
the folder is renamed to `step-000040` (one `rename`, atomic on POSIX) and `latest` is replaced via
`os.replace`. A run killed mid-save leaves only a `.tmp-*` folder, which the next save or resume
removes; `latest` always names a complete checkpoint.

Safety: tensors are read with `safetensors` and everything else from JSON — loading a checkpoint
never unpickles (no torch.load).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from descore_sdk.errors import ModelLoadError

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
MODEL_DIR = "model"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINABLE_FILE = "trainable.safetensors"
RNG_FILE = "rng-rank{rank}.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


# -- RNG --------------------------------------------------------------------------------------------
def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, json_meta) of the torch, CUDA, numpy and python global RNGs."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    version, internal, gauss_next = random.getstate()
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    n = meta["numpy"]
    keys = tensors["numpy.keys"].numpy().view(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = meta["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# -- optimizer --------------------------------------------------------------------------------------
def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split `optimizer.state_dict()` into safetensors-storable tensors and JSON metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()} for group in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of `optimizer_state_to_tensors`: a dict for `optimizer.load_state_dict`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# -- model ------------------------------------------------------------------------------------------
def is_lora(model) -> bool:
    return hasattr(model.backbone, "merge_and_unload")


def export_model(model, out_dir: str | os.PathLike) -> Path:
    """Write `model` as a servable DeScore checkpoint folder. A LoRA backbone is merged into a copy
    first (the training model keeps its unmerged adapter). The copy costs one model's worth of extra
    memory, on the model's device."""
    out = Path(out_dir)
    if is_lora(model):
        merged = copy.deepcopy(model)
        merged.backbone = merged.backbone.merge_and_unload()
        merged.save_pretrained(out)
    else:
        model.save_pretrained(out)
    return out


def trainable_tensors(model) -> dict[str, torch.Tensor]:
    """{parameter name: tensor} of every parameter that trains (what a LoRA resume needs)."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_tensors(model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `trainable_tensors` output back into a model set up the same way; names must match."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ModelLoadError(
            f"The checkpoint's trainable tensors do not match this run's model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); resume with the same base model and LoRA settings."
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


def load_model_weights(model, model_dir: str | os.PathLike) -> None:
    """Copy the weights of a `save_pretrained` folder into `model` in place (full fine-tuning
    resume). Tensors the file stores once for two tied parameters are checked to be tied here."""
    from safetensors.torch import load_file

    from .model import REWARD_HEAD_KEY, WEIGHTS_FILE

    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} not found: the checkpoint is incomplete.")
    tensors = load_file(str(path))
    loaded_ptrs = set()
    with torch.no_grad():
        model.reward_head.weight.copy_(tensors.pop(REWARD_HEAD_KEY))
        own = model.backbone.state_dict(keep_vars=True)
        for name, tensor in tensors.items():
            if name not in own:
                raise ModelLoadError(f"{path} has weight {name!r} that this model lacks; resume with the same architecture.")
            own[name].data.copy_(tensor)
            loaded_ptrs.add(own[name].data_ptr())
        untouched = [n for n, t in own.items() if n not in tensors and t.data_ptr() not in loaded_ptrs]
    if untouched:
        raise ModelLoadError(f"{path} lacks weights {untouched[:5]}; the checkpoint is incomplete.")


# -- files ------------------------------------------------------------------------------------------
def _write_json(path: Path, content: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    """Flush every file of `folder` to disk before it is published by rename."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


class CheckpointManager:
    """Saves and finds checkpoints under `run_dir/checkpoints` (see module docstring).

    In a multi-process run every process calls `save` (each writes its own RNG file) and `barrier`
    synchronises them; rank 0 writes everything else. `keep` is how many recent checkpoints stay.
    """

    def __init__(self, run_dir: str | os.PathLike, *, keep: int = 2, rank: int = 0, barrier: Callable[[], None] = lambda: None):
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.keep = max(1, int(keep))
        self.rank = rank
        self.barrier = barrier

    # -- finding ------------------------------------------------------------------------------------
    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        pointer = self.root / LATEST_FILE
        if pointer.is_file():
            candidate = self.root / pointer.read_text().strip()
            if (candidate / STATE_FILE).is_file():
                return candidate
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def remove_partial(self) -> None:
        """Delete `.tmp-*` folders left by a run killed while saving (rank 0 only)."""
        if self.rank == 0 and self.root.is_dir():
            for path in self.root.glob(".tmp-*"):
                shutil.rmtree(path, ignore_errors=True)

    # -- saving -------------------------------------------------------------------------------------
    def save(self, step: int, model, optimizer, scheduler, state: dict) -> Path:
        """Write checkpoint `step`; `state` is the JSON-able trainer state (step, data position, ...)."""
        from safetensors.torch import save_file

        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp-{step_dir_name(step)}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            self.remove_partial()
            tmp.mkdir()
        self.barrier()

        rng_tensors, rng_meta = capture_rng_state()
        save_file(rng_tensors, str(tmp / RNG_FILE.format(rank=self.rank)))
        self.barrier()

        if self.rank == 0:
            export_model(model, tmp / MODEL_DIR)
            if is_lora(model):
                save_file(trainable_tensors(model), str(tmp / TRAINABLE_FILE))
            opt_tensors, opt_meta = optimizer_state_to_tensors(optimizer)
            save_file(opt_tensors, str(tmp / OPTIMIZER_FILE))
            full_state = dict(state, optimizer=opt_meta, scheduler=scheduler.state_dict(), rng=rng_meta, lora=is_lora(model))
            _fsync_tree(tmp)
            _write_json(tmp / STATE_FILE, full_state)  # last: its presence marks the folder complete
            if final.exists():  # an earlier run's checkpoint at this step (resumed from before it)
                shutil.rmtree(final)
            os.rename(tmp, final)
            pointer_tmp = self.root / (LATEST_FILE + ".tmp")
            pointer_tmp.write_text(final.name + "\n")
            os.replace(pointer_tmp, self.root / LATEST_FILE)
            for old in self.complete_checkpoints()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return final

    # -- loading ------------------------------------------------------------------------------------
    def load(self, path: str | os.PathLike, model, optimizer, scheduler) -> dict:
        """Restore model weights, optimizer, scheduler and this process's RNG from checkpoint `path`;
        return its trainer state dict. The model must be set up (LoRA, frozen parts) as when saved."""
        from safetensors.torch import load_file

        path = Path(path)
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"Cannot read {path / STATE_FILE} ({exc}); the checkpoint is damaged.") from None
        if bool(state.get("lora")) != is_lora(model):
            raise ModelLoadError(f"{path} was written by a {'LoRA' if state.get('lora') else 'full fine-tuning'} run; resume with the same setting.")
        if is_lora(model):
            load_trainable_tensors(model, load_file(str(path / TRAINABLE_FILE)))
        else:
            load_model_weights(model, path / MODEL_DIR)
        optimizer.load_state_dict(optimizer_state_from_tensors(load_file(str(path / OPTIMIZER_FILE)), state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        rng_path = path / RNG_FILE.format(rank=self.rank)
        if not rng_path.is_file():
            logger.warning("%s has no RNG state for rank %d (different process count?); using rank 0's.", path, self.rank)
            rng_path = path / RNG_FILE.format(rank=0)
        restore_rng_state(load_file(str(rng_path)), state["rng"])
        return state
