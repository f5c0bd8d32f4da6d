"""The small training loop shared by the cold-start and JRM stages (and reusable by RL).

What it does, per optimizer step:

1. takes the next `batch_size` pairs of an endless stream of shuffled epochs (epoch e is
   `np.random.default_rng([seed, e]).permutation(n)`), so the data position is just the step number;
2. gives each process its share (`positions[rank::world]`) split into `grad_accum` micro-batches;
3. agrees across processes on the global number of loss terms (BT entries, rationale tokens) —
   known from the labels before any forward pass — and scales each process's loss SUM by it, so
   DDP's gradient average equals the single-process gradient of the whole global batch;
4. clips the gradient norm, steps AdamW and the LR schedule; logs JSON lines to `metrics.jsonl`;
5. every `eval_every` steps scores a held-out file in fast mode (`evaluate_pairs`) and logs
   `training/metrics.evaluate`; every `save_every` steps (and at the end) writes a checkpoint that
   `--resume` continues from exactly (see `training/checkpoint.py`).

What trains (`prepare_model`): the reward head; of the input embedding matrix only the `<Reward>`
row (a gradient hook zeroes the other rows, and the matrix sits in a weight-decay-free group so
AdamW leaves them bitwise unchanged); the LM head stays frozen unless `train_lm_head` (full
fine-tuning of an untied head; a tied head IS the embedding matrix and follows it); either every other backbone weight
(full fine-tuning) or LoRA adapters (peft; r=64, alpha=128 by default) on the language model's
attention and MLP projections; the vision tower (patch embedding, blocks, mergers) fully, or not at
all with `train_vision=False`.

Multi-process: run the stage module under `torchrun --nproc_per_node N`; each process reads
RANK / WORLD_SIZE / LOCAL_RANK, joins a gloo (CPU) or NCCL (CUDA) group and wraps the model in
DistributedDataParallel. Every process holds a full model copy, which is fine up to ~2B parameters.

Scaling to 8B (documented, not implemented here): a full model copy per GPU plus AdamW state no
longer fits, so shard parameters, gradients and optimizer state. Two standard routes, both driven
by an `accelerate` config file and `accelerate launch -m descore_sdk.training.cold_start ...` once
the loop is ported to `accelerator.prepare(model, optimizer)` / `accelerator.backward(loss)`:

* FSDP (PyTorch native)::

      distributed_type: FSDP
      mixed_precision: bf16
      num_processes: 8
      fsdp_config:
        fsdp_sharding_strategy: FULL_SHARD
        fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
        fsdp_transformer_layer_cls_to_wrap: Qwen3VLTextDecoderLayer,Qwen3VLVisionBlock
        fsdp_state_dict_type: SHARDED_STATE_DICT       # FULL_STATE_DICT only for the final export
        fsdp_use_orig_params: true                     # needed: LoRA / frozen params in one unit
        fsdp_activation_checkpointing: true

* DeepSpeed ZeRO-3::

      distributed_type: DEEPSPEED
      mixed_precision: bf16
      num_processes: 8
      deepspeed_config:
        zero_stage: 3
        offload_optimizer_device: none                 # "cpu" if optimizer state does not fit
        zero3_init_flag: true
        zero3_save_16bit_model: true

With either, the exact-resume contract needs the sharded optimizer/model state saved per rank
(accelerate's `save_state`) instead of our single-file optimizer tensors, and the `<Reward>`
row mask must be applied after gradients are gathered (FSDP with `use_orig_params` keeps our
parameter hook working; ZeRO-3 needs the mask applied in a post-backward step).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from descore_sdk.errors import InvalidInputError, MissingDependencyError
from descore_sdk.prompt import PromptBuilder

from . import metrics as metrics_module
from .batching import FeatureCache, PairBatch, PairCollator, build_row, collate_rows
from .checkpoint import CheckpointManager, export_model
from .arguments import TrainConfig  # lives in the torch-free arguments module; re-exported here
from .data import PreferencePair
from .losses import (
    DEFAULT_TIE_THETA,
    label_token_count,
    pair_accuracy,
    preference_item_count,
    preference_loss,
    selected_token_cross_entropy,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "run_config.json"
FINAL_MODEL_DIR = "model"


# -- distributed ------------------------------------------------------------------------------------
@dataclass
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_env(cls, device: str = "cpu") -> "DistContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            torch_device = torch.device("cuda", local_rank) if world > 1 else torch.device(device)
        else:
            torch_device = torch.device(device)
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
        return cls(rank=rank, world=world, local_rank=local_rank, device=torch_device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Sum `values` elementwise over processes (float64, so counts stay exact)."""
        tensor = torch.tensor(list(values), dtype=torch.float64)
        if self.world > 1:
            import torch.distributed as dist

            tensor = tensor.to(self.device)
            dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def all_gather_object(self, value) -> list:
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out


# -- model setup ------------------------------------------------------------------------------------
def _vision_parameters(model) -> list[torch.nn.Parameter]:
    return list(model._multimodal_model().visual.parameters())


def prepare_model(model, config: TrainConfig):
    """Mark what trains (see module docstring) and apply LoRA; returns the model (changed in place).

    Call once per run, before building the optimizer. LoRA weights are initialised from `seed`.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    if config.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:  # pragma: no cover - peft is in the train extra
            raise MissingDependencyError("LoRA training needs peft: pip install 'descore-sdk[train]'") from exc
        unknown = [t for t in config.lora_targets if not t.replace("_", "").isalnum()]
        if unknown or not config.lora_targets:
            raise InvalidInputError(f"lora_targets must be module names like q_proj; got {list(config.lora_targets)}.")
        pattern = r".*language_model\.layers\.\d+\..*\.(" + "|".join(config.lora_targets) + r")"
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=pattern, bias="none")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model.backbone = get_peft_model(model.backbone, lora)
        # peft freezes the base weights and leaves the adapters trainable.
    else:
        for param in model.backbone.parameters():
            param.requires_grad_(True)
        output = model.backbone.get_output_embeddings()
        if output is not None:
            output.weight.requires_grad_(config.train_lm_head)
    for param in _vision_parameters(model):
        param.requires_grad_(config.train_vision)
    model.reward_head.weight.requires_grad_(True)
    model._reward_row_hook = model.train_only_reward_embedding_row()
    if config.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_optimizer(model, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: matrices with weight decay; biases, norms and the embedding matrix
    without (decay would move the frozen embedding rows)."""
    embedding = model.backbone.get_input_embeddings().weight
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param is embedding or param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


class _Schedule:
    """LR multiplier: linear warmup, then constant / linear decay / cosine decay to 0 at `steps`.
    A class (not a closure) so LambdaLR's state_dict records its settings as plain JSON."""

    def __init__(self, kind: str, warmup: int, steps: int):
        self.kind, self.warmup, self.steps = kind, warmup, steps

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return 1.0 - progress if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, config: TrainConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule(config.schedule, config.warmup_steps, config.steps))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def parameter_digest(model) -> str:
    """sha256 over every parameter's bytes, in name order (equal digests = bitwise-equal weights)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(param.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def unwrap(model):
    """The DeScoreModel inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def forward_with_hidden(model, inputs: dict):
    """(DeScoreOutput, (B, L, H) final post-norm hidden states) from one forward pass.

    DeScoreModel.forward returns only the `<Reward>` hidden state; the full sequence is captured
    from the language model's final norm (the tensor the model reads the reward from), so the LM
    loss can project just the rationale positions instead of asking for full logits.
    """
    norm = unwrap(model)._multimodal_model().language_model.norm
    captured = {}
    handle = norm.register_forward_hook(lambda module, args, output: captured.__setitem__("hidden", output))
    try:
        out = model(**inputs)
    finally:
        handle.remove()
    return out, captured["hidden"]


# -- objective --------------------------------------------------------------------------------------
class PreferenceObjective:
    """Preference loss on the rewards (+ `lm_weight` × rationale LM loss when the batch has labels).

    loss = Σ pref terms / N_pref + lm_weight · Σ token CE / N_tok, with N_* counted over the global
    batch (`counts` → all-reduce), so the sum of the per-process losses is the global-batch loss.
    """

    def __init__(self, *, ties: str = "drop", theta: float = DEFAULT_TIE_THETA, lm_weight: float = 0.0):
        if lm_weight < 0:
            raise InvalidInputError(f"lm_weight must be ≥ 0, got {lm_weight}.")
        preference_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long), ties=ties, theta=theta)  # validate
        self.ties, self.theta, self.lm_weight = ties, theta, float(lm_weight)

    def counts(self, batch: PairBatch) -> list[float]:
        lm = label_token_count(batch.labels) if self.lm_weight > 0 else 0
        return [preference_item_count(batch.preference, self.ties), lm]

    def __call__(self, model, batch: PairBatch, global_counts: Sequence[float]) -> tuple[torch.Tensor, dict]:
        inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
        want_lm = self.lm_weight > 0 and batch.labels is not None
        if want_lm:
            out, hidden = forward_with_hidden(model, inputs)
        else:
            out = model(**inputs)
        b = batch.num_pairs
        rewards_a, rewards_b = out.rewards[:b].float(), out.rewards[b:].float()
        pref = preference_loss(rewards_a, rewards_b, batch.preference, ties=self.ties, theta=self.theta)
        loss = pref.total / max(global_counts[0], 1.0)
        lm_sum = torch.zeros(())
        if want_lm:
            lm_head = unwrap(model).backbone.get_output_embeddings()
            lm = selected_token_cross_entropy(hidden, batch.labels, lm_head)
            loss = loss + self.lm_weight * lm.total / max(global_counts[1], 1.0)
            lm_sum = lm.total.detach()
        correct, decided = pair_accuracy(rewards_a.detach(), rewards_b.detach(), batch.preference)
        stats = {
            "pref_sum": float(pref.total.detach()),
            "lm_sum": float(lm_sum),
            "correct": correct,
            "decided": decided,
            "cot_pairs": int(batch.use_cot.sum()),
            "pairs": b,
        }
        return loss, stats


# -- evaluation -------------------------------------------------------------------------------------
@torch.no_grad()
def score_videos(model, prompts: PromptBuilder, cache: FeatureCache, items: Sequence[tuple], *, batch_size: int = 16, device="cpu") -> np.ndarray:
    """(N, K) fast-layout rewards of `items` = [(video path, prompt), ...], batched."""
    pad_id = prompts.tokenizer.token_to_id("<|endoftext|>")
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(items), batch_size):
            rows = [build_row(prompts, cache(video), prompt, "fast") for video, prompt in items[start : start + batch_size]]
            inputs = {k: v.to(device) for k, v in collate_rows(rows, pad_id).items()}
            out.append(model(**inputs).rewards.float().cpu().numpy())
    finally:
        model.train(was_training)
    k = model.reward_head.weight.shape[0]
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.float32)


def pair_predictions(model, pairs: Sequence[PreferencePair], prompts, cache, *, batch_size=16, device="cpu"):
    """(pred_a, pred_b, labels) dicts over the model's dimensions that the pairs label, each video
    scored once even when several pairs share it."""
    items = sorted({(str(p.video_a), p.prompt) for p in pairs} | {(str(p.video_b), p.prompt) for p in pairs})
    rewards = dict(zip(items, score_videos(model, prompts, cache, items, batch_size=batch_size, device=device)))
    dims = [d for d in model.dimension_names if any(d in p.labels for p in pairs)]
    pred_a, pred_b, labels = {}, {}, {}
    for k, dim in enumerate(model.dimension_names):
        if dim not in dims:
            continue
        chosen = [p for p in pairs if dim in p.labels]
        pred_a[dim] = [float(rewards[(str(p.video_a), p.prompt)][k]) for p in chosen]
        pred_b[dim] = [float(rewards[(str(p.video_b), p.prompt)][k]) for p in chosen]
        labels[dim] = [p.labels[dim] for p in chosen]
    return pred_a, pred_b, labels


def evaluate_pairs(model, pairs, prompts, cache, *, calib_pairs=None, batch_size=16, device="cpu") -> dict:
    """`training.metrics.evaluate` of the model's fast-mode rewards on `pairs` (with ε calibrated on
    `calib_pairs` when given)."""
    pred_a, pred_b, labels = pair_predictions(model, pairs, prompts, cache, batch_size=batch_size, device=device)
    if not labels:
        raise InvalidInputError(f"The evaluation pairs label none of the model's dimensions {model.dimension_names}.")
    calib = None
    if calib_pairs:
        calib = pair_predictions(model, calib_pairs, prompts, cache, batch_size=batch_size, device=device)
    return metrics_module.evaluate(pred_a, pred_b, labels, calib)


# -- the loop ---------------------------------------------------------------------------------------
class MetricsLog:
    """Appends JSON lines to `metrics.jsonl` (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a killed run logged steps its checkpoint does not include)."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


def stream_pair_indices(positions: np.ndarray, num_pairs: int, seed: int) -> np.ndarray:
    """Pair index at each position of the endless stream of shuffled epochs."""
    epochs, offsets = np.divmod(np.asarray(positions, dtype=np.int64), num_pairs)
    out = np.empty(len(epochs), dtype=np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(num_pairs)
        out[epochs == epoch] = order[offsets[epochs == epoch]]
    return out


class Trainer:
    """Runs one stage: `Trainer(...).fit(resume=...)` → path of the final model folder.

    model: a DeScoreModel (not yet prepared: `fit` calls `prepare_model`).
    collator: builds PairBatches from pairs + stream keys (the recipe lives there).
    objective: PreferenceObjective (or anything with `counts(batch)` and `__call__(model, batch, counts)`).
    run_info: JSON-able description of the run (stage, model path, data path, recipe); must match on
        resume together with `config.trajectory()`.
    """

    def __init__(
        self,
        model,
        config: TrainConfig,
        *,
        train_pairs: Sequence[PreferencePair],
        collator: PairCollator,
        objective: PreferenceObjective,
        out_dir: str | os.PathLike,
        run_info: dict,
        eval_pairs: Sequence[PreferencePair] | None = None,
        dist: DistContext | None = None,
    ):
        if not train_pairs:
            raise InvalidInputError("No training pairs: the data file is empty or all its pairs were skipped.")
        self.model = model
        self.config = config
        self.train_pairs = list(train_pairs)
        self.collator = collator
        self.objective = objective
        self.out_dir = Path(out_dir)
        self.run_info = dict(run_info, train=config.trajectory())
        self.eval_pairs = list(eval_pairs) if eval_pairs else None
        self.dist = dist or DistContext.from_env(config.device)
        per_step = self.dist.world * config.grad_accum
        if config.batch_size % per_step:
            raise InvalidInputError(
                f"batch_size={config.batch_size} pairs must divide evenly over {self.dist.world} process(es) × "
                f"grad_accum={config.grad_accum}; use a multiple of {per_step}."
            )

    # -- one step -----------------------------------------------------------------------------------
    def _micro_batches(self, step: int) -> list[PairBatch]:
        cfg, ctx = self.config, self.dist
        positions = np.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size, dtype=np.int64)
        local = positions[ctx.rank :: ctx.world]
        batches = []
        for chunk in np.array_split(local, cfg.grad_accum):
            indices = stream_pair_indices(chunk, len(self.train_pairs), cfg.seed)
            pairs = [self.train_pairs[i] for i in indices]
            batches.append(self.collator(pairs, chunk.tolist()).to(ctx.device))
        return batches

    def _train_step(self, step: int, ddp_model, optimizer, scheduler) -> dict:
        ctx = self.dist
        micro = self._micro_batches(step)
        local_counts = np.sum([self.objective.counts(b) for b in micro], axis=0).tolist()
        global_counts = ctx.all_reduce_sum(local_counts)
        totals: dict[str, float] = {}
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1 or ctx.world == 1
            with contextlib.nullcontext() if sync else ddp_model.no_sync():
                loss, stats = self.objective(ddp_model, batch, global_counts)
                # DDP averages gradients over processes; × world turns that into the sum of the
                # per-process losses = the global-batch loss (its terms are normalised globally).
                (loss * ctx.world).backward()
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
        grad_norm = None
        if self.config.max_grad_norm is not None:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, self.config.max_grad_norm))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        keys = sorted(totals)
        summed = dict(zip(keys, ctx.all_reduce_sum([totals[k] for k in keys])))
        record = {
            "step": step + 1,
            "loss": summed["loss"],
            "pref_loss": summed["pref_sum"] / max(global_counts[0], 1.0),
            "train_pair_accuracy": summed["correct"] / summed["decided"] if summed["decided"] else None,
            "cot_fraction": summed["cot_pairs"] / summed["pairs"],
            "lr": lr,
        }
        if self.objective.lm_weight > 0:
            record["lm_loss"] = summed["lm_sum"] / global_counts[1] if global_counts[1] else None
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        return record

    # -- run ----------------------------------------------------------------------------------------
    def _check_resumable(self, saved: dict) -> None:
        saved_train = dict(saved.get("train", {}))
        mine = dict(self.run_info)
        mine_train = dict(mine.pop("train"))
        saved = {k: v for k, v in saved.items() if k != "train"}
        diffs = [k for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)]
        diffs += [f"train.{k}" for k in sorted(set(saved_train) | set(mine_train)) if saved_train.get(k) != mine_train.get(k)]
        if diffs:
            raise InvalidInputError(
                f"Cannot resume: this run's settings differ from the checkpoint's in {', '.join(diffs)}. Use the "
                "same settings (only steps, save/eval/log intervals may change) or a new --out folder."
            )

    def _evaluate(self, step: int, log: MetricsLog, prompts, cache) -> dict | None:
        if not self.eval_pairs:
            return None
        if self.dist.is_main:
            report = evaluate_pairs(self.model, self.eval_pairs, prompts, cache, batch_size=self.config.eval_batch_size, device=self.dist.device)
            log.write({"step": step, "eval": report})
            logger.info("step %d: eval accuracy without ties %.4f", step, report["mean"]["accuracy_without_ties"])
        else:
            report = None
        self.dist.barrier()
        return report

    def _decode_clips_first(self) -> None:
        """Fill the clip cache before the first step, under its own bar: otherwise the first epoch's
        steps also decode their clips, and the step bar's first time estimate is several times too
        long (40 min shown for a 1-2 min run). The batches are the same either way."""
        from tqdm.auto import tqdm

        cache = getattr(self.collator, "cache", None)
        if cache is None or getattr(cache, "max_bytes", 0) == 0:  # no cache (None: one without a limit)
            return
        videos = sorted({str(p.video_a) for p in self.train_pairs} | {str(p.video_b) for p in self.train_pairs})
        with tqdm(total=len(videos), desc="decoding clips", unit="clip") as bar:
            for video in videos:
                if not cache.warm(video):
                    break  # the cache is full; the rest are decoded when their batches need them
                bar.update(1)

    def fit(self, resume: bool = False) -> Path:
        cfg, ctx = self.config, self.dist
        manager = CheckpointManager(self.out_dir, keep=cfg.keep_checkpoints, rank=ctx.rank, barrier=ctx.barrier)
        final_dir = self.out_dir / FINAL_MODEL_DIR
        latest = manager.latest()
        if latest is not None and not resume:
            raise InvalidInputError(f"{self.out_dir} already holds a run (checkpoint {latest.name}); pass --resume to continue it or choose another --out.")

        seed_everything(cfg.seed)
        model = prepare_model(self.model, cfg).to(ctx.device)
        model.train()
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg)
        log = MetricsLog(self.out_dir / METRICS_FILE, ctx.is_main)
        start = 0
        if resume and latest is not None:
            state = json.loads((latest / "trainer_state.json").read_text())
            self._check_resumable(state.get("run", {}))
            state = manager.load(latest, model, optimizer, scheduler)
            start = int(state["step"])
            logger.info("Resumed from %s at step %d.", latest, start)
        elif resume:
            logger.info("No checkpoint in %s; starting a new run.", self.out_dir)
        log.truncate_after(start)  # steps a killed run logged past its last checkpoint
        manager.remove_partial()
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / RUN_CONFIG_FILE).write_text(json.dumps(self.run_info, indent=2) + "\n")

        ddp_model = model
        if ctx.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: a trainable LM head gets no gradient in a step whose pairs all
            # dropped their rationales; DDP must not wait for it.
            ddp_model = DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, find_unused_parameters=True
            )

        progress = None
        if cfg.progress and ctx.is_main:
            from tqdm.auto import tqdm

            if ctx.world == 1 and start < cfg.steps:
                self._decode_clips_first()
            progress = tqdm(total=cfg.steps, initial=start, desc=self.run_info.get("stage", "train"), unit="step")
        last_record: dict = {}
        started = time.perf_counter()
        for step in range(start, cfg.steps):
            record = self._train_step(step, ddp_model, optimizer, scheduler)
            record["seconds"] = round(time.perf_counter() - started, 3)
            done = step + 1
            last_record = record
            if done % cfg.log_every == 0 or done == cfg.steps:
                log.write(record)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                self._evaluate(done, log, self.collator.prompts, self.collator.cache)
            if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
                state = {
                    "step": done,
                    "data_position": {"pairs_seen": done * cfg.batch_size, "epoch": (done * cfg.batch_size) // len(self.train_pairs),
                                      "offset": (done * cfg.batch_size) % len(self.train_pairs), "num_pairs": len(self.train_pairs)},
                    "run": self.run_info,
                    "last_metrics": record,
                }
                manager.save(done, model, optimizer, scheduler, state)
        if progress is not None:
            progress.close()

        if ctx.is_main:
            tmp = self.out_dir / ".tmp-model"
            if tmp.exists():
                shutil.rmtree(tmp)
            export_model(model, tmp)
            if final_dir.exists():
                shutil.rmtree(final_dir)
            os.rename(tmp, final_dir)
        digests = ctx.all_gather_object(parameter_digest(model))
        log.write({"step": cfg.steps, "event": "end", "param_sha256_per_rank": digests, "last": last_record})
        ctx.barrier()
        return final_dir


def load_stage_inputs(model_path, data_path, *, dimensions=None, eval_data=None, on_missing="skip", method="descore"):
    """(model, train pairs, eval pairs) for a stage: loads the model (with `dimensions` and
    `descore_config.method = method`), reads the pairs, and checks every reward dimension is labelled
    by some training pair (pairs labelling none of them are dropped, with a warning)."""
    from descore_sdk.errors import DataError

    from .data import read_pairs
    from .model import DeScoreModel

    dims = [d.strip() for d in dimensions.split(",") if d.strip()] if isinstance(dimensions, str) else dimensions
    model = DeScoreModel.from_pretrained(model_path, dimension_names=dims or None, method=method)
    pairs = read_pairs(data_path, on_missing=on_missing)
    names = model.dimension_names
    unlabelled = [d for d in names if not any(d in p.labels for p in pairs)]
    if unlabelled:
        seen = sorted({d for p in pairs for d in p.labels})
        raise DataError(
            f"{data_path} labels no pair for reward dimension(s) {unlabelled} of the model (the data has {seen}). "
            "Pass --dimensions with names the data labels, e.g. --dimensions " + ",".join(seen) + "."
        )
    useful = [p for p in pairs if any(d in p.labels for d in names)]
    if len(useful) < len(pairs):
        logger.warning("Dropped %d pairs that label none of %s.", len(pairs) - len(useful), names)
    eval_pairs = read_pairs(eval_data, on_missing=on_missing) if eval_data else None
    return model, useful, eval_pairs
