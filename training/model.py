"""`DeScoreModel`: a Qwen-VL backbone plus a linear reward head on the `<Reward>` token.

The model writes (or is given) a rationale about a video and a prompt; a `<Reward>` token follows, and
`Linear(hidden, K, bias=False)` on that token's final, post-norm hidden state gives K rewards.

Checkpoint folder (what `save_pretrained` writes and `from_pretrained` reads):

    config.json                      the backbone's Hugging Face config, unchanged format
    generation_config.json           the backbone's generation defaults (when it has them)
    descore_config.json              DescoreConfig: dimension names, reward token, prompt, sampling, vision
    model.safetensors                backbone state dict under transformers' key names, plus the head
                                     under REWARD_HEAD_KEY
    tokenizer.json, tokenizer_config.json, chat_template.jinja    tokenizer (with `<Reward>` added)
    preprocessor_config.json, video_preprocessor_config.json      so HF processors recognise the folder

A plain Hugging Face Qwen-VL folder (no descore_config.json, no head) also loads: `<Reward>` is added to
the tokenizer and the embeddings, and a fresh head is initialised; both are logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import AddedToken, Tokenizer
from torch import nn

from descore_sdk.config import CONFIG_NAME, FAMILIES, DescoreConfig, VisionConfig
from descore_sdk.errors import InvalidInputError, ModelLoadError

from .tokenizer import (
    CHAT_TEMPLATE_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    chat_template as default_chat_template,
    tokenizer_config as default_tokenizer_config,
    write_tokenizer_files,
)

logger = logging.getLogger(__name__)

# transformers class of each family's backbone.
BACKBONE_CLASSES = {
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
}
# transformers processor / video processor class names, written into the processor configs.
_PROCESSOR_CLASSES = {"qwen3_vl": "Qwen3VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen2_vl": "Qwen2VLProcessor"}
_VIDEO_PROCESSOR_CLASSES = {
    "qwen3_vl": "Qwen3VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "qwen2_vl": "Qwen2VLVideoProcessor",
}

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
BACKBONE_CONFIG_FILE = "config.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
VIDEO_PREPROCESSOR_CONFIG_FILE = "video_preprocessor_config.json"
# The head lives in model.safetensors next to the backbone under its own prefix, so transformers
# loading the folder as a plain backbone just reports one unexpected key.
REWARD_HEAD_KEY = "descore.reward_head.weight"
HEAD_INIT_STD = 0.02
IGNORE_INDEX = -100


@dataclass
class DeScoreOutput:
    """What `DeScoreModel.forward` returns.

    rewards:        (B, K) one score per reward dimension.
    reward_hidden:  (B, H) post-norm hidden state at the `<Reward>` position(s) (mean if several).
    logits:         (B, L, V) LM logits, when asked for (`return_logits`) or when `labels` are given.
    loss:           () mean next-token cross-entropy over labels != -100, when `labels` are given.
    """

    rewards: torch.Tensor
    reward_hidden: torch.Tensor
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class DeScoreModel(nn.Module):
    """A transformers Qwen-VL backbone with a `<Reward>` token and a linear reward head.

    Attributes:
        backbone:        Qwen3VLForConditionalGeneration | Qwen2_5_VLForConditionalGeneration |
                         Qwen2VLForConditionalGeneration.
        reward_head:     nn.Linear(text_hidden, K, bias=False), K = len(descore_config.dimension_names).
        descore_config:  DescoreConfig.
        reward_token_id: id of `<Reward>` (descore_config.reward_token).
        tokenizer:       `tokenizers.Tokenizer` including `<Reward>` (what the torch-free Scorer uses).
        tokenizer_dir:   folder whose tokenizer files match `tokenizer`, or None when `<Reward>` was added
                         in memory and the model has not been saved since.
        tokenizer_config / chat_template / processor_configs: the file contents written on save.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Tokenizer,
        descore_config: DescoreConfig | None = None,
        *,
        reward_head_weight: torch.Tensor | None = None,
        tokenizer_config: dict | None = None,
        chat_template: str | None = None,
        processor_configs: dict[str, dict] | None = None,
        tokenizer_dir: str | Path | None = None,
        head_seed: int = 0,
    ):
        """Wrap `backbone`. If `tokenizer` lacks the reward token it is added (one new embedding row,
        or a spare one); if `reward_head_weight` (K, H) is None a new head is drawn from N(0, 0.02²)
        with `head_seed`. The caller's tokenizer is not modified."""
        super().__init__()
        family = getattr(backbone.config, "model_type", None)
        if family not in FAMILIES:
            raise ModelLoadError(f"Backbone model_type {family!r} is not supported; use one of {', '.join(FAMILIES)}.")
        self.backbone = backbone
        self.descore_config = descore_config if descore_config is not None else descore_config_for(backbone.config)
        if self.descore_config.family != family:
            raise ModelLoadError(
                f"descore_config says family {self.descore_config.family!r} but the backbone is {family!r}; "
                "fix descore_config.json or use the matching backbone."
            )
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        if tokenizer_config is None:
            tokenizer_config = default_tokenizer_config(self.tokenizer, family)
        self.tokenizer_config = dict(tokenizer_config)
        if chat_template is None:
            chat_template = self.tokenizer_config.get("chat_template") or default_chat_template(family)
        self.chat_template = chat_template
        self.processor_configs = dict(processor_configs or {})
        for name, config in default_processor_configs(self.descore_config).items():
            self.processor_configs.setdefault(name, config)

        reward_token_id = self.tokenizer.token_to_id(self.descore_config.reward_token)
        if reward_token_id is None:
            reward_token_id = self._add_reward_token()
            self.tokenizer_dir = None  # the files on disk no longer match the tokenizer
        num_rows = self.backbone.get_input_embeddings().weight.shape[0]
        if reward_token_id >= num_rows:
            raise ModelLoadError(
                f"{self.descore_config.reward_token} has id {reward_token_id} but the embedding matrix has only "
                f"{num_rows} rows: the tokenizer does not belong to these weights. Re-save the checkpoint."
            )
        self.reward_token_id = int(reward_token_id)
        # Every token read for the reward (VideoReward reads one per dimension); all must exist already.
        read_ids = []
        for token in self.descore_config.reward_tokens:
            token_id = self.tokenizer.token_to_id(token)
            if token_id is None or token_id >= num_rows:
                raise ModelLoadError(
                    f"The reward token {token!r} is not in the tokenizer (or has no embedding row); convert the "
                    "checkpoint with `descore convert`, which adds the tokens its layout reads."
                )
            read_ids.append(int(token_id))
        self.reward_token_ids = tuple(read_ids)

        embeddings = self.backbone.get_input_embeddings().weight
        hidden = self.backbone.config.get_text_config().hidden_size
        self.reward_head = nn.Linear(
            hidden, self.descore_config.layout.num_head_outputs(self.descore_config), bias=False,
            dtype=embeddings.dtype, device=embeddings.device,
        )
        with torch.no_grad():
            if reward_head_weight is not None:
                if tuple(reward_head_weight.shape) != tuple(self.reward_head.weight.shape):
                    raise ModelLoadError(
                        f"Reward head has shape {tuple(reward_head_weight.shape)} but {self.descore_config.num_dims} "
                        f"dimensions × hidden {hidden} need {tuple(self.reward_head.weight.shape)}; "
                        "check dimension_names in descore_config.json."
                    )
                self.reward_head.weight.copy_(reward_head_weight)
            else:
                generator = torch.Generator().manual_seed(head_seed)
                init = torch.randn(self.reward_head.weight.shape, generator=generator, dtype=torch.float32) * HEAD_INIT_STD
                self.reward_head.weight.copy_(init)
                logger.info(
                    "Initialised a new reward head (%d dimensions: %s) from N(0, %.2g²), seed %d.",
                    self.descore_config.num_dims, ", ".join(self.descore_config.dimension_names), HEAD_INIT_STD, head_seed,
                )

    # -- properties ---------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.descore_config.family

    @property
    def dimension_names(self) -> list[str]:
        return list(self.descore_config.dimension_names)

    # -- reward token -------------------------------------------------------------------------------
    def _add_reward_token(self) -> int:
        """Add the reward token to the tokenizer and give it an embedding row; return its id.

        The new id is the tokenizer's length. Real Qwen checkpoints have more embedding rows than
        tokens, so that row usually exists already; otherwise the matrix grows by exactly one row. The
        row is set to the mean of the rows of the existing tokens (likewise in an untied lm_head), a
        neutral start that does not disturb the LM's distribution much.
        """
        token = self.descore_config.reward_token
        num_tokens = self.tokenizer.get_vocab_size(with_added_tokens=True)
        num_rows = self.backbone.get_input_embeddings().weight.shape[0]
        if num_rows < num_tokens:
            raise ModelLoadError(
                f"The tokenizer has {num_tokens} tokens but the embedding matrix only {num_rows} rows: "
                "the tokenizer files do not belong to these weights."
            )
        self.tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        new_id = self.tokenizer.token_to_id(token)
        grown = new_id >= num_rows
        if grown:
            # transformers resizes both matrices, keeps the old rows, re-ties and updates vocab_size;
            # its random init of the new row uses the global RNG, which we leave untouched.
            with torch.random.fork_rng(devices=[]):
                self.backbone.resize_token_embeddings(new_id + 1, mean_resizing=False)
        with torch.no_grad():
            input_rows = self.backbone.get_input_embeddings().weight
            input_rows[new_id] = input_rows[:num_tokens].mean(dim=0)
            output = self.backbone.get_output_embeddings()
            if output is not None and output.weight.data_ptr() != input_rows.data_ptr():
                output.weight[new_id] = output.weight[:num_tokens].mean(dim=0)
        logger.info(
            "Added %s to the tokenizer as id %d (%s), initialised as the mean of the %d existing token embeddings.",
            token, new_id, "embeddings grown by one row" if grown else "a spare embedding row", num_tokens,
        )
        return new_id

    def reward_embedding_row_mask(self) -> torch.Tensor:
        """(V,) bool mask, True only at the `<Reward>` row of the input embedding matrix."""
        weight = self.backbone.get_input_embeddings().weight
        mask = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
        mask[self.reward_token_id] = True
        return mask

    def train_only_reward_embedding_row(self):
        """Let the input embedding matrix train, but only its `<Reward>` row: gradients of every other
        row are zeroed by a hook. With tied embeddings the lm_head shares that matrix and is restricted
        the same way. Returns the hook handle (`.remove()` undoes it)."""
        weight = self.backbone.get_input_embeddings().weight
        weight.requires_grad_(True)
        keep = self.reward_embedding_row_mask().to(weight.dtype).unsqueeze(-1)  # (V, 1)
        return weight.register_hook(lambda grad: grad * keep.to(grad.device))

    # -- forward ------------------------------------------------------------------------------------
    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) int: 0 text, 1 image placeholder, 2 video placeholder (what M-RoPE needs)."""
        config = self.backbone.config
        types = torch.zeros_like(input_ids, dtype=torch.int32)
        types[input_ids == config.image_token_id] = 1
        types[input_ids == config.video_token_id] = 2
        return types

    def _multimodal_model(self) -> nn.Module:
        """The backbone's vision+text model without the LM head (`*ForConditionalGeneration.model`),
        looking through a peft wrapper if LoRA was applied to the backbone."""
        backbone = self.backbone
        if hasattr(backbone, "get_base_model"):
            backbone = backbone.get_base_model()
        return backbone.model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = False,
        **kw,
    ) -> DeScoreOutput:
        """Score a batch.

        input_ids:           (B, L) each row has ≥1 `<Reward>` token (its rewards are the mean over them)
                             and exactly one `<|video_pad|>` per merged video patch.
        attention_mask:      (B, L) 1 for real tokens, 0 for padding.
        pixel_values_videos: (N, 3 * temporal_patch * patch²) flattened patches of all videos.
        video_grid_thw:      (num_videos, 3) patch grid (t, h, w) per video.
        second_per_grid_ts:  (num_videos,) seconds per temporal patch; only Qwen2.5-VL uses it.
        labels:              (B, L) next-token targets for rationale training (-100 = ignore).
        **kw:                passed to the backbone (pixel_values, image_grid_thw, position_ids, ...).
        """
        if input_ids.dim() != 2:
            raise InvalidInputError(f"input_ids must be (batch, length); got shape {tuple(input_ids.shape)}.")
        read_ids = torch.tensor(self.reward_token_ids, device=input_ids.device)
        reward_positions = torch.isin(input_ids, read_ids)  # (B, L)
        counts = reward_positions.sum(dim=1)
        if bool((counts == 0).any()):
            rows = torch.nonzero(counts == 0).flatten().tolist()
            raise InvalidInputError(
                f"Rows {rows} of input_ids contain no {self.descore_config.reward_token} token "
                f"(id {self.reward_token_id}); append it where the score should be read."
            )
        if "mm_token_type_ids" not in kw:
            kw["mm_token_type_ids"] = self.mm_token_type_ids(input_ids)
        if second_per_grid_ts is not None and self.family == "qwen2_5_vl":
            kw["second_per_grid_ts"] = second_per_grid_ts
        kw.setdefault("use_cache", False)

        # The base model returns the last hidden state after the final norm; the LM head is applied
        # below only when logits are wanted.
        outputs = self._multimodal_model()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            **kw,
        )
        hidden = outputs.last_hidden_state  # (B, L, H)
        weights = reward_positions.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
        reward_hidden = (hidden * weights).sum(dim=1) / counts.to(hidden.dtype).unsqueeze(-1)  # (B, H)
        if self.descore_config.layout.dimension_map == "per_token":
            rewards = self._per_token_rewards(input_ids, hidden)
        else:
            rewards = self.reward_head(reward_hidden.to(self.reward_head.weight.dtype))  # (B, K)

        logits = loss = None
        if return_logits or labels is not None:
            logits = self.backbone.get_output_embeddings()(hidden)  # (B, L, V)
        if labels is not None:
            vocab = logits.shape[-1]
            loss = nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, vocab),
                labels[:, 1:].to(logits.device).reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return DeScoreOutput(rewards=rewards, reward_hidden=reward_hidden, logits=logits, loss=loss)

    def _per_token_rewards(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(B, K): dimension i is head output i (or 0 for a one-output head) at the i-th reward token
        (mean over its occurrences), as VideoReward reads `<|VQ_reward|>`, `<|MQ_reward|>`, `<|TA_reward|>`."""
        columns = []
        single = self.reward_head.out_features == 1
        for dim, token_id in enumerate(self.reward_token_ids):
            at = (input_ids == token_id).to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
            count = at.sum(dim=1)
            if bool((count == 0).any()):
                raise InvalidInputError(
                    f"A row lacks the reward token {self.descore_config.reward_tokens[dim]!r} of dimension "
                    f"{self.dimension_names[dim]!r}; build the prompt from the checkpoint's template."
                )
            pooled = (hidden * at).sum(dim=1) / count  # (B, H)
            out = self.reward_head(pooled.to(self.reward_head.weight.dtype))
            columns.append(out[:, 0 if single else dim])
        return torch.stack(columns, dim=1)

    # -- saving -------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        """Write the checkpoint folder described in the module docstring."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        config = self.backbone.config
        config.architectures = [type(self.backbone).__name__]
        # As transformers' own save does; loading sets it on the sub-configs too, so do the same here
        # for the in-memory config to equal the reloaded one.
        dtype_name = str(self.backbone.dtype).removeprefix("torch.")
        for sub_config in [config] + [getattr(config, key) for key in getattr(config, "sub_configs", {})]:
            sub_config.dtype = dtype_name
        config.save_pretrained(out)
        generation_config = getattr(self.backbone, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(out)
        self.descore_config.save(out)

        tensors: dict[str, torch.Tensor] = {}
        stored: set[tuple] = set()
        for name, tensor in self.backbone.state_dict().items():
            # A tied lm_head shares the embedding storage: store it once (as transformers does).
            identity = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
            if identity in stored:
                continue
            stored.add(identity)
            tensors[name] = tensor.detach().to("cpu").contiguous()
        if REWARD_HEAD_KEY in tensors:
            raise ModelLoadError(f"The backbone already has a tensor named {REWARD_HEAD_KEY}; cannot save the head.")
        tensors[REWARD_HEAD_KEY] = self.reward_head.weight.detach().to("cpu").contiguous()
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
        stale_index = out / WEIGHTS_INDEX_FILE
        if stale_index.exists():  # a sharded index from an earlier save would shadow the new file
            stale_index.unlink()

        write_tokenizer_files(out, self.tokenizer, self.tokenizer_config, self.chat_template)
        for name, content in self.processor_configs.items():
            (out / name).write_text(json.dumps(content, indent=2) + "\n")
        self.tokenizer_dir = out

    # -- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dimension_names: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float32,
        **overrides,
    ) -> "DeScoreModel":
        """Load a DeScore checkpoint, or a plain Hugging Face Qwen-VL folder (then `<Reward>` and a new
        head are added, and logged).

        dimension_names: reward dimensions; default: the checkpoint's (or ["overall"] for a plain
            folder). Names different from a DeScore checkpoint's start a NEW head (logged).
        dtype: dtype of all weights.
        overrides: DescoreConfig fields (e.g. method="jrm", max_context=...) override descore_config;
            anything else goes to transformers' from_pretrained (attn_implementation, device_map, ...).
        """
        folder = Path(path)
        if not folder.is_dir():
            raise ModelLoadError(
                f"Checkpoint folder {folder} does not exist; pass a folder written by save_pretrained "
                "or a Hugging Face Qwen-VL model folder."
            )
        backbone_config = _read_json(folder / BACKBONE_CONFIG_FILE, "the backbone config (config.json)")
        family = backbone_config.get("model_type")
        if family not in FAMILIES:
            raise ModelLoadError(
                f"{folder / BACKBONE_CONFIG_FILE} has model_type {family!r}; DeScore supports {', '.join(FAMILIES)}."
            )
        descore_fields = {f.name for f in dataclasses.fields(DescoreConfig)}
        config_overrides = {k: v for k, v in overrides.items() if k in descore_fields}
        hf_kwargs = {k: v for k, v in overrides.items() if k not in descore_fields}
        if "family" in config_overrides:
            raise InvalidInputError("family cannot be overridden: it comes from the checkpoint's config.json.")

        tokenizer_path = folder / TOKENIZER_FILE
        if not tokenizer_path.is_file():
            raise ModelLoadError(
                f"{tokenizer_path} not found. Copy the base model's tokenizer files (tokenizer.json, "
                "tokenizer_config.json) into the folder."
            )
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise ModelLoadError(f"{tokenizer_path} could not be read ({exc}); re-copy the tokenizer files.") from exc
        tokenizer_config = _read_json(folder / TOKENIZER_CONFIG_FILE, "the tokenizer config", required=False)
        template = _read_chat_template(folder, tokenizer_config)
        processor_configs = {
            name: content
            for name in (PREPROCESSOR_CONFIG_FILE, VIDEO_PREPROCESSOR_CONFIG_FILE)
            if (content := _read_json(folder / name, name, required=False)) is not None
        }

        is_descore = (folder / CONFIG_NAME).is_file()
        if is_descore:
            descore_config = DescoreConfig.load(folder)
            if descore_config.family != family:
                raise ModelLoadError(
                    f"{folder / CONFIG_NAME} says family {descore_config.family!r} but config.json is {family!r}; "
                    "the folder mixes two checkpoints."
                )
        else:
            descore_config = descore_config_for(backbone_config, processor_configs.get(PREPROCESSOR_CONFIG_FILE))
        if config_overrides:
            descore_config = dataclasses.replace(descore_config, **config_overrides)

        backbone = _load_backbone(folder, family, dtype, hf_kwargs)

        head_weight = None
        if is_descore:
            head_weight = _read_head(folder)
            if dimension_names is not None and list(dimension_names) != descore_config.dimension_names:
                logger.warning(
                    "dimension_names %s differ from the checkpoint's %s: starting a NEW, untrained reward head.",
                    list(dimension_names), descore_config.dimension_names,
                )
                head_weight = None
        if dimension_names is not None:
            descore_config = dataclasses.replace(descore_config, dimension_names=list(dimension_names))
        if not is_descore:
            logger.warning(
                "%s is a plain Hugging Face %s folder: adding %s to the tokenizer and embeddings and starting a "
                "NEW, untrained reward head for %s.",
                folder, family, descore_config.reward_token, descore_config.dimension_names,
            )
        model = cls(
            backbone,
            tokenizer,
            descore_config,
            reward_head_weight=None if head_weight is None else head_weight.to(dtype),
            tokenizer_config=tokenizer_config,
            chat_template=template,
            processor_configs=processor_configs,
            tokenizer_dir=folder,
        )
        return model.eval()


# -- helpers ----------------------------------------------------------------------------------------
def descore_config_for(backbone_config, preprocessor_config: dict | None = None, **overrides) -> DescoreConfig:
    """DescoreConfig for a backbone: family from model_type, patch layout from its vision config, and
    normalisation constants from a preprocessor_config.json when one is given (else family defaults).

    `backbone_config` is a transformers config or its config.json dict.
    """
    as_dict = backbone_config if isinstance(backbone_config, dict) else backbone_config.to_dict()
    family = as_dict.get("model_type")
    config = DescoreConfig.for_family(family, **overrides)
    vision_config = as_dict.get("vision_config") or {}
    vision = dataclasses.asdict(config.vision)
    vision["patch_size"] = vision_config.get("patch_size", vision["patch_size"])
    vision["merge_size"] = vision_config.get("spatial_merge_size", vision["merge_size"])
    vision["temporal_patch_size"] = vision_config.get("temporal_patch_size", vision["temporal_patch_size"])
    if preprocessor_config:
        for key in ("image_mean", "image_std"):
            if key in preprocessor_config:
                vision[key] = tuple(float(x) for x in preprocessor_config[key])
    vision["image_mean"], vision["image_std"] = tuple(vision["image_mean"]), tuple(vision["image_std"])
    changes = dict(vision=VisionConfig(**vision))
    # The prompt + CoT + <Reward> must fit the backbone's rope range; prompts past it get a typed error.
    max_positions = (as_dict.get("text_config") or as_dict).get("max_position_embeddings")
    if max_positions and "max_context" not in overrides:
        changes["max_context"] = int(max_positions)
    return dataclasses.replace(config, **changes)


def default_processor_configs(descore_config: DescoreConfig) -> dict[str, dict]:
    """preprocessor_config.json / video_preprocessor_config.json contents for transformers' Qwen-VL
    processors, from the DeScore vision and sampling settings. They let HF tools recognise the
    folder; DeScore's own preprocessing reads descore_config.json.

    Note: Qwen3-VL's video processor caps pixels per clip rather than per frame, so its
    "longest_edge" is the per-frame cap times max_frames (an upper bound, not an equivalent).
    """
    family, vision, sampling = descore_config.family, descore_config.vision, descore_config.sampling
    common = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(vision.image_mean),
        "image_std": list(vision.image_std),
        "merge_size": vision.merge_size,
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "resample": 3,  # bicubic
        "rescale_factor": 1 / 255,
        "processor_class": _PROCESSOR_CLASSES[family],
    }
    per_frame = {"shortest_edge": sampling.min_pixels, "longest_edge": sampling.max_pixels}
    image = {**common, "image_processor_type": "Qwen2VLImageProcessor", "size": per_frame}
    video_size = per_frame if family != "qwen3_vl" else {
        "shortest_edge": sampling.min_pixels, "longest_edge": sampling.max_pixels * sampling.max_frames
    }
    video = {
        **common,
        "video_processor_type": _VIDEO_PROCESSOR_CLASSES[family],
        "size": video_size,
        "do_sample_frames": True,
        "fps": sampling.fps,
        "min_frames": sampling.min_frames,
        "max_frames": sampling.max_frames,
    }
    return {PREPROCESSOR_CONFIG_FILE: image, VIDEO_PREPROCESSOR_CONFIG_FILE: video}


def _read_json(path: Path, what: str, *, required: bool = True) -> dict | None:
    if not path.is_file():
        if required:
            raise ModelLoadError(f"{path} not found: {path.parent} is missing {what}. Point to a complete checkpoint folder.")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); re-save or re-download the checkpoint.") from None


def _read_chat_template(folder: Path, tokenizer_config: dict | None) -> str | None:
    """The chat template, from where transformers keeps it: chat_template.jinja, then
    chat_template.json (older processors), then tokenizer_config.json."""
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return (folder / CHAT_TEMPLATE_FILE).read_text()
    legacy = _read_json(folder / "chat_template.json", "the chat template", required=False)
    if legacy and isinstance(legacy.get("chat_template"), str):
        return legacy["chat_template"]
    if tokenizer_config and isinstance(tokenizer_config.get("chat_template"), str):
        return tokenizer_config["chat_template"]
    return None


def _load_backbone(folder: Path, family: str, dtype: torch.dtype, hf_kwargs: dict) -> nn.Module:
    """Load the backbone with transformers (handles sharding, key renames, tying) and insist that
    every weight came from the files."""
    import transformers

    if not ((folder / WEIGHTS_FILE).is_file() or (folder / WEIGHTS_INDEX_FILE).is_file()):
        raise ModelLoadError(
            f"{folder} has no {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE}). DeScore loads safetensors only; convert "
            "pickled .bin weights with transformers' save_pretrained(safe_serialization=True)."
        )
    backbone_class = getattr(transformers, BACKBONE_CLASSES[family])
    hf_logger = transformers.utils.logging.get_logger("transformers.modeling_utils")
    quiet = _HideHeadOnlyLoadReport()
    hf_logger.addFilter(quiet)
    try:
        backbone, info = backbone_class.from_pretrained(
            str(folder), dtype=dtype, use_safetensors=True, output_loading_info=True, **hf_kwargs
        )
    except Exception as exc:  # transformers / safetensors raise many types for unreadable files
        raise ModelLoadError(
            f"Could not load the {family} backbone weights from {folder}: {exc}. The files may be incomplete or "
            "corrupt; re-save or re-download the checkpoint."
        ) from exc
    finally:
        hf_logger.removeFilter(quiet)
    problems = {k: v for k in ("missing_keys", "mismatched_keys", "error_msgs") if (v := info.get(k))}
    if problems:
        raise ModelLoadError(
            f"The weights in {folder} do not fit the {family} architecture in config.json: {problems}. "
            "Re-save the checkpoint or fix config.json."
        )
    unexpected = sorted(set(info.get("unexpected_keys", ())) - {REWARD_HEAD_KEY})
    if unexpected:
        logger.warning(
            "Ignored %d weights in %s that the %s backbone does not use: %s", len(unexpected), folder, family, unexpected[:10]
        )
    return backbone


class _HideHeadOnlyLoadReport(logging.Filter):
    """Drops transformers' load report when its only finding is our head's key, which the backbone
    class does not know ("UNEXPECTED"); any other finding is still reported."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message or REWARD_HEAD_KEY not in message:
            return True
        findings = sum(message.count(word) for word in ("UNEXPECTED", "MISSING", "MISMATCH", "CONVERSION"))
        # One UNEXPECTED row for the head, plus the legend line that explains UNEXPECTED.
        return findings > 2


def _read_head(folder: Path) -> torch.Tensor:
    """The reward head tensor (K, H) from model.safetensors (or the shard the index names)."""
    from safetensors import safe_open

    weights_file = folder / WEIGHTS_FILE
    index = _read_json(folder / WEIGHTS_INDEX_FILE, "the weights index", required=False)
    if index is not None:
        shard = index.get("weight_map", {}).get(REWARD_HEAD_KEY)
        if shard is None:
            raise ModelLoadError(
                f"{folder / WEIGHTS_INDEX_FILE} lists no {REWARD_HEAD_KEY}: the DeScore reward head is missing. "
                "Re-save the checkpoint."
            )
        weights_file = folder / shard
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            if REWARD_HEAD_KEY not in handle.keys():
                raise ModelLoadError(
                    f"{weights_file} has no {REWARD_HEAD_KEY}: the DeScore reward head is missing. Re-save the "
                    f"checkpoint, or delete {CONFIG_NAME} to load the folder as a plain backbone with a new head."
                )
            return handle.get_tensor(REWARD_HEAD_KEY)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"Could not read the reward head from {weights_file}: {exc}. Re-save the checkpoint.") from exc
