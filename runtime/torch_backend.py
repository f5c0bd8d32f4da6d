"""The torch reference backend: a DeScore checkpoint run by transformers' own modeling code.

Every other backend is checked against this one, so it deliberately leans on transformers for
everything model-side: M-RoPE positions come from the model's `get_rope_index`, the CoT from
`generate`, and the reward from a second full forward over prompt + CoT + `<Reward>` (DeScore's own
two-pass inference; in the user-turn layout the second pass is the authors' rebuilt chat).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from descore_sdk.errors import require


class TorchBackend:
    name = "torch"

    def __init__(self, path: str | Path, *, device: str = "cpu", dtype: str = "float32"):
        self.torch = require("torch", "train", "The torch backend")
        from descore_sdk.training.model import DeScoreModel

        self.device = self.torch.device(device)
        self.model = DeScoreModel.from_pretrained(path, dtype=getattr(self.torch, dtype)).to(self.device).eval()
        self.descore_config = self.model.descore_config
        bb_config = self.model.backbone.config
        self.video_token_id = bb_config.video_token_id
        self.pad_token_id = self.model.reward_token_id  # never attended: batch size is 1
        from descore_sdk.prompt import blocked_generation_ids

        self.suppressed_ids = list(blocked_generation_ids(self.model.tokenizer, self.descore_config))

    def _vision_kwargs(self, inputs) -> dict:
        torch = self.torch
        kwargs = dict(
            pixel_values_videos=torch.from_numpy(np.ascontiguousarray(inputs.patches)).to(self.device, self.model.backbone.dtype),
            video_grid_thw=torch.from_numpy(inputs.grid_thw.reshape(1, 3)).to(self.device),
        )
        if self.descore_config.family == "qwen2_5_vl":
            kwargs["second_per_grid_ts"] = torch.tensor([inputs.second_per_grid], device=self.device)
        return kwargs

    def _token_types(self, ids):
        return (ids == self.video_token_id).to(self.torch.int32) * 2

    def score(self, inputs, options, stop_ids, max_new_tokens: int, forced_cot=None):
        """One video. forced_cot: CoT ids to score instead of generating one (teacher forcing, parity)."""
        torch = self.torch
        timings = {}
        vision = self._vision_kwargs(inputs)
        prompt = torch.from_numpy(inputs.input_ids).to(self.device)[None]
        cot = torch.zeros(0, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            if inputs.mode == "think" and forced_cot is not None:
                cot = torch.as_tensor(np.asarray(forced_cot, dtype=np.int64), device=self.device)
            elif inputs.mode == "think" and max_new_tokens > 0:
                t0 = time.perf_counter()
                if options.seed is not None:
                    torch.manual_seed(options.seed)
                sample = options.temperature > 0
                generated = self.model.backbone.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    mm_token_type_ids=self._token_types(prompt),
                    **vision,
                    max_new_tokens=max_new_tokens,
                    do_sample=sample,
                    temperature=options.temperature if sample else None,
                    top_p=options.top_p if sample else None,
                    top_k=options.top_k if sample else None,
                    repetition_penalty=options.repetition_penalty,
                    eos_token_id=list(stop_ids),
                    suppress_tokens=self.suppressed_ids,
                    pad_token_id=self.pad_token_id,
                )
                cot = generated[0, prompt.shape[1]:]
                stops = torch.tensor(stop_ids, device=self.device)
                hit = torch.isin(cot, stops).nonzero()
                if len(hit):
                    cot = cot[: int(hit[0])]
                timings["generate"] = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            if inputs.mode == "think" and inputs.rescore is not None:
                # User-turn layout, as the authors score: the whole chat rebuilt with the CoT text, one
                # uncached forward.
                scoring = np.asarray(inputs.rescore(cot.cpu().numpy().astype(np.int64)), dtype=np.int64)
                full = torch.from_numpy(scoring).to(self.device)[None]
            elif inputs.mode == "think":
                reward = torch.tensor([self.model.reward_token_id], device=self.device)
                full = torch.cat([prompt[0], cot, reward])[None]
            else:
                full = prompt
            out = self.model(
                input_ids=full,
                attention_mask=torch.ones_like(full),
                mm_token_type_ids=self._token_types(full),
                **vision,
            )
            timings["score"] = (time.perf_counter() - t0) * 1e3
        from descore_sdk.scorer import BackendOutput

        return BackendOutput(
            rewards=out.rewards[0].float().cpu().numpy(),
            cot_ids=cot.cpu().numpy().astype(np.int64),
            timings_ms=timings,
        )
