"""Tokenizing user text as data: a prompt or rationale never becomes a special token.

`tokenizers` matches added tokens (`<|im_start|>`, `<Reward>`, `<|video_pad|>`, `<think>`, ...) anywhere
in the text it encodes. The prompt layout needs that for the template around the user's prompt, but a
prompt that contains the text "<Reward>" or "<|im_start|>assistant" must stay text: otherwise a user
could end the user turn, forge a reward position or ask for video tokens without pixels.

`encode_pieces` encodes a text made of template pieces (added tokens recognised) and user pieces
(plain text only). The tokenizer itself splits text at added tokens first and encodes the stretches
between them independently, so cutting the template at its added tokens and encoding every stretch of
plain text (template and user text together) with a copy of the tokenizer that has no added tokens
gives exactly the ids of encoding the whole text — whenever the user text holds no added-token text.
When it does, those characters are tokenized as the ordinary text they are.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Sequence

import numpy as np

from .errors import InvalidInputError

# Per tokenizer object, weakly held: the entry goes when the Scorer that owns the tokenizer goes.
_PLAIN_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PLAIN_LOCK = threading.Lock()


def _plain(tokenizer):
    """(plain tokenizer, added token ids) for `tokenizer`, built once per tokenizer object."""
    from tokenizers import Tokenizer

    with _PLAIN_LOCK:
        cached = _PLAIN_CACHE.get(tokenizer)
        if cached is not None:
            return cached
        spec = json.loads(tokenizer.to_str())
        spec["added_tokens"] = []
        plain = Tokenizer.from_str(json.dumps(spec))
        added = frozenset(tokenizer.get_added_tokens_decoder())
        _PLAIN_CACHE[tokenizer] = (plain, added)
        return plain, added


def encode_plain(tokenizer, text: str) -> np.ndarray:
    """(n,) int64 ids of `text` as plain text: no added token is matched in it."""
    plain, added = _plain(tokenizer)
    ids = plain.encode(_checked(text), add_special_tokens=False).ids
    if added.intersection(ids):  # cannot happen with a byte-level BPE; a guard, not a code path
        raise InvalidInputError("The text was tokenized into special tokens; remove control markup such as '<|...|>'.")
    return np.asarray(ids, dtype=np.int64)


def encode_pieces(tokenizer, pieces: Sequence[tuple[str, bool]]) -> np.ndarray:
    """(n,) int64 ids of the concatenated `pieces`, each (text, is_user_text): added tokens are
    recognised in template pieces only."""
    plain, added = _plain(tokenizer)
    out: list[int] = []
    pending: list[str] = []  # plain text not yet encoded: runs across piece boundaries

    def flush():
        if pending:
            out.extend(plain.encode("".join(pending), add_special_tokens=False).ids)
            pending.clear()

    for text, is_user in pieces:
        if is_user:
            pending.append(_checked(text))
            continue
        encoding = tokenizer.encode(text, add_special_tokens=False)
        position = 0
        for token_id, (start, end) in zip(encoding.ids, encoding.offsets):
            if token_id in added:
                pending.append(text[position:start])
                flush()
                out.append(token_id)
                position = end
        pending.append(text[position:])
    flush()
    return np.asarray(out, dtype=np.int64)


def _checked(text: str) -> str:
    """`text` if the tokenizer can take it; lone surrogates (from a broken decode) cannot be UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"The text is not valid Unicode ({exc.reason} at position {exc.start}); it probably comes from a "
            "broken decode. Pass proper text (e.g. decode bytes with errors='replace')."
        ) from None
    return text
