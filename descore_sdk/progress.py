"""Progress output for commands that take more than a few seconds.

A bar (tqdm) goes to stderr, and only when stderr is a terminal and the output is not `--json`:
piped or machine-read output stays clean. Libraries' own bars (transformers' "Loading weights")
are switched off for scoring commands, where they would interleave with the results.
"""

from __future__ import annotations

import os
import sys


def wanted(as_json: bool = False, stream=None) -> bool:
    """Show progress: not for --json output, and only on a terminal."""
    stream = sys.stderr if stream is None else stream
    return not as_json and bool(getattr(stream, "isatty", lambda: False)())


def bar(total: int, desc: str, unit: str, enabled: bool):
    """A tqdm bar on stderr, or a silent stand-in with the same update/write/close methods."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency; a stripped install still runs
            pass
        else:
            return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
    return _Silent()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    @staticmethod
    def write(text: str, file=None) -> None:
        print(text, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        pass


def quiet_library_bars() -> None:
    """Switch off Hugging Face progress bars (model loading) in this process."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    logging_module = sys.modules.get("transformers.utils.logging")
    if logging_module is not None:  # already imported: the environment variable comes too late
        logging_module.disable_progress_bar()
