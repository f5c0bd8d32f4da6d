"""Test helper: tiny checkpoints written exactly as the authors' code writes them, and their scoring
re-implemented from the facts of that code (not from the SDK), for `test_convert.py`.

DeScore (WYuan1001/DeScore_project_page): a Hugging Face Qwen-VL folder whose tokenizer got `<Reward>`
as an added special token and whose embeddings were resized to the tokenizer's length, plus
`torch.save` of the head `Linear(hidden, 1, bias=False)` under one of the key spellings inference.py
accepts. Scoring (inference.py, pass 2): the chat `user: [text before <video>, video, text after,
CoT + "<Reward>"]` rendered by the chat template without a generation prompt, one uncached forward,
the mean final hidden state at `<Reward>`, then the head.

VideoAlign (KwaiVGI/VideoAlign): Qwen2VLRewardModelBT = the Qwen2-VL backbone + `rm_head`; three
special tokens added and the embeddings resized; saved as `checkpoint-N/model.pth` (full state dict)
or peft's `adapter_model.safetensors` + `non_lora_state_dict.pth` (trainable non-LoRA tensors), with
`model_config.json` beside the checkpoints and the tokenizer in `checkpoint-N/tokenizer/`. The authors
ran transformers 4.4x, whose Qwen2-VL keys are `model.layers.*` / `visual.*` / `lm_head.*`: the files
written here use those names. Scoring: `user: [video, template.format(text_prompt=prompt)]` with the
generation prompt, `rm_head` on every position, the outputs at the three special tokens (output_dim 1:
one value each), normalised by inference_config, Overall = VQ + MQ + TA.

Templates here are short test texts with the authors' markers, not the authors' prompts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken

from descore_sdk.training.tiny import build_tiny_backbone
from descore_sdk.training.tokenizer import build_tokenizer, save_tokenizer_files
from weights import spread_weights

DESCORE_TEMPLATE = "Judge the clip.\nText prompt: [insert prompt here]\nVideo: <video>\nThink, then rate it"
VIDEOALIGN_TEMPLATE = (
    "\nRate the video for the text prompt - {text_prompt}\nVisual quality: <|VQ_reward|>\nEND\n"
    "Motion quality: <|MQ_reward|>\nEND\nText alignment: <|TA_reward|>\nEND\n"
)
VIDEOALIGN_TOKENS = ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]
NORMALIZATION = {"VQ": (0.5, 2.0), "MQ": (-0.25, 1.5), "TA": (1.0, 0.5)}


def legacy_key(key: str) -> str:
    """transformers 5 Qwen-VL key → the 4.4x name the authors' files carry."""
    key = re.sub(r"^model\.language_model\.", "model.", key)
    return re.sub(r"^model\.visual\.", "visual.", key)


def _tokenizer_with(family: str, tokens: list[str]):
    tokenizer = build_tokenizer(family=family)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    return tokenizer


# -- DeScore ------------------------------------------------------------------------------------------
def write_descore_release(folder: Path, family: str, *, head_key: str = "rm_head.weight", under_model: bool = False,
                          seed: int = 0):
    """The authors' DeScore folder + rm_head.pth. Returns (backbone, head (1, H)) as written."""
    tokenizer = _tokenizer_with(family, ["<Reward>"])
    backbone = build_tiny_backbone(family, seed=seed)
    backbone.resize_token_embeddings(tokenizer.get_vocab_size(with_added_tokens=True))
    spread_weights(backbone, seed=seed + 1)
    backbone.save_pretrained(folder)
    save_tokenizer_files(folder, family, tokenizer=tokenizer)
    hidden = backbone.config.get_text_config().hidden_size
    head = torch.randn(1, hidden, generator=torch.Generator().manual_seed(seed + 2)) / hidden**0.5
    state = {head_key: head.clone()}
    torch.save({"model": state} if under_model else state, folder / "rm_head.pth")
    (folder / "template.txt").write_text(DESCORE_TEMPLATE)
    return backbone.eval(), head


def hf_chat_ids(folder: Path, family: str, content: list[dict], grid, timestamps, *, generation_prompt: bool):
    """input_ids of a chat as transformers renders and expands it: the checkpoint's chat template,
    then the real processor's placeholder expansion (its video processor stubbed to the grid)."""
    from transformers import AutoTokenizer
    from transformers.video_utils import VideoMetadata

    from hf_reference import processor_with_grid

    hf_tok = AutoTokenizer.from_pretrained(folder)
    text = hf_tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=generation_prompt,
                                      tokenize=False)
    frames = len(timestamps)
    fps = 1000.0  # millisecond "frames": the processor's timestamps (index / fps) are the clip's own
    indices = [round(float(t) * fps) for t in timestamps]
    metadata = VideoMetadata(total_num_frames=indices[-1] + 1, fps=fps, frames_indices=indices)
    proc = processor_with_grid(family, hf_tok, list(np.asarray(grid).tolist()), metadata)
    out = proc(text=[text], videos=[np.zeros((frames, 4, 4, 3), np.uint8)])
    return np.asarray(out["input_ids"][0], dtype=np.int64)


def _hidden(backbone, ids: np.ndarray, inputs) -> torch.Tensor:
    input_ids = torch.from_numpy(ids)[None]
    kwargs = dict(
        pixel_values_videos=torch.from_numpy(np.ascontiguousarray(inputs.patches)),
        video_grid_thw=torch.from_numpy(np.asarray(inputs.grid_thw))[None],
        mm_token_type_ids=(input_ids == backbone.config.video_token_id).int() * 2,
    )
    if backbone.config.model_type == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = torch.tensor([inputs.second_per_grid])
    with torch.no_grad():
        return backbone.model(input_ids=input_ids, use_cache=False, **kwargs).last_hidden_state[0]


def descore_reference(folder: Path, family: str, backbone, head, inputs, timestamps, prompt: str,
                      cot_text: str | None) -> float:
    """inference.py's scoring pass: the rebuilt user turn, uncached forward, mean hidden at <Reward>,
    head. cot_text None: the cold start's CoT-dropped layout `[video]{prompt}<Reward>` pieces."""
    text = DESCORE_TEMPLATE.replace("[insert prompt here]", prompt)
    before, after = text.split("<video>")
    tail = f"{cot_text}<Reward>" if cot_text is not None else "<Reward>"
    content = [{"type": "text", "text": before}, {"type": "video"}, {"type": "text", "text": after},
               {"type": "text", "text": tail}]
    ids = hf_chat_ids(folder, family, content, inputs.grid_thw, timestamps, generation_prompt=False)
    from transformers import AutoTokenizer

    reward_id = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<Reward>")
    hidden = _hidden(backbone, ids, inputs)
    pooled = hidden[torch.from_numpy(ids == reward_id)].mean(dim=0)
    return float(pooled @ head[0])


# -- VideoAlign ---------------------------------------------------------------------------------------
class RewardModelBT(torch.nn.Module):
    """Qwen2VLRewardModelBT's parts: the backbone and `rm_head = Linear(hidden, output_dim, bias=False)`."""

    def __init__(self, backbone, output_dim: int, seed: int):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.get_text_config().hidden_size
        self.rm_head = torch.nn.Linear(hidden, output_dim, bias=False)
        with torch.no_grad():
            self.rm_head.weight.copy_(torch.randn(output_dim, hidden, generator=torch.Generator().manual_seed(seed)) / hidden**0.5)

    def state_dict_as_saved(self) -> dict:
        """model.pth as the authors' trainer saves it (their transformers' key names)."""
        out = {legacy_key(k): v.clone() for k, v in self.backbone.state_dict().items()}
        out["rm_head.weight"] = self.rm_head.weight.detach().clone()
        return out


def _model_config(base: Path, output_dim: int, lora: bool, max_pixels: int) -> dict:
    return {
        "data_config": {"max_frame_pixels": max_pixels, "num_frames": None, "fps": 2.0, "eval_dim": ["VQ", "MQ", "TA"],
                        "prompt_template_type": "detailed_special", "sample_type": "uniform"},
        "model_config": {"model_name_or_path": str(base), "output_dim": output_dim, "use_special_tokens": True,
                         "reward_token": "special", "torch_dtype": "float32"},
        "peft_lora_config": {"lora_enable": lora, "vision_lora": False, "lora_r": 4, "lora_alpha": 8,
                             "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"], "use_rslora": False},
        "inference_config": {f"{d}_{s}": v for d, (m, sd) in NORMALIZATION.items() for s, v in (("mean", m), ("std", sd))},
    }


def write_videoalign_release(root: Path, *, lora: bool, output_dim: int = 1, step: int = 20, seed: int = 0,
                             max_pixels: int = 160 * 160):
    """(release folder, base folder, the model as trained: RewardModelBT or its peft wrapper)."""
    base = root / "Qwen2-VL-base"
    pretrained = build_tiny_backbone("qwen2_vl", seed=seed)
    spread_weights(pretrained, seed=seed + 1)  # O(1) activations, so the tolerances mean something
    pretrained.save_pretrained(base)
    save_tokenizer_files(base, "qwen2_vl")
    release = root / "videoreward"
    checkpoint = release / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    # An older, worse checkpoint beside it: the converter must take the latest.
    (release / f"checkpoint-{step // 2}").mkdir()
    tokenizer = _tokenizer_with("qwen2_vl", VIDEOALIGN_TOKENS)
    save_tokenizer_files(checkpoint / "tokenizer", "qwen2_vl", tokenizer=tokenizer)
    (release / "model_config.json").write_text(json.dumps(_model_config(base, output_dim, lora, max_pixels), indent=2))
    (root / "template.txt").write_text(VIDEOALIGN_TEMPLATE)

    import transformers

    backbone = transformers.Qwen2VLForConditionalGeneration.from_pretrained(base)
    backbone.resize_token_embeddings(tokenizer.get_vocab_size(with_added_tokens=True))
    if not lora:  # full fine-tuning changes every weight; LoRA training leaves the base frozen
        spread_weights(backbone, seed=seed + 4)
    model = RewardModelBT(backbone, output_dim, seed + 2).eval()
    if not lora:
        torch.save(model.state_dict_as_saved(), checkpoint / "model.pth")
        return release, base, model

    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(" + "|".join(targets) + ")",
                        lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # lora_B starts at zero; a random B makes the merge matter
        generator = torch.Generator().manual_seed(seed + 3)
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(checkpoint)  # adapter_model.safetensors + adapter_config.json
    adapter = load_file(str(checkpoint / "adapter_model.safetensors"))
    prefix = "base_model.model."
    # RewardModelBT nests the backbone one level deeper than Qwen2VLRewardModelBT (which IS the backbone).
    renamed = {prefix + legacy_key(k[len(prefix):].removeprefix("backbone.")): v for k, v in adapter.items()}
    save_file(renamed, str(checkpoint / "adapter_model.safetensors"))
    # Trainable non-LoRA tensors: the head and the embedding matrix (the reward tokens' rows train).
    embed = model.backbone.get_input_embeddings().weight
    non_lora = {prefix + "rm_head.weight": model.rm_head.weight.detach().clone(),
                prefix + "model.embed_tokens.weight": embed.detach().clone()}
    torch.save(non_lora, checkpoint / "non_lora_state_dict.pth")
    return release, base, peft_model.eval()


def videoalign_reference(model, tokenizer_folder: Path, inputs, timestamps, prompt: str) -> dict:
    """VideoAlign's reward: rm_head at every position, the values at the three special tokens."""
    content = [{"type": "video"}, {"type": "text", "text": VIDEOALIGN_TEMPLATE.format(text_prompt=prompt)}]
    ids = hf_chat_ids(tokenizer_folder, "qwen2_vl", content, inputs.grid_thw, timestamps, generation_prompt=True)
    inner = model.base_model.model if hasattr(model, "base_model") else model
    hidden = _hidden(inner.backbone, ids, inputs)
    with torch.no_grad():
        logits = inner.rm_head(hidden)  # (L, output_dim)
    from transformers import AutoTokenizer

    token_ids = AutoTokenizer.from_pretrained(tokenizer_folder).convert_tokens_to_ids(VIDEOALIGN_TOKENS)
    mask = torch.from_numpy(np.isin(ids, token_ids))
    pooled = logits[mask].view(3, -1)  # positions in order VQ, MQ, TA
    values = pooled[:, 0] if pooled.shape[1] == 1 else pooled.diagonal()
    raw = {d: float(v) for d, v in zip(("VQ", "MQ", "TA"), values)}
    normed = {d: (raw[d] - NORMALIZATION[d][0]) / NORMALIZATION[d][1] for d in raw}
    return {"raw": raw, "normalized": normed, "overall": sum(normed.values())}
