"""`descore convert`: the authors' released checkpoints → normal SDK checkpoints.

Two source formats, read as their own code writes them (facts from WYuan1001/DeScore_project_page and
KwaiVGI/VideoAlign; no code or prompt text of theirs is shipped here):

DeScore (`--from descore`): a Hugging Face Qwen-VL folder whose tokenizer already holds the added
    special token `<Reward>` (embeddings resized to the tokenizer's length), plus the head as a torch
    pickle `rm_head.pth`: `{"rm_head.weight": (1, H)}` or `{"base_model.model.rm_head.weight": ...}`,
    either possibly under a top-level "model" key. Its layout is the user-turn one: the CoT is
    generated after `user: {before}<video>{after}` and the reward read at `<Reward>` after
    `user: {before}{video}{after}{CoT}` (see `PromptLayout`). Released generation settings: greedy,
    repetition penalty 1.05, ≤ 4096 new tokens; scoring frames at 2 fps, 3,136–200,704 pixels.

VideoReward (`--from videoalign`): `model_config.json` (data_config, model_config, peft_lora_config,
    inference_config) next to `checkpoint-N/` folders holding either `model.pth` (the full state dict
    of Qwen2VLRewardModelBT: backbone + `rm_head.weight`) or `adapter_model.safetensors` (peft LoRA) +
    `non_lora_state_dict.pth` (the head, and any other trained tensors such as the embedding rows of
    the reward tokens), with the tokenizer in `checkpoint-N/tokenizer/`. The base Qwen2-VL folder is
    `--base` (the config names a hub id, and nothing here downloads). Three special tokens
    `<|VQ_reward|>`, `<|MQ_reward|>`, `<|TA_reward|>` sit in the prompt template; dimension i is read
    at token i; rewards are normalised with inference_config's means/stds; Overall = VQ + MQ + TA.

Key names: the authors trained on transformers 4.4x, where Qwen2-VL's modules were `model.layers.*`,
`visual.*`, `lm_head`; transformers 5 nests them as `model.language_model.*` and `model.visual.*`.
Both spellings are accepted. Pickles are read with `torch.load(weights_only=True)` only: a file that
needs more (code objects, custom classes) is refused with `ModelLoadError`. The prompt template is the
user's to pass (`--prompt-template-file`): the README says where each author keeps theirs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

import torch

from descore_sdk.config import PromptLayout, SamplingConfig
from descore_sdk.errors import InvalidInputError, ModelLoadError

from .model import BACKBONE_CLASSES, DeScoreModel, descore_config_for
from .tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

logger = logging.getLogger(__name__)

SOURCES = ("descore", "videoalign")

# DeScore (inference.py): the template's markers and the released scoring settings.
DESCORE_VIDEO_MARKER = "<video>"
DESCORE_PROMPT_MARKER = "[insert prompt here]"
DESCORE_REWARD_TOKEN = "<Reward>"
DESCORE_HEAD_KEYS = ("rm_head.weight", "base_model.model.rm_head.weight")
DESCORE_REPETITION_PENALTY = 1.05
DESCORE_MAX_NEW_TOKENS = 4096
DESCORE_THINK_END = "</think>\n\n"
SCORE_MIN_PIXELS, SCORE_MAX_PIXELS = 3136, 200704  # the scoring pass (process_video(..., 3136, 200704, 2))
# The CoT pass at qwen-vl-utils' defaults (128–768 merged tokens per frame), for --two-resolutions.
QWEN_VL_UTILS_MIN_TOKENS, QWEN_VL_UTILS_MAX_TOKENS = 128, 768

# VideoAlign (train_reward.py / prompt_template.py / vision_process.py).
VIDEOALIGN_TOKENS = {"VQ": "<|VQ_reward|>", "MQ": "<|MQ_reward|>", "TA": "<|TA_reward|>"}
VIDEOALIGN_PROMPT_MARKER = "{text_prompt}"
VIDEOALIGN_VIDEO_MIN_PIXELS = 128 * 28 * 28

# transformers 4.4x Qwen-VL key names → transformers 5.
_KEY_RENAMES = (
    (re.compile(r"^visual\."), "model.visual."),
    (re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."),
)


def rename_legacy_keys(key: str) -> str:
    """A Qwen-VL state-dict key in transformers 5 spelling (4.4x keys are renamed, 5 keys kept)."""
    for pattern, replacement in _KEY_RENAMES:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return key


def load_weights_only(path: Path, what: str) -> dict:
    """A torch pickle read with `weights_only=True`; anything that needs code is refused."""
    import pickle

    if not path.is_file():
        raise ModelLoadError(f"{path} not found: the {what} is missing. Point to the folder the authors' code saved.")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{path} needs more than tensors to load (it was refused with weights_only=True: {str(exc).splitlines()[0]}). "
            "DeScore never runs code from a pickle; re-save the file as a plain state dict of tensors."
        ) from None
    except Exception as exc:  # truncated or not a torch file at all
        raise ModelLoadError(f"{path} could not be read as a torch state dict ({exc}); re-download the {what}.") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds a {type(data).__name__}, not a state dict; expected the {what}.")
    return data


def _read_template(path: str | Path | None, markers: tuple[str, ...], source: str) -> str:
    if path is None:
        raise InvalidInputError(
            f"Converting a {source} checkpoint needs its prompt template: pass --prompt-template-file FILE "
            "with the template text exactly as the authors' code uses it (see the README)."
        )
    file = Path(path).expanduser()
    if not file.is_file():
        raise InvalidInputError(f"Prompt template file {file} not found.")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"Prompt template file {file} is not UTF-8 text ({exc.reason}); save the template as UTF-8.") from None
    missing = [m for m in markers if m not in text]
    if missing:
        raise InvalidInputError(
            f"The prompt template {file} lacks the marker(s) {missing}; the {source} template marks the prompt "
            f"with {markers[0]!r}" + (f" and the video with {markers[1]!r}." if len(markers) > 1 else ".")
        )
    return text


def _tokenizer_tokens(folder: Path):
    from tokenizers import Tokenizer

    file = folder / TOKENIZER_FILE
    if not file.is_file():
        raise ModelLoadError(f"{file} not found; the authors' checkpoint must include its tokenizer.")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:
        raise ModelLoadError(f"{file} could not be read ({exc}).") from None
    return set(tokenizer.get_vocab(with_added_tokens=True)), tokenizer


def _source_dtype(config: dict) -> torch.dtype:
    name = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype") or "float32"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name), torch.float32)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InvalidInputError(f"{out} exists and is not empty; choose a new folder or pass --overwrite.")
        shutil.rmtree(out)


# -- DeScore -----------------------------------------------------------------------------------------
def read_descore_head(path: Path, hidden: int) -> torch.Tensor:
    """The (1, H) head from `rm_head.pth`, under any key spelling the authors' code accepts."""
    state = load_weights_only(path, "DeScore reward head (rm_head.pth)")
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    found = [k for k in DESCORE_HEAD_KEYS if k in state]
    extra = sorted(k for k in state if k not in DESCORE_HEAD_KEYS)
    if len(found) != 1 or extra:
        raise ModelLoadError(
            f"{path} should hold exactly one of {list(DESCORE_HEAD_KEYS)} (optionally under 'model'); it holds "
            f"{sorted(state)}. Is this the DeScore reward head?"
        )
    weight = state[found[0]]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or tuple(weight.shape) != (1, hidden):
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ModelLoadError(f"{path}: {found[0]} has shape {shape}, but the backbone's hidden size {hidden} needs (1, {hidden}).")
    return weight


def convert_descore(src: str | Path, out: str | Path, *, prompt_template_file: str | Path | None,
                    head_file: str | Path | None = None, thinking: bool = False, two_resolutions: bool = False,
                    overwrite: bool = False) -> Path:
    """Convert the authors' DeScore release (HF folder + rm_head.pth) into an SDK checkpoint at `out`."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not (src / "config.json").is_file():
        raise ModelLoadError(f"{src} has no config.json; pass the DeScore model folder (a Hugging Face Qwen-VL folder).")
    template = _read_template(prompt_template_file, (DESCORE_PROMPT_MARKER, DESCORE_VIDEO_MARKER), "DeScore")
    vocab, _ = _tokenizer_tokens(src)
    if DESCORE_REWARD_TOKEN not in vocab:
        raise ModelLoadError(
            f"The tokenizer in {src} has no {DESCORE_REWARD_TOKEN} token. DeScore adds it as a special token before "
            "training; this folder is a plain backbone, not a DeScore checkpoint."
        )
    backbone_config = json.loads((src / "config.json").read_text())
    family = backbone_config.get("model_type")
    if family not in BACKBONE_CLASSES:
        raise ModelLoadError(f"{src}/config.json has model_type {family!r}; DeScore supports {', '.join(BACKBONE_CLASSES)}.")
    _check_out(out, overwrite)

    base = descore_config_for(backbone_config)
    factor = base.vision.factor
    if two_resolutions:
        sampling = SamplingConfig(fps=2.0, min_frames=4, max_frames=768, min_pixels=QWEN_VL_UTILS_MIN_TOKENS * factor**2,
                                  max_pixels=QWEN_VL_UTILS_MAX_TOKENS * factor**2)
    else:
        sampling = SamplingConfig(fps=2.0, min_frames=4, max_frames=768, min_pixels=SCORE_MIN_PIXELS, max_pixels=SCORE_MAX_PIXELS)
    layout = PromptLayout(
        cot_position="user",
        video_marker=DESCORE_VIDEO_MARKER,
        prompt_marker=DESCORE_PROMPT_MARKER,
        repetition_penalty=DESCORE_REPETITION_PENALTY,
        temperature=0.0,
        cot_after=DESCORE_THINK_END if thinking else None,
        score_min_pixels=SCORE_MIN_PIXELS if two_resolutions else None,
        score_max_pixels=SCORE_MAX_PIXELS if two_resolutions else None,
    )
    # The folder loads as a plain backbone, whose "new, untrained head" warning does not apply: the
    # released head is copied in right after.
    model_logger = logging.getLogger(DeScoreModel.__module__)
    level = model_logger.level
    model_logger.setLevel(logging.ERROR)
    try:
        model = DeScoreModel.from_pretrained(
            src, dtype=_source_dtype(backbone_config), dimension_names=["overall"], reward_token=DESCORE_REWARD_TOKEN,
            prompt_template=template, layout=layout, sampling=sampling, max_new_tokens=DESCORE_MAX_NEW_TOKENS,
        )
    finally:
        model_logger.setLevel(level)
    hidden = model.backbone.config.get_text_config().hidden_size
    head = read_descore_head(Path(head_file).expanduser() if head_file else src / "rm_head.pth", hidden)
    with torch.no_grad():
        model.reward_head.weight.copy_(head.to(model.reward_head.weight.dtype))
    model.descore_config.layout.validate(model.descore_config)
    model.save_pretrained(out)
    return out


# -- VideoAlign --------------------------------------------------------------------------------------
def _videoalign_checkpoint(src: Path, step: int | None) -> Path:
    found = sorted((p for p in src.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    if not found:
        raise ModelLoadError(f"{src} has no checkpoint-N folder; point to the folder that holds model_config.json and checkpoint-N/.")
    if step is None:
        return found[-1]
    chosen = src / f"checkpoint-{step}"
    if chosen not in found:
        raise InvalidInputError(f"{chosen} does not exist; available steps: {[int(p.name.split('-')[-1]) for p in found]}.")
    return chosen


def _split_head(state: dict, prefix: str = "") -> tuple[torch.Tensor | None, dict]:
    """(rm_head weight or None, the rest) of a state dict, keys stripped of `prefix` and renamed."""
    head, rest = None, {}
    for key, value in state.items():
        name = key[len(prefix):] if prefix and key.startswith(prefix) else key
        if name == "rm_head.weight":
            head = value
        else:
            rest[rename_legacy_keys(name)] = value
    return head, rest


def _load_into(backbone, state: dict, where: Path, *, strict: bool) -> None:
    known = backbone.state_dict()
    unknown = sorted(k for k in state if k not in known)
    if unknown:
        raise ModelLoadError(
            f"{where} has weights the {backbone.config.model_type} base does not have: {unknown[:5]}"
            f"{' …' if len(unknown) > 5 else ''}. Is --base the model this checkpoint was trained from?"
        )
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(known[k].shape)]
    if wrong:
        raise ModelLoadError(
            f"{where}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)} but the base has {tuple(known[wrong[0]].shape)}; "
            "the checkpoint was trained from another base model."
        )
    missing = sorted(set(known) - set(state))
    if strict and missing:
        raise ModelLoadError(f"{where} lacks weights {missing[:5]}; the full checkpoint is incomplete.")
    with torch.no_grad():
        for key, value in state.items():
            known[key].copy_(value.to(known[key].dtype))


def _merge_lora(backbone, adapter_file: Path, adapter_config: dict, peft_config: dict):
    """Apply a peft LoRA adapter (saved by peft's save_pretrained) to `backbone` and merge it."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        adapter = load_file(str(adapter_file))
    except Exception as exc:
        raise ModelLoadError(f"{adapter_file} could not be read as safetensors ({exc}).") from None
    prefix = "base_model.model."
    renamed, targets = {}, set()
    for key, value in adapter.items():
        if not key.startswith(prefix) or ".lora_" not in key:
            raise ModelLoadError(f"{adapter_file} has key {key!r}, which is not a peft LoRA weight.")
        name = rename_legacy_keys(key[len(prefix):])
        renamed[prefix + name] = value
        targets.add(name.split(".lora_")[0])
    modules = dict(backbone.named_modules())
    foreign = sorted(t for t in targets if t not in modules)
    if foreign:
        raise ModelLoadError(
            f"The LoRA adapter {adapter_file} targets modules the base model lacks ({foreign[:3]}): it was trained "
            "for another base. Pass the base model it was trained from with --base."
        )
    r = int(adapter_config.get("r", peft_config.get("lora_r", 8)))
    config = LoraConfig(
        r=r,
        lora_alpha=adapter_config.get("lora_alpha", peft_config.get("lora_alpha", r)),
        use_rslora=bool(adapter_config.get("use_rslora", peft_config.get("use_rslora", False))),
        target_modules=sorted(targets),
        lora_dropout=0.0,
        bias="none",
    )
    model = get_peft_model(backbone, config)
    try:
        result = set_peft_model_state_dict(model, renamed)
    except RuntimeError as exc:  # shape mismatches
        raise ModelLoadError(f"The LoRA adapter {adapter_file} does not fit the base model ({exc}); was it trained for another base?") from None
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ModelLoadError(f"The LoRA adapter {adapter_file} has weights the base cannot take: {unexpected[:3]}.")
    return model.merge_and_unload()


def convert_videoalign(src: str | Path, out: str | Path, *, base: str | Path | None = None, step: int | None = None,
                       prompt_template_file: str | Path | None = None, overwrite: bool = False) -> Path:
    """Convert a VideoAlign (VideoReward) training folder into an SDK checkpoint at `out`."""
    import transformers

    src, out = Path(src).expanduser(), Path(out).expanduser()
    config_file = src / "model_config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{config_file} not found; pass the VideoAlign folder that holds model_config.json and checkpoint-N/.")
    try:
        sections = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON ({exc}).") from None
    data, model_cfg = sections.get("data_config") or {}, sections.get("model_config") or {}
    peft_cfg, inference = sections.get("peft_lora_config") or {}, sections.get("inference_config")
    if not model_cfg:
        raise ModelLoadError(f"{config_file} has no model_config section; it was not written by VideoAlign.")
    if not model_cfg.get("use_special_tokens"):
        raise ModelLoadError(
            f"{config_file}: reward_token {model_cfg.get('reward_token')!r} without special tokens is not supported; "
            "only VideoReward's special-token layout (<|VQ_reward|> …) converts."
        )
    dims = data.get("eval_dim") or ["VQ", "MQ", "TA"]
    dims = [dims] if isinstance(dims, str) else list(dims)
    if dims != list(VIDEOALIGN_TOKENS):
        raise ModelLoadError(f"{config_file}: eval_dim {dims} — VideoAlign's special-token model reads exactly VQ, MQ, TA.")
    output_dim = int(model_cfg.get("output_dim", 1))
    if output_dim not in (1, len(dims)):
        raise ModelLoadError(f"{config_file}: output_dim {output_dim} is not 1 or {len(dims)}; VideoAlign reads 3 values.")
    base_dir = Path(base).expanduser() if base else Path(str(model_cfg.get("model_name_or_path", "")))
    if not (base_dir / "config.json").is_file():
        raise InvalidInputError(
            f"The base model {base_dir} is not a local folder (nothing is downloaded here); pass --base with the "
            f"Qwen2-VL folder {model_cfg.get('model_name_or_path')!r} the checkpoint was trained from."
        )
    template = _read_template(prompt_template_file, (VIDEOALIGN_PROMPT_MARKER,), "VideoAlign")
    checkpoint = _videoalign_checkpoint(src, step)
    tokenizer_dir = checkpoint / "tokenizer" if (checkpoint / "tokenizer" / TOKENIZER_FILE).is_file() else src / "tokenizer"
    vocab, tokenizer = _tokenizer_tokens(tokenizer_dir)
    missing = [t for t in VIDEOALIGN_TOKENS.values() if t not in vocab]
    if missing:
        raise ModelLoadError(f"The tokenizer in {tokenizer_dir} lacks the reward token(s) {missing}; it is not VideoReward's.")
    if not all(t in template for t in VIDEOALIGN_TOKENS.values()):
        raise InvalidInputError(
            f"The prompt template must contain {list(VIDEOALIGN_TOKENS.values())} (VideoReward reads one per dimension); "
            "use the 'detailed_special' template."
        )
    _check_out(out, overwrite)

    backbone_config = json.loads((base_dir / "config.json").read_text())
    family = backbone_config.get("model_type")
    if family not in BACKBONE_CLASSES:
        raise ModelLoadError(f"{base_dir}/config.json has model_type {family!r}; expected qwen2_vl or qwen2_5_vl.")
    dtype = _source_dtype(backbone_config)
    backbone = getattr(transformers, BACKBONE_CLASSES[family]).from_pretrained(str(base_dir), dtype=dtype)
    rows_before = backbone.get_input_embeddings().weight.shape[0]
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    # As the authors do: the embedding matrix takes the tokenizer's length (shrinking Qwen2-VL's padding).
    with torch.random.fork_rng(devices=[]):
        backbone.resize_token_embeddings(size, mean_resizing=False)

    full = checkpoint / "model.pth"
    head = None
    provided: set[str] = set()
    if full.is_file():
        head, rest = _split_head(load_weights_only(full, "VideoAlign model.pth"))
        _load_into(backbone, rest, full, strict=True)
        provided = set(rest)
    else:
        adapter = checkpoint / "adapter_model.safetensors"
        if not adapter.is_file():
            raise ModelLoadError(f"{checkpoint} has neither model.pth nor adapter_model.safetensors.")
        head, rest = _split_head(load_weights_only(checkpoint / "non_lora_state_dict.pth", "VideoAlign non_lora_state_dict.pth"),
                                 prefix="base_model.model.")
        _load_into(backbone, rest, checkpoint / "non_lora_state_dict.pth", strict=False)
        provided = set(rest)
        adapter_config = {}
        if (checkpoint / "adapter_config.json").is_file():
            try:
                adapter_config = json.loads((checkpoint / "adapter_config.json").read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ModelLoadError(f"{checkpoint / 'adapter_config.json'} is not valid JSON ({exc}); re-download the checkpoint.") from None
        backbone = _merge_lora(backbone, adapter, adapter_config, peft_cfg)
    if head is None:
        raise ModelLoadError(f"{checkpoint} has no rm_head.weight: the reward head is missing.")
    hidden = backbone.config.get_text_config().hidden_size
    if tuple(head.shape) != (output_dim, hidden):
        raise ModelLoadError(f"{checkpoint}: rm_head.weight has shape {tuple(head.shape)}, expected ({output_dim}, {hidden}).")
    if size > rows_before and not any("embed_tokens" in k for k in provided):
        raise ModelLoadError(
            f"{checkpoint} does not hold the embedding rows of the reward tokens the tokenizer added; the conversion "
            "would give them random values. The checkpoint is incomplete."
        )

    tokens = list(VIDEOALIGN_TOKENS.values())
    normalization = None
    if inference:
        try:
            normalization = {d: [float(inference[f"{d}_mean"]), float(inference[f"{d}_std"])] for d in dims}
        except KeyError as exc:
            raise ModelLoadError(f"{config_file}: inference_config lacks {exc}; it needs a mean and std per dimension.") from None
    max_pixels = int(data.get("max_frame_pixels") or 448 * 448)
    layout = PromptLayout(
        cot_position="none", reward_tokens=tokens, dimension_map="per_token", head_outputs=output_dim,
        prompt_marker=VIDEOALIGN_PROMPT_MARKER, normalization=normalization, headline="sum",
    )
    config = descore_config_for(backbone.config, dimension_names=dims, reward_token=tokens[0], prompt_template=template,
                                layout=layout, method="descore")
    sampling = SamplingConfig(fps=float(data.get("fps") or 2.0), min_frames=4, max_frames=768,
                              min_pixels=min(VIDEOALIGN_VIDEO_MIN_PIXELS, max_pixels), max_pixels=max_pixels)
    config = dataclasses.replace(config, sampling=sampling)
    if data.get("num_frames"):
        logger.warning("VideoAlign data_config.num_frames=%s: the SDK samples by fps (%s); pass max_frames to match.",
                       data["num_frames"], sampling.fps)
    tokenizer_config = None
    if (tokenizer_dir / TOKENIZER_CONFIG_FILE).is_file():
        tokenizer_config = json.loads((tokenizer_dir / TOKENIZER_CONFIG_FILE).read_text())
    model = DeScoreModel(backbone, tokenizer, config, reward_head_weight=head.to(dtype), tokenizer_config=tokenizer_config)
    model.descore_config.layout.validate(model.descore_config)
    model.save_pretrained(out)
    return out


def convert(source: str, src, out, **kwargs) -> Path:
    if source == "descore":
        return convert_descore(src, out, **kwargs)
    if source == "videoalign":
        return convert_videoalign(src, out, **kwargs)
    raise InvalidInputError(f"--from must be one of {SOURCES}, got {source!r}.")
