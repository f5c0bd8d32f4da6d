"""What a user could run instead of this SDK, measured by `descore bench --baseline NAME`.

    hf          the same checkpoint through transformers, as the DeScore authors' code does it: eager
                attention (attn_implementation="eager"), `generate` for the CoT, then a second full
                forward over prompt + CoT + `<Reward>` for the reward (runtime/torch_backend.py with the
                eager attention). Same Scorer (same decode, sampling, prompt), same forced CoT length.
    ort-genai   the same text decoder (Qwen2ForCausalLM / Qwen3ForCausalLM folder with the same weights)
                built by onnxruntime-genai's own model builder at the same precision and run by its
                generator: decode ms/token at the same context length. It has no video path, so only
                the decode step is compared.

Each baseline is {"available": false, "reason": ...} when it cannot run here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

BASELINES = ("hf", "ort-genai")


def check_baselines(names) -> tuple[str, ...]:
    from .errors import InvalidInputError

    out = []
    for name in names or ():
        if name not in BASELINES:
            raise InvalidInputError(f"Unknown --baseline {name!r}; use {' or '.join(BASELINES)}.")
        if name not in out:
            out.append(name)
    return tuple(out)


def hf_unavailable() -> str | None:
    from importlib.util import find_spec

    for module, extra in (("torch", "train"), ("transformers", "train")):
        if find_spec(module) is None:
            return f"{module} is not installed (pip install 'descore-sdk[{extra}]')"
    return None


def load_hf_scorer(checkpoint: Path, cot_tokens: int, threads: int):
    """A Scorer on the torch backend with eager attention: the authors' setup (transformers generate +
    a scoring forward), on the same checkpoint."""
    import torch

    from .options import ScoreOptions
    from .prompt import PromptBuilder
    from .runtime.torch_backend import TorchBackend
    from .scorer import Scorer

    class HFEagerBackend(TorchBackend):
        name = "hf"

        def __init__(self, path, *, device: str = "cpu"):
            super().__init__(path, device=device)
            # transformers 5.x: switch every sub-model (vision tower, text model) to eager attention.
            self.model.backbone.set_attn_implementation("eager")

    torch.set_num_threads(threads)
    backend = HFEagerBackend(checkpoint)
    config = backend.descore_config
    # As Scorer.from_pretrained builds it (same options as ours), on the eager backend.
    options = ScoreOptions.from_kwargs(mode="think", max_new_tokens=cot_tokens, stop_tokens=(), temperature=0.0,
                                       repetition_penalty=config.layout.repetition_penalty)
    options.validate()
    return Scorer(backend, config, PromptBuilder.from_dir(checkpoint, config), options)


class GenaiDecoder:
    """onnxruntime-genai's decode ms/token on one built model (loaded once). API as in onnxruntime-genai
    0.18: Config + overlay (session threads), Model, GeneratorParams.set_search_options, Generator
    .append_tokens / generate_next_token."""

    def __init__(self, model_dir: Path, threads: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(model_dir))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": int(threads), "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        genai_config = json.loads((Path(model_dir) / "genai_config.json").read_text())
        self.vocab = int(genai_config["model"]["vocab_size"])
        self.warm = False

    def run(self, *, context: int, tokens: int, seed: int = 0) -> dict:
        """A prompt of `context` seeded random token ids appended (the prefill, timed apart), then
        `tokens` greedy steps; min_length = max_length, so it never stops early. The first call also
        runs once untimed (warm-up)."""
        ids = np.random.default_rng(seed).integers(10, self.vocab - 1, size=context).astype(np.int32)

        def once() -> tuple[float, float, int]:
            params = self.og.GeneratorParams(self.model)
            params.set_search_options(max_length=context + tokens, min_length=context + tokens, do_sample=False)
            generator = self.og.Generator(self.model, params)
            t0 = time.perf_counter()
            generator.append_tokens(ids)
            t1 = time.perf_counter()
            steps = 0
            while not generator.is_done() and steps < tokens:
                generator.generate_next_token()
                steps += 1
            t2 = time.perf_counter()
            return (t1 - t0) * 1e3, (t2 - t1) * 1e3 / max(steps, 1), steps

        if not self.warm:
            once()
            self.warm = True
        prefill, per_token, steps = once()
        return {"prefill_ms": [prefill], "ms_per_token": [per_token], "steps": [steps]}


def genai_weight_bytes(model_dir: Path) -> int | None:
    from .bench_roofline import graph_weight_bytes

    onnx_files = sorted(Path(model_dir).glob("*.onnx"))
    if not onnx_files:
        return None
    sizes = [graph_weight_bytes(f) for f in onnx_files]
    return None if any(s is None for s in sizes) else int(sum(sizes))
