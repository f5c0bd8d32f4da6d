"""Preference-pair readers: VideoAlign CSV, GenAI-Bench-style JSON and our own JSONL.

Every reader yields the same record, `PreferencePair`: a prompt, two videos (A and B) and, per judged
dimension, which video the humans preferred ("A", "B" or "same"). `read_pairs` picks the reader from
the file suffix (falling back to sniffing the content), resolves the video paths and checks the videos.

Formats
-------
VideoAlign CSV (``.csv``), read as VideoAlign ships it::

    path_A,path_B,prompt,VQ,MQ,TA,fps_A,num_frames_A,fps_B,num_frames_B
    videos/x_A.mp4,./videos/x_B.mp4,"a prompt",B,B,A,24.0,126.0,30.0,152.0

  ``path_A``, ``path_B`` and ``prompt`` are required; the label columns are whichever of the known
  dimensions (``VQ``, ``MQ``, ``TA``, ``overall``; header names are matched case-insensitively, labels
  are stored under these spellings) the header has, and at least one must be there. Other columns
  (fps, frame counts, ...) are ignored. ``row`` is the file line the record starts on (header = 1).

  An ``overall`` label exists only when the file has an ``overall`` column. We never derive one (for
  instance by majority over VQ/MQ/TA): the dimensions often disagree (the sample's first row is
  VQ=B, MQ=B, TA=A) and a majority vote would be a judgement no annotator gave. Without it,
  "overall" accuracy is an aggregate of the per-dimension accuracies (see ``metrics.evaluate``).

GenAI-Bench-style JSON (``.json`` holding a list)::

    [{"prompt": "...", "video_left": "a.mp4", "video_right": "b.mp4", "vote_type": "leftvote"}, ...]

  left = A, right = B; the single judgement is stored as ``labels["overall"]``. ``leftvote`` → "A",
  ``rightvote`` → "B"; both ``tievote`` ("equally good") and ``bothbad_vote`` ("equally bad") → "same":
  a reward model only has to rank the two, and in both cases the annotator ranks neither above the
  other. ``row`` is the 1-based position of the object in the list (JSON has no meaningful lines).

DeScore JSONL (``.jsonl``; also any file whose first character is ``{``), one pair per line::

    {"prompt": "a red circle moving left to right", "video_a": "videos/1.mp4", "video_b": "videos/2.mp4",
     "labels": {"VQ": "A", "MQ": "same", "TA": "A", "overall": "A"},
     "rationale_a": "I see ...", "rationale_b": "I see ..."}

  Required: ``prompt``, ``video_a``, ``video_b`` and exactly one of ``label`` (a single "A"/"B"/"same",
  stored as ``labels["overall"]``) or ``labels`` (dimension → "A"/"B"/"same"). Optional:
  ``rationale_a`` / ``rationale_b``, the chain-of-thought text for each video (strings). Any other
  keys are kept, untouched, in ``PreferencePair.meta`` (the synthetic benchmark stores its factors
  there). Blank lines are skipped; ``row`` is the line number.

Labels are accepted case-insensitively ("a", "Same") and stored as "A", "B" or "same".

Video paths are resolved relative to the data file's folder and must stay inside it: ``../x.mp4``
escapes and absolute paths outside the folder are rejected with a `DataError` naming the row. The
check is lexical (after normalising ``.``/``..``), so a symlink placed inside the folder is trusted.
Videos that are missing (or, with ``check_decodable=True``, cannot be opened and decoded by PyAV) are
reported with their row numbers: ``on_missing="skip"`` drops those pairs with a `DataWarning` listing
the rows, ``on_missing="error"`` raises a `DataError` listing them all.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from descore_sdk.errors import DataError, InvalidInputError

LABEL_VALUES = ("A", "B", "same")
KNOWN_DIMENSIONS = ("VQ", "MQ", "TA", "overall")
GENAI_VOTES = {"leftvote": "A", "rightvote": "B", "tievote": "same", "bothbad_vote": "same"}
CSV_REQUIRED_COLUMNS = ("path_A", "path_B", "prompt")
JSONL_KNOWN_KEYS = ("prompt", "video_a", "video_b", "label", "labels", "rationale_a", "rationale_b")


class DataWarning(UserWarning):
    """Pairs were skipped because their videos are missing or undecodable."""


@dataclass
class PreferencePair:
    """One human (or synthetic) judgement between two videos generated for the same prompt.

    `labels` maps a dimension name ("VQ", "MQ", "TA", "overall", ...) to "A", "B" or "same".
    `row` is the 1-based line (CSV/JSONL) or list position (JSON) in the source file.
    """

    prompt: str
    video_a: Path
    video_b: Path
    labels: dict[str, str]
    rationale_a: str | None = None
    rationale_b: str | None = None
    row: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Entry point


def read_pairs(path: str | os.PathLike, *, on_missing: str = "skip", check_decodable: bool = False) -> list[PreferencePair]:
    """Read preference pairs from a VideoAlign CSV, GenAI-Bench JSON or DeScore JSONL file.

    on_missing: "skip" drops pairs whose videos are missing/undecodable (with a `DataWarning` listing
    their rows); "error" raises `DataError` instead; "keep" keeps every pair unchecked (`descore
    score-dataset` writes an error row for each video it cannot score). check_decodable: also open each video with PyAV
    and decode its first frame (slower; each distinct video is probed once).
    """
    if on_missing not in ("skip", "error", "keep"):
        raise InvalidInputError(f"on_missing must be 'skip', 'error' or 'keep', got {on_missing!r}.")
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist (or is not a file). Check the path.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}). Save it as UTF-8.") from exc

    fmt = _detect_format(path, text)
    root = Path(os.path.abspath(path.parent))
    if fmt == "csv":
        pairs = _parse_videoalign_csv(text, path, root)
    elif fmt == "json":
        pairs = _parse_genai_json(text, path, root)
    else:
        pairs = _parse_jsonl(text, path, root)
    if on_missing == "keep":
        return pairs
    return _check_videos(pairs, path, on_missing=on_missing, check_decodable=check_decodable)


def _detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".jsonl":
        return "jsonl"
    start = text.lstrip()[:1]
    if start == "[":
        return "json"
    if start == "{":
        return "jsonl"
    first_line = text.splitlines()[0] if text.strip() else ""
    if "path_A" in first_line and "path_B" in first_line:
        return "csv"
    raise DataError(
        f"Cannot tell the format of {path}: expected a VideoAlign CSV (header with path_A,path_B,prompt), "
        "a GenAI-Bench JSON list, or DeScore JSONL (one JSON object per line). Use a .csv/.json/.jsonl suffix."
    )


# ----------------------------------------------------------------------------------------------------
# Readers


def _parse_videoalign_csv(text: str, path: Path, root: Path) -> list[PreferencePair]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise DataError(f"{path} is empty; expected a header line path_A,path_B,prompt,VQ,MQ,TA,...") from None
    by_lower = {name.lower(): i for i, name in enumerate(header)}
    missing = [name for name in CSV_REQUIRED_COLUMNS if name.lower() not in by_lower]
    label_columns = {dim: by_lower[dim.lower()] for dim in KNOWN_DIMENSIONS if dim.lower() in by_lower}
    if missing or not label_columns:
        what = f"missing column(s) {', '.join(missing)}" if missing else "no label column"
        raise DataError(
            f"{path}: bad header ({what}); got {header}. A VideoAlign CSV needs path_A, path_B, prompt and "
            f"at least one label column among {', '.join(KNOWN_DIMENSIONS)}."
        )
    col_a, col_b, col_prompt = (by_lower[name.lower()] for name in CSV_REQUIRED_COLUMNS)

    pairs = []
    line_before = reader.line_num
    for record in reader:
        row = line_before + 1  # line the record starts on (a quoted prompt may span several lines)
        line_before = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            raise DataError(
                f"{path}, row {row}: has {len(record)} fields but the header has {len(header)}. "
                "Quote prompts that contain commas."
            )
        labels = {dim: _parse_label(record[i], path, row, dim) for dim, i in label_columns.items()}
        pairs.append(
            PreferencePair(
                prompt=_require_text(record[col_prompt], path, row, "prompt"),
                video_a=_resolve_video(record[col_a], root, path, row, "path_A"),
                video_b=_resolve_video(record[col_b], root, path, row, "path_B"),
                labels=labels,
                row=row,
            )
        )
    return pairs


def _parse_genai_json(text: str, path: Path, root: Path) -> list[PreferencePair]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}.") from exc
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of pair objects, got a {type(items).__name__}.")
    pairs = []
    for row, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise DataError(f"{path}, row {row}: expected an object, got {type(item).__name__}.")
        _require_keys(item, ("prompt", "video_left", "video_right", "vote_type"), path, row)
        vote = str(item["vote_type"]).strip().lower()
        if vote not in GENAI_VOTES:
            raise DataError(
                f"{path}, row {row}: vote_type {item['vote_type']!r} is not one of {', '.join(GENAI_VOTES)}."
            )
        pairs.append(
            PreferencePair(
                prompt=_require_text(item["prompt"], path, row, "prompt"),
                video_a=_resolve_video(item["video_left"], root, path, row, "video_left"),
                video_b=_resolve_video(item["video_right"], root, path, row, "video_right"),
                labels={"overall": GENAI_VOTES[vote]},
                row=row,
            )
        )
    return pairs


def json_lines(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row, parsed value) of each non-blank line of a JSON-lines file's `text`; a line that is
    not JSON raises `DataError` naming the file and row."""
    for row, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield row, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, row {row}: invalid JSON ({exc.msg} at column {exc.colno}).") from exc


def _parse_jsonl(text: str, path: Path, root: Path) -> list[PreferencePair]:
    pairs = []
    for row, item in json_lines(text, path):
        if not isinstance(item, dict):
            raise DataError(f"{path}, row {row}: expected a JSON object per line, got {type(item).__name__}.")
        _require_keys(item, ("prompt", "video_a", "video_b"), path, row)
        if ("label" in item) == ("labels" in item):
            raise DataError(f"{path}, row {row}: give exactly one of 'label' (A/B/same) or 'labels' {{dim: A/B/same}}.")
        if "label" in item:
            labels = {"overall": _parse_label(item["label"], path, row, "label")}
        else:
            if not isinstance(item["labels"], dict) or not item["labels"]:
                raise DataError(f"{path}, row {row}: 'labels' must be a non-empty object {{dimension: A/B/same}}.")
            labels = {str(dim): _parse_label(value, path, row, f"labels.{dim}") for dim, value in item["labels"].items()}
        rationales = []
        for key in ("rationale_a", "rationale_b"):
            value = item.get(key)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{path}, row {row}: '{key}' must be a string, got {type(value).__name__}.")
            rationales.append(value)
        pairs.append(
            PreferencePair(
                prompt=_require_text(item["prompt"], path, row, "prompt"),
                video_a=_resolve_video(item["video_a"], root, path, row, "video_a"),
                video_b=_resolve_video(item["video_b"], root, path, row, "video_b"),
                labels=labels,
                rationale_a=rationales[0],
                rationale_b=rationales[1],
                row=row,
                meta={k: v for k, v in item.items() if k not in JSONL_KNOWN_KEYS},
            )
        )
    return pairs


def write_pairs_jsonl(pairs: Iterable[PreferencePair], path: str | os.PathLike) -> Path:
    """Write pairs in the DeScore JSONL format, video paths relative to the file's folder.

    The videos must lie inside that folder (the reader would reject anything else). `meta` entries
    are written as extra top-level keys.
    """
    path = Path(path)
    root = Path(os.path.abspath(path.parent))
    lines = []
    for pair in pairs:
        record: dict[str, Any] = {"prompt": pair.prompt}
        for key, video in (("video_a", pair.video_a), ("video_b", pair.video_b)):
            absolute = Path(os.path.abspath(video))
            if not _is_inside(absolute, root):
                raise InvalidInputError(f"Video {video} is outside {root}; put the videos under the JSONL's folder.")
            record[key] = absolute.relative_to(root).as_posix()
        record["labels"] = dict(pair.labels)
        for key in ("rationale_a", "rationale_b"):
            if getattr(pair, key) is not None:
                record[key] = getattr(pair, key)
        clashes = set(pair.meta) & set(JSONL_KNOWN_KEYS)
        if clashes:
            raise InvalidInputError(f"meta keys {sorted(clashes)} clash with the JSONL fields; rename them.")
        record.update(pair.meta)
        lines.append(json.dumps(record, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------
# Field helpers


def _parse_label(value: Any, path: Path, row: int, column: str) -> str:
    text = str(value).strip() if isinstance(value, str) else None
    for label in LABEL_VALUES:
        if text is not None and text.lower() == label.lower():
            return label
    raise DataError(f"{path}, row {row}: {column} = {value!r} is not a label; use A, B or same.")


def _require_text(value: Any, path: Path, row: int, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}, row {row}: '{column}' must be a non-empty string, got {value!r}.")
    return value


def _require_keys(item: dict, keys: tuple[str, ...], path: Path, row: int) -> None:
    absent = [k for k in keys if k not in item]
    if absent:
        raise DataError(f"{path}, row {row}: missing key(s) {', '.join(absent)}.")


def _is_inside(candidate: Path, root: Path) -> bool:
    return candidate == root or root in candidate.parents


def _resolve_video(value: Any, root: Path, path: Path, row: int, column: str) -> Path:
    """Data-file-relative (or absolute) video path → normalised absolute path inside `root`."""
    raw = _require_text(value, path, row, column).strip()
    candidate = Path(os.path.normpath(os.path.join(root, raw)))  # join ignores root for absolute `raw`
    if not _is_inside(candidate, root) or candidate == root:
        raise DataError(
            f"{path}, row {row}: {column} = {raw!r} points outside the data folder {root}. Videos must live "
            "under the data file's folder; use paths relative to it without '..'."
        )
    return candidate


# ----------------------------------------------------------------------------------------------------
# Video checks


def probe_video(path: Path) -> str | None:
    """Why `path` cannot be used as a video (None when PyAV opens it and decodes a first frame)."""
    import av  # lazy: PyAV loads FFmpeg

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "has no video stream"
            for _frame in container.decode(video=0):
                return None
            return "has no decodable frame"
    except (av.FFmpegError, OSError, ValueError) as exc:
        return f"cannot be decoded ({type(exc).__name__}: {exc})"


def _check_videos(pairs: list[PreferencePair], path: Path, *, on_missing: str, check_decodable: bool) -> list[PreferencePair]:
    verdicts: dict[Path, str | None] = {}

    def problem_of(video: Path) -> str | None:
        if video not in verdicts:
            if not video.is_file():
                verdicts[video] = "is missing"
            else:
                verdicts[video] = probe_video(video) if check_decodable else None
        return verdicts[video]

    kept, problems = [], []
    for pair in pairs:
        issues = [f"{video} {problem_of(video)}" for video in (pair.video_a, pair.video_b) if problem_of(video)]
        if issues:
            problems.append((pair.row, issues))
        else:
            kept.append(pair)
    if not problems:
        return kept

    rows = ", ".join(str(row) for row, _ in problems)
    details = "; ".join(f"row {row}: {', '.join(issues)}" for row, issues in problems[:20])
    if len(problems) > 20:
        details += f"; ... and {len(problems) - 20} more"
    if on_missing == "error":
        raise DataError(
            f"{path}: {len(problems)} pair(s) reference missing or undecodable videos (rows {rows}). {details}. "
            "Fix the paths, or pass on_missing='skip' to drop those pairs."
        )
    warnings.warn(
        f"{path}: skipped {len(problems)} of {len(pairs)} pair(s) with missing or undecodable videos "
        f"(rows {rows}). {details}.",
        DataWarning,
        stacklevel=3,
    )
    return kept
