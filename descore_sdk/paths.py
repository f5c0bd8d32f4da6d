"""Where a model folder given by a user really is.

Users type `~/...` in Python strings and in quoted shell arguments, where no shell expands it, and
they point at the folder a training run wrote (`train cold-start --out RUN`) rather than at
`RUN/model` inside it. Both are resolved here, once, for the Scorer and every command.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelLoadError

MANIFEST_NAME = "manifest.json"  # an exported bundle (descore_sdk.bundle)
HF_CONFIG_NAME = "config.json"  # a checkpoint (Hugging Face backbone config)
RUN_MODEL_DIR = "model"  # where a training run puts its final model (training.trainer.FINAL_MODEL_DIR)
RUN_CHECKPOINTS_DIR = "checkpoints"


def user_path(path: str | os.PathLike) -> Path:
    """`path` with a leading `~` / `~user` expanded (never a shell's job for strings in Python)."""
    return Path(os.path.expanduser(os.fspath(path)))


def is_model_dir(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file() or (path / HF_CONFIG_NAME).is_file()


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The checkpoint or bundle folder that `path` names.

    `~` is expanded. A training run folder (no model files of its own, but `model/` holding one) is
    taken as its final model. A run that has not finished (checkpoints only) gets an error naming the
    folder where the model will appear. Other folders are returned as they are; the caller reports
    what is missing.
    """
    resolved = user_path(path)
    if not resolved.is_dir() or is_model_dir(resolved):
        return resolved
    final = resolved / RUN_MODEL_DIR
    if is_model_dir(final):
        return final
    if (resolved / RUN_CHECKPOINTS_DIR).is_dir():
        raise ModelLoadError(
            f"{resolved} is a training run folder without a final model yet ({final} does not exist): the "
            f"run has not finished. Resume it with --resume, or pass one of the folders in {resolved / RUN_CHECKPOINTS_DIR}."
        )
    return resolved
