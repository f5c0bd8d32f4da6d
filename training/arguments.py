"""Training settings and their command-line options, shared by `descore train …` (training/cli.py)
and the stage scripts (`python -m descore_sdk.training.cold_start|jrm|pretrain`).

torch-free, and it imports no training stage: the stages import it, and the CLI imports both, so
there is no import cycle between the CLI and the stages. `training.trainer` re-exports `TrainConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass

from descore_sdk.errors import DescoreError, InvalidInputError


# Tie handling of the preference loss (see training/losses.py, which imports these).
TIE_MODES = ("drop", "rao_kupper")
DEFAULT_TIE_THETA = 5.0  # VideoAlign's "BTT" θ (their k = 5)
DEFAULT_JRM_LM_WEIGHT = 1.0

# LoRA goes on these projections of the LANGUAGE model's layers (the vision blocks use other names
# in Qwen2-VL/Qwen3-VL and the same names in Qwen2.5-VL, so targets are matched under
# `language_model` only).
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEDULES = ("constant", "linear", "cosine")
# Settings that only affect logging/saving; a resumed run may change them.
BOOKKEEPING_FIELDS = ("steps", "save_every", "eval_every", "log_every", "keep_checkpoints", "eval_batch_size", "progress",
                      "video_cache_mb")


@dataclass
class TrainConfig:
    """Optimisation and model-setup settings shared by all stages.

    batch_size: pairs per optimizer step over ALL processes; must divide by world_size × grad_accum.
    steps: optimizer steps in total (a resumed run continues up to this number).
    schedule: LR after `warmup_steps` of linear warmup: constant, linear decay to 0, or cosine to 0.
    lora: train LoRA adapters (r, alpha, dropout, targets) instead of all backbone weights.
    train_vision: train the vision tower (fully, also under LoRA) or keep it frozen.
    train_lm_head: full fine-tuning only: also train an untied LM head (output embeddings). Off by
        default — a pretrained head already knows the vocabulary; useful for random tiny models.
    save_every / eval_every: 0 = only at the end.
    video_cache_mb: decoded training clips kept in memory (`batching.FeatureCache`; 0 decodes every
        time). It changes speed, never the batches.
    """

    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    max_grad_norm: float | None = 1.0
    seed: int = 0
    lora: bool = False
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    train_vision: bool = True
    train_lm_head: bool = False
    gradient_checkpointing: bool = False
    device: str = "cpu"
    save_every: int = 0
    eval_every: int = 0
    log_every: int = 1
    keep_checkpoints: int = 2
    eval_batch_size: int = 16
    progress: bool = True
    video_cache_mb: int = 2048

    def __post_init__(self):
        self.lora_targets = tuple(self.lora_targets)
        for name in ("steps", "batch_size", "grad_accum", "lora_r", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be ≥ 1, got {getattr(self, name)}.")
        for name in ("warmup_steps", "save_every", "eval_every", "video_cache_mb"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be ≥ 0, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise InvalidInputError(f"lr must be > 0, got {self.lr}.")
        if self.schedule not in SCHEDULES:
            raise InvalidInputError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise InvalidInputError(f"max_grad_norm must be > 0 (or None for no clipping), got {self.max_grad_norm}.")

    def trajectory(self) -> dict:
        """The settings that determine the training trajectory (must match on resume)."""
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(d["lora_targets"])
        return {k: v for k, v in d.items() if k not in BOOKKEEPING_FIELDS}

    def video_cache(self, descore_config):
        """The decoded-clip cache (`batching.FeatureCache`) this run's collator reads videos through."""
        from .batching import FeatureCache  # torch: imported when a run starts, not with the CLI

        return FeatureCache(descore_config, max_bytes=self.video_cache_mb << 20)



# -- shared command-line options --------------------------------------------------------------------
def add_train_arguments(parser) -> None:
    """Options every stage takes (model, data, output, optimisation, LoRA, checkpoints)."""
    defaults = TrainConfig()
    io = parser.add_argument_group("input / output")
    io.add_argument("--model", required=True, help="starting checkpoint folder (DeScore or plain Hugging Face Qwen-VL)")
    io.add_argument("--data", required=True, help="training pairs (.jsonl, VideoAlign .csv or GenAI-Bench .json)")
    io.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, model/ (final)")
    io.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    io.add_argument("--eval-data", default=None, help="held-out pairs scored (fast mode) every --eval-every steps")
    io.add_argument("--dimensions", default=None, help="comma-separated reward dimensions (default: the model's); new names start a new head")
    io.add_argument("--on-missing", default="skip", choices=["skip", "error"], help="pairs whose videos are missing: skip (default) or error")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, default=defaults.steps)
    opt.add_argument("--batch-size", type=int, default=defaults.batch_size, help="pairs per step, all processes together")
    opt.add_argument("--grad-accum", type=int, default=defaults.grad_accum)
    opt.add_argument("--lr", type=float, default=defaults.lr)
    opt.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    opt.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    opt.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES)
    opt.add_argument("--max-grad-norm", type=float, default=defaults.max_grad_norm, help="0 disables clipping")
    opt.add_argument("--seed", type=int, default=defaults.seed)
    opt.add_argument("--device", default=defaults.device)
    opt.add_argument("--gradient-checkpointing", action="store_true")
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--lora", action="store_true", help="train LoRA adapters instead of all backbone weights")
    lora.add_argument("--lora-r", type=int, default=defaults.lora_r)
    lora.add_argument("--lora-alpha", type=int, default=defaults.lora_alpha)
    lora.add_argument("--lora-dropout", type=float, default=defaults.lora_dropout)
    lora.add_argument("--lora-targets", default=",".join(defaults.lora_targets), help="language-model module names to adapt")
    lora.add_argument("--freeze-vision", action="store_true", help="keep the vision tower frozen")
    lora.add_argument("--train-lm-head", action="store_true", help="full fine-tuning: also train an untied LM head")
    book = parser.add_argument_group("checkpoints and logging")
    book.add_argument("--save-every", type=int, default=defaults.save_every, help="0: only at the end")
    book.add_argument("--eval-every", type=int, default=defaults.eval_every, help="0: only at the end")
    book.add_argument("--log-every", type=int, default=defaults.log_every)
    book.add_argument("--keep-checkpoints", type=int, default=defaults.keep_checkpoints)
    book.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size)
    book.add_argument("--no-progress", action="store_true", help="no progress bar")
    book.add_argument("--video-cache-mb", type=int, default=defaults.video_cache_mb,
                      help="memory per process for decoded training clips, reused across epochs (0: decode every time)")


def train_config_from_args(args) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        schedule=args.schedule,
        max_grad_norm=args.max_grad_norm or None,
        seed=args.seed,
        lora=args.lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
        train_vision=not args.freeze_vision,
        train_lm_head=args.train_lm_head,
        gradient_checkpointing=args.gradient_checkpointing,
        device=args.device,
        save_every=args.save_every,
        eval_every=args.eval_every,
        log_every=args.log_every,
        keep_checkpoints=args.keep_checkpoints,
        eval_batch_size=args.eval_batch_size,
        progress=not args.no_progress,
        video_cache_mb=args.video_cache_mb,
    )



def add_cold_start_arguments(parser) -> None:
    add_train_arguments(parser)
    recipe = parser.add_argument_group("cold-start recipe")
    recipe.add_argument("--cot-drop", type=float, default=0.5, help="probability a pair is trained without rationales (shared by both videos)")
    recipe.add_argument("--lm-weight", type=float, default=0.0, help="weight of the LM loss on rationale tokens (0: off)")
    recipe.add_argument("--ties", default="drop", choices=TIE_MODES, help="drop human ties, or model them (Rao-Kupper)")
    recipe.add_argument("--tie-theta", type=float, default=DEFAULT_TIE_THETA, help="Rao-Kupper theta (> 1)")


def add_jrm_arguments(parser) -> None:
    add_train_arguments(parser)
    recipe = parser.add_argument_group("JRM recipe")
    recipe.add_argument("--lm-weight", type=float, default=DEFAULT_JRM_LM_WEIGHT, help="weight of the rationale LM loss")
    recipe.add_argument("--ties", default="drop", choices=TIE_MODES, help="drop human ties, or model them (Rao-Kupper)")
    recipe.add_argument("--tie-theta", type=float, default=DEFAULT_TIE_THETA, help="Rao-Kupper theta (> 1)")


# -- descore data synth -----------------------------------------------------------------------------


def report_trained(final) -> int:
    """Print where the trained model is, once per job (not once per torchrun process)."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(f"Trained model: {final}")
    return 0


def stage_main(argv, *, prog: str, description: str, add_arguments, run) -> int:
    """`python -m descore_sdk.training.<stage>`: parse the stage's options, run it, print
    DescoreErrors as one line (the same contract as the `descore` CLI)."""
    import logging

    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except DescoreError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
