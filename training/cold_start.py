"""Stage 1, cold start: teach a Qwen-VL backbone to put a reward on `<Reward>`, with or without its
rationale in front.

    python -m descore_sdk.training.cold_start --model BASE --data train.jsonl --out runs/cold [--resume]
    descore train cold-start --model BASE --data train.jsonl --out runs/cold      (same options)
    torchrun --nproc_per_node 2 -m descore_sdk.training.cold_start ...           (DDP)

Recipe (see `batching.PairCollator`, recipe "descore"):
* each pair's two videos are laid out the same way: with probability `--cot-drop` (0.5) both without
  their rationales (fast layout, `prompt <Reward>`), otherwise both as `prompt rationale <Reward>`.
  So the reward head learns to read the video both after a rationale (think mode) and without one
  (fast mode), and the two rewards of a pair are always compared in the same situation;
* loss: Bradley–Terry per reward dimension, human ties dropped (`--ties drop`), or Rao–Kupper BT with
  ties (`--ties rao_kupper --tie-theta 5`, as VideoAlign trains); see `training/losses.py`;
* optional LM loss on the rationale tokens (`--lm-weight`, default 0), labels only on the CoT and its
  closing stop token;
* full fine-tuning (default) or LoRA (`--lora`, r=64, alpha=128); vision tower trainable unless
  `--freeze-vision`; of the embeddings only the `<Reward>` row trains.
`--cot-drop 1` trains the plain fast-layout BT reward model (no rationales at all). With
`--lm-weight > 0` the model also learns to write the rationale and to end it with `<|im_end|>`, so
its think mode generates a rationale before scoring; a random-weight tiny model needs
`--train-lm-head` for that (a pretrained LM head already knows the vocabulary).

The result (`OUT/model`) is a DeScore checkpoint with `descore_config.method = "descore"`.
`quick_train(out_dir)` builds everything from nothing (synthetic data, tiny model) in a few minutes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


from .arguments import DEFAULT_TIE_THETA, add_cold_start_arguments, report_trained, stage_main

logger = logging.getLogger(__name__)


def train_cold_start(
    model_path,
    data_path,
    out_dir,
    config=None,
    *,
    cot_drop: float = 0.5,
    lm_weight: float = 0.0,
    ties: str = "drop",
    tie_theta: float = DEFAULT_TIE_THETA,
    eval_data=None,
    dimensions=None,
    on_missing: str = "skip",
    resume: bool = False,
) -> Path:
    """Run the cold-start stage; returns the final model folder (`out_dir/model`).

    config: a `trainer.TrainConfig` (default: its defaults). Other arguments as the module docstring.
    """
    from descore_sdk.prompt import PromptBuilder

    from .batching import PairCollator
    from .trainer import PreferenceObjective, TrainConfig, Trainer

    config = config or TrainConfig()
    model, pairs, eval_pairs = load_stage_inputs_for("descore", model_path, data_path, dimensions, eval_data, on_missing)
    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    collator = PairCollator(
        prompts, config.video_cache(model.descore_config), model.dimension_names,
        recipe="descore", cot_drop=cot_drop, with_labels=lm_weight > 0, seed=config.seed,
    )
    objective = PreferenceObjective(ties=ties, theta=tie_theta, lm_weight=lm_weight)
    run_info = {
        "stage": "cold_start",
        "model": str(Path(model_path).resolve()),
        "data": str(Path(data_path).resolve()),
        "dimensions": model.dimension_names,
        "recipe": {"cot_drop": cot_drop, "lm_weight": lm_weight, "ties": ties, "tie_theta": tie_theta},
    }
    trainer = Trainer(model, config, train_pairs=pairs, collator=collator, objective=objective,
                      out_dir=out_dir, run_info=run_info, eval_pairs=eval_pairs)
    return trainer.fit(resume=resume)


def load_stage_inputs_for(method, model_path, data_path, dimensions, eval_data, on_missing):
    from .trainer import load_stage_inputs

    return load_stage_inputs(model_path, data_path, dimensions=dimensions, eval_data=eval_data, on_missing=on_missing, method=method)


# The quick model's prompt: short, so that a row is mostly video and rationale (the product template
# is ~60 tokens of instructions, which would double the cost of every training step).
QUICK_PROMPT_TEMPLATE = "Rate this video for the prompt: {prompt}"
QUICK_DIMENSIONS = ("VQ", "MQ", "TA", "overall")


def quick_train(
    out_dir,
    *,
    family: str = "qwen3_vl",
    steps: int = 300,
    n_train: int = 480,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Train a tiny DeScore model from nothing in ~2 minutes on 2 CPU cores; return its folder.

    Writes `out_dir/data` (the synthetic benchmark: train / test_id / test_heldout), `out_dir/base`
    (a tiny random-weight `family` model with dimensions VQ, MQ, TA, overall and a short prompt
    template), `out_dir/run` (the cold-start run: checkpoints, metrics.jsonl with an eval on test_id)
    and returns `out_dir/run/model`.

    Recipe: the DeScore cold start (CoT drop 0.5) with the rationale LM loss (weight 1, LM head
    trained — a random tiny model has no language to preserve), full fine-tuning, 16 pairs a step.
    What it learns in this budget: visual and motion quality, so a clean clip outscores its blurred,
    noisy, stuttering or shaking twin (measured on its 40 test_id pairs after 300 steps: VQ 1.0,
    MQ 1.0); text alignment not (TA 0.46). In think mode it writes a templated rationale. The measured
    recipes are `python -m descore_sdk.training.benchmark`.
    """
    from .synth import generate_benchmark
    from .tiny import build_tiny_model
    from .trainer import TrainConfig

    out = Path(out_dir)
    data = generate_benchmark(out / "data", n_train=n_train, n_test=40, n_heldout=40, seed=seed)
    model = build_tiny_model(family, seed=seed, dimension_names=QUICK_DIMENSIONS)
    model.descore_config.prompt_template = QUICK_PROMPT_TEMPLATE
    model.descore_config.system_prompt = None
    model.save_pretrained(out / "base")
    # The checkpoint carries the CoT budget it was trained for: a tiny model never learns to write more
    # than its training rationales, and left at DeScore's 4096 it loops until the budget on a video
    # unlike its training data (what `descore score` with the model's defaults would then do).
    model.descore_config.max_new_tokens = rationale_budget(data["train"], out / "base")
    model.descore_config.save(out / "base")
    config = TrainConfig(
        steps=steps, batch_size=16, lr=2e-3, warmup_steps=10, schedule="cosine", seed=seed,
        train_lm_head=True, progress=progress,
    )
    return train_cold_start(out / "base", data["train"], out / "run", config, cot_drop=0.5, lm_weight=1.0, eval_data=data["test_id"])


def rationale_budget(data_file, model_dir, *, margin: float = 1.25, multiple: int = 32) -> int:
    """A CoT budget for a model trained on `data_file`'s rationales: the longest one in tokens of
    `model_dir`'s tokenizer, times `margin`, rounded up to a multiple of `multiple`."""
    import math

    from descore_sdk.prompt import load_tokenizer

    from .data import read_pairs

    tokenizer = load_tokenizer(model_dir)
    texts = [t for p in read_pairs(data_file) for t in (p.rationale_a, p.rationale_b) if t]
    longest = max((len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts), default=0)
    return max(multiple, math.ceil(longest * margin / multiple) * multiple)


# -- command line -----------------------------------------------------------------------------------
def run(args) -> int:
    """Run the stage from parsed `add_cold_start_arguments` options."""
    from .arguments import train_config_from_args

    final = train_cold_start(
        args.model, args.data, args.out, train_config_from_args(args),
        cot_drop=args.cot_drop, lm_weight=args.lm_weight, ties=args.ties, tie_theta=args.tie_theta,
        eval_data=args.eval_data, dimensions=args.dimensions, on_missing=args.on_missing, resume=args.resume,
    )
    return report_trained(final)


def main(argv=None) -> int:
    return stage_main(argv, prog="python -m descore_sdk.training.cold_start", description=__doc__.split("\n\n")[0],
                      add_arguments=add_cold_start_arguments, run=run)


if __name__ == "__main__":
    sys.exit(main())
