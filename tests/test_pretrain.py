"""Captioning pre-training (training/pretrain.py) and the benchmark runner (training/benchmark.py).

References: captions written out by hand from the rendered clips' ground truth; the caption rows
checked against the tokenizer's own encoding; what must not move (other embedding rows, the reward
head) compared bitwise with the starting checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.numpy import load_file  # noqa: E402

from descore_sdk.errors import DataError, InvalidInputError  # noqa: E402
from descore_sdk.training.benchmark import BenchmarkSettings, main as benchmark_main  # noqa: E402
from descore_sdk.training.data import PreferencePair, read_pairs  # noqa: E402
from descore_sdk.training.pretrain import CAPTION_PROMPT, PATH_QUESTION, caption_examples, question_examples, main as pretrain_main  # noqa: E402
from descore_sdk.training.synth import caption, generate_benchmark, grounding_answer, path_answer  # noqa: E402
from descore_sdk.training.tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return generate_benchmark(tmp_path_factory.mktemp("bench"), n_train=10, n_test=0, n_heldout=0, seed=4, size=(32, 32), num_frames=5)


def clip_truth(pairs) -> dict:
    """{video path: ground-truth meta} read straight from the pairs' records."""
    truth = {}
    for p in pairs:
        truth[str(p.video_a)] = p.meta["meta_a"]
        truth[str(p.video_b)] = p.meta["meta_b"]
    return truth


def test_caption_names_what_is_drawn_not_what_was_asked():
    meta = {"factors": {"blur": 2, "jitter": 1, "wrong_color": 1}, "color": "blue", "shape": "square",
            "motion": "top to bottom", "background": "black", "tint": None, "dropped_frames": []}
    assert caption(meta) == ("A blue square moving top to bottom on a black background. Image: very blurry. "
                             "Motion: the camera shakes slightly.")
    clean = dict(meta, factors={}, dropped_frames=[])
    assert caption(clean).endswith("Image: sharp and clean. Motion: smooth.")
    frozen = dict(meta, factors={"frame_drop": 1, "noise": 1}, dropped_frames=[2, 3], tint="warm")
    assert caption(frozen).endswith("Image: light noise, warm tint. Motion: the picture freezes and then jumps.")


def test_caption_examples_cover_each_clip_once(bench):
    pairs = read_pairs(bench["train"])
    examples = caption_examples(pairs)
    truth = clip_truth(pairs)
    seen = [str(e.video_a) for e in examples] + [str(e.video_b) for e in examples]
    assert set(seen) == set(truth) and len(seen) in (len(truth), len(truth) + 1)
    for e in examples:
        assert e.prompt == CAPTION_PROMPT and e.labels == {}
        # The caption is the clip's own, and says what is DRAWN (a wrong-colour clip gets its actual colour).
        assert e.rationale_a == caption(truth[str(e.video_a)]) and e.rationale_b == caption(truth[str(e.video_b)])
        assert f"A {truth[str(e.video_a)]['color']} " in e.rationale_a


def test_grounding_answers_name_what_is_drawn():
    meta = {"factors": {"wrong_color": 1}, "color": "blue", "shape": "square", "motion": "top to bottom",
            "background": "black", "tint": None, "dropped_frames": []}
    assert grounding_answer(meta, "blue", "square") == "Yes."
    assert grounding_answer(meta, "red", "square") == "No, it is a blue square."
    assert grounding_answer(meta, "blue", "circle") == "No, it is a blue square."


def test_question_examples_ask_about_both_clips(bench):
    pairs = read_pairs(bench["train"])
    truth = clip_truth(pairs)
    examples = [e for e in question_examples(pairs, seed=0) if e.prompt.startswith("Is this a ")]
    seen = [str(e.video_a) for e in examples] + [str(e.video_b) for e in examples]
    assert set(seen) == set(truth) and len(seen) in (len(truth), len(truth) + 1)
    asked_own = 0
    for e in examples:
        words = e.prompt.rstrip("?").split()
        assert words[:3] == ["Is", "this", "a"] and len(words) == 5 and e.labels == {}
        color, shape = words[3], words[4]
        for video, answer in ((e.video_a, e.rationale_a), (e.video_b, e.rationale_b)):
            meta = truth[str(video)]
            expected = "Yes." if (meta["color"], meta["shape"]) == (color, shape) else f"No, it is a {meta['color']} {meta['shape']}."
            assert answer == expected
        asked_own += (truth[str(e.video_a)]["color"], truth[str(e.video_a)]["shape"]) == (color, shape)
    assert 0 < asked_own < len(examples)  # some questions name the first clip's object, some do not
    assert question_examples(pairs, seed=0)[: len(examples)] == examples  # deterministic


PATHS = ("left to right", "right to left", "top to bottom", "bottom to top")  # written out, not synth's table


def test_path_answers_name_the_shown_path():
    meta = {"factors": {}, "color": "red", "shape": "circle", "motion": "top to bottom", "background": "gray",
            "tint": None, "dropped_frames": []}
    assert path_answer(meta, "top to bottom") == "Yes."
    assert path_answer(meta, "left to right") == "No, it moves top to bottom."
    assert path_answer(dict(meta, motion="bottom to top"), "top to bottom") == "No, it moves bottom to top."
    with pytest.raises(InvalidInputError, match="path"):
        path_answer(meta, "diagonally")


def shown_path(video) -> str:
    """The path a clip shows, read from its decoded pixels: the object's centroid (pixels far from every
    background level, i.e. saturated) from the first to the last frame, along the axis it moves most."""
    import av

    with av.open(str(video)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float64)
    saturation = frames.max(axis=-1) - frames.min(axis=-1)  # the gray/black/white backgrounds have ~0
    centres = [np.argwhere(mask).mean(axis=0) for mask in saturation > 80]  # (y, x) per frame
    dy, dx = centres[-1] - centres[0]
    if abs(dx) > abs(dy):
        return "left to right" if dx > 0 else "right to left"
    return "top to bottom" if dy > 0 else "bottom to top"


def test_path_questions_answer_with_the_path_the_video_shows(bench):
    pairs = read_pairs(bench["train"])
    truth = clip_truth(pairs)
    # Reference for the records themselves: the path measured in the pixels of clean / frozen clips.
    steady = [v for v, m in truth.items() if set(m["factors"]) <= {"wrong_color", "wrong_shape", "frame_drop"}]
    assert len(steady) >= 5
    for video in steady:
        assert shown_path(video) == truth[video]["motion"], video
    examples = question_examples(pairs, seed=0)
    path_examples = [e for e in examples if e.prompt.startswith("Is it moving ")]
    assert len(examples) - len(path_examples) == len(path_examples)  # one colour/shape and one path question per clip
    assert {str(v) for e in path_examples for v in (e.video_a, e.video_b)} == set(truth)
    asked_other = 0
    for e in path_examples:
        asked = e.prompt[len("Is it moving "):-1]
        assert asked in PATHS and e.labels == {}
        for video, answer in ((e.video_a, e.rationale_a), (e.video_b, e.rationale_b)):
            seen = truth[str(video)]["motion"]
            assert answer == ("Yes." if seen == asked else f"No, it moves {seen}.")
        asked_other += asked != truth[str(e.video_a)]["motion"]
    assert 0 < asked_other < len(path_examples)  # some questions name another path than the first clip's
    assert [e for e in question_examples(pairs, seed=0, path_questions=False) if e.prompt.startswith("Is it moving")] == []


def test_pretraining_never_sees_the_held_out_factors(tmp_path):
    """Pre-training on the train split: no clip has a held-out factor, every clip shows the path and
    colour its scene's prompt names unless a TRAIN factor changed it, and so a path question whose
    asked path differs from the shown one is the only place a path ever differs from a text's."""
    paths = generate_benchmark(tmp_path, n_train=24, n_test=4, n_heldout=4, seed=7, size=(32, 32), num_frames=5)
    pairs = read_pairs(paths["train"])
    for p in pairs:
        for side in ("a", "b"):
            meta = p.meta[f"meta_{side}"]
            assert not {"color_cast", "wrong_motion"} & set(meta["factors"]) and meta["tint"] is None
            assert meta["motion"] == p.meta["scene"]["motion"] and f"moving {meta['motion']} " in p.prompt
    training_clips = {str(v) for e in caption_examples(pairs) + question_examples(pairs) for v in (e.video_a, e.video_b)}
    assert training_clips == set(clip_truth(pairs))
    assert all("/videos/train/" in clip for clip in training_clips)
    held_out = {str(v) for p in read_pairs(paths["test_heldout"]) for v in (p.video_a, p.video_b)}
    assert not training_clips & held_out


def test_path_question_accuracy_bookkeeping(bench, monkeypatch):
    """With a stand-in log-probability (the model's is tested in test_text_log_prob_…): an oracle that
    prefers the true answer scores 1 and 1; one that always prefers "Yes." (copying the question)
    scores 1 where the asked path is shown and 0 elsewhere. By hand, with 4 paths per clip: 1 asked
    path is shown and 3 are not."""
    import descore_sdk.training.pretrain as pretrain_module

    pairs = read_pairs(bench["train"])
    truth = clip_truth(pairs)
    model = build_tiny_model("qwen3_vl", seed=1, dimension_names=("VQ", "MQ", "TA"))
    seen = {"questions": 0}

    def oracle(model, prompts, features, prompt, text):
        seen["questions"] += text == "Yes."
        video = next(v for v in truth if features is cache_of[v])
        return 0.0 if text == path_answer(truth[video], prompt[len("Is it moving "):-1]) else -1.0

    cache_of = {}
    from descore_sdk.training import batching

    real_cache = batching.FeatureCache

    class RecordingCache(real_cache):
        def __call__(self, video):
            cache_of[str(video)] = features = super().__call__(video)
            return features

    monkeypatch.setattr(batching, "FeatureCache", RecordingCache)
    monkeypatch.setattr(pretrain_module, "text_log_prob", oracle)
    assert pretrain_module.path_question_accuracy(model, pairs, max_clips=3) == {"asked_shown": 1.0, "asked_other": 1.0}
    assert seen["questions"] == 3 * 4
    monkeypatch.setattr(pretrain_module, "text_log_prob", lambda model, prompts, features, prompt, text: float(text == "Yes."))
    assert pretrain_module.path_question_accuracy(model, pairs, max_clips=3) == {"asked_shown": 1.0, "asked_other": 0.0}


def test_caption_examples_need_ground_truth(tmp_path):
    pair = PreferencePair(prompt="a cat", video_a=tmp_path / "a.mp4", video_b=tmp_path / "b.mp4", labels={"overall": "A"})
    with pytest.raises(DataError, match="meta_a"):
        caption_examples([pair])


def test_pretrain_stage_trains_only_what_it_should(bench, tmp_path):
    base = tmp_path / "base"
    build_tiny_model("qwen3_vl", seed=1, dimension_names=("VQ", "MQ", "TA"), out_dir=base)
    out = tmp_path / "run"
    code = pretrain_main(["--model", str(base), "--data", str(bench["train"]), "--out", str(out), "--steps", "3",
                          "--batch-size", "2", "--lr", "1e-2", "--no-progress"])
    assert code == 0
    before, after = load_file(base / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    emb_key = next(k for k in before if k.endswith("embed_tokens.weight"))
    head_key = next(k for k in before if k.endswith("reward_head.weight"))
    # No preference terms: the reward head gets no gradient at all.
    np.testing.assert_array_equal(before[head_key], after[head_key])
    # Of the embeddings at most the <Reward> row may move (it gets no gradient here either).
    np.testing.assert_array_equal(before[emb_key][:-1], after[emb_key][:-1])
    # The LM head and the language model did train.
    lm_key = next(k for k in before if k.endswith("lm_head.weight"))
    assert not np.array_equal(before[lm_key], after[lm_key])
    layer_key = next(k for k in before if "layers.0.self_attn.q_proj.weight" in k)
    assert not np.array_equal(before[layer_key], after[layer_key])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "lm_loss" in r]
    assert len(steps) == 3 and all(r["pref_loss"] == 0.0 and r["lm_loss"] > 0 for r in steps)
    assert json.loads((out / "run_config.json").read_text())["recipe"]["questions"] == "Is this a {color} {shape}?"
    from descore_sdk.cli import main as descore_main

    captions_only = tmp_path / "captions_only"
    assert descore_main(["train", "pretrain", "--model", str(base), "--data", str(bench["train"]), "--out", str(captions_only),
                         "--steps", "1", "--batch-size", "2", "--no-progress", "--no-questions"]) == 0
    assert json.loads((captions_only / "run_config.json").read_text())["recipe"]["questions"] is None


def test_extra_clips_are_captioned_and_asked_about(bench, tmp_path, capsys):
    """`--extra-clips`: the caption-only clips of `synth.generate_pretrain_clips` join the pairs' clips in
    the caption and question examples, each once, with captions that name their tint; bad files are refused."""
    from descore_sdk.cli import main as descore_main
    from descore_sdk.training.pretrain import read_pretrain_clips
    from descore_sdk.training.synth import generate_pretrain_clips

    clips_file = generate_pretrain_clips(tmp_path / "clips", n_clips=7, seed=2, size=(32, 32), num_frames=5, cast_fraction=1.0)
    extra = read_pretrain_clips(clips_file)
    assert len(extra) == 7 and all(Path(v).is_file() and "/videos/pretrain/" in v for v in extra)
    pairs = read_pairs(bench["train"])
    captions = caption_examples(pairs, extra)
    captioned = [str(v) for e in captions for v in (e.video_a, e.video_b)]
    assert set(captioned) == set(clip_truth(pairs)) | set(extra)
    assert len(captioned) - len(set(captioned)) <= 1  # an odd count reuses one clip
    by_clip = {str(v): text for e in captions for v, text in ((e.video_a, e.rationale_a), (e.video_b, e.rationale_b))}
    for video, meta in extra.items():  # cast_fraction 1: every clip is tinted, and its caption says so
        look = by_clip[video].split("Image: ")[1].split(". Motion:")[0].split(", ")
        assert [word for word in look if word.endswith(" tint")] == [f"{meta['tint']} tint"], (by_clip[video], meta)
    asked = {str(v) for e in question_examples(pairs, extra_clips=extra) for v in (e.video_a, e.video_b)}
    assert set(extra) <= asked
    # The CLI flag reaches the run.
    base = tmp_path / "base"
    build_tiny_model("qwen3_vl", seed=1, dimension_names=("VQ", "MQ", "TA"), out_dir=base)
    out = tmp_path / "run"
    assert descore_main(["train", "pretrain", "--model", str(base), "--data", str(bench["train"]), "--out", str(out),
                         "--extra-clips", str(clips_file), "--steps", "1", "--batch-size", "2", "--no-progress"]) == 0
    assert json.loads((out / "run_config.json").read_text())["extra_clips"] == str(clips_file.resolve())
    # Refused, with what to do: a path outside the file's folder, a record without ground truth, a missing video.
    lines = clips_file.read_text().splitlines()
    record = json.loads(lines[0])
    for name, bad, message in (("outside", {**record, "video": "../x.mp4"}, "outside the data folder"),
                               ("no_meta", {"video": record["video"]}, "generate_pretrain_clips"),
                               ("missing", {**record, "video": "videos/pretrain/nope.mp4"}, "does not exist")):
        bad_file = tmp_path / "clips" / f"{name}.jsonl"
        bad_file.write_text(json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=message):
            read_pretrain_clips(bad_file)
    code = descore_main(["train", "pretrain", "--model", str(base), "--data", str(bench["train"]), "--out", str(tmp_path / "bad"),
                         "--extra-clips", str(tmp_path / "clips" / "no_meta.jsonl"), "--steps", "1", "--no-progress"])
    assert code == 1 and "generate_pretrain_clips" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "model").exists()


def test_pretrain_refuses_data_without_ground_truth(tmp_path, sample_data_dir, capsys):
    base = tmp_path / "base"
    build_tiny_model("qwen3_vl", seed=1, out_dir=base)
    csv = next(sample_data_dir.glob("*.csv"))
    code = pretrain_main(["--model", str(base), "--data", str(csv), "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress"])
    assert code == 1
    assert "meta_a" in capsys.readouterr().err


def test_benchmark_quick_run_reports_every_model_and_reuses_stages(tmp_path, capsys, monkeypatch):
    import descore_sdk.training.rl as rl_module

    rl_data, run_rl = [], rl_module.run_rl
    monkeypatch.setattr(rl_module, "run_rl", lambda model, data, *a, **k: rl_data.append(Path(data)) or run_rl(model, data, *a, **k))
    out = tmp_path / "bench"
    flags = ["--quick", "--json", "--path-free-fraction", "0.5", "--shared-cast-fraction", "0.5", "--shared-motion-fraction", "0.5"]
    assert benchmark_main([str(out), *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    keys = set(report["summary"])
    for split in ("test_id", "test_heldout"):
        for key in (f"cold_start/onnxruntime/think/{split}", f"cold_start/onnxruntime/fast/{split}",
                    f"cold_start/torch/fast/{split}", f"rl/onnxruntime/think/{split}", f"jrm/torch/fast/{split}",
                    f"plain_bt/torch/fast/{split}"):
            assert key in keys
    assert report["settings"] == {**BenchmarkSettings.quick().__dict__, "path_free_fraction": 0.5, "shared_cast_fraction": 0.5,
                                  "shared_motion_fraction": 0.5}
    # The exported bundle scores the fast layout like the torch checkpoint: equal accuracies.
    for split in ("test_id", "test_heldout"):
        ort, pt = report["summary"][f"cold_start/onnxruntime/fast/{split}"], report["summary"][f"cold_start/torch/fast/{split}"]
        assert ort == pt
    assert {"data", "pretrain_clips", "pretrain", "mix", "cold_start", "plain_bt", "jrm", "rl", "export_cold_start",
            "export_rl"} <= set(report["seconds"])
    # The RL stage ran with the benchmark's own RL settings.
    rl_config = json.loads((out / "rl" / "rl_config.json").read_text())
    quick = BenchmarkSettings.quick()
    assert (rl_config["bt_scope"], rl_config["bt_weight"], rl_config["lr"]) == (quick.rl_bt_scope, quick.rl_bt_weight, quick.rl_lr)
    # The benchmark's RL recipe (BENCHMARK.md, session 20): BT on the greedy CoTs and the fast layout, section
    # credit, human ties unrewarded, TA drawn 3x, verdict consistency 1.
    assert (rl_config["bt_rows"], rl_config["credit"], rl_config["reward_tied_dimensions"], rl_config["draw_weights"],
            rl_config["verdict_consistency"]) == (["greedy", "fast"], "section", False, {"TA": 3.0}, 1.0)
    # Pre-training asks no path questions by default (BENCHMARK.md, session 11), so there is no path diagnostic.
    pretrain_run = json.loads((out / "pretrain" / "run_config.json").read_text())
    assert pretrain_run["recipe"]["questions"] and pretrain_run["recipe"]["path_questions"] is None
    assert "pretrain_path_questions_test_id" not in report["diagnostics"]
    # Pre-training also captions the caption-only clips (colour casts the pairs never show).
    clips_file = out / "data" / "pretrain_clips.jsonl"
    assert pretrain_run["extra_clips"] == str(clips_file.resolve())
    assert len(clips_file.read_text().splitlines()) == BenchmarkSettings.quick().pretrain_clips
    # The supervised recipes and RL train on the mix: train.jsonl's pairs, some with the path left out of
    # the prompt, some re-rendered with one colour cast on both clips.
    mixed, train = read_pairs(out / "data" / "train_mixed.jsonl"), read_pairs(out / "data" / "train.jsonl")
    assert [p.labels for p in mixed] == [p.labels for p in train]
    cast = [i for i, p in enumerate(mixed) if p.meta.get("shared")]
    assert cast and any(p.meta.get("path_in_prompt") is False for p in mixed)
    assert all((p.video_a, p.video_b) == (q.video_a, q.video_b) for i, (p, q) in enumerate(zip(mixed, train)) if i not in cast)
    assert rl_data == [out / "data" / "train_mixed.jsonl"]
    for stage in ("cold_start", "plain_bt", "jrm"):
        assert json.loads((out / stage / "run_config.json").read_text())["data"] == str((out / "data" / "train_mixed.jsonl").resolve())
    # RL against its cold start on the same pairs: the paired change, from the per-pair correctness kept
    for key in ("test_id/think", "test_id/fast"):
        assert report["rl"][key]["paired"] and report["rl"][key]["before"] == pytest.approx(
            report["summary"][f"cold_start/onnxruntime/{key.split('/')[1]}/test_id"]["mean"])
    for name, values in report["diagnostics"].items():
        rates = {k: v for k, v in values.items() if not k.endswith("_mismatched")}
        assert rates and all(v is None or 0.0 <= v <= 1.0 for v in rates.values()), name
    # Every think-mode evaluation's checklists are read back (test_heldout has wrong-motion clips to count).
    for model in ("cold_start", "rl"):
        for split in ("test_id", "test_heldout"):
            assert set(report["diagnostics"][f"{model}_think_checklist_{split}"]) >= {"colour_asked", "path_seen_mismatched"}
    # A second run reuses every stage (only the evaluation runs again).
    assert benchmark_main([str(out), *flags]) == 0
    again = json.loads(capsys.readouterr().out)
    assert set(again["seconds"]) == {"evaluation"}
    assert again["summary"] == report["summary"]


def test_benchmark_refuses_a_bad_rl_setting_before_training_anything(tmp_path, capsys):
    out = tmp_path / "bench"
    assert benchmark_main([str(out), "--quick", "--rl-bt-scope", "everything"]) == 1
    assert "bt_scope must be one of ('head', 'backbone')" in capsys.readouterr().err
    assert not out.exists()
    assert benchmark_main([str(out), "--quick", "--rl-draw-weights", "TA"]) == 1
    assert "--rl-draw-weights takes DIM=WEIGHT" in capsys.readouterr().err
    assert benchmark_main([str(out), "--quick", "--rl-bt-rows", "greedy,beam"]) == 1
    assert "bt_rows must name one or more distinct kinds" in capsys.readouterr().err
    assert not out.exists()
    assert benchmark_main([str(out), "--quick", "--pretrain-clips", "-1"]) == 1
    assert "--pretrain-clips must be 0 or more" in capsys.readouterr().err
    assert not out.exists()
    assert benchmark_main([str(out), "--quick", "--shared-cast-fraction", "1.5"]) == 1
    assert "--shared-cast-fraction must lie in [0, 1]" in capsys.readouterr().err
    assert not out.exists()


def test_benchmark_path_questions_flag_reaches_pre_training(tmp_path, capsys):
    out = tmp_path / "bench"
    assert benchmark_main([str(out), "--quick", "--json", "--path-questions", "--cold-steps", "1",
                           "--rl-bt-scope", "head", "--rl-bt-weight", "0.25", "--pretrain-clips", "0", "--rl-bt-rows", "sampled, fast",
                           "--rl-credit", "marginal", "--rl-reward-tied-dimensions", "--rl-draw-weights", "MQ=2,VQ=0.5",
                           "--rl-verdict-consistency", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["path_questions"] is True
    # The RL flags reach the RL run (values unlike RLConfig's and the benchmark's defaults, so a dropped setting shows).
    rl_config = json.loads((out / "rl" / "rl_config.json").read_text())
    assert (rl_config["bt_scope"], rl_config["bt_weight"]) == ("head", 0.25)
    assert (rl_config["bt_rows"], rl_config["credit"], rl_config["reward_tied_dimensions"], rl_config["draw_weights"],
            rl_config["verdict_consistency"]) == (["sampled", "fast"], "marginal", True, {"MQ": 2.0, "VQ": 0.5}, 0.5)
    pretrain_run = json.loads((out / "pretrain" / "run_config.json").read_text())
    assert pretrain_run["recipe"]["path_questions"] == PATH_QUESTION
    # --pretrain-clips 0: no caption-only clips are written or trained on.
    assert pretrain_run["extra_clips"] is None and not (out / "data" / "pretrain_clips.jsonl").exists()
    assert set(report["diagnostics"]["pretrain_path_questions_test_id"]) == {"asked_shown", "asked_other"}


def test_path_free_mix_rewrites_a_seeded_share_of_the_prompts(bench, tmp_path):
    from descore_sdk.training.benchmark import write_train_mix

    train = read_pairs(bench["train"])
    folder = Path(bench["train"]).parent
    paths = {p.meta["scene"]["motion"] for p in train}
    out = write_train_mix(bench["train"], folder / "mix_half.jsonl", seed=3, path_free_fraction=0.5)
    mixed = read_pairs(out)
    assert read_pairs(write_train_mix(bench["train"], folder / "mix_again.jsonl", seed=3, path_free_fraction=0.5)) == mixed
    free = [i for i, p in enumerate(mixed) if p.meta.get("path_in_prompt") is False]
    assert 0 < len(free) < len(train)
    for i, (before, after) in enumerate(zip(train, mixed)):
        assert (after.video_a, after.video_b, after.labels) == (before.video_a, before.video_b, before.labels)
        if i in free:  # the prompt names no path; each rationale still names the path its clip shows
            assert not any(path in after.prompt for path in paths)
            assert after.meta["meta_a"]["motion"] in after.rationale_a and after.meta["meta_b"]["motion"] in after.rationale_b
        else:
            assert after == before
    none = read_pairs(write_train_mix(bench["train"], folder / "mix_none.jsonl", seed=3))
    assert none == train
    # With shared faults as well: the same pairs lose their path (its own draw), seeded shares of the
    # pairs have new videos with one cast / one wrong path on both clips, and a pair may get several rewrites.
    both = read_pairs(write_train_mix(bench["train"], folder / "mix_both.jsonl", seed=3, path_free_fraction=0.5,
                                      shared_cast_fraction=0.5, shared_motion_fraction=0.5))
    assert [i for i, p in enumerate(both) if p.meta.get("path_in_prompt") is False] == free
    cast = [i for i, p in enumerate(both) if "color_cast" in p.meta.get("shared", {})]
    moved = [i for i, p in enumerate(both) if "wrong_motion" in p.meta.get("shared", {})]
    assert 0 < len(cast) < len(train) and 0 < len(moved) < len(train) and set(cast) & set(free)
    only_cast = read_pairs(write_train_mix(bench["train"], folder / "mix_cast.jsonl", seed=3, shared_cast_fraction=0.5))
    assert [i for i, p in enumerate(only_cast) if p.meta.get("shared")] == cast  # the cast pick does not depend on the others
    for i in set(cast) | set(moved):
        pair = both[i]
        assert pair.labels == train[i].labels
        assert pair.meta["meta_a"]["tint"] == pair.meta["meta_b"]["tint"] and pair.meta["meta_a"]["motion"] == pair.meta["meta_b"]["motion"]
        assert (i in cast) == ("colour cast" in pair.rationale_a) == ("colour cast" in pair.rationale_b)
        assert (i in moved) == (pair.meta["meta_a"]["motion"] != pair.meta["scene"]["motion"])
        assert pair.video_a.is_file() and pair.video_a not in (train[i].video_a, train[i].video_b)
    lone = tmp_path / "lone" / "train.jsonl"  # pairs without the benchmark.json (render size) beside them
    lone.parent.mkdir()
    lone.write_text(Path(bench["train"]).read_text())
    with pytest.raises(InvalidInputError, match="benchmark.json is missing"):
        write_train_mix(lone, lone.parent / "mix.jsonl", seed=3, shared_cast_fraction=0.5)
    for flag, kwargs in (("path-free-fraction", {"path_free_fraction": 1.5}), ("shared-cast-fraction", {"shared_cast_fraction": -0.1}),
                         ("shared-motion-fraction", {"shared_motion_fraction": 2.0})):
        with pytest.raises(InvalidInputError, match=flag):
            write_train_mix(bench["train"], tmp_path / "x.jsonl", seed=3, **kwargs)


def test_text_log_prob_matches_the_backbones_own_logits(bench):
    """Reference: the HF backbone's full logits (transformers computes M-RoPE itself), log-softmax at
    every position, summed over the caption tokens and the stop token located with the tokenizer."""
    from descore_sdk.prompt import PromptBuilder
    from descore_sdk.training.batching import FeatureCache, build_row, collate_rows
    from descore_sdk.training.pretrain import text_log_prob

    model = build_tiny_model("qwen3_vl", seed=2, dimension_names=("VQ", "MQ", "TA")).eval()
    prompts, cache = PromptBuilder(model.tokenizer, model.descore_config), FeatureCache(model.descore_config)
    stop = model.tokenizer.token_to_id("<|im_end|>")

    def reference(video, text):
        row = build_row(prompts, cache(video), CAPTION_PROMPT, "think", text)
        inputs = collate_rows([row], 0)
        ids = inputs["input_ids"]
        token_types = torch.zeros_like(ids)
        token_types[ids == model.backbone.config.video_token_id] = 2
        with torch.no_grad():
            logits = model.backbone(input_ids=ids, attention_mask=inputs["attention_mask"], mm_token_type_ids=token_types,
                                    pixel_values_videos=inputs["pixel_values_videos"],
                                    video_grid_thw=inputs["video_grid_thw"]).logits[0].float().log_softmax(-1)
        target = model.tokenizer.encode(text, add_special_tokens=False).ids + [stop]
        start = len(row.input_ids) - len(target)  # the caption, then <Reward> where the stop is predicted
        return sum(float(logits[start - 1 + i, t]) for i, t in enumerate(target))

    pair = read_pairs(bench["train"])[0]
    texts = [caption(pair.meta["meta_a"]), "A red circle moving left to right on a gray background."]
    values = {}
    for video in (pair.video_a, pair.video_b):
        for text in texts:
            values[(video, text)] = got = text_log_prob(model, prompts, cache(video), CAPTION_PROMPT, text)
            assert got == pytest.approx(reference(video, text), abs=1e-3)
    # The video matters (a random model's effect is small but real), and both paths agree on it.
    diff = values[(pair.video_a, texts[0])] - values[(pair.video_b, texts[0])]
    assert diff != 0 and diff == pytest.approx(reference(pair.video_a, texts[0]) - reference(pair.video_b, texts[0]), abs=1e-3)


def test_caption_discrimination_counts_own_text_wins(bench, monkeypatch):
    """The counting, against a hand-made log-probability table: a model that 'sees' noise and
    nothing else picks its own caption exactly when the twins differ in noise."""
    import descore_sdk.training.pretrain as pretrain

    pairs = read_pairs(bench["train"])
    truth = {}
    for p in pairs:
        truth[str(p.video_a)], truth[str(p.video_b)] = p.meta["meta_a"], p.meta["meta_b"]

    def fake_log_prob(model, prompts, features, prompt, text):
        meta = truth[current["video"]]
        return -1.0 if ("noise" in text) == ("noise" in meta["factors"]) else -2.0

    current = {}

    class Cache:
        def __init__(self, config):
            pass

        def __call__(self, video):
            current["video"] = str(video)
            return None

    monkeypatch.setattr(pretrain, "text_log_prob", fake_log_prob)
    monkeypatch.setattr("descore_sdk.training.batching.FeatureCache", Cache)
    model = build_tiny_model("qwen3_vl", seed=2, dimension_names=("VQ",))
    got = pretrain.caption_discrimination(model, pairs)
    expected_keys = {",".join(sorted(set(p.meta["meta_a"]["factors"]) ^ set(p.meta["meta_b"]["factors"]))) or "severity"
                     for p in pairs if caption(p.meta["meta_a"]) != caption(p.meta["meta_b"])}
    assert set(got) == expected_keys
    assert any("noise" in k for k in got) and any("noise" not in k for k in got)  # both outcomes exercised
    for key, value in got.items():
        # Differing in noise presence: always own (1.0); otherwise the table ties and "own > twin" fails (0.0).
        assert value == (1.0 if "noise" in key.split(",") else 0.0), (key, value)
