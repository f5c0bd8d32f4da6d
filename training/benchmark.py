"""The training recipes measured end to end on the synthetic benchmark, in one command.

    python -m descore_sdk.training.benchmark OUT_DIR [--json] [--quick] [--cold-steps 1000 ...]

What it runs (each stage's output is kept in OUT_DIR and reused when the command is run again, so an
interrupted benchmark continues where it stopped):

1. data       `synth.generate_benchmark`: train / test_id / test_heldout (held-out factors: colour cast,
              wrong motion).
2. base       a tiny random-weight Qwen-VL DeScore model (dimensions VQ, MQ, TA, overall).
2b. pretrain_clips  with `--pretrain-clips N` > 0 (default 2,000): `synth.generate_pretrain_clips`,
              caption-only clips of the same scenes, half with a colour cast, no pairs, no labels.
3. pretrain   captioning pre-training with grounding questions on colour and shape on the train clips
              and the caption-only clips (`training/pretrain.py`): the tiny stand-in for the VLM
              pre-training a real Qwen-VL comes with. `--path-questions` adds the path questions; measured in session 11
              (BENCHMARK.md), they cost the cold start's TA verdicts (think 0.888 without, 0.794 with),
              so they are off by default.
4. mix        `data/train_mixed.jsonl`, the train pairs with seeded shares of them rewritten, which the
              supervised recipes and RL then train on (skipped when every share is 0).
              `synth.with_shared_faults` re-renders a pair with one colour cast (`--shared-cast-fraction`,
              default 0.25) and / or one wrong path (`--shared-motion-fraction`, default 0) on both clips,
              so rationales name what the clips show while no pair prefers a clean clip to a faulty one;
              `synth.without_path` (`--path-free-fraction`, default 0) gives a prompt that leaves the path
              out, with rationales that still say which way the object moves. BENCHMARK.md: session 16 for
              the shared faults (the shared wrong path broke the TA head), session 11 for the path-free
              prompts (held-out think rises, in-distribution think falls).
5. cold_start DeScore cold start from the pre-trained base: BT, CoT drop 0.5, rationale LM loss.
6. plain_bt   the same backbone and data, BT on the fast layout only (CoT drop 1, no LM loss).
7. jrm        JRM from the same backbone and data: BT + rationale LM loss, scored without CoT.
8. rl         dual-objective RL from the cold-start checkpoint on the supervised recipes' train pairs
              (the mix, if any): 200 steps of 8 pairs each, GRPO n=8 at a policy lr of 3e-4 (KL
              coefficient 1e-2, as the authors' config), rollouts at temperature 2 with min-p 0.1;
              section credit, human ties unrewarded, TA-decided pairs drawn 3x, verdict consistency 1;
              BT (weight 0.1, through the backbone) on the pair's greedy CoTs and fast-layout rows
              instead of the sampled CoTs. Each is a `--rl-*` flag. See BENCHMARK.md: "The RL stage" for
              what smaller settings (1 pair, lr 1e-5, temperature 1) did not do, session 14 for BT's
              scope, session 15 for the log-probs of the sampling distribution (temperature and min-p),
              session 18 for the credit and draws, session 20 for BT's rows and session 21 for the steps.
9. export     cold_start and rl exported as ONNX bundles.

Evaluation: `descore eval`'s code (`training.evaluation.evaluate_with_scorer`): accuracy without ties per
dimension and its mean over VQ/MQ/TA, the with-ties accuracy at the threshold calibrated on a slice of
the TRAIN split (never on the split reported). DeScore models are scored in think mode (the model
writes its own rationale, greedy) and fast mode, JRM and plain BT in fast mode; every model on
test_id and test_heldout. Bundles are scored with onnxruntime; the cold-start checkpoint is also
scored in fast mode with the torch backend, to show the export keeps its accuracy.

Diagnostics: `pretrain.caption_discrimination` of the pre-trained backbone (captions) and of the
cold-start model (its rationales) on test_id and on the first 200 test_heldout pairs: per factor, how
often a clip's own text is likelier than its twin's (0.5: the video makes no difference); and
with `--path-questions`, `pretrain.path_question_accuracy` of the pre-trained backbone on 40 test_id clips;
`synth.checklist_fidelity` of every think-mode evaluation (does the generated checklist state the
prompt's colour / shape / path as asked, and the clip's as seen, also where they differ?). The RL
stage's own verdict (`rl_summary.json`: the trend of the sampled CoTs' rule reward) and the change
from the cold start to the RL model per split and mode are in the report under "rl".

The report (`OUT_DIR/report.json`, printed as a table or with `--json` as JSON) also records each
stage's wall time and the settings. `--quick` shrinks everything to a smoke run (a minute or two) for
tests; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from descore_sdk.errors import DescoreError, InvalidInputError

logger = logging.getLogger(__name__)

DIMENSIONS = ("VQ", "MQ", "TA", "overall")
REPORT_FILE = "report.json"


@dataclass
class BenchmarkSettings:
    family: str = "qwen3_vl"
    seed: int = 0
    n_train: int = 3840
    n_test: int = 600
    n_heldout: int = 600
    n_calib: int = 200  # train pairs the with-ties threshold is calibrated on
    size: int = 96
    pretrain_steps: int = 1000
    cold_steps: int = 4000
    bt_steps: int = 4000
    jrm_steps: int = 4000
    rl_steps: int = 200  # the rule reward rises over the first ~60 steps, then plateaus near its peak (BENCHMARK.md, session 21)
    rl_lr: float = 3e-4  # the tiny model's policy lr (RLConfig's 1e-6 default is for real VLMs); KL ~1e-2 (BENCHMARK.md, session 12)
    rl_pairs_per_step: int = 8
    rl_head_lr: float = 1e-4
    rl_bt_scope: str = "backbone"  # RLConfig.bt_scope (the authors')
    rl_bt_weight: float = 0.1  # RLConfig.bt_weight (the authors' 5e-3 is for real models; BENCHMARK.md, sessions 14 and 20)
    # Which rows BT is computed on (RLConfig.bt_rows, comma-separated): the greedy CoTs think mode scores and the
    # fast layout, not the sampled CoTs (the authors'); raised think mode in six seeds of six (BENCHMARK.md, session 20).
    rl_bt_rows: str = "greedy,fast"
    rl_credit: str = "section"  # RLConfig.credit: each checklist section gets its own dimension's advantage (BENCHMARK.md, S18)
    rl_reward_tied_dimensions: bool = False  # RLConfig.reward_tied_dimensions: a human tie is not rewarded either way
    rl_draw_weights: str = "TA=3"  # RLConfig.draw_weights as DIM=WEIGHT[,DIM=WEIGHT]; "" draws every pair alike
    rl_verdict_consistency: float = 1.0  # RLConfig.verdict_consistency (BENCHMARK.md, session 18)
    rl_temperature: float = 2.0  # rollouts: with rl_min_p 0.1 explores without breaking the template (BENCHMARK.md, S3)
    rl_min_p: float = 0.1
    path_free_fraction: float = 0.0  # of the supervised recipes' train pairs, prompt without the path (`synth.without_path`)
    shared_cast_fraction: float = 0.25  # of the train pairs, one colour cast on both clips (`synth.with_shared_faults`; BENCHMARK.md, S16)
    shared_motion_fraction: float = 0.0  # of the train pairs, one wrong path on both clips (BENCHMARK.md, S16: breaks TA)
    path_questions: bool = False  # pre-training also asks "Is it moving ...?" (BENCHMARK.md, session 11: costs TA)
    pretrain_clips: int = 2000  # caption-only clips, half with a colour cast, that pre-training also sees (0: none)
    batch_size: int = 16
    lr: float = 2e-3
    max_new_tokens: int = 192  # think-mode rationale budget (the synthetic rationales are ~75-100 tokens)

    @classmethod
    def quick(cls) -> "BenchmarkSettings":
        return cls(n_train=32, n_test=12, n_heldout=12, n_calib=8, size=32, pretrain_steps=2, cold_steps=2, pretrain_clips=6,
                   bt_steps=2, jrm_steps=2, rl_steps=1, rl_pairs_per_step=2, batch_size=4, max_new_tokens=24)


def _list_setting(value: str) -> tuple[str, ...]:
    """A comma-separated setting ("greedy,fast", "TA=3,MQ=2") as its items; "" is none."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _draw_weights(value: str) -> dict | None:
    from .rl import parse_draw_weights

    try:
        return parse_draw_weights(_list_setting(value))
    except InvalidInputError:
        raise InvalidInputError(f"--rl-draw-weights takes DIM=WEIGHT[,DIM=WEIGHT] (e.g. TA=3), or \"\" for none; got {value!r}.") from None


def _train_config(settings: BenchmarkSettings, steps: int, schedule: str = "cosine"):
    from .trainer import TrainConfig

    return TrainConfig(steps=steps, batch_size=settings.batch_size, lr=settings.lr, warmup_steps=min(10, steps),
                       schedule=schedule, seed=settings.seed, train_lm_head=True, progress=False, log_every=25)


class _Stages:
    """Runs each stage once; a stage whose output folder holds a model is reused."""

    def __init__(self, out: Path):
        self.out = out
        self.seconds: dict[str, float] = {}

    def run(self, name: str, done_marker: Path, fn):
        if done_marker.exists():
            logger.info("benchmark: reusing %s (%s)", name, done_marker)
            return
        started = time.perf_counter()
        logger.info("benchmark: running %s", name)
        fn()
        self.seconds[name] = round(time.perf_counter() - started, 1)


def run_benchmark(out_dir, settings: BenchmarkSettings | None = None) -> dict:
    """Run (or continue) the benchmark in `out_dir`; returns the report (also saved as report.json)."""
    from descore_sdk.scorer import Scorer

    from .evaluation import evaluate_with_scorer, score_pairs, without_nan
    from .cold_start import QUICK_PROMPT_TEMPLATE, train_cold_start
    from .data import read_pairs
    from .jrm import train_jrm
    from .pretrain import pretrain_captioner
    from .rl import RLConfig, run_rl
    from .synth import PRETRAIN_CLIPS_FILE, generate_benchmark, generate_pretrain_clips
    from .tiny import build_tiny_model

    settings = settings or BenchmarkSettings()
    if settings.pretrain_clips < 0:
        raise InvalidInputError(f"--pretrain-clips must be 0 or more, got {settings.pretrain_clips}.")
    for flag, fraction in (("--path-free-fraction", settings.path_free_fraction), ("--shared-cast-fraction", settings.shared_cast_fraction),
                           ("--shared-motion-fraction", settings.shared_motion_fraction)):
        if not 0.0 <= fraction <= 1.0:
            raise InvalidInputError(f"{flag} must lie in [0, 1], got {fraction}.")
    # Built first: a bad RL setting fails here, not an hour later after the supervised stages.
    rl_config = RLConfig(steps=settings.rl_steps, num_samples=8, pairs_per_step=settings.rl_pairs_per_step,
                         max_new_tokens=settings.max_new_tokens,
                         length_min_tokens=min(32, settings.max_new_tokens), length_max_tokens=max(settings.max_new_tokens, 32),
                         lr=settings.rl_lr, head_lr=settings.rl_head_lr, temperature=settings.rl_temperature,
                         min_p=settings.rl_min_p, bt_scope=settings.rl_bt_scope, bt_weight=settings.rl_bt_weight,
                         bt_rows=_list_setting(settings.rl_bt_rows), credit=settings.rl_credit,
                         reward_tied_dimensions=settings.rl_reward_tied_dimensions,
                         draw_weights=_draw_weights(settings.rl_draw_weights),
                         verdict_consistency=settings.rl_verdict_consistency, seed=settings.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out)
    data = out / "data"
    split = {name: data / f"{name}.jsonl" for name in ("train", "test_id", "test_heldout")}

    stages.run("data", data / "benchmark.json", lambda: generate_benchmark(
        data, n_train=settings.n_train, n_test=settings.n_test, n_heldout=settings.n_heldout, seed=settings.seed,
        size=(settings.size, settings.size)))
    extra_clips = None
    if settings.pretrain_clips > 0:
        extra_clips = data / PRETRAIN_CLIPS_FILE
        stages.run("pretrain_clips", extra_clips, lambda: generate_pretrain_clips(
            data, n_clips=settings.pretrain_clips, seed=settings.seed, size=(settings.size, settings.size)))

    def make_base():
        model = build_tiny_model(settings.family, seed=settings.seed, dimension_names=DIMENSIONS)
        model.descore_config.prompt_template = QUICK_PROMPT_TEMPLATE
        model.descore_config.system_prompt = None
        model.save_pretrained(out / "base")

    stages.run("base", out / "base" / "config.json", make_base)
    stages.run("pretrain", out / "pretrain" / "model" / "config.json", lambda: pretrain_captioner(
        out / "base", split["train"], out / "pretrain", _train_config(settings, settings.pretrain_steps, "constant"),
        path_questions=settings.path_questions, extra_clips=extra_clips))
    backbone = out / "pretrain" / "model"
    mixed = split["train"]
    if settings.path_free_fraction > 0 or settings.shared_cast_fraction > 0 or settings.shared_motion_fraction > 0:
        mixed = data / "train_mixed.jsonl"
        stages.run("mix", mixed, lambda: write_train_mix(
            split["train"], mixed, seed=settings.seed, path_free_fraction=settings.path_free_fraction,
            shared_cast_fraction=settings.shared_cast_fraction, shared_motion_fraction=settings.shared_motion_fraction))
    stages.run("cold_start", out / "cold_start" / "model" / "config.json", lambda: train_cold_start(
        backbone, mixed, out / "cold_start", _train_config(settings, settings.cold_steps), cot_drop=0.5, lm_weight=1.0))
    stages.run("plain_bt", out / "plain_bt" / "model" / "config.json", lambda: train_cold_start(
        backbone, mixed, out / "plain_bt", _train_config(settings, settings.bt_steps), cot_drop=1.0, lm_weight=0.0))
    stages.run("jrm", out / "jrm" / "model" / "config.json", lambda: train_jrm(
        backbone, mixed, out / "jrm", _train_config(settings, settings.jrm_steps), lm_weight=1.0))
    stages.run("rl", out / "rl" / "config.json", lambda: run_rl(out / "cold_start" / "model", mixed, out / "rl", rl_config))

    from descore_sdk.export.bundle import export_bundle

    for name, checkpoint in (("cold_start", out / "cold_start" / "model"), ("rl", out / "rl")):
        bundle = out / "bundles" / name
        stages.run(f"export_{name}", bundle / "manifest.json", lambda c=checkpoint, b=bundle: export_bundle(c, b, progress=False))

    # -- evaluation ---------------------------------------------------------------------------------
    pairs = {name: read_pairs(path) for name, path in split.items()}
    calib = pairs["train"][: settings.n_calib]
    options = dict(max_new_tokens=settings.max_new_tokens, temperature=0.0)
    evaluations = []
    plan = [
        ("cold_start", out / "bundles" / "cold_start", "onnxruntime", ("think", "fast")),
        ("cold_start", out / "cold_start" / "model", "torch", ("fast",)),
        ("rl", out / "bundles" / "rl", "onnxruntime", ("think", "fast")),
        ("jrm", out / "jrm" / "model", "torch", ("fast",)),
        ("plain_bt", out / "plain_bt" / "model", "torch", ("fast",)),
    ]
    started = time.perf_counter()
    from .synth import checklist_fidelity

    checklists = {}
    for model_name, path, backend, modes in plan:
        scorer = Scorer.from_pretrained(path, backend=backend, **options)
        for mode in modes:
            # Each video once per (model, mode): the calibration pairs serve both splits' reports.
            results = score_pairs(scorer, pairs["test_id"] + pairs["test_heldout"] + calib, mode=mode)
            rationales = {item: result.rationale or "" for item, result in results.items()}
            for split_name in ("test_id", "test_heldout"):
                report = evaluate_with_scorer(scorer, pairs[split_name], mode=mode, calib_pairs=calib, results=results)
                evaluations.append({"model": model_name, "backend": backend, "mode": mode, "split": split_name,
                                    "mean": report["mean"], "dims": report["dims"], "correct": report["correct"]})
                if mode == "think":  # did the generated checklists copy the prompt and read the clip right?
                    checklists[f"{model_name}_think_checklist_{split_name}"] = checklist_fidelity(pairs[split_name], rationales)
    # Does each backbone read its text from the video? (0.5 per factor = it does not; see pretrain.py)
    from .model import DeScoreModel
    from .pretrain import caption_discrimination, path_question_accuracy

    diagnostics = {
        "pretrain_caption_discrimination_test_id": caption_discrimination(DeScoreModel.from_pretrained(backbone), pairs["test_id"]),
        "cold_start_rationale_discrimination_test_id": caption_discrimination(
            DeScoreModel.from_pretrained(out / "cold_start" / "model"), pairs["test_id"], rationale="rationale"),
        # The held-out factors: does the backbone see a wrong path / a colour cast at all (captions), and
        # does the cold start's rationale about them depend on the video? (the first 200 pairs)
        "pretrain_caption_discrimination_test_heldout": caption_discrimination(
            DeScoreModel.from_pretrained(backbone), pairs["test_heldout"][:200]),
        "cold_start_rationale_discrimination_test_heldout": caption_discrimination(
            DeScoreModel.from_pretrained(out / "cold_start" / "model"), pairs["test_heldout"][:200], rationale="rationale"),
        **checklists,
    }
    if settings.path_questions:  # does the pre-trained backbone answer "Is it moving P?" from the video (40 test_id clips)?
        diagnostics["pretrain_path_questions_test_id"] = path_question_accuracy(DeScoreModel.from_pretrained(backbone), pairs["test_id"])
    stages.seconds["evaluation"] = round(time.perf_counter() - started, 1)

    report = {"settings": dataclasses.asdict(settings), "seconds": stages.seconds, "evaluations": evaluations,
              "summary": summarise(evaluations), "diagnostics": diagnostics, "rl": rl_effect(out / "rl", evaluations)}
    (out / REPORT_FILE).write_text(json.dumps(without_nan(report), indent=2) + "\n", encoding="utf-8")
    return report


def write_train_mix(train: Path, out: Path, *, seed: int, path_free_fraction: float = 0.0, shared_cast_fraction: float = 0.0,
                    shared_motion_fraction: float = 0.0) -> Path:
    """`train`'s pairs with seeded rewrites, written next to it: a share `shared_cast_fraction` of the
    pairs gets one colour cast on both clips and a share `shared_motion_fraction` one wrong path on both
    (`synth.with_shared_faults`; a pair may get both; new videos under `videos/train_shared/`), then a
    share `path_free_fraction` is rewritten by `synth.without_path` (the other videos are shared). Each
    rewrite has its own seeded draw per pair, so the same pairs are picked every run, whatever the other
    fractions."""
    import random

    import numpy as np

    from .data import read_pairs, write_pairs_jsonl
    from .synth import with_shared_faults, without_path

    for flag, fraction in (("--path-free-fraction", path_free_fraction), ("--shared-cast-fraction", shared_cast_fraction),
                           ("--shared-motion-fraction", shared_motion_fraction)):
        if not 0.0 <= fraction <= 1.0:
            raise InvalidInputError(f"{flag} must lie in [0, 1], got {fraction}.")
    info_path = Path(train).parent / "benchmark.json"
    if not info_path.is_file():
        raise InvalidInputError(f"{info_path} is missing: the mix re-renders clips at the benchmark's size, so {train} must be "
                                "the train split `synth.generate_benchmark` wrote, next to its benchmark.json.")
    info = json.loads(info_path.read_text())
    render = dict(size=tuple(info["size"]), num_frames=info["num_frames"], fps=info["fps"])
    path_rng = random.Random(seed)
    cast_rng, motion_rng, render_rng = (np.random.default_rng([seed, 2_000 + i]) for i in range(3))
    pairs = []
    for index, pair in enumerate(read_pairs(train)):
        faults = [f for f, pick, fraction in (("color_cast", cast_rng, shared_cast_fraction), ("wrong_motion", motion_rng, shared_motion_fraction))
                  if pick.random() < fraction]
        if faults:
            pair = with_shared_faults(pair, faults, render_rng, Path(out).parent, f"t{index:05d}", **render)
        if path_rng.random() < path_free_fraction:
            pair = without_path(pair)
        pairs.append(pair)
    shared = [p.meta.get("shared", {}) for p in pairs]
    logger.info("benchmark: of %d train pairs, %d share a colour cast, %d a wrong path, %d have no path in the prompt", len(pairs),
                sum("color_cast" in s for s in shared), sum("wrong_motion" in s for s in shared),
                sum(p.meta.get("path_in_prompt") is False for p in pairs))
    return write_pairs_jsonl(pairs, out)


def rl_effect(rl_dir: Path, evaluations: list[dict]) -> dict:
    """Did RL improve on its cold start? The RL run's own summary (`rl_summary.json`: the rule reward's
    block trend) and, per split and mode, the change from the cold-start bundle to the RL bundle
    (onnxruntime) on the same pairs: `metrics.paired_accuracy_change` over VQ/MQ/TA from the per-pair
    correctness (the paired standard error), or, for evaluations without it, `metrics.accuracy_change`
    with n = the (pair, dimension) entries without a human tie (two binomial errors: conservative)."""
    from .metrics import accuracy_change, paired_accuracy_change
    from .rl import SUMMARY_FILE

    summary_path = rl_dir / SUMMARY_FILE
    out = {"run": json.loads(summary_path.read_text()) if summary_path.is_file() else None}
    rows = {(e["model"], e["backend"], e["mode"], e["split"]): e for e in evaluations}
    for split in ("test_id", "test_heldout"):
        for mode in ("think", "fast"):
            before, after = rows.get(("cold_start", "onnxruntime", mode, split)), rows.get(("rl", "onnxruntime", mode, split))
            if before is None or after is None:
                continue
            dims = [d for d in ("VQ", "MQ", "TA") if d in before["dims"]]
            if before.get("correct") and after.get("correct"):
                out[f"{split}/{mode}"] = paired_accuracy_change({d: before["correct"][d] for d in dims},
                                                                {d: after["correct"][d] for d in dims})
                continue
            n = sum(before["dims"][d]["n_pairs"] - before["dims"][d]["n_human_ties"] for d in dims)
            out[f"{split}/{mode}"] = accuracy_change(before["mean"]["accuracy_without_ties"], after["mean"]["accuracy_without_ties"], n)
    return out


def summarise(evaluations: list[dict]) -> dict:
    """{"model/backend/mode/split": {VQ, MQ, TA, overall, mean}} accuracy without ties."""
    out = {}
    for e in evaluations:
        key = f"{e['model']}/{e['backend']}/{e['mode']}/{e['split']}"
        row = {dim: r["accuracy_without_ties"] for dim, r in e["dims"].items()}
        row["mean"] = e["mean"]["accuracy_without_ties"]
        row["mean_with_ties_calibrated"] = e["mean"].get("accuracy_with_ties_calibrated")
        out[key] = row
    return out


def format_summary(report: dict) -> str:
    columns = ("VQ", "MQ", "TA", "overall", "mean", "mean_with_ties_calibrated")
    lines = [f"{'model/backend/mode/split':<44}" + "".join(f"{c[:12]:>13}" for c in columns)]
    for key, row in report["summary"].items():
        cells = "".join(f"{'n/a' if row.get(c) is None else format(row[c], '.3f'):>13}" for c in columns)
        lines.append(f"{key:<44}{cells}")
    for name, values in report.get("diagnostics", {}).items():
        lines.append(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
    rl = report.get("rl") or {}
    if rl.get("run"):
        from .metrics import format_rl_summary

        lines.append(format_rl_summary(rl["run"]))
    for key, change in rl.items():
        if key != "run" and change:
            lines.append(f"RL vs cold start, {key}: {change['before']:.3f} → {change['after']:.3f} "
                         f"({change['delta']:+.3f}, 2 SE {2 * change['se']:.3f}{' paired' if change.get('paired') else ''}: "
                         f"{change['change']})")
    lines.append("stage seconds: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()))
    return "\n".join(lines)


def main(argv=None, prog: str = "python -m descore_sdk.training.benchmark") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (numbers mean nothing)")
    defaults = BenchmarkSettings()
    for field in dataclasses.fields(BenchmarkSettings):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(getattr(defaults, field.name), bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = BenchmarkSettings.quick() if args.quick else BenchmarkSettings()
    for field in dataclasses.fields(BenchmarkSettings):
        value = getattr(args, field.name)
        if value is not None:
            setattr(settings, field.name, value)
    try:
        report = run_benchmark(args.out_dir, settings)
    except DescoreError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    from .evaluation import without_nan

    print(json.dumps(without_nan(report)) if args.json else format_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
