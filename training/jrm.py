"""JRM (joint reward model): one backbone trained jointly on preferences and on rationales, scoring
WITHOUT a chain of thought.

    python -m descore_sdk.training.jrm --model BASE --data train.jsonl --out runs/jrm [--resume]
    descore train jrm --model BASE --data train.jsonl --out runs/jrm              (same options)

Each video of a pair is one row in the "explain" layout (see `training/batching.py`):

    prompt <Reward> rationale <|im_end|>

The reward is read at `<Reward>`, which (causal attention) sees exactly the fast-mode input
`prompt <Reward>` — so the model is trained on the layout it is served with — and the same forward
pass trains the LM on the rationale that follows. The loss is

    BT (or Rao–Kupper BT-with-ties) over the pair's rewards  +  lm_weight × token cross-entropy

with both terms normalised over the global batch. The rationale is a training signal only: it
shapes the shared representation (what is in the video, how it matches the prompt), but a JRM
model never writes one at scoring time. The checkpoint is marked `descore_config.method = "jrm"`,
which makes the Scorer default to fast mode for it.

Pairs without rationales fall back to the fast layout (pure BT) and add no LM term.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


from .arguments import DEFAULT_JRM_LM_WEIGHT as DEFAULT_LM_WEIGHT
from .arguments import DEFAULT_TIE_THETA, add_jrm_arguments, report_trained, stage_main

logger = logging.getLogger(__name__)


def train_jrm(
    model_path,
    data_path,
    out_dir,
    config=None,
    *,
    lm_weight: float = DEFAULT_LM_WEIGHT,
    ties: str = "drop",
    tie_theta: float = DEFAULT_TIE_THETA,
    eval_data=None,
    dimensions=None,
    on_missing: str = "skip",
    resume: bool = False,
) -> Path:
    """Run the JRM stage; returns the final model folder (`out_dir/model`, method "jrm")."""
    from descore_sdk.prompt import PromptBuilder

    from .batching import PairCollator
    from .trainer import PreferenceObjective, TrainConfig, Trainer, load_stage_inputs

    config = config or TrainConfig()
    model, pairs, eval_pairs = load_stage_inputs(
        model_path, data_path, dimensions=dimensions, eval_data=eval_data, on_missing=on_missing, method="jrm"
    )
    if not any(p.rationale_a and p.rationale_b for p in pairs):
        logger.warning("%s has no rationales: JRM reduces to plain Bradley–Terry on the fast layout.", data_path)
    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    collator = PairCollator(
        prompts, config.video_cache(model.descore_config), model.dimension_names,
        recipe="jrm", with_labels=lm_weight > 0, seed=config.seed,
    )
    objective = PreferenceObjective(ties=ties, theta=tie_theta, lm_weight=lm_weight)
    run_info = {
        "stage": "jrm",
        "model": str(Path(model_path).resolve()),
        "data": str(Path(data_path).resolve()),
        "dimensions": model.dimension_names,
        "recipe": {"lm_weight": lm_weight, "ties": ties, "tie_theta": tie_theta},
    }
    trainer = Trainer(model, config, train_pairs=pairs, collator=collator, objective=objective,
                      out_dir=out_dir, run_info=run_info, eval_pairs=eval_pairs)
    return trainer.fit(resume=resume)


# -- command line -----------------------------------------------------------------------------------
def run(args) -> int:
    """Run the stage from parsed `add_jrm_arguments` options."""
    from .arguments import train_config_from_args

    final = train_jrm(
        args.model, args.data, args.out, train_config_from_args(args),
        lm_weight=args.lm_weight, ties=args.ties, tie_theta=args.tie_theta,
        eval_data=args.eval_data, dimensions=args.dimensions, on_missing=args.on_missing, resume=args.resume,
    )
    return report_trained(final)


def main(argv=None) -> int:
    return stage_main(argv, prog="python -m descore_sdk.training.jrm", description=__doc__.split("\n\n")[0],
                      add_arguments=add_jrm_arguments, run=run)


if __name__ == "__main__":
    sys.exit(main())
