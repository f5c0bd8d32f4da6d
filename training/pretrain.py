"""Captioning pre-training: give a random-weight tiny backbone the eyes a real Qwen-VL already has.

A DeScore run starts from a pretrained vision-language model that can already say what a video shows.
The tiny random-weight backbones of the tests and the synthetic benchmark cannot: trained directly on
preference pairs, their language model learns to copy colour and shape words from the PROMPT (right
for most clips) and never looks at the video for them (measured: a teacher-forced rationale was no
more likely with its own video than with its twin's, for every factor but blur, after 1,000 cold-start
steps). This stage stands in for the VLM pre-training the tiny models skipped, with two tasks a real
Qwen-VL was trained on:

* captioning: the model captions each training clip from a prompt that gives nothing away ("Describe
  the video."), so the caption can only come from the video (`synth.caption`);
* grounding questions (on by default, `--no-questions` turns them off): "Is this a red circle?",
  answered "Yes." or "No, it is a blue square." (`synth.grounding_answer`). Half the questions name
  what is drawn, half a random colour and shape. The answer needs the words of the question bound to
  what the video shows, the same skill a reward model needs to judge text alignment. Measured on the
  tiny model (one run each, 1,000 pretrain and 1,000 cold-start steps): fast-mode TA 0.72 with the
  questions, 0.66 without; a gain within the noise of 85 test pairs.
* path questions (with the grounding questions; `--no-path-questions` leaves them out): "Is it moving
  left to right?", answered "Yes." or "No, it moves top to bottom." (`synth.path_answer`). Half the
  questions name the path the first clip shows, half another path. Why: in every training pair the
  shown path is the prompt's (wrong motion is a held-out factor), so nothing else ever makes the
  model read the path from the video rather than copy it from the text; here the asked path is wrong
  half the time and the answer names the shown one. No preference pair and no clip with the held-out
  factor is made: the clips are the train split's, and only the question's words differ from them.

    python -m descore_sdk.training.pretrain --model TINY_BASE --data train.jsonl --out runs/pretrain

Data: the synthetic benchmark's pairs (`descore data synth`), whose `meta_a` / `meta_b` records say
what each clip shows; every distinct clip becomes one caption example and one question example. Pairs
without that ground truth are refused: captions and answers need it. Use the TRAIN split only, so nothing of the
test splits leaks into the backbone.

`--extra-clips FILE` adds caption-only clips (`descore data synth --pretrain-clips N` writes them:
`synth.generate_pretrain_clips`), captioned and asked about like the pairs' clips. Half of them have a
colour cast, which the preference splits only render in test_heldout: a real VLM's pre-training has seen
tinted footage and can name a tint ("warm tint"); without these clips the tiny backbone could not (its
captions told a cast clip from its clean twin 0.50 of the time, BENCHMARK.md, session 14). They are
clips, not pairs: no prompt names a colour cast and no label says a tinted clip is worse, so the
held-out judgement itself is never trained.

Training reuses the cold-start machinery (`Trainer`, think layout, LM loss on the caption and its stop
token, no preference terms), so checkpoints, `--resume`, DDP and the metrics log work as in every stage.
The result (`OUT/model`) is an ordinary checkpoint to start the cold start (or JRM, or plain BT) from.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from descore_sdk.errors import DataError, InvalidInputError

logger = logging.getLogger(__name__)

CAPTION_PROMPT = "Describe the video."
GROUNDING_QUESTION = "Is this a {color} {shape}?"
PATH_QUESTION = "Is it moving {path}?"


def _clips(pairs) -> dict[str, dict]:
    """{video path: its ground-truth meta record} over the distinct clips of `pairs`."""
    clips: dict[str, dict] = {}
    for index, pair in enumerate(pairs):
        meta = pair.meta or {}
        if "meta_a" not in meta or "meta_b" not in meta:
            raise DataError(
                f"Pair {index} has no meta_a/meta_b ground truth, so its clips cannot be captioned. Captioning "
                "pre-training takes the synthetic benchmark's train.jsonl (`descore data synth`)."
            )
        clips.setdefault(str(pair.video_a), meta["meta_a"])
        clips.setdefault(str(pair.video_b), meta["meta_b"])
    return clips


META_KEYS = ("factors", "shape", "color", "motion", "background", "tint", "dropped_frames")


def read_pretrain_clips(path) -> dict[str, dict]:
    """{video path: ground-truth meta} from a caption-only clips file (`synth.generate_pretrain_clips`:
    one JSON object per line with ``video``, relative to the file's folder, and ``meta``). Missing
    videos, paths outside the file's folder and records without the ground truth are refused."""
    import os

    from .data import _resolve_video, json_lines

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"Cannot read the pre-training clips file {path}: {exc.strerror or exc}.") from exc
    root = Path(os.path.abspath(path.parent))
    clips: dict[str, dict] = {}
    for row, item in json_lines(text, path):
        meta = item.get("meta") if isinstance(item, dict) else None
        if not isinstance(meta, dict) or any(key not in meta for key in META_KEYS):
            raise DataError(f"{path}, row {row}: expected {{\"video\": ..., \"meta\": {{{', '.join(META_KEYS)}}}}}; "
                            "write the file with `synth.generate_pretrain_clips`.")
        video = _resolve_video(item.get("video"), root, path, row, "video")
        if not video.is_file():
            raise DataError(f"{path}, row {row}: video {video} does not exist.")
        clips[str(video)] = meta
    if not clips:
        raise DataError(f"{path} holds no clips.")
    return clips


def _two_by_two(paths: list[str]) -> list[tuple[str, str]]:
    if len(paths) % 2:
        paths = paths + [paths[0]]  # pairs need an even count; one clip is used twice
    return list(zip(paths[0::2], paths[1::2]))


def caption_examples(pairs, extra_clips: dict[str, dict] | None = None):
    """One caption example per distinct clip of `pairs` and of `extra_clips` ({video: meta},
    `read_pretrain_clips`), as pairs of two clips (the trainer's unit): prompt `CAPTION_PROMPT`, the
    clips' captions as rationales, no preference labels."""
    from .data import PreferencePair
    from .synth import caption

    clips = {**_clips(pairs), **(extra_clips or {})}
    return [
        PreferencePair(prompt=CAPTION_PROMPT, video_a=Path(a), video_b=Path(b), labels={},
                       rationale_a=caption(clips[a]), rationale_b=caption(clips[b]))
        for a, b in _two_by_two(sorted(clips))
    ]


def question_examples(pairs, *, seed: int = 0, path_questions: bool = True, extra_clips: dict[str, dict] | None = None):
    """One grounding question per distinct clip of `pairs`, two clips per example sharing the question
    (`GROUNDING_QUESTION`): with probability 1/2 it names the first clip's drawn colour and shape,
    otherwise a uniformly random colour and shape. Each clip's rationale is its own answer
    (`synth.grounding_answer`). With `path_questions`, also one path question per clip (`PATH_QUESTION`, after
    the colour/shape ones): with probability 1/2 it names the path the first clip shows, otherwise a
    uniformly random OTHER path; answers by `synth.path_answer`. `extra_clips` ({video: meta}) are asked
    about too. Deterministic given `seed`."""
    import random

    from .data import PreferencePair
    from .synth import COLORS, MOTIONS, SHAPES, grounding_answer, path_answer

    clips = {**_clips(pairs), **(extra_clips or {})}
    paths = sorted(clips)
    rng = random.Random(seed)
    rng.shuffle(paths)  # the two clips of an example come from different scenes
    examples = []
    for a, b in _two_by_two(paths):
        if rng.random() < 0.5:
            color, shape = clips[a]["color"], clips[a]["shape"]
        else:
            color, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
        examples.append(PreferencePair(
            prompt=GROUNDING_QUESTION.format(color=color, shape=shape), video_a=Path(a), video_b=Path(b), labels={},
            rationale_a=grounding_answer(clips[a], color, shape), rationale_b=grounding_answer(clips[b], color, shape)))
    if path_questions:
        order = sorted(clips)
        rng.shuffle(order)  # other partners than in the colour/shape questions
        for a, b in _two_by_two(order):
            shown = clips[a]["motion"]
            path = shown if rng.random() < 0.5 else rng.choice([m for m in MOTIONS if m != shown])
            examples.append(PreferencePair(
                prompt=PATH_QUESTION.format(path=path), video_a=Path(a), video_b=Path(b), labels={},
                rationale_a=path_answer(clips[a], path), rationale_b=path_answer(clips[b], path)))
    return examples


def pretrain_captioner(model_path, data_path, out_dir, config=None, *, questions: bool = True, path_questions: bool = True,
                       extra_clips=None, on_missing: str = "skip", resume: bool = False) -> Path:
    """Run captioning pre-training (with grounding questions unless `questions=False`, and path
    questions among them unless `path_questions=False`); returns the final model folder (`out_dir/model`).

    extra_clips: a caption-only clips file (`synth.generate_pretrain_clips`) whose clips are captioned
    and asked about beside the pairs' clips.

    config: a `TrainConfig`; a random-weight model needs `train_lm_head=True` (set by default here).
    """
    from descore_sdk.prompt import PromptBuilder

    from .batching import PairCollator
    from .data import read_pairs
    from .model import DeScoreModel
    from .trainer import PreferenceObjective, TrainConfig, Trainer

    config = config or TrainConfig(train_lm_head=True)
    model = DeScoreModel.from_pretrained(model_path)
    pairs = read_pairs(data_path, on_missing=on_missing)
    extra = read_pretrain_clips(extra_clips) if extra_clips is not None else None
    examples = caption_examples(pairs, extra)
    logger.info("Captioning pre-training on %d clips of %s%s%s.", 2 * len(examples), data_path,
                f" and {extra_clips}" if extra else "", ", with a grounding question per clip" if questions else "")
    if questions:
        examples += question_examples(pairs, seed=config.seed, path_questions=path_questions, extra_clips=extra)
    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    collator = PairCollator(prompts, config.video_cache(model.descore_config), model.dimension_names,
                            recipe="descore", cot_drop=0.0, with_labels=True, seed=config.seed)
    run_info = {
        "stage": "pretrain_captioner",
        "model": str(Path(model_path).resolve()),
        "data": str(Path(data_path).resolve()),
        "extra_clips": str(Path(extra_clips).resolve()) if extra_clips is not None else None,
        "recipe": {"prompt": CAPTION_PROMPT, "questions": GROUNDING_QUESTION if questions else None,
                   "path_questions": PATH_QUESTION if questions and path_questions else None, "lm_weight": 1.0},
    }
    trainer = Trainer(model, config, train_pairs=examples, collator=collator, objective=PreferenceObjective(lm_weight=1.0),
                      out_dir=out_dir, run_info=run_info)
    return trainer.fit(resume=resume)


def text_log_prob(model, prompts, features, prompt: str, text: str) -> float:
    """Teacher-forced log-probability of `text` and its closing stop token after `prompt` and the
    video (`features`), in the think layout the cold start trains rationales in (the LM loss's own
    computation: `trainer.forward_with_hidden` + `losses.selected_token_cross_entropy`)."""
    import torch

    from .batching import build_row, collate_rows
    from .losses import selected_token_cross_entropy
    from .trainer import forward_with_hidden

    pad = prompts.tokenizer.token_to_id("<|endoftext|>")
    inputs = collate_rows([build_row(prompts, features, prompt, "think", text)], pad)
    labels = inputs.pop("labels")
    with torch.no_grad():
        _, hidden = forward_with_hidden(model, inputs)
        return -float(selected_token_cross_entropy(hidden, labels, model.backbone.get_output_embeddings()).total)


def caption_discrimination(model, pairs, *, prompt: str = CAPTION_PROMPT, rationale: str = "caption") -> dict[str, float]:
    """Does the model read its text from the video? Per differing factor set: the fraction of
    (pair, clip) cases where the clip's own text is more likely (teacher-forced log-probability)
    under that clip than its twin's text is. 0.5 = the video makes no difference; 1.0 = it always
    picks its own.

    pairs: synthetic benchmark pairs (with meta_a / meta_b); pairs whose two texts are equal are
    skipped. rationale: "caption" (`synth.caption`, with `prompt`) or "rationale" (the pairs' own
    rationales, with the pairs' own prompts: the cold-start CoT). Returns {factor key: fraction},
    the key being the factors that differ between the twins, comma-joined.
    """
    from descore_sdk.prompt import PromptBuilder

    from .batching import FeatureCache
    from .synth import caption

    if rationale not in ("caption", "rationale"):
        raise InvalidInputError(f"rationale must be 'caption' or 'rationale', got {rationale!r}.")
    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    cache = FeatureCache(model.descore_config)

    def log_prob(video, text_prompt, text) -> float:
        return text_log_prob(model, prompts, cache(video), text_prompt, text)

    was_training = model.training
    model.eval()
    wins: dict[str, int] = {}
    total: dict[str, int] = {}
    try:
        for index, pair in enumerate(pairs):
            meta = pair.meta or {}
            if "meta_a" not in meta or "meta_b" not in meta:
                raise DataError(f"Pair {index} has no meta_a/meta_b ground truth; use the synthetic benchmark's pairs.")
            if rationale == "caption":
                text_prompt, text_a, text_b = prompt, caption(meta["meta_a"]), caption(meta["meta_b"])
            else:
                text_prompt, text_a, text_b = pair.prompt, pair.rationale_a, pair.rationale_b
            if not text_a or not text_b or text_a == text_b:
                continue
            factors = set(meta["meta_a"]["factors"]) ^ set(meta["meta_b"]["factors"])
            key = ",".join(sorted(factors)) or "severity"
            own_a = log_prob(pair.video_a, text_prompt, text_a) > log_prob(pair.video_a, text_prompt, text_b)
            own_b = log_prob(pair.video_b, text_prompt, text_b) > log_prob(pair.video_b, text_prompt, text_a)
            wins[key] = wins.get(key, 0) + int(own_a) + int(own_b)
            total[key] = total.get(key, 0) + 2
    finally:
        model.train(was_training)
    return {key: wins[key] / total[key] for key in sorted(total)}


def path_question_accuracy(model, pairs, *, max_clips: int = 40) -> dict[str, float]:
    """Does the model answer the path questions from the video? For the first `max_clips` distinct clips
    of `pairs` and each of the 4 paths P, the likeliest (teacher-forced) of the 4 possible answers to
    `PATH_QUESTION` ("Yes." or "No, it moves M." for each M ≠ P) is compared with `synth.path_answer`.
    Returns {"asked_shown": accuracy where P is the clip's path, "asked_other": where it is not}
    (chance 0.25 for "asked_other"; a model that copies the question says "Yes." and scores 0 there).
    """
    from descore_sdk.prompt import PromptBuilder

    from .batching import FeatureCache
    from .synth import MOTIONS, path_answer

    prompts = PromptBuilder(model.tokenizer, model.descore_config)
    cache = FeatureCache(model.descore_config)
    clips = list(_clips(pairs).items())[:max_clips]
    right: dict[str, list[bool]] = {"asked_shown": [], "asked_other": []}
    was_training = model.training
    model.eval()
    try:
        for video, meta in clips:
            features = cache(video)
            for asked in MOTIONS:
                answers = ["Yes."] + [f"No, it moves {m}." for m in MOTIONS if m != asked]
                scores = [text_log_prob(model, prompts, features, PATH_QUESTION.format(path=asked), a) for a in answers]
                best = answers[max(range(len(answers)), key=scores.__getitem__)]
                right["asked_shown" if asked == meta["motion"] else "asked_other"].append(best == path_answer(meta, asked))
    finally:
        model.train(was_training)
    return {key: sum(v) / len(v) for key, v in right.items() if v}


# -- command line -----------------------------------------------------------------------------------
def run(args) -> int:
    from .arguments import report_trained, train_config_from_args

    config = train_config_from_args(args)
    config.train_lm_head = not config.lora  # captions need an LM head that learns to use the vocabulary
    final = pretrain_captioner(args.model, args.data, args.out, config, questions=not args.no_questions,
                               path_questions=not args.no_path_questions, extra_clips=args.extra_clips,
                               on_missing=args.on_missing, resume=args.resume)
    return report_trained(final)


def main(argv=None) -> int:
    from .arguments import stage_main

    return stage_main(argv, prog="python -m descore_sdk.training.pretrain", description=__doc__.split("\n\n")[0],
                      add_arguments=add_pretrain_arguments, run=run)


def add_pretrain_arguments(p) -> None:
    from .arguments import add_train_arguments

    add_train_arguments(p)
    p.add_argument("--no-questions", action="store_true", help="captions only, no grounding questions")
    p.add_argument("--no-path-questions", action="store_true", help="grounding questions on colour and shape only")
    p.add_argument("--extra-clips", type=Path, default=None, metavar="FILE",
                   help="caption-only clips (`descore data synth` writes pretrain_clips.jsonl): captioned and asked about "
                        "beside the pairs' clips, e.g. to show the backbone colour casts the pairs never have")


if __name__ == "__main__":
    sys.exit(main())
