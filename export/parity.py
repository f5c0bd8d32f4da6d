"""Teacher-forced parity of an exported bundle against the torch model it came from.

    report = parity_report(model, "bundle/", "clip.mp4")     # prints a table, returns a dict

Both sides see the same real video (decoded and patched once, by the Scorer's own preprocessing) and
the same token ids: the think prompt, a fixed CoT (teacher-forced: fed, not generated, so one side's
sampling can never steer the other) and `<Reward>`; and separately the fast prompt.

- ONNX: the runtime's decode loop over the bundle — vision graph, KV-cached prefill, then the CoT one
  token at a time, then `<Reward>` — recording the logits before every CoT token.
- torch: `DeScoreModel.forward` over the whole sequence at once, uncached, with transformers' own
  M-RoPE positions (`return_logits=True`).

Reported per output (CoT-step logits, the final hidden state at `<Reward>`, the rewards): max and mean
absolute difference. fp32 graphs should agree to ≤ 1e-4 (`PARITY_TOLERANCE`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

PARITY_TOLERANCE = 1e-4
DEFAULT_PROMPT = "A girl in a pink dress walks into a cozy bedroom and sits on a chair."
DEFAULT_COT = (
    "The video is sharp and well lit. The girl walks to the chair smoothly and sits down, as the prompt "
    "asks; the motion looks natural."
)
DEFAULT_MAX_FRAMES = 4


def default_video() -> Path:
    """The sample video shipped in the package (VideoAlign example_1_A.mp4, MIT)."""
    from importlib import resources

    return Path(str(resources.files("descore_sdk.assets").joinpath("videos/example_1_A.mp4")))


def _stats(diff: np.ndarray) -> dict:
    diff = np.abs(np.asarray(diff, dtype=np.float64))
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}


def parity_report(
    model,
    bundle_dir: str | Path,
    video: str | Path | None = None,
    *,
    prompt: str = DEFAULT_PROMPT,
    cot_text: str = DEFAULT_COT,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_pixels: int | None = None,
    threads: int | None = None,
    tolerance: float = PARITY_TOLERANCE,
    print_table: bool = True,
) -> dict:
    """Compare the bundle in `bundle_dir` with `model` (the float32 DeScoreModel it was exported from).

    video: a real video (default: the packaged sample); max_frames / max_pixels bound its sampling
    (a few frames exercise every code path; the bound keeps the check quick on CPU).
    Returns a JSON-ready dict (saved by export_bundle as parity.json); `passed` says whether every
    max |diff| is ≤ `tolerance`.
    """
    import torch

    from descore_sdk.scorer import Scorer

    video = Path(video) if video is not None else default_video()
    scorer = Scorer.from_pretrained(bundle_dir, backend="onnxruntime", backend_options={"threads": threads},
                                    max_frames=max_frames, max_pixels=max_pixels)
    backend = scorer.backend
    fast = scorer.prepare(video, prompt, mode="fast")
    cot = scorer.prompts.encode(cot_text)
    onnx_fast = backend.score_batch([fast], scorer.options, scorer.stop_ids, [0])[0]
    torch_fast = _torch_forward(model, fast.input_ids, fast, scorer.config.family)

    think_diffs, prompt_length, ref_steps = {}, len(fast.input_ids), None
    if scorer.config.thinks:
        think = scorer.prepare(video, prompt, mode="think")
        onnx_think = backend.score_batch([think], scorer.options, scorer.stop_ids, [len(cot)], forced_cots=[cot],
                                         record_logits=True)[0]
        reward_id = backend.reward_token_id
        # The CoT-step logits only depend on what precedes each step, so the assistant-layout sequence
        # serves both layouts; the reward is read where the layout reads it (user layout: the rebuilt chat).
        think_ids = np.concatenate([think.input_ids, cot, [reward_id]]).astype(np.int64)
        torch_think = _torch_forward(model, think_ids, think, scorer.config.family)
        if think.rescore is not None:
            scored = _torch_forward(model, think.rescore(cot), think, scorer.config.family)
            torch_think = {**torch_think, "hidden": scored["hidden"], "rewards": scored["rewards"]}
        prompt_length = len(think.input_ids)
        # logits[i] predicts token i+1: the CoT tokens are chosen from positions L-1 .. L+C-2, and the
        # logits after the last CoT token sit at L+C-1 (the position before <Reward>).
        ref_steps = torch_think["logits"][prompt_length - 1 : prompt_length + len(cot)]
        think_diffs = {
            "logits": _stats(onnx_think.step_logits - ref_steps),
            "hidden": _stats(onnx_think.hidden - torch_think["hidden"]),
            "reward": _stats(onnx_think.rewards - torch_think["rewards"]),
        }
    fast_diffs = {
        "hidden": _stats(onnx_fast.hidden - torch_fast["hidden"]),
        "reward": _stats(onnx_fast.rewards - torch_fast["rewards"]),
    }
    worst = max(d["max_abs"] for group in (think_diffs, fast_diffs) for d in group.values())
    import onnxruntime

    report = {
        "video": video.name,
        "prompt": prompt,
        "num_frames": int(fast.grid_thw[0] * scorer.config.vision.temporal_patch_size),
        "grid_thw": [int(v) for v in fast.grid_thw],
        "num_prompt_tokens": int(prompt_length),
        "num_cot_tokens": int(len(cot)) if think_diffs else 0,
        "tolerance": tolerance,
        "think": think_diffs,
        "fast": fast_diffs,
        # Mean |value| of the torch outputs: a diff is only meaningful next to the size of what it measures.
        "reference_scale": {
            "logits": float(np.abs(ref_steps).mean()) if ref_steps is not None else float("nan"),
            "hidden": float(np.abs(torch_fast["hidden"]).mean()),
            "reward": float(np.abs(torch_fast["rewards"]).mean()),
        },
        "max_abs_diff": worst,
        "passed": bool(worst <= tolerance),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }
    if print_table:
        print(format_report(report), flush=True)
    return report


def _torch_forward(model, ids: np.ndarray, inputs, family: str) -> dict:
    """Uncached full forward of the torch model: logits (L, V), hidden (H,) and rewards (K,) at <Reward>."""
    import torch

    input_ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))[None]
    kwargs = dict(
        attention_mask=torch.ones_like(input_ids),
        pixel_values_videos=torch.from_numpy(np.ascontiguousarray(inputs.patches, dtype=np.float32)),
        video_grid_thw=torch.from_numpy(np.asarray(inputs.grid_thw, dtype=np.int64))[None],
    )
    if family == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = torch.tensor([inputs.second_per_grid], dtype=torch.float32)
    device = next(model.parameters()).device
    kwargs = {k: v.to(device) for k, v in kwargs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids.to(device), return_logits=True, **kwargs)
    finally:
        model.train(was_training)
    return {
        "logits": out.logits[0].float().cpu().numpy(),
        "hidden": out.reward_hidden[0].float().cpu().numpy(),
        "rewards": out.rewards[0].float().cpu().numpy(),
    }


def format_report(report: dict) -> str:
    """The parity report as a small text table."""
    lines = [
        f"ONNX vs torch parity (fp32, tolerance {report['tolerance']:.0e}) on {report['video']}: "
        f"{report['num_frames']} frames, {report['num_prompt_tokens']} prompt + {report['num_cot_tokens']} "
        "teacher-forced CoT tokens",
        f"  {'path':<6} {'output':<7} {'max |diff|':>11} {'mean |diff|':>12} {'mean |ref|':>11}  ok",
    ]
    scale = report["reference_scale"]
    for path in ("think", "fast"):
        for output, stats in (report[path] or {}).items():
            ok = "yes" if stats["max_abs"] <= report["tolerance"] else "NO"
            lines.append(
                f"  {path:<6} {output:<7} {stats['max_abs']:>11.2e} {stats['mean_abs']:>12.2e} {scale.get(output, float('nan')):>11.2e}  {ok}"
            )
    lines.append("  parity " + ("passed" if report["passed"] else "FAILED"))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - convenience: python -m descore_sdk.export.parity CKPT BUNDLE [VIDEO]
    from descore_sdk.training.model import DeScoreModel

    args = sys.argv[1:]
    parity_report(DeScoreModel.from_pretrained(args[0]), args[1], args[2] if len(args) > 2 else None)
